//! The two Kafka admin requests the `rdkafka` crate does not wrap: `CreateAcls` (with
//! `DescribeAcls` to see them applied) and `AlterUserScramCredentials`. They go through
//! librdkafka's C admin API on an ordinary client's handle; everything unsafe is here, each
//! object freed by a guard.
//!
//! Only the stack's admin principal ([`suho_security::ServerPrincipal::KafkaAdmin`]) may make
//! them.

use std::ffi::{c_char, CStr, CString};
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer};
use secrecy::{ExposeSecret, SecretString};
use suho_security::kafka::{Acl, Operation, Pattern, Resource};

use crate::MessagingError;

/// How long one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The SCRAM iterations of every credential (Kafka's minimum for SHA-512 is 4096).
const SCRAM_ITERATIONS: i32 = 8192;

fn failed(what: &str, detail: impl std::fmt::Display) -> MessagingError {
    MessagingError::KafkaAdmin(format!("Kafka {what}: {detail}"))
}

/// Creates (or keeps, when they exist) `acls`, then waits until the broker's authorizer has
/// every one of them: an ACL the controller has accepted reaches the broker a moment later,
/// and a client let in before that would be refused. Blocking.
///
/// # Errors
/// The broker refused the request or one of the bindings, or did not apply them within 30 s.
pub fn create_acls(kafka: &suho_config::KafkaConfig, acls: &[Acl]) -> Result<(), MessagingError> {
    let client: BaseProducer = crate::kafka::base_config(kafka).create()?;
    let rk = client.client().native_ptr();
    create(rk, acls)?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let have = describe_all(rk)?;
        let missing = acls.iter().filter(|a| !have.contains(a)).count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(failed(
                "ACLs",
                format!(
                    "{missing} of {} not applied by the broker in time",
                    acls.len()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets each `(user, password)`'s SCRAM-SHA-512 credential (a new salt each time; the
/// password is what matters). Blocking.
///
/// # Errors
/// The broker refused the request or one of the users.
pub fn upsert_scram(
    kafka: &suho_config::KafkaConfig,
    users: &[(&str, SecretString)],
) -> Result<(), MessagingError> {
    let client: BaseProducer = crate::kafka::base_config(kafka).create()?;
    upsert(client.client().native_ptr(), users)
}

struct Queue(*mut rd::rd_kafka_queue_t);
impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_queue_new, destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}

struct Event(*mut rd::rd_kafka_event_t);
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned by rd_kafka_queue_poll (not null), destroyed once.
        unsafe { rd::rd_kafka_event_destroy(self.0) }
    }
}

struct Options(*mut rd::rd_kafka_AdminOptions_t);
impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_AdminOptions_new, destroyed once.
        unsafe { rd::rd_kafka_AdminOptions_destroy(self.0) }
    }
}

struct Bindings(Vec<*mut rd::rd_kafka_AclBinding_t>);
impl Drop for Bindings {
    fn drop(&mut self) {
        // SAFETY: each made by rd_kafka_AclBinding_new (not null); the array is ours.
        unsafe { rd::rd_kafka_AclBinding_destroy_array(self.0.as_mut_ptr(), self.0.len()) }
    }
}

struct Alterations(Vec<*mut rd::rd_kafka_UserScramCredentialAlteration_t>);
impl Drop for Alterations {
    fn drop(&mut self) {
        // SAFETY: each made by rd_kafka_UserScramCredentialUpsertion_new; the array is ours.
        unsafe {
            rd::rd_kafka_UserScramCredentialAlteration_destroy_array(
                self.0.as_mut_ptr(),
                self.0.len(),
            );
        }
    }
}

fn cstring(s: &str) -> Result<CString, MessagingError> {
    CString::new(s).map_err(|_| failed("admin request", format!("a NUL byte in `{s}`")))
}

/// # Safety
/// `p` is null or a NUL-terminated string librdkafka owns for the call's duration.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The error in `e`, if any.
fn error_of(e: *const rd::rd_kafka_error_t) -> Option<String> {
    if e.is_null() {
        return None;
    }
    // SAFETY: a non-null error object owned by its result.
    unsafe {
        let code = rd::rd_kafka_error_code(e);
        (code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| text(rd::rd_kafka_error_string(e)))
    }
}

