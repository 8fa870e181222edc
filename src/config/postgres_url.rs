//! A PostgreSQL store URL and its TLS parameters, read as libpq reads them.
//! The driver (tokio-postgres) knows only `sslmode=disable|prefer|require`
//! and no certificate files, so jobd takes `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` out of the URL and hands the rest to the driver.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use super::ClientTls;

/// Why a `postgres://` URL cannot be used; each names its parameter.
#[derive(Debug, thiserror::Error)]
pub enum PostgresUrlError {
    #[error(
        "store URL: sslmode={0:?} is not one of disable, allow, prefer, \
         require, verify-ca, verify-full"
    )]
    SslMode(String),
    #[error("store URL: {0} is empty")]
    Empty(String),
    #[error("store URL: sslcert and sslkey go together")]
    HalfIdentity,
    #[error("store URL: parameter {param:?} is not UTF-8: {source}")]
    NotUtf8 {
        param: String,
        source: std::str::Utf8Error,
    },
}

/// `sslmode`, as libpq names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not
    /// checked (libpq's default). `allow` is read as this too.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked, unless
    /// `sslrootcert` is given (then as `verify-ca`, as libpq does).
    Require,
    /// TLS, and the server's chain must lead to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, PostgresUrlError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PostgresUrlError::SslMode(other.to_string())),
        })
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// Encryption only: any certificate is taken (libpq `prefer`/`require`).
    None,
    /// The chain must lead to a trusted root; the name is not checked.
    Chain,
    /// The chain and the host name.
    Full,
}

/// A `postgres://` URL, split into what the driver reads and what jobd's
/// TLS connector reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// The URL without the `ssl*` parameters jobd handles itself.
    pub driver_url: String,
    pub ssl_mode: SslMode,
    /// `sslrootcert`: `None` (or `system`) trusts the system's roots.
    /// `sslcert`/`sslkey`: a client certificate.
    pub tls: ClientTls,
}

/// The URL parameters jobd reads instead of the driver.
const OWN_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PostgresUrl {
    /// Splits a `postgres://` URL. Errors name the parameter.
    pub fn parse(url: &str) -> Result<PostgresUrl, PostgresUrlError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut own = [None, None, None, None];
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k)?;
            match OWN_PARAMS.iter().position(|p| *p == key) {
                Some(i) => {
                    let v = decode(v)?;
                    if v.is_empty() {
                        return Err(PostgresUrlError::Empty(key));
                    }
                    own[i] = Some(v);
                }
                None => kept.push(pair),
            }
        }
        let [mode, root, cert, key] = own;
        let ssl_mode = mode
            .as_deref()
            .map_or(Ok(SslMode::default()), SslMode::parse)?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => return Err(PostgresUrlError::HalfIdentity),
        };
        let ca = root.filter(|r| r != "system").map(PathBuf::from);
        let driver_url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(PostgresUrl {
            driver_url,
            ssl_mode,
            tls: ClientTls { ca, identity },
        })
    }

    /// What the TLS connector checks of the server's certificate.
    pub fn server_check(&self) -> ServerCheck {
        match self.ssl_mode {
            SslMode::VerifyFull => ServerCheck::Full,
            SslMode::VerifyCa => ServerCheck::Chain,
            SslMode::Require if self.tls.ca.is_some() => ServerCheck::Chain,
            SslMode::Disable | SslMode::Prefer | SslMode::Require => ServerCheck::None,
        }
    }
}

fn decode(s: &str) -> Result<String, PostgresUrlError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|source| PostgresUrlError::NotUtf8 {
            param: s.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_out_the_tls_parameters_and_keeps_the_rest() {
        let u = PostgresUrl::parse(
            "postgres://u:p%40w@db:5432/jobs?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            u.driver_url,
            "postgres://u:p%40w@db:5432/jobs?application_name=x&connect_timeout=3"
        );
        assert_eq!(u.ssl_mode, SslMode::VerifyFull);
        assert_eq!(u.tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(u.server_check(), ServerCheck::Full);
    }

    #[test]
    fn modes_and_checks_follow_libpq() {
        let check = |q: &str| PostgresUrl::parse(&format!("postgres://h/d{q}")).unwrap();
        assert_eq!(check("").ssl_mode, SslMode::Prefer);
        assert_eq!(check("").driver_url, "postgres://h/d");
        assert_eq!(check("?sslmode=allow").ssl_mode, SslMode::Prefer);
        assert_eq!(check("?sslmode=require").server_check(), ServerCheck::None);
        assert_eq!(
            check("?sslmode=require&sslrootcert=/ca").server_check(),
            ServerCheck::Chain
        );
        assert_eq!(
            check("?sslmode=verify-ca").server_check(),
            ServerCheck::Chain
        );
        let sys = check("?sslmode=verify-full&sslrootcert=system");
        assert_eq!((sys.server_check(), sys.tls.ca), (ServerCheck::Full, None));
        let id = check("?sslcert=/c.pem&sslkey=/k.pem").tls.identity;
        assert_eq!(id, Some(("/c.pem".into(), "/k.pem".into())));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, word) in [
            ("sslmode=verify", "sslmode"),
            ("sslmode=", "sslmode is empty"),
            ("sslcert=/c.pem", "sslcert and sslkey"),
            ("sslkey=/k.pem", "sslcert and sslkey"),
            ("sslrootcert=%FF", "UTF-8"),
        ] {
            let e = PostgresUrl::parse(&format!("postgres://h/d?{q}")).unwrap_err();
            assert!(e.to_string().contains(word), "{q}: {e}");
        }
    }
}
