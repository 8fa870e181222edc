//! Per-job fan-out of state changes to WatchStatus streams, and the
//! all-jobs log that WatchJobs streams read ([`ChangeLog`]).
//!
//! Each watcher has its own small buffer so a slow reader never blocks the
//! workers that publish: when the buffer is full it is replaced by the latest
//! snapshot alone (sequences then skip ahead), so the newest state, and thus
//! any terminal state, always reaches the watcher.
//!
//! A watcher that takes nothing while events wait (its client stopped
//! reading, so its stream is no longer polled) is ended by
//! [`Events::end_stalled`]: its place, and whatever it [holds], are given
//! back at once, since its stream may never run again to drop them.
//!
//! [holds]: Subscription::hold

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::job::Job;

/// Events a watcher may have waiting before they are coalesced.
pub const WATCHER_BUFFER: usize = 16;

/// The open watchers, by job. Bounded by `max_watchers`.
pub struct Events {
    /// A std mutex: held only to clone an `Arc` list or push to a buffer.
    watchers: Mutex<HashMap<Uuid, Vec<Arc<Slot>>>>,
    count: AtomicUsize,
    max: usize,
    /// Off when a shared store feeds every transition (from any instance)
    /// through [`Events::deliver`]: the engine's own publishes would then
    /// race the feed and could reorder events.
    local: AtomicBool,
    /// Every transition this instance made, for WatchJobs.
    log: ChangeLog,
    /// The open WatchJobs streams (readers of `log`), so a stalled one is
    /// ended like a stalled per-job watcher.
    readers: Mutex<Vec<Arc<ReaderSlot>>>,
}

/// One WatchJobs stream's place in the bounds, and how far it has read.
#[derive(Default)]
struct ReaderSlot {
    /// The position of the last change it took (sent or filtered out).
    cursor: std::sync::atomic::AtomicU64,
    /// When it last took a change (or opened).
    taken_at: Mutex<Option<Instant>>,
    released: AtomicBool,
    /// Its other places (per client, per connection), given back with it.
    held: Mutex<Option<Box<dyn Send>>>,
}

