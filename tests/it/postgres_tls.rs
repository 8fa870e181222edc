//! TLS to PostgreSQL. The local server is given a certificate made by the
//! test (for `localhost` only), by `ALTER SYSTEM` and a reload, with no other
//! PostgreSQL test running; its own settings come back afterwards. jobd then
//! connects with each `sslmode`, and `pg_stat_ssl` says whether the server
//! saw TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use jobd::store;

use crate::helpers::Pki;
use crate::helpers::*;
use crate::pg::{database_url, PgSchema};

/// The server's TLS settings while the test runs; the saved ones are put
/// back on drop (also when the test fails).
struct ServerCert {
    admin_url: String,
    /// Each setting as `ALTER SYSTEM` had it: `None` for not set there.
    saved: Vec<(String, Option<String>)>,
}

const SETTINGS: [&str; 3] = ["ssl", "ssl_cert_file", "ssl_key_file"];

async fn admin(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let c = store::postgres::connect(url)
        .await
        .expect("admin connection");
    c.query(sql, &[]).await.expect(sql)
}

impl ServerCert {
    /// Installs `cert`/`key` as the server's TLS identity. `None` when this
    /// machine cannot (no local `postgres` user to own the key).
    async fn install(admin_url: &str, dir: &Path, cert: &str, key: &str) -> Option<ServerCert> {
        let uid = std::process::Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u32>().ok());
        let Some(uid) = uid else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no local postgres user: CI must run PostgreSQL on this machine"
            );
            eprintln!("SKIPPED: no local postgres user to own the server's TLS key");
            return None;
        };
        // The server reads the files as its own user; it refuses a key
        // others can read.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for p in [&cert_path, &key_path] {
            std::os::unix::fs::chown(p, Some(uid), None).expect("chown to postgres (run as root)");
        }
        let mut saved = Vec::new();
        for s in SETTINGS {
            let row = admin(
                admin_url,
                &format!(
                    "SELECT setting FROM pg_settings WHERE name = '{s}' \
                     AND sourcefile LIKE '%postgresql.auto.conf'"
                ),
            )
            .await;
            saved.push((s.to_string(), row.first().map(|r| r.get::<_, String>(0))));
        }
        let set = [
            ("ssl", "on".to_string()),
            ("ssl_cert_file", cert_path.display().to_string()),
            ("ssl_key_file", key_path.display().to_string()),
        ];
        let me = ServerCert {
            admin_url: admin_url.to_string(),
            saved,
        };
        apply(admin_url, &set.map(|(k, v)| (k.to_string(), Some(v)))).await;
        Some(me)
    }
}

/// `ALTER SYSTEM SET` each setting (`RESET` for `None`), then a reload.
async fn apply(url: &str, settings: &[(String, Option<String>)]) {
    let c = store::postgres::connect(url)
        .await
        .expect("admin connection");
    for (k, v) in settings {
        let sql = match v {
            Some(v) => format!("ALTER SYSTEM SET {k} = '{}'", v.replace('\'', "''")),
            None => format!("ALTER SYSTEM RESET {k}"),
        };
        c.batch_execute(&sql).await.expect("ALTER SYSTEM");
    }
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

impl Drop for ServerCert {
    fn drop(&mut self) {
        let (url, saved) = (self.admin_url.clone(), self.saved.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(apply(&url, &saved))
        })
        .join();
    }
}

/// `postgres://user@HOST:port/db?QUERY` for the server `DATABASE_URL` names.
fn url_to(base: &str, host: &str, query: &str) -> String {
    let driver = jobd::config::PostgresUrl::parse(base).unwrap().driver_url;
    let cfg: tokio_postgres::Config = driver.parse().unwrap();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}?{query}",
        cfg.get_user().unwrap_or("postgres"),
        cfg.get_dbname().unwrap_or("postgres"),
    )
}

