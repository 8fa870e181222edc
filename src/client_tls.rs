//! jobd as a TLS client: the rustls config of an `http` kind and of the
//! PostgreSQL store, from a CA file (or the system's roots), an optional
//! client certificate, and how much of the server's certificate to check.
//! Crypto is ring, as on the listener.

use std::path::Path;
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

fn read(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))
}

fn pem_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&read(field, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{field}: {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The names of the config fields, for error messages: an `http` kind says
/// `ca`/`cert`/`key`, a store URL `sslrootcert`/`sslcert`/`sslkey`.
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
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{}: {e}", fields.ca))?;
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
            .map_err(|e| format!("{}: {e}", fields.ca))?,
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
            let key_der = PrivateKeyDer::from_pem_slice(&read(fields.key, key)?).map_err(|e| {
                format!(
                    "{}: {}: not a PEM private key: {e}",
                    fields.key,
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{}: does not fit the certificate: {e}", fields.key))
        }
    }
}

/// The CA file's certificates, or the system's roots.
fn roots(tls: &ClientTls, fields: &Fields) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for c in pem_certs(fields.ca, ca)? {
                roots.add(c).map_err(|e| {
                    format!("{}: {}: bad CA certificate: {e}", fields.ca, ca.display())
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