fn options(rk: *mut rd::rd_kafka_t, op: rd::rd_kafka_admin_op_t) -> Options {
    let mut errstr = [0 as c_char; 256];
    // SAFETY: rk is a live client; errstr is writable for its length.
    unsafe {
        let o = Options(rd::rd_kafka_AdminOptions_new(rk, op));
        let ms = i32::try_from(REQUEST_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        rd::rd_kafka_AdminOptions_set_request_timeout(o.0, ms, errstr.as_mut_ptr(), errstr.len());
        o
    }
}

/// Polls `queue` for the request's one result event.
fn result(queue: &Queue, what: &str) -> Result<Event, MessagingError> {
    let ms = i32::try_from(REQUEST_TIMEOUT.as_millis() + 5_000).unwrap_or(i32::MAX);
    // SAFETY: a live queue; the event is owned by the guard.
    let ev = unsafe { rd::rd_kafka_queue_poll(queue.0, ms) };
    if ev.is_null() {
        return Err(failed(what, "no answer in time"));
    }
    let ev = Event(ev);
    // SAFETY: a live event.
    unsafe {
        let code = rd::rd_kafka_event_error(ev.0);
        if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(failed(what, text(rd::rd_kafka_event_error_string(ev.0))));
        }
    }
    Ok(ev)
}

fn restype(r: Resource) -> rd::rd_kafka_ResourceType_t {
    use rd::rd_kafka_ResourceType_t as T;
    match r {
        Resource::Topic => T::RD_KAFKA_RESOURCE_TOPIC,
        Resource::Group => T::RD_KAFKA_RESOURCE_GROUP,
        Resource::TransactionalId => T::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
        Resource::Cluster => T::RD_KAFKA_RESOURCE_BROKER,
    }
}

fn pattern(p: Pattern) -> rd::rd_kafka_ResourcePatternType_t {
    use rd::rd_kafka_ResourcePatternType_t as T;
    match p {
        Pattern::Literal => T::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Pattern::Prefixed => T::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    }
}

fn operation(o: Operation) -> rd::rd_kafka_AclOperation_t {
    use rd::rd_kafka_AclOperation_t as T;
    match o {
        Operation::Read => T::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => T::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Create => T::RD_KAFKA_ACL_OPERATION_CREATE,
        Operation::Alter => T::RD_KAFKA_ACL_OPERATION_ALTER,
        Operation::DescribeConfigs => T::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        Operation::AlterConfigs => T::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
        Operation::Describe => T::RD_KAFKA_ACL_OPERATION_DESCRIBE,
    }
}

