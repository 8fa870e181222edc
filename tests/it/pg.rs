//! PostgreSQL for tests: the server at `DATABASE_URL` (set by `.ci/run`),
//! a fresh schema per test, dropped afterwards. Without `DATABASE_URL` the
//! tests say SKIPPED loudly; under CI (`CI` set) its absence fails them.

use std::sync::LazyLock;

use jobd::config::PostgresConfig;
use jobd::store::{self, SharedStore};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The database-restart test takes this for writing; every other
/// PostgreSQL test holds it for reading, so none of them sees the restart.
static SERVER: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

/// One test's schema on the shared server.
pub struct PgSchema {
    pub url: String,
    pub schema: String,
    _guard: Guard,
}

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// The server's URL, or `None` (after a loud message) when this machine
/// has none configured. Panics under CI.
pub fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "DATABASE_URL is not set: CI must provide PostgreSQL"
            );
            eprintln!(
                "SKIPPED: DATABASE_URL is not set; PostgreSQL tests did not run \
                 (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

impl PgSchema {
    /// A fresh, empty schema for one test.
    pub async fn new(tag: &str) -> Option<PgSchema> {
        let url = database_url()?;
        let guard = Guard::Shared(SERVER.read().await);
        Some(Self::make(url, tag, guard).await)
    }

    /// Like [`PgSchema::new`], with no other PostgreSQL test running.
    pub async fn exclusive(tag: &str) -> Option<PgSchema> {
        let url = database_url()?;
        let guard = Guard::Exclusive(SERVER.write().await);
        Some(Self::make(url, tag, guard).await)
    }

    async fn make(url: String, tag: &str, guard: Guard) -> PgSchema {
        let schema = format!("t_{tag}_{}", uuid::Uuid::now_v7().simple())
            .chars()
            .take(40)
            .collect::<String>();
        PgSchema {
            url,
            schema,
            _guard: guard,
        }
    }

    pub fn config(&self) -> PostgresConfig {
        PostgresConfig {
            schema: self.schema.clone(),
            pool_size: 8,
            ..PostgresConfig::default()
        }
    }

    /// The `store` line and `[postgres]` table of a daemon config.
    pub fn toml(&self, extra: &str) -> String {
        format!(
            "store = \"{}\"\n[postgres]\nschema = \"{}\"\npool_size = 8\n{extra}\n",
            self.url, self.schema
        )
    }

    pub async fn open(&self) -> SharedStore {
        store::open_with(&self.url, &self.config())
            .await
            .expect("postgres store opens")
    }

    /// Runs SQL in this schema.
    pub async fn sql(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let client = store::postgres::connect(&self.url)
            .await
            .expect("connect to DATABASE_URL");
        client
            .batch_execute(&format!("SET search_path = {}", self.schema))
            .await
            .unwrap();
        client.query(sql, &[]).await.expect(sql)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Best effort, on a thread of its own: Drop cannot await.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = store::postgres::connect(&url).await {
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}
