//! Opening a connection: its settings, and the migrations (the `.sql`
//! files of `migrations/`, applied in order).

use super::*;

/// Schema versions, applied in order; `PRAGMA user_version` says how many
/// have run. Once applied, a migration is never edited: changes are new files.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001.sql"),
    include_str!("migrations/0002.sql"),
    include_str!("migrations/0003.sql"),
    include_str!("migrations/0004.sql"),
    include_str!("migrations/0005.sql"),
    include_str!("migrations/0006.sql"),
    include_str!("migrations/0007.sql"),
    include_str!("migrations/0008.sql"),
    include_str!("migrations/0009.sql"),
    include_str!("migrations/0010.sql"),
    include_str!("migrations/0011.sql"),
    include_str!("migrations/0012.sql"),
    include_str!("migrations/0013.sql"),
    include_str!("migrations/0014.sql"),
    include_str!("migrations/0015.sql"),
    include_str!("migrations/0016.sql"),
];

pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is synced on every commit, so an acknowledged submit
    // survives power loss, not just a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 16 MiB of page cache (default 2 MiB): claims and transitions touch
    // the same hot index pages over and over.
    conn.pragma_update(None, "cache_size", -16384)?;
    // Each request of a group runs in a savepoint, whose sub-journal keeps
    // the pages it changes until the group commits. In a temporary file
    // that was a pwrite per page (39% of the writer's time in a burn-down,
    // perf); in memory it is a copy. It only serves a rollback inside the
    // open transaction, so durability is unchanged (a crash drops the
    // uncommitted transaction either way).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (`sqlite_checkpoint`); the
    // writer's own is only the bound.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_BOUND)?;
    configure_statements(conn)
}

/// Statement settings of every connection, the writer's and the readers'.
pub(super) fn configure_statements(conn: &Connection) -> rusqlite::Result<()> {
    // Plans never depend on bound values. Without this, SQLite checks a
    // bound `state = ?` (or `= ?` on a column a partial index tests) against
    // each partial index's predicate and marks the statement stale whenever
    // that value changes, so cached statements were parsed again on nearly
    // every use (8% of the writer during unary submits, perf). Every
    // partial index jobd uses is named with literals in the query itself.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Room for every statement the writer runs (rusqlite keeps 16 by
    // default, fewer than the writer's ~30, so busy paths re-parsed SQL).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(
            format!(
                "database schema version {version} is newer than this jobd knows ({known}); \
                 run a newer jobd"
            )
            .into(),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(map_err)?;
        tx.execute_batch(sql).map_err(map_err)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        tracing::debug!(version = i + 1, "applied store migration");
    }
    if version < known {
        tracing::info!("store migrated from v{version} to v{known}");
    }
    Ok(())
}

pub(super) fn count_waiting(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE state IN (0, 2, 6)",
        [],
        |r| r.get(0),
    )
}
