//! Running out of disk (DESIGN.md): a SQLite store keeps a free-space
//! reserve on its filesystem (`store.min_free`). Below it, Submit and
//! SubmitBatch answer UNAVAILABLE ("disk reserve reached") and health is
//! NOT_SERVING, while everything else (outcomes, cancels, retries) is still
//! written into the reserve; serving resumes only once free space is back
//! above the reserve plus 10%, so health never flaps on a nearly full disk.
//!
//! Free space is read with `statvfs` at least once a second, at once after
//! a refused write, and on the submit path whenever 256 KiB of payloads or
//! 100 ms have passed since the last read: a burst of submits cannot cross
//! the reserve between two of the background reads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MinFree, StoreUrl};

/// How often free space is read in the background.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Payload bytes admitted between two reads on the submit path, at most...
const CHECK_BYTES: u64 = 256 * 1024;
/// ...and time between them.
const CHECK_AGE: Duration = Duration::from_millis(100);
/// Serving resumes at the reserve plus this share of it.
const RESUME_MARGIN: f64 = 0.10;

/// Free and total bytes of the filesystem holding `path` (free: `f_bavail`,
/// what an unprivileged writer may use).
pub fn space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes only into the struct we pass; `c` is a valid
    // NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

/// The directory whose filesystem holds a SQLite store; `None` for the
/// others (memory has no disk; PostgreSQL's is the server's).
pub fn store_dir(config: &Config) -> Option<PathBuf> {
    match StoreUrl::parse(&config.store).ok()? {
        StoreUrl::Sqlite(path) => {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            Some(if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            })
        }
        _ => None,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The reserve of one store's filesystem.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: Option<MinFree>,
    /// Held for a `statvfs` call at most.
    state: Mutex<State>,
    /// Woken when the store refused a write: read free space at once.
    refused: Notify,
}

#[derive(Debug)]
struct State {
    /// Why submits are refused, while below the reserve.
    low: Option<String>,
    last_check: Instant,
    bytes_since: u64,
}

impl DiskGuard {
    /// The guard of the config's store, if it has a disk of its own.
    pub fn for_config(config: &Config) -> Option<Arc<DiskGuard>> {
        let dir = store_dir(config)?;
        let min_free = config
            .store
            .min_free
            .as_deref()
            .and_then(|m| MinFree::parse(m).ok());
        let g = Arc::new(DiskGuard {
            dir,
            min_free,
            state: Mutex::new(State {
                low: None,
                last_check: Instant::now(),
                bytes_since: 0,
            }),
            refused: Notify::new(),
        });
        g.check();
        Some(g)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why submits are refused now, if they are.
    pub fn low(&self) -> Option<String> {
        self.lock().low.clone()
    }

    /// Before a submit of `bytes` of payload: `Err(why)` below the reserve.
    pub fn admit(&self, bytes: u64) -> Result<(), String> {
        let due = {
            let mut s = self.lock();
            s.bytes_since += bytes;
            s.bytes_since >= CHECK_BYTES || s.last_check.elapsed() >= CHECK_AGE
        };
        if due {
            self.check();
        }
        match self.low() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// The store refused a write: read free space at once.
    pub fn write_refused(&self) {
        self.refused.notify_one();
    }

    /// Reads free space and moves the state (with its hysteresis).
    pub fn check(&self) {
        let (free, total) = match space(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, dir = %self.dir.display(), "statvfs failed");
                return;
            }
        };
        let reserve = MinFree::bytes(self.min_free, total);
        let resume = reserve + (reserve as f64 * RESUME_MARGIN) as u64;
        let mut s = self.lock();
        s.last_check = Instant::now();
        s.bytes_since = 0;
        let was_low = s.low.is_some();
        if free < reserve || (was_low && free < resume) {
            let why = format!(
                "{} free on the store's filesystem, reserve {} (store.min_free; \
                 new jobs are taken again above {})",
                mib(free),
                mib(reserve),
                mib(resume)
            );
            if !was_low {
                tracing::warn!(%why, "disk reserve reached: refusing new jobs");
            }
            s.low = Some(why);
        } else if was_low {
            tracing::info!(free = %mib(free), "free space back above the reserve: taking jobs again");
            s.low = None;
        }
    }

    /// Reads free space every [`CHECK_EVERY`] and after each refused write,
    /// until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = self.refused.notified() => {}
                _ = stop.cancelled() => return,
            }
            self.check();
        }
    }
}
