//! Per-job fan-out of state changes to WatchStatus streams.
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
        })
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

    /// From now on only [`Events::deliver`] reaches watchers.
    pub fn use_external_feed(&self) {
        self.local.store(false, Ordering::Release);
    }

    /// A transition this instance made.
    pub fn publish(&self, job: &Job) {
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
        ended
            .into_iter()
            .filter(|slot| {
                let first = slot.release(self);
                slot.notify.notify_one();
                first
            })
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Arc<Slot>>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One watcher's feed; unsubscribes when dropped.
pub struct Subscription {
    events: Arc<Events>,
    id: Uuid,
    slot: Arc<Slot>,
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