fn create(rk: *mut rd::rd_kafka_t, acls: &[Acl]) -> Result<(), MessagingError> {
    let host = cstring("*")?;
    let mut bindings = Bindings(Vec::with_capacity(acls.len()));
    for a in acls {
        let name = cstring(&a.name)?;
        let principal = cstring(&format!("User:{}", a.principal))?;
        let mut errstr = [0 as c_char; 256];
        // SAFETY: every string is NUL-terminated and outlives the call (librdkafka copies
        // them); errstr is writable for its length.
        let b = unsafe {
            rd::rd_kafka_AclBinding_new(
                restype(a.resource),
                name.as_ptr(),
                pattern(a.pattern),
                principal.as_ptr(),
                host.as_ptr(),
                operation(a.operation),
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if b.is_null() {
            // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
            return Err(failed(
                "ACL",
                format!("{a:?}: {}", unsafe { text(errstr.as_ptr()) }),
            ));
        }
        bindings.0.push(b);
    }
    // SAFETY: rk is a live client; the queue, options and bindings outlive the request.
    unsafe {
        let queue = Queue(rd::rd_kafka_queue_new(rk));
        let opts = options(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS);
        rd::rd_kafka_CreateAcls(
            rk,
            bindings.0.as_mut_ptr(),
            bindings.0.len(),
            opts.0,
            queue.0,
        );
        let ev = result(&queue, "CreateAcls")?;
        let res = rd::rd_kafka_event_CreateAcls_result(ev.0);
        if res.is_null() {
            return Err(failed("CreateAcls", "an unexpected answer"));
        }
        let mut n = 0usize;
        let results = rd::rd_kafka_CreateAcls_result_acls(res, &raw mut n);
        for i in 0..n {
            if let Some(e) = error_of(rd::rd_kafka_acl_result_error(*results.add(i))) {
                return Err(failed("CreateAcls", format!("{:?}: {e}", acls.get(i))));
            }
        }
    }
    Ok(())
}

/// Every ALLOW ACL the broker's authorizer holds, as [`Acl`]s (those it cannot express are
/// left out).
fn describe_all(rk: *mut rd::rd_kafka_t) -> Result<Vec<Acl>, MessagingError> {
    let mut errstr = [0 as c_char; 256];
    let mut out = Vec::new();
    // SAFETY: rk is a live client; the filter, queue and options outlive the request; the
    // bindings read belong to the event, read before it is destroyed.
    unsafe {
        let filter = rd::rd_kafka_AclBindingFilter_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY,
            std::ptr::null(),
            rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY,
            std::ptr::null(),
            std::ptr::null(),
            rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if filter.is_null() {
            return Err(failed("DescribeAcls", text(errstr.as_ptr())));
        }
        let filter = Bindings(vec![filter]);
        let queue = Queue(rd::rd_kafka_queue_new(rk));
        let opts = options(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS);
        rd::rd_kafka_DescribeAcls(rk, filter.0[0], opts.0, queue.0);
        let ev = result(&queue, "DescribeAcls")?;
        let res = rd::rd_kafka_event_DescribeAcls_result(ev.0);
        if res.is_null() {
            return Err(failed("DescribeAcls", "an unexpected answer"));
        }
        let mut n = 0usize;
        let acls = rd::rd_kafka_DescribeAcls_result_acls(res, &raw mut n);
        for i in 0..n {
            let b = *acls.add(i);
            if rd::rd_kafka_AclBinding_permission_type(b)
                != rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW
            {
                continue;
            }
            let resource = match rd::rd_kafka_AclBinding_restype(b) {
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC => Resource::Topic,
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP => Resource::Group,
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID => {
                    Resource::TransactionalId
                }
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_BROKER => Resource::Cluster,
                _ => continue,
            };
            let pat = match rd::rd_kafka_AclBinding_resource_pattern_type(b) {
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL => {
                    Pattern::Literal
                }
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED => {
                    Pattern::Prefixed
                }
                _ => continue,
            };
            let op = rd::rd_kafka_AclBinding_operation(b);
            let Some(op) = Operation::ALL.into_iter().find(|o| operation(*o) == op) else {
                continue;
            };
            let principal = text(rd::rd_kafka_AclBinding_principal(b));
            let Some(identity) = principal
                .strip_prefix("User:")
                .and_then(suho_security::Identity::from_name)
            else {
                continue;
            };
            out.push(Acl {
                principal: identity.name(),
                resource,
                pattern: pat,
                name: text(rd::rd_kafka_AclBinding_name(b)),
                operation: op,
            });
        }
    }
    Ok(out)
}

fn upsert(rk: *mut rd::rd_kafka_t, users: &[(&str, SecretString)]) -> Result<(), MessagingError> {
    let mut alterations = Alterations(Vec::with_capacity(users.len()));
    for (user, password) in users {
        let name = cstring(user)?;
        let pw = password.expose_secret().as_bytes();
        // SAFETY: the name is NUL-terminated and the password's bytes live for the call
        // (librdkafka copies both); a null salt asks librdkafka for a random one.
        let a = unsafe {
            rd::rd_kafka_UserScramCredentialUpsertion_new(
                name.as_ptr(),
                rd::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512,
                SCRAM_ITERATIONS,
                pw.as_ptr(),
                pw.len(),
                std::ptr::null(),
                0,
            )
        };
        if a.is_null() {
            return Err(failed("SCRAM credentials", format!("for `{user}`")));
        }
        alterations.0.push(a);
    }
    // SAFETY: rk is a live client; the queue, options and alterations outlive the request;
    // the responses belong to the event, read before it is destroyed.
    unsafe {
        let queue = Queue(rd::rd_kafka_queue_new(rk));
        let opts = options(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
        );
        rd::rd_kafka_AlterUserScramCredentials(
            rk,
            alterations.0.as_mut_ptr(),
            alterations.0.len(),
            opts.0,
            queue.0,
        );
        let ev = result(&queue, "AlterUserScramCredentials")?;
        let res = rd::rd_kafka_event_AlterUserScramCredentials_result(ev.0);
        if res.is_null() {
            return Err(failed("AlterUserScramCredentials", "an unexpected answer"));
        }
        let mut n = 0usize;
        let responses = rd::rd_kafka_AlterUserScramCredentials_result_responses(res, &raw mut n);
        for i in 0..n {
            let r = *responses.add(i);
            if let Some(e) =
                error_of(rd::rd_kafka_AlterUserScramCredentials_result_response_error(r))
            {
                let user = text(rd::rd_kafka_AlterUserScramCredentials_result_response_user(
                    r,
                ));
                return Err(failed("SCRAM credentials", format!("for `{user}`: {e}")));
            }
        }
    }
    Ok(())
}
