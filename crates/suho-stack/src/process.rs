//! Server processes: spawned in their own process group with output to a log file and a
//! pid file beside it, found again from that pid file, stopped with the signal each server
//! treats as a fast, clean shutdown.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Service, StackError, StackSpec};

/// How long a server gets to stop cleanly before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(4);

/// A server process of the stack.
#[derive(Debug)]
pub struct ManagedProcess {
    /// Which server.
    pub service: Service,
    /// Its pid.
    pub pid: u32,
    child: Option<Child>,
    pid_file: PathBuf,
}

impl ManagedProcess {
    /// Spawns `cmd` for `service`: stdin closed, stdout and stderr appended to the
    /// service's log, its own process group (a terminal's Ctrl-C reaches suho, which then
    /// stops the servers in order), and a pid file.
    pub(crate) fn spawn(
        spec: &StackSpec,
        service: Service,
        mut cmd: Command,
    ) -> Result<ManagedProcess, StackError> {
        let log = spec.log_file(service);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| StackError::io(&log, e))?;
        let err = out.try_clone().map_err(|e| StackError::io(&log, e))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if spec.die_with_parent {
            // SAFETY: prctl is async-signal-safe; it runs in the child between fork and
            // exec (after any uid change, which would otherwise clear the setting).
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|e| StackError::Command {
            command: program,
            detail: e.to_string(),
        })?;
        let pid = child.id();
        let pid_file = spec.pid_file(service);
        std::fs::write(&pid_file, format!("{pid}\n")).map_err(|e| StackError::io(&pid_file, e))?;
        Ok(ManagedProcess {
            service,
            pid,
            child: Some(child),
            pid_file,
        })
    }

    /// A running server this process did not start (found through its pid file).
    pub(crate) fn adopt(spec: &StackSpec, service: Service, pid: u32) -> ManagedProcess {
        ManagedProcess {
            service,
            pid,
            child: None,
            pid_file: spec.pid_file(service),
        }
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn is_alive(&mut self) -> bool {
        if let Some(child) = self.child.as_mut() {
            return matches!(child.try_wait(), Ok(None));
        }
        pid_alive(self.pid)
    }

    /// Asks the server to shut down: SIGINT (fast shutdown) for PostgreSQL, SIGTERM
    /// for the others.
    pub fn signal_stop(&self) {
        let sig = match self.service {
            Service::Postgres => libc::SIGINT,
            Service::Nats | Service::Kafka => libc::SIGTERM,
        };
        send(self.pid, sig);
    }

    /// Waits for the process to exit; after `grace`, kills it (and waits at most 2 s
    /// more). Removes the pid file once it has exited. Returns whether it has.
    pub fn wait_or_kill(&mut self, grace: Duration) -> bool {
        if !wait_until(grace, || !self.is_alive()) {
            tracing::warn!(service = %self.service, pid = self.pid, "did not stop in {grace:?}, killing it");
            send(self.pid, libc::SIGKILL);
            wait_until(Duration::from_secs(2), || !self.is_alive());
        }
        if self.is_alive() {
            tracing::error!(service = %self.service, pid = self.pid, "still running after SIGKILL");
            return false;
        }
        let _ = std::fs::remove_file(&self.pid_file);
        tracing::info!(service = %self.service, "stopped");
        true
    }
}

