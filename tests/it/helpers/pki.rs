//! The one test PKI of the suite: a CA and the leaves it signs (TLS on the
//! listener, mTLS clients, HTTPS webhooks, PostgreSQL over TLS).

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A test CA.
pub struct Pki {
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        Pki {
            ca_pem,
            ca_params,
            ca_key,
        }
    }

    /// (cert PEM, key PEM) signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        (
            params.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}
