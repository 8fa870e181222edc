//! TLS on the gRPC listener with our own acceptor (rather than tonic's
//! fixed `ServerTlsConfig`), so that SIGHUP can swap in renewed certificate
//! files: new connections use the new files, open ones keep their session.
//! [`crate::client_tls`] holds the other side: jobd as a TLS client (`http`
//! kinds, the PostgreSQL store).

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig};

/// The listener's TLS settings, replaceable while serving.
pub struct Tls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn bad(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
        source: None,
    }
}

/// PEM files read for TLS.
struct TlsPem {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// Reads each file once (at start, and again on SIGHUP).
fn read_pem(files: &TlsConfig) -> Result<TlsPem, ConfigError> {
    let read = |key: &str, p: &Path| {
        std::fs::read(p).map_err(|e| bad(key, format!("cannot read {}: {e}", p.display())))
    };
    Ok(TlsPem {
        cert: read("tls.cert", &files.cert)?,
        key: read("tls.key", &files.key)?,
        client_ca: files
            .client_ca
            .as_deref()
            .map(|p| read("tls.client_ca", p))
            .transpose()?,
    })
}

/// Reads and checks the files: certificate chain, key, optional client CA.
fn load(files: &TlsConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let pem = read_pem(files)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("tls.cert", format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad("tls.cert", "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| bad("tls.key", format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", e))?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| bad("tls.client_ca", format!("not PEM: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| bad("tls.client_ca", format!("bad CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| bad("tls.client_ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls.key", format!("does not fit the certificate: {e}")))?;
    // http/1.1 too: curl, browsers and gRPC-Web clients may speak it (the
    // JSON routes); a client that offers only it would otherwise be refused.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Tls {
    pub fn new(files: &TlsConfig) -> Result<Arc<Tls>, ConfigError> {
        Ok(Arc::new(Tls {
            files: files.clone(),
            current: RwLock::new(load(files)?),
        }))
    }

    /// Re-reads the files; on any error the current settings stay.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = load(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// An acceptor with the settings of this moment.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