fn send(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid we spawned or read from our own pid file.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Stops every child process of this process at once, with no clean shutdown: the last
/// resort of a stop that took too long (the servers this process started are its
/// children; servers it reused are not). PostgreSQL's postmaster gets SIGQUIT (immediate
/// shutdown, which also ends its backends), everything else SIGKILL; whatever still runs a
/// second later gets SIGKILL too. Returns `(pid, name)` of those still running after that.
pub fn kill_children() -> Vec<(u32, String)> {
    let me = std::process::id();
    let children: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let s = stat(pid)?;
            (s.ppid == me && s.is_alive()).then_some((pid, s.name))
        })
        .collect();
    let all_gone = || children.iter().all(|(pid, _)| !pid_alive(*pid));
    for (pid, name) in &children {
        let sig = if name == "postgres" {
            libc::SIGQUIT
        } else {
            libc::SIGKILL
        };
        send(*pid, sig);
    }
    if !wait_until(Duration::from_secs(1), all_gone) {
        for (pid, _) in &children {
            if pid_alive(*pid) {
                send(*pid, libc::SIGKILL);
            }
        }
        wait_until(Duration::from_secs(1), all_gone);
    }
    children
        .into_iter()
        .filter(|(pid, _)| pid_alive(*pid))
        .collect()
}

/// Polls `done` every 20 ms until it holds or `within` has passed; returns whether it held.
fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `/proc/<pid>/stat` says of a process.
struct Stat {
    /// The command name (in parentheses in the file).
    name: String,
    /// The state letter (`R`, `S`, `Z`...).
    state: String,
    /// The parent's pid.
    ppid: u32,
}

impl Stat {
    /// Neither exited nor a zombie.
    fn is_alive(&self) -> bool {
        self.state != "Z" && self.state != "X"
    }
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name may hold spaces and parentheses: the fields after the last `)` are fixed.
    let (head, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    Some(Stat {
        name: head.split_once('(')?.1.to_string(),
        state: fields.next()?.to_string(),
        ppid: fields.next()?.parse().ok()?,
    })
}

/// Whether `pid` names a live (non-zombie) process.
fn pid_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.is_alive())
}

/// The pid of `service` from its pid file, when that process is alive and is the
/// server the file claims (a recycled pid is not taken for ours).
pub(crate) fn running_pid(spec: &StackSpec, service: Service) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(spec.pid_file(service))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !pid_alive(pid) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let marker = match service {
        Service::Nats => "nats-server",
        Service::Postgres => "postgres",
        Service::Kafka => "kafka.Kafka",
    };
    cmdline.contains(marker).then_some(pid)
}

/// Polls `ready` every 100 ms until it answers `Ok`, the process dies, `limit` passes, or
/// `cancel` is set (the process is then stopped again).
pub(crate) fn wait_ready(
    spec: &StackSpec,
    proc: &mut ManagedProcess,
    cancel: &AtomicBool,
    limit: Duration,
    mut ready: impl FnMut() -> Result<(), String>,
) -> Result<(), StackError> {
    let started = Instant::now();
    loop {
        if cancel.load(Ordering::SeqCst) {
            proc.signal_stop();
            proc.wait_or_kill(STOP_GRACE);
            return Err(StackError::Cancelled {
                service: proc.service,
            });
        }
        let last = match ready() {
            Ok(()) => {
                tracing::info!(service = %proc.service, pid = proc.pid, elapsed = ?started.elapsed(), "ready");
                return Ok(());
            }
            Err(e) => e,
        };
        let log = spec.log_file(proc.service);
        if !proc.is_alive() {
            let _ = std::fs::remove_file(&proc.pid_file);
            return Err(StackError::NotReady {
                service: proc.service,
                waited: started.elapsed(),
                detail: format!("it exited; last log lines:\n{}", crate::tail(&log, 15)),
                log: log.display().to_string(),
            });
        }
        if started.elapsed() > limit {
            proc.signal_stop();
            proc.wait_or_kill(STOP_GRACE);
            return Err(StackError::NotReady {
                service: proc.service,
                waited: started.elapsed(),
                detail: last,
                log: log.display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a short command to completion; a failure carries the tail of its output.
pub(crate) fn run(cmd: &mut Command) -> Result<String, StackError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StackError::Command {
            command: shown.clone(),
            detail: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        let lines: Vec<&str> = text.lines().collect();
        Err(StackError::Command {
            command: shown,
            detail: format!(
                "{}\n{}",
                out.status,
                lines[lines.len().saturating_sub(20)..].join("\n")
            ),
        })
    }
}
