//! Connections to PostgreSQL: the driver's config from the store URL and
//! the TLS connector its `sslmode` asks for (libpq's meaning: `prefer` by
//! default, `verify-full` to check the server's name).

use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Detail, StoreError};
use crate::client_tls::{client_config, Fields};
use crate::config::{ClientTls, PostgresUrl, ServerCheck, SslMode};

/// Sent with every connection (libpq's `options`): see [`Connector::new`].
const GENERIC_PLANS: &str = "-c plan_cache_mode=force_generic_plan";

/// Everything a new connection needs: pool, LISTEN and ping use one.
#[derive(Clone)]
pub(crate) struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl Connector {
    /// Reads the URL's certificate files once. Errors name the parameter.
    pub(crate) fn new(url: &PostgresUrl) -> Result<Connector, StoreError> {
        let mut config: tokio_postgres::Config = url.driver_url.parse().map_err(|e| {
            StoreError::Internal(Detail::new(format!("bad postgres URL: {e}")).because(e))
        })?;
        // Each prepared statement is planned once per connection. Left to
        // choose, PostgreSQL re-planned the claim and result statements on
        // every execution (custom plans): planning (GetCachedPlan) was ~21%
        // of the server's CPU in a burn-down, 0.07 ms against 0.02 ms of
        // execution for a claim. The URL's own `options` come after, so an
        // operator's `-c plan_cache_mode=...` wins.
        let user = config.get_options().unwrap_or_default();
        let options = format!("{GENERIC_PLANS} {user}");
        config.options(options.trim());
        config.ssl_mode(match url.ssl_mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        // `disable` never starts TLS: its files are not read.
        let (files, check) = match url.ssl_mode {
            SslMode::Disable => (ClientTls::default(), ServerCheck::None),
            _ => (url.tls.clone(), url.server_check()),
        };
        let fields = Fields {
            ca: "sslrootcert",
            cert: "sslcert",
            key: "sslkey",
        };
        let tls = client_config(&files, check, &fields).map_err(|e| {
            StoreError::Internal(Detail::new(format!("postgres TLS: {e}")).because(e))
        })?;
        Ok(Connector {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// A new connection, its driver task not yet spawned.
    pub(crate) async fn connect(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<
                Socket,
                <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream,
            >,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

/// One connection to the database a store URL names (with its TLS
/// parameters), its driver task spawned: for tools and tests that run SQL
/// beside jobd.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    let url = PostgresUrl::parse(url)
        .map_err(|e| StoreError::Internal(Detail::new(e.to_string()).because(e)))?;
    let (client, conn) = Connector::new(&url)?.connect().await?;
    tokio::spawn(conn);
    Ok(client)
}
