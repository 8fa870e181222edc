//! Reaching the daemon: the connection flags, the endpoint they make, and
//! the clients the commands call through (with the bearer token).

use std::time::Duration;

use clap::Args;
use tonic::transport::Channel;
use tonic::Status;

use super::{exit, Common, Failure};
use crate::proto::{self, job_service_client::JobServiceClient};

/// How to reach the daemon: address, token and TLS (`jobd work` too).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// Daemon address.
    #[arg(long, env = "JOBD_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token, when the daemon has auth on (role `submit` for submit,
    /// status, watch, list; `worker` for work; `admin` for cancel and the
    /// operators' commands).
    #[arg(long, env = "JOBD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA bundle that signs the daemon's certificate (implies TLS; an
    /// `https://` address alone uses the system's roots).
    #[arg(long, env = "JOBD_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a daemon that requires mTLS (with
    /// --cert-key).
    #[arg(long, env = "JOBD_CERT", requires = "cert_key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert (not `--key`: that is `submit`'s
    /// idempotency key).
    #[arg(long, env = "JOBD_CERT_KEY", requires = "cert")]
    pub cert_key: Option<std::path::PathBuf>,
    /// The name to verify the daemon's certificate against (default: the
    /// address's host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

/// Why the connection flags do not make an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("bad --addr {addr:?}: {source}")]
    Addr {
        addr: String,
        source: tonic::codegen::http::uri::InvalidUri,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS settings: {0}")]
    Tls(#[from] tonic::transport::Error),
}

impl Connection {
    /// The daemon's endpoint (files read now), over TLS when the address is
    /// `https://` or a CA, client certificate or server name is given.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint, ConnectionError> {
        let addr = &self.addr;
        let tls_asked = self.ca.is_some() || self.cert.is_some() || self.tls_server_name.is_some();
        let url = if addr.contains("://") {
            addr.to_string()
        } else if tls_asked {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|source| ConnectionError::Addr {
                addr: addr.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5));
        if url.starts_with("https://") || tls_asked {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| ConnectionError::Read {
                    path: p.display().to_string(),
                    source,
                })
            };
            let mut tls = tonic::transport::ClientTlsConfig::new();
            tls = match &self.ca {
                Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?)),
                None => tls.with_enabled_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.cert, &self.cert_key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            if let Some(name) = &self.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }
}

/// A channel to the daemon (bad flags: exit 64; connect errors: exit 5).
pub(super) async fn channel_to(common: &Common) -> Result<Channel, Failure> {
    let endpoint = common
        .conn
        .endpoint()
        .map_err(|e| Failure(exit::USAGE, e.to_string()))?;
    // As given (`127.0.0.1:50051` stays so; the URI would add a slash).
    let url = common.conn.addr.clone();
    endpoint
        .connect()
        .await
        .map_err(|e| Failure(exit::UNAVAILABLE, unreachable(&url, &e)))
}

/// Why the daemon at `url` could not be reached, in words that say what
/// to do: tonic's own text is only "transport error", the cause is in its
/// source chain (connection refused, no such host, a TLS alert, ...).
pub(super) fn unreachable(url: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut refused = false;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        let text = err.to_string();
        if text != "transport error" && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = err.source();
    }
    let hint = "is jobd running there? Check --addr or JOBD_ADDR (default http://127.0.0.1:50051)";
    if refused {
        format!("cannot connect to jobd at {url}: connection refused; {hint}")
    } else if causes.is_empty() {
        format!("cannot connect to jobd at {url}; {hint}")
    } else {
        format!(
            "cannot connect to jobd at {url}: {}; {hint}",
            causes.join(": ")
        )
    }
}

/// The token as an `authorization` header value, if one was given.
fn bearer(common: &Common) -> Result<BearerToken, Failure> {
    match &common.conn.token {
        None => Ok(BearerToken(None)),
        Some(t) => format!("Bearer {t}")
            .parse()
            .map(|v| BearerToken(Some(v)))
            .map_err(|_| Failure(exit::USAGE, "--token: not a valid header value".into())),
    }
}

pub(super) type JobClient =
    JobServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

/// A JobService client that sends the token with every call.
pub(super) async fn connect(common: &Common) -> Result<JobClient, Failure> {
    Ok(JobServiceClient::with_interceptor(
        channel_to(common).await?,
        bearer(common)?,
    ))
}

pub(super) type AdminClient = crate::proto::admin_service_client::AdminServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, BearerToken>,
>;

/// Adds `authorization: Bearer <token>` when a token was given.
#[derive(Clone)]
pub(super) struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// An AdminService client that sends the token with every call.
pub(super) async fn admin_client(common: &Common) -> Result<AdminClient, Failure> {
    Ok(
        proto::admin_service_client::AdminServiceClient::with_interceptor(
            channel_to(common).await?,
            bearer(common)?,
        ),
    )
}
