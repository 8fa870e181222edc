//! jobd as a TLS client: the rustls config of an `http` kind and of the
//! PostgreSQL store, from a CA file (or the system's roots), an optional
//! client certificate, and how much of the server's certificate to check.
//! Crypto is ring, as on the listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{ClientTls, ServerCheck};

/// Why a TLS client config cannot be built. Each message starts with the
/// field it concerns (see [`Fields`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{field}: cannot read {}: {source}", .path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: {}: not PEM certificates: {source}", .path.display())]
    NotPemCertificates {
        field: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{field}: {}: no certificate in the file", .path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error("{field}: {}: not a PEM private key: {source}", .path.display())]
    NotPemKey {
        field: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{field}: {}: bad CA certificate: {source}", .path.display())]
    BadCa {
        field: &'static str,
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{field}: {source}")]
    Rustls {
        field: &'static str,
        source: rustls::Error,
    },
    #[error("{field}: {source}")]
    Verifier {
        field: &'static str,
        source: rustls::client::VerifierBuilderError,
    },
    #[error("{field}: does not fit the certificate: {source}")]
    KeyMismatch {
        field: &'static str,
        source: rustls::Error,
    },
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    std::fs::read(path).map_err(|source| ClientTlsError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

fn pem_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(field, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ClientTlsError::NotPemCertificates {
            field,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ClientTlsError::NoCertificate {
            field,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The names of the config fields, for error messages: an `http` kind says
/// `ca`/`cert`/`key`, a store URL `sslrootcert`/`sslcert`/`sslkey`.
#[derive(Debug)]
pub struct Fields {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

/// Reads the files once and builds the config. Errors start with the
/// field they concern.
pub fn client_config(
    tls: &ClientTls,
    check: ServerCheck,
    fields: &Fields,
) -> Result<ClientConfig, ClientTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| ClientTlsError::Rustls {
            field: fields.ca,
            source,
        })?;
    // `None` is encryption without authentication, as libpq's `prefer` and
    // `require` do: no root is read, so none can be missing.
    let webpki = match check {
        ServerCheck::None => None,
        ServerCheck::Chain | ServerCheck::Full => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(tls, fields)?),
                provider.clone(),
            )
            .build()
            .map_err(|source| ClientTlsError::Verifier {
                field: fields.ca,
                source,
            })?,
        ),
    };
    let builder = match (check, webpki) {
        (ServerCheck::Full, Some(webpki)) => builder.with_webpki_verifier(webpki),
        (_, chain) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider })),
    };
    match &tls.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = pem_certs(fields.cert, cert)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&read(fields.key, key)?).map_err(|source| {
                    ClientTlsError::NotPemKey {
                        field: fields.key,
                        path: key.clone(),
                        source,
                    }
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| ClientTlsError::KeyMismatch {
                    field: fields.key,
                    source,
                })
        }
    }
}

/// The CA file's certificates, or the system's roots.
fn roots(tls: &ClientTls, fields: &Fields) -> Result<RootCertStore, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for c in pem_certs(fields.ca, ca)? {
                roots.add(c).map_err(|source| ClientTlsError::BadCa {
                    field: fields.ca,
                    path: ca.clone(),
                    source,
                })?;
            }
        }
        None => {
            // Unreadable system certificates are skipped; with none at all,
            // connections fail with "unknown issuer", which says why.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The checks webpki alone does not offer. `prefer`/`require` (`chain:
/// None`): any certificate. `verify-ca` (`chain: Some`): the chain must lead
/// to a trusted root, the name may be any; webpki checks the name last, so a
/// name error means the chain was good. Either way the handshake's
/// signatures are checked, so the session is encrypted to whoever holds the
/// certificate's key.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An error with its causes. Client libraries' own text ("error sending
/// request", "error performing TLS handshake") hides the one that matters
/// ("invalid peer certificate: UnknownIssuer").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
