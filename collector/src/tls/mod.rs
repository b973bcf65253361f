//! TLS material shared by weir's clients (pipelines, scrapes) and its servers (OTLP,
//! admin, exposition): the one crypto provider (ring) and PEM files read into rustls
//! types, with errors that name the file.
//!
//! Owns: reading certificate, private key and CA files, and the system root store.
//! Must never: log or return key material, or fall back silently to plain text.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub mod client;
pub mod server;

/// Why TLS material could not be loaded. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or is not valid PEM.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong, from the PEM reader.
        reason: String,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of a CA file was refused as a trust anchor.
    #[error("{path}: not a usable CA certificate: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        reason: String,
    },
    /// A private key that rustls cannot use with its certificate (it belongs to
    /// another certificate, or its algorithm is not supported).
    #[error("{key}: cannot be used with the certificate of {cert}: {reason}")]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why rustls refused the pair.
        reason: String,
    },
    /// The system has no root certificate weir can use.
    #[error("no usable system root certificates ({0})")]
    NoSystemRoots(String),
    /// rustls refused the assembled configuration (a key that does not match its
    /// certificate, say).
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider every TLS configuration of weir is built with (ring), passed
/// explicitly so nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

fn pem_error(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// Every certificate of a PEM file, in file order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// Trust anchors: the certificates of `ca_file` when given, else the system's roots.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError::NoSystemRoots(reason));
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("weir-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self { dir }
        }
        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, contents).expect("write");
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_generated_certificate_and_key_load_and_make_a_server_config() {
        let files = Files::new("load");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert_path = files.write("cert.pem", &cert.cert.pem());
        let key_path = files.write("key.pem", &cert.signing_key.serialize_pem());
        let certs = load_certs(&cert_path).expect("certs");
        let key = load_private_key(&key_path).expect("key");
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let roots = root_store(Some(&cert_path)).expect("roots");
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn a_missing_or_empty_file_is_an_error_that_names_it() {
        let files = Files::new("errors");
        let empty = files.write("empty.pem", "not pem at all\n");
        let missing = files.dir.join("missing.pem");
        for result in [load_certs(&empty).err(), load_certs(&missing).err()] {
            let message = result.expect("an error").to_string();
            assert!(message.contains(".pem"), "{message}");
        }
        let message = load_private_key(&empty).expect_err("no key").to_string();
        assert!(message.contains("empty.pem"), "{message}");
        assert!(root_store(Some(&missing)).is_err());
    }
}
