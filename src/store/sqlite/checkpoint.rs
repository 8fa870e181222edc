//! Checkpoints of the SQLite WAL on a thread of their own.
//!
//! SQLite checkpoints by default inside the commit that takes the WAL past
//! 1,000 pages: that commit then also copies the WAL into the database file
//! and syncs it, and every request in its group waits for that. At 50 jobs/s
//! that was one commit in ~70 jobs, milliseconds each: the idle p99. Here the
//! writer signals this thread after each commit, and it copies what the
//! WAL holds (a PASSIVE checkpoint: it never blocks the writer). Once a
//! checkpoint has caught up, the writer's next transaction starts the WAL
//! from its beginning again, so the WAL stays small at any steady load.
//!
//! Bound: the writer keeps SQLite's own checkpoint at [`WRITER_BOUND`]
//! pages, which only a checkpointer falling far behind (a writer that never
//! pauses) reaches; the WAL then stops growing there, as before.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// WAL pages at which the writer checkpoints inline (SQLite's default is
/// 1,000): 40 MiB of 4 KiB pages.
pub(crate) const WRITER_BOUND: u32 = 10_000;

/// Shortest pause between two checkpoints, so a busy writer's commits are
/// copied in batches rather than one sync of the database file each.
const PAUSE: Duration = Duration::from_millis(20);

/// Warnings about failed checkpoints, at most one per this long.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// The checkpoint thread; stops when dropped (after its current checkpoint).
pub(crate) struct Checkpointer {
    signal: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens the checkpoint thread's own connection to `path`.
    pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(1))?;
        // Same sync level as the writer: a checkpoint syncs the database
        // file before the WAL may be reused.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    /// Starts the thread on `conn` (from [`Checkpointer::connect`]).
    pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        let (signal, rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("jobd-sqlite-ckpt".into())
            .spawn(move || run(conn, rx))?;
        Ok(Checkpointer {
            signal: Some(signal),
            thread: Some(thread),
        })
    }

    /// After a commit: the WAL has new pages to copy. Never blocks; signals
    /// already pending are one.
    pub(crate) fn committed(&self) {
        if let Some(s) = &self.signal {
            let _ = s.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<()>) {
    let mut warned: Option<Instant> = None;
    let mut held_back = 0u64;
    while rx.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            // A full disk or a busy lock: the next commit signals again, and
            // the writer's own bound still holds.
            if warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                tracing::warn!(error = %e, held_back, "WAL checkpoint failed; will retry");
                warned = Some(Instant::now());
                held_back = 0;
            } else {
                held_back += 1;
            }
        }
        std::thread::sleep(PAUSE);
    }
}
