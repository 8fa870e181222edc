//! TLS and mTLS on the gRPC listener, with certificates made in the test.

use std::time::Duration;

use jobd::proto::job_service_client::JobServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::*;

struct Pki {
    ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
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
    fn leaf(&self, names: &[&str]) -> (String, String) {
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

async fn tls_client(
    url: &str,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<JobServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(url.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(JobServiceClient::new(ch))
}

fn write(dir: &std::path::Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let d = start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key)
    ))
    .await;
    let mut c = tls_client(&d.url(), &pki.ca_pem, None).await.unwrap();
    let job = c
        .submit(req("echo", "over tls"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(wait_terminal(&mut c, &job.id).await.result, b"over tls");
    // A plaintext client gets no service.
    let plain = async {
        let mut p = connect(&d.url()).await;
        p.submit(req("echo", "x")).await
    };
    let r = tokio::time::timeout(Duration::from_secs(5), plain).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "plaintext submit succeeded on a TLS port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_a_good_client_certificate_and_refuses_others() {
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let d = start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key),
        write(files.path(), "ca.pem", &pki.ca_pem)
    ))
    .await;
    let good = pki.leaf(&["client"]);
    let mut c = tls_client(&d.url(), &pki.ca_pem, Some(good)).await.unwrap();
    c.submit(req("echo", "mtls")).await.unwrap();
    // A certificate from another CA, and no certificate at all: refused.
    let rogue = Pki::new().leaf(&["client"]);
    for identity in [Some(rogue), None] {
        let attempt = async {
            let mut c = tls_client(&d.url(), &pki.ca_pem, identity).await?;
            Ok::<_, Box<dyn std::error::Error>>(c.submit(req("echo", "x")).await?)
        };
        let r = tokio::time::timeout(Duration::from_secs(5), attempt).await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "a client without a valid certificate was served"
        );
    }
}