impl ReaderSlot {
    fn release(&self, events: &Events) -> bool {
        if self.released.swap(true, Ordering::AcqRel) {
            return false;
        }
        events.count.fetch_sub(1, Ordering::AcqRel);
        drop(self.held.lock().unwrap_or_else(|p| p.into_inner()).take());
        true
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("count", &self.count)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Slot {
    buffer: Mutex<Buffer>,
    notify: Notify,
    /// Set when the watcher's place is given back (ended as stalled, or
    /// dropped), so that happens once.
    released: AtomicBool,
    /// Other places the watcher holds (per client, per connection), given
    /// back with its own.
    held: Mutex<Option<Box<dyn Send>>>,
}

#[derive(Default)]
struct Buffer {
    events: VecDeque<Arc<Job>>,
    /// Since when an event has waited without the watcher taking one.
    waiting_since: Option<Instant>,
}

impl Slot {
    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back the watcher's places; true the first time only.
    fn release(&self, events: &Events) -> bool {
        if self.released.swap(true, Ordering::AcqRel) {
            return false;
        }
        events.count.fetch_sub(1, Ordering::AcqRel);
        drop(self.held.lock().unwrap_or_else(|p| p.into_inner()).take());
        true
    }
}

/// Returned when `max` (`queue.max_watchers`) streams are already open.
#[derive(Debug, Clone, Copy)]
pub struct TooManyWatchers {
    pub max: usize,
}

impl Events {
    pub fn new(max_watchers: usize) -> Arc<Events> {
        Arc::new(Events {
            watchers: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            max: max_watchers,
            local: AtomicBool::new(true),
            log: ChangeLog::new(CHANGE_LOG_EVENTS, CHANGE_LOG_AGE, CHANGE_LOG_BYTES),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The all-jobs log (WatchJobs).
    pub fn log(&self) -> &ChangeLog {
        &self.log
    }

    /// Open watchers right now.
    pub fn watcher_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Starts receiving changes of job `id`. Subscribe before reading the
    /// snapshot so that no change falls between the two.
    pub fn subscribe(self: &Arc<Self>, id: Uuid) -> Result<Subscription, TooManyWatchers> {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(TooManyWatchers { max: self.max });
        }
        let slot = Arc::new(Slot::default());
        self.lock().entry(id).or_default().push(slot.clone());
        Ok(Subscription {
            events: self.clone(),
            id,
            slot,
        })
    }

    /// A place among `max_watchers` for a reader of the all-jobs log
    /// (WatchJobs, `/v1/events`) that has read up to `cursor`; given back
    /// when dropped, or by [`Events::end_stalled`] when it stops reading.
    pub fn reserve(self: &Arc<Self>, cursor: u64) -> Result<LogReader, TooManyWatchers> {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(TooManyWatchers { max: self.max });
        }
        let slot = Arc::new(ReaderSlot::default());
        slot.cursor.store(cursor, Ordering::Release);
        *slot.taken_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.lock_readers().push(slot.clone());
        Ok(LogReader {
            events: self.clone(),
            slot,
        })
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ReaderSlot>>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on only [`Events::deliver`] reaches watchers.
    pub fn use_external_feed(&self) {
        self.local.store(false, Ordering::Release);
    }

    /// A transition this instance made.
    pub fn publish(&self, job: &Job) {
        self.log.append(job);
        if self.local.load(Ordering::Acquire) {
            self.deliver(job);
        }
    }

    /// Whether job `id` has watchers here.
    pub fn is_watched(&self, id: &Uuid) -> bool {
        self.count.load(Ordering::Relaxed) > 0 && self.lock().contains_key(id)
    }

    /// The jobs with watchers here.
    pub fn watched(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Hands a new snapshot to every watcher of its job.
    pub fn deliver(&self, job: &Job) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let slots = match self.lock().get(&job.id) {
            Some(s) => s.clone(),
            None => return,
        };
        let job = Arc::new(job.clone());
        let now = Instant::now();
        for slot in slots {
            {
                let mut b = slot.buffer();
                if b.events.len() >= WATCHER_BUFFER {
                    b.events.clear();
                }
                b.events.push_back(job.clone());
                b.waiting_since.get_or_insert(now);
            }
            slot.notify.notify_one();
        }
    }

    /// Ends every watcher that has taken nothing for `idle` while an event
    /// waited: it leaves the job's list, its places are given back, and its
    /// [`Subscription::next`] answers `None`. Returns how many were ended.
    pub fn end_stalled(&self, idle: Duration) -> usize {
        let Some(before) = Instant::now().checked_sub(idle) else {
            return 0;
        };
        let mut ended = Vec::new();
        {
            let mut map = self.lock();
            map.retain(|_, list| {
                list.retain(|slot| {
                    let stalled = slot.buffer().waiting_since.is_some_and(|t| t <= before);
                    if stalled {
                        ended.push(slot.clone());
                    }
                    !stalled
                });
                !list.is_empty()
            });
        }
        // Outside the map's lock: dropping held places takes other locks.
        let watchers = ended
            .into_iter()
            .filter(|slot| {
                let first = slot.release(self);
                slot.notify.notify_one();
                first
            })
            .count();
        watchers + self.end_stalled_readers(before)
    }

    /// Log readers with changes waiting that took none since `before`.
    fn end_stalled_readers(&self, before: Instant) -> usize {
        let head = self.log.head();
        let mut ended = Vec::new();
        self.lock_readers().retain(|r| {
            let behind = r.cursor.load(Ordering::Acquire) < head;
            let idle = r
                .taken_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t <= before);
            let stalled = behind && idle;
            if stalled {
                ended.push(r.clone());
            }
            !stalled
        });
        let n = ended.iter().filter(|r| r.release(self)).count();
        // Wake every reader: an ended one sees it at its next poll.
        self.log.newest.send_modify(|_| {});
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Arc<Slot>>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Transitions the all-jobs log keeps at most ...
pub const CHANGE_LOG_EVENTS: usize = 10_000;
/// ... and for at most this long: a WatchJobs client may resume from a
/// position within both bounds.
pub const CHANGE_LOG_AGE: Duration = Duration::from_secs(300);
/// The bytes of results and errors the log holds at most (results may be
/// large; payloads are not kept at all).
pub const CHANGE_LOG_BYTES: usize = 64 * 1024 * 1024;
/// What one entry costs besides its result and error, roughly.
const CHANGE_ENTRY_BYTES: usize = 512;

/// One change in the log: the job after it, without its payload (kept
/// only as a size), so the log holds no payload alive.
#[derive(Debug, Clone)]
pub struct Change {
    pub position: u64,
    pub job: Arc<Job>,
    pub payload_size: u64,
}

/// A resume position the log no longer holds (or never gave out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionGone {
    /// The oldest position a client may resume after now.
    pub oldest: u64,
}

/// Every transition of every job this instance made, each with a position
/// that increases by one, in a bounded window (count and age). WatchJobs
/// streams read it with a cursor of their own, so a slow reader holds no
/// buffer: it lags, and once the window has moved past its cursor it is
/// told so (OUT_OF_RANGE) rather than silently skipping changes.
///
/// Positions start at the process's start time in microseconds, so they
/// also increase across restarts: a position from an earlier run is older
/// than the window, never mistaken for a new one.
pub struct ChangeLog {
    /// Held to push or to copy a few entries, never across an await.
    inner: Mutex<LogInner>,
    /// The position of the newest entry; waiters wake on each append.
    newest: tokio::sync::watch::Sender<u64>,
    capacity: usize,
    max_age: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("capacity", &self.capacity)
            .field("max_age", &self.max_age)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

struct LogInner {
    entries: VecDeque<(Change, Instant, usize)>,
    /// What `entries` cost (see [`CHANGE_ENTRY_BYTES`]).
    bytes: usize,
    /// The position the next entry gets.
    next: u64,
    /// The highest sequence logged per job in the window: a snapshot that
    /// arrives after a newer one of its job (a submit's QUEUED announced
    /// after a quick claim's RUNNING) is stale and left out, so each job's
    /// changes stay in order.
    latest: HashMap<Uuid, u64>,
}

impl ChangeLog {
    pub fn new(capacity: usize, max_age: Duration, max_bytes: usize) -> ChangeLog {
        let start = crate::job::now_micros().max(1) as u64;
        ChangeLog {
            inner: Mutex::new(LogInner {
                entries: VecDeque::new(),
                bytes: 0,
                next: start,
                latest: HashMap::new(),
            }),
            newest: tokio::sync::watch::Sender::new(start - 1),
            capacity: capacity.max(1),
            max_age,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn append(&self, job: &Job) {
        let now = Instant::now();
        let position = {
            let mut l = self.lock();
            if l.latest.get(&job.id).is_some_and(|s| *s >= job.sequence) {
                return;
            }
            l.latest.insert(job.id, job.sequence);
            let position = l.next;
            l.next += 1;
            let mut kept = job.clone();
            kept.payload = bytes::Bytes::new();
            let cost = CHANGE_ENTRY_BYTES + kept.result.len() + kept.last_error.len();
            let change = Change {
                position,
                job: Arc::new(kept),
                payload_size: job.payload.len() as u64,
            };
            l.entries.push_back((change, now, cost));
            l.bytes += cost;
            while l.entries.len() > self.capacity
                || (l.bytes > self.max_bytes && l.entries.len() > 1)
                || l.entries
                    .front()
                    .is_some_and(|(_, at, _)| now.duration_since(*at) > self.max_age)
            {
                if let Some((old, _, cost)) = l.entries.pop_front() {
                    l.bytes -= cost;
                    if l.latest.get(&old.job.id) == Some(&old.job.sequence) {
                        l.latest.remove(&old.job.id);
                    }
                }
            }
            position
        };
        self.newest.send_replace(position);
    }

    /// The position of the newest change (where "from now on" starts).
    pub fn head(&self) -> u64 {
        self.lock().next - 1
    }

    /// Up to `max` changes after position `after`, oldest first; `Err` when
    /// some change after it has already left the window, or `after` was
    /// never given out.
    pub fn after(&self, after: u64, max: usize) -> Result<Vec<Change>, PositionGone> {
        let l = self.lock();
        let oldest = l.entries.front().map_or(l.next, |(c, _, _)| c.position);
        // Resuming after `after` needs every change from `after + 1` on.
        if after + 1 < oldest || after >= l.next {
            return Err(PositionGone {
                oldest: oldest.saturating_sub(1),
            });
        }
        let skip = (after + 1 - oldest) as usize;
        Ok(l.entries
            .iter()
            .skip(skip)
            .take(max)
            .map(|(c, _, _)| c.clone())
            .collect())
    }

    /// The change right after position `after`, if there is one yet: a
    /// reader takes changes one at a time, so a stalled one holds none.
    pub fn next_after(&self, after: u64) -> Result<Option<Change>, PositionGone> {
        let l = self.lock();
        let oldest = l.entries.front().map_or(l.next, |(c, _, _)| c.position);
        if after + 1 < oldest || after >= l.next {
            return Err(PositionGone {
                oldest: oldest.saturating_sub(1),
            });
        }
        Ok(l.entries
            .get((after + 1 - oldest) as usize)
            .map(|(c, _, _)| c.clone()))
    }

    /// Wakes when a change after `position` is appended.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// A log reader's place, taken by [`Events::reserve`].
pub struct LogReader {
    events: Arc<Events>,
    slot: Arc<ReaderSlot>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("cursor", &self.slot.cursor)
            .field("ended", &self.is_ended())
            .finish_non_exhaustive()
    }
}

impl LogReader {
    /// The reader took the change at `position` (sent or filtered out).
    pub fn took(&self, position: u64) {
        self.slot.cursor.store(position, Ordering::Release);
        *self.slot.taken_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether [`Events::end_stalled`] ended this reader.
    pub fn is_ended(&self) -> bool {
        self.slot.released.load(Ordering::Acquire)
    }

    /// Keeps `places` until this reader ends, even if it ends as stalled
    /// while its stream is never polled or dropped.
    pub fn hold(&self, places: impl Send + 'static) {
        *self.slot.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(places));
        if self.is_ended() {
            drop(
                self.slot
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
        }
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.events
            .lock_readers()
            .retain(|r| !Arc::ptr_eq(r, &self.slot));
        self.slot.release(&self.events);
    }
}

/// One watcher's feed; unsubscribes when dropped.
pub struct Subscription {
    events: Arc<Events>,
    id: Uuid,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next snapshot published for this job; `None` once the watcher
    /// was ended as stalled ([`Events::end_stalled`]).
    pub async fn next(&self) -> Option<Arc<Job>> {
        loop {
            if self.slot.released.load(Ordering::Acquire) {
                return None;
            }
            {
                let mut b = self.slot.buffer();
                if let Some(j) = b.events.pop_front() {
                    // Taken: what still waits waits from now.
                    b.waiting_since = (!b.events.is_empty()).then(Instant::now);
                    return Some(j);
                }
            }
            // notify_one keeps a permit if nobody waits, so a publish between
            // the check above and this await is not missed.
            self.slot.notify.notified().await;
        }
    }

    /// Keeps `places` (the watcher's places in other bounds) until this
    /// watcher ends, even if it ends as stalled while its stream is never
    /// polled or dropped.
    pub fn hold(&self, places: impl Send + 'static) {
        *self.slot.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(places));
        // Ended meanwhile: give them back now.
        if self.slot.released.load(Ordering::Acquire) {
            drop(
                self.slot
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut map = self.events.lock();
            if let Some(list) = map.get_mut(&self.id) {
                list.retain(|s| !Arc::ptr_eq(s, &self.slot));
                if list.is_empty() {
                    map.remove(&self.id);
                }
            }
        }
        self.slot.release(&self.events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;

    fn job(seq: u64) -> Job {
        let mut j = NewJob::example().into_job();
        j.sequence = seq;
        j
    }

    #[test]
    fn change_log_resumes_within_its_window_and_refuses_outside_it() {
        let log = ChangeLog::new(3, Duration::from_secs(60), usize::MAX);
        let start = log.head();
        for seq in 1..=5 {
            log.append(&job(seq));
        }
        // Kept: the last 3 (positions start+3 ..= start+5).
        let got = log.after(start + 2, 10).unwrap();
        let seqs: Vec<u64> = got.iter().map(|c| c.job.sequence).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(got[0].position, start + 3);
        assert!(got[0].job.payload.is_empty(), "payloads are not kept");
        assert_eq!(got[0].payload_size, job(1).payload.len() as u64);
        assert_eq!(log.after(start + 4, 1).unwrap().len(), 1);
        assert!(log.after(start + 5, 10).unwrap().is_empty(), "caught up");
        // Change start+2 is gone: resuming after start+1 would skip it.
        assert_eq!(
            log.after(start + 1, 10).unwrap_err(),
            PositionGone { oldest: start + 2 }
        );
        // A stale snapshot of a job (lower sequence) is left out.
        let mut stale = job(1);
        stale.id = got[0].job.id;
        log.append(&stale);
        assert_eq!(log.head(), start + 5);
        // A position from the future (another run) is refused too.
        assert!(log.after(start + 99, 10).is_err());
        assert!(log.after(1, 10).is_err());

        // The byte bound: results count, the newest entry always stays.
        let log = ChangeLog::new(100, Duration::from_secs(60), 3 * CHANGE_ENTRY_BYTES + 2000);
        let start = log.head();
        for seq in 1..=4 {
            let mut j = job(seq);
            j.result = vec![b'r'; 1000].into();
            log.append(&j);
        }
        assert_eq!(log.after(start + 2, 10).unwrap().len(), 2);
        assert!(log.after(start + 1, 10).is_err());
    }

    #[tokio::test]
    async fn a_full_buffer_coalesces_to_the_latest_snapshot() {
        let ev = Events::new(10);
        let sub = ev.subscribe(Uuid::nil()).unwrap();
        for seq in 1..=(WATCHER_BUFFER as u64 + 5) {
            ev.publish(&job(seq));
        }
        let mut got = Vec::new();
        while let Ok(Some(j)) =
            tokio::time::timeout(std::time::Duration::from_millis(20), sub.next()).await
        {
            got.push(j.sequence);
        }
        assert_eq!(
            *got.last().unwrap(),
            WATCHER_BUFFER as u64 + 5,
            "latest kept"
        );
        assert!(got.len() <= WATCHER_BUFFER);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn a_watcher_that_takes_nothing_while_events_wait_is_ended() {
        let ev = Events::new(2);
        let idle = ev.subscribe(Uuid::nil()).unwrap();
        let reading = ev.subscribe(Uuid::nil()).unwrap();
        let held = Arc::new(());
        idle.hold(held.clone());
        // Nothing waiting: a quiet watcher is never stalled.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ev.end_stalled(Duration::from_millis(10)), 0);
        ev.publish(&job(2));
        assert_eq!(reading.next().await.unwrap().sequence, 2);
        std::thread::sleep(Duration::from_millis(20));
        ev.publish(&job(3));
        assert_eq!(ev.end_stalled(Duration::from_millis(10)), 1);
        assert_eq!(ev.watcher_count(), 1, "its place is given back");
        assert_eq!(Arc::strong_count(&held), 1, "and what it held");
        assert!(idle.next().await.is_none());
        assert_eq!(reading.next().await.unwrap().sequence, 3);
        drop(idle);
        assert_eq!(ev.watcher_count(), 1, "given back once");
        assert!(ev.subscribe(Uuid::nil()).is_ok());
    }

    #[tokio::test]
    async fn watchers_are_bounded_and_released_on_drop() {
        let ev = Events::new(2);
        let a = ev.subscribe(Uuid::nil()).unwrap();
        let _b = ev.subscribe(Uuid::nil()).unwrap();
        assert!(ev.subscribe(Uuid::nil()).is_err());
        drop(a);
        assert_eq!(ev.watcher_count(), 1);
        assert!(ev.subscribe(Uuid::nil()).is_ok());
    }
}