/// Whether the server sees this connection as TLS.
async fn ssl_seen(url: &str) -> Result<bool, String> {
    let c = store::postgres::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_certificate_as_sslmode_says() {
    let Some(mut pg) = PgSchema::exclusive("tls").await else {
        return;
    };
    let base = database_url().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"]);
    let Some(_server) = ServerCert::install(&base, dir.path(), &cert, &key).await else {
        return;
    };
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, Pki::new().ca_pem).unwrap();
    let (ca, other_ca) = (ca.display(), other_ca.display());

    // The reload reaches new backends within moments.
    let full = url_to(
        &base,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ssl_seen(&full).await {
            Ok(ssl) => {
                assert!(ssl, "verify-full connection is TLS");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the server never took the test certificate: {e}"),
        }
    }

    // A daemon on verify-full: every connection it makes (pool, LISTEN) is
    // TLS, and jobs run.
    let app = format!("jobd_tls_{}", &pg.schema[..12]);
    pg.url = url_to(
        &base,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}&application_name={app}"),
    );
    let d = start(&pg.toml("")).await;
    let mut c = connect_when_up(&d.url()).await;
    let job = submit(&mut c, req("echo", "over tls")).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), jobd::proto::JobState::Succeeded);
    let seen = admin(
        &base,
        &format!(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.application_name = '{app}'"
        ),
    )
    .await;
    let ssl: Vec<bool> = seen.iter().map(|r| r.get(0)).collect();
    assert!(ssl.len() >= 2, "pool and LISTEN connections: {ssl:?}");
    assert!(ssl.iter().all(|s| *s), "every connection is TLS: {ssl:?}");
    d.stop().await;

    // The certificate names localhost, not 127.0.0.1: verify-full refuses
    // it there, verify-ca (chain only) takes it.
    let by_ip = |q: &str| url_to(&base, "127.0.0.1", q);
    let e = ssl_seen(&by_ip(&format!("sslmode=verify-full&sslrootcert={ca}")))
        .await
        .unwrap_err();
    assert!(
        e.contains("certificate not valid for name \"127.0.0.1\""),
        "{e}"
    );
    assert_eq!(
        ssl_seen(&by_ip(&format!("sslmode=verify-ca&sslrootcert={ca}"))).await,
        Ok(true)
    );
    // require with a root file checks the chain too, as libpq does.
    let e = ssl_seen(&by_ip(&format!("sslmode=require&sslrootcert={other_ca}")))
        .await
        .unwrap_err();
    assert!(e.contains("invalid peer certificate"), "{e}");
    // Another CA (rcgen gives both CAs one name, so rustls says
    // BadSignature rather than UnknownIssuer): refused with the reason.
    for mode in ["verify-ca", "verify-full"] {
        let url = url_to(
            &base,
            "localhost",
            &format!("sslmode={mode}&sslrootcert={other_ca}"),
        );
        let e = ssl_seen(&url).await.unwrap_err();
        assert!(e.contains("invalid peer certificate"), "{mode}: {e}");
        // The store says the same when it opens.
        let e = store::open_with(&url, &pg.config()).await.err().unwrap();
        assert!(
            e.to_string().contains("invalid peer certificate"),
            "{mode}: {e}"
        );
    }
    // Encryption without a check, and none at all.
    assert_eq!(ssl_seen(&by_ip("sslmode=require")).await, Ok(true));
    assert_eq!(
        ssl_seen(&by_ip("")).await,
        Ok(true),
        "prefer is the default"
    );
    assert_eq!(ssl_seen(&by_ip("sslmode=disable")).await, Ok(false));
    // A root file that is not there is named.
    let e = ssl_seen(&by_ip("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"))
        .await
        .unwrap_err();
    assert!(
        e.contains("sslrootcert: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
}

#[test]
fn bad_tls_parameters_in_the_store_url_are_config_errors() {
    for (query, word) in [
        ("sslmode=verify", "sslmode"),
        ("sslcert=/c.pem", "sslcert and sslkey"),
    ] {
        let (code, err) = check_config(&format!("store = \"postgres://u@localhost/db?{query}\"\n"));
        assert_eq!(code, Some(64), "{query}: {err}");
        assert!(
            err.contains("store") && err.contains(word),
            "{query}: {err}"
        );
    }
}
