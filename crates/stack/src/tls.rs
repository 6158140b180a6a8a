//! TLS for our private PostgreSQL and NATS: a certificate authority of our own and one server
//! certificate for `localhost` and `127.0.0.1`, made once at setup in `<state>/tls/`. The servers
//! accept TLS and plain connections alike; a client opts in (`sslmode=verify-full` with
//! `sslrootcert=<ca>` for PostgreSQL, `nats.tls_ca_file` for NATS) and then verifies the server.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::process;
use super::StateDir;

/// Where the certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The authority clients trust.
    pub ca: PathBuf,
    pub cert: PathBuf,
    /// The server's private key (mode 0600).
    pub key: PathBuf,
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// The certificates of `state`, made if any is missing.
pub fn ensure(state: &StateDir) -> Result<TlsFiles> {
    let dir = state.path().join("tls");
    let files = files(&dir);
    if [&files.ca, &files.cert, &files.key]
        .iter()
        .all(|f| f.is_file())
    {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca, cert, key) = generate().context("generating the TLS certificates")?;
    process::write_private(&files.key, key.as_bytes())?;
    process::write_atomic(&files.cert, cert.as_bytes())?;
    process::write_atomic(&files.ca, ca.as_bytes())?;
    tracing::info!(dir = %dir.display(), "made a private CA and a server certificate");
    Ok(files)
}

/// (CA certificate, server certificate, server key), PEM.
fn generate() -> Result<(String, String, String), rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ordersys private CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ordersys private server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ordersys-tls-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let state = StateDir::at(&dir).expect("state");
        let made = ensure(&state).expect("made");
        let ca = std::fs::read_to_string(&made.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(&made.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure(&state).unwrap(), made);
        assert_eq!(
            std::fs::read_to_string(&made.ca).unwrap(),
            ca,
            "not made again"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
