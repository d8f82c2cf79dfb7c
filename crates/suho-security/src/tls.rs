//! The local CA and the servers' certificate.
//!
//! The CA (ECDSA P-256, ten years) is made once; every client trusts it through `ca.pem`.
//! The server certificate (ECDSA P-256, one year, `serverAuth`) names `127.0.0.1`, `::1`,
//! `localhost` and the configured hosts; it is made again when one of those is missing from
//! it, when it expires within [`RENEW_WITHIN`], or when the CA is new.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::secrets::write_private;
use crate::{Secrets, SecretsError};

/// A server certificate this close to its end is replaced.
pub const RENEW_WITHIN: Duration = Duration::days(30);

fn cert_error(what: &'static str) -> impl Fn(rcgen::Error) -> SecretsError {
    move |e| SecretsError::Certificate {
        what,
        detail: e.to_string(),
    }
}

fn read(path: &std::path::Path) -> Result<String, SecretsError> {
    std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Every name the server certificate must carry.
pub(crate) fn server_names(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["127.0.0.1", "::1", "localhost"]
        .iter()
        .map(ToString::to_string)
        .collect();
    for h in hosts {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

pub(crate) fn ensure(secrets: &Secrets, hosts: &[String]) -> Result<(), SecretsError> {
    let now = OffsetDateTime::now_utc();
    let new_ca = !secrets.ca_file().exists() || !secrets.ca_key_file().exists();
    if new_ca {
        let key = KeyPair::generate().map_err(cert_error("the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("suho local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("the CA certificate"))?;
        write_private(&secrets.ca_key_file(), key.serialize_pem().as_bytes())?;
        write_private(&secrets.ca_file(), cert.pem().as_bytes())?;
        tracing::info!(dir = %secrets.dir().display(), "made a local certificate authority");
    }
    let names = server_names(hosts);
    if !new_ca && server_is_current(secrets, &names, now)? {
        return Ok(());
    }
    let ca_key = KeyPair::from_pem(&read(&secrets.ca_key_file())?)
        .map_err(cert_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&secrets.ca_file())?, ca_key)
        .map_err(cert_error("reading the CA certificate"))?;
    let key = KeyPair::generate().map_err(cert_error("the server key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("suho local servers");
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(cert_error("the server certificate's host names")),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_error("the server certificate"))?;
    write_private(&secrets.server_key_file(), key.serialize_pem().as_bytes())?;
    write_private(&secrets.server_cert_file(), cert.pem().as_bytes())?;
    tracing::info!(names = ?names, "made the servers' certificate");
    Ok(())
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// Whether the server certificate exists, names every one of `names`, and is not about to end.
fn server_is_current(
    secrets: &Secrets,
    names: &[String],
    now: OffsetDateTime,
) -> Result<bool, SecretsError> {
    if !secrets.server_cert_file().exists() || !secrets.server_key_file().exists() {
        return Ok(false);
    }
    let pem = read(&secrets.server_cert_file())?;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Ok(false);
    };
    let Ok(cert) = pem.parse_x509() else {
        return Ok(false);
    };
    if cert.validity().not_after.timestamp() < (now + RENEW_WITHIN).unix_timestamp() {
        return Ok(false);
    }
    let mut present = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => present.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    present.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(names.iter().all(|n| {
        let n = n
            .parse::<IpAddr>()
            .map_or_else(|_| n.clone(), |ip| ip.to_string());
        present.contains(&n)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_host_renews_the_server_certificate_but_not_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Secrets::ensure(tmp.path(), &[]).unwrap();
        let ca = std::fs::read(s.ca_file()).unwrap();
        let server = std::fs::read(s.server_cert_file()).unwrap();
        Secrets::ensure(tmp.path(), &[]).unwrap();
        assert_eq!(std::fs::read(s.server_cert_file()).unwrap(), server);
        Secrets::ensure(tmp.path(), &["broker.internal".into(), "10.0.0.5".into()]).unwrap();
        assert_ne!(std::fs::read(s.server_cert_file()).unwrap(), server);
        assert_eq!(std::fs::read(s.ca_file()).unwrap(), ca);
        let names = server_names(&["broker.internal".into(), "10.0.0.5".into()]);
        assert!(server_is_current(&s, &names, OffsetDateTime::now_utc()).unwrap());
        let later = OffsetDateTime::now_utc() + Duration::days(340);
        assert!(!server_is_current(&s, &names, later).unwrap());
    }
}
