//! Per-job fan-out of state changes to WatchStatus streams.
//!
//! Each watcher has its own small buffer so a slow reader never blocks the
//! workers that publish: when the buffer is full it is replaced by the latest
//! snapshot alone (sequences then skip ahead), so the newest state, and thus
//! any terminal state, always reaches the watcher.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    buffer: Mutex<VecDeque<Arc<Job>>>,
    notify: Notify,
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
        for slot in slots {
            {
                let mut b = slot.buffer.lock().unwrap_or_else(|p| p.into_inner());
                if b.len() >= WATCHER_BUFFER {
                    b.clear();
                }
                b.push_back(job.clone());
            }
            slot.notify.notify_one();
        }
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
    /// The next snapshot published for this job.
    pub async fn next(&self) -> Arc<Job> {
        loop {
            if let Some(j) = self
                .slot
                .buffer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            {
                return j;
            }
            // notify_one keeps a permit if nobody waits, so a publish between
            // the check above and this await is not missed.
            self.slot.notify.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.events.lock();
        if let Some(list) = map.get_mut(&self.id) {
            list.retain(|s| !Arc::ptr_eq(s, &self.slot));
            if list.is_empty() {
                map.remove(&self.id);
            }
        }
        self.events.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;

    fn job(seq: u64) -> Job {
        let mut j = NewJob {
            id: Uuid::nil(),
            kind: "k".into(),
            max_attempts: 1,
            priority: 0,
            idempotency_key: None,
            labels: Default::default(),
            payload: Default::default(),
            timeout: std::time::Duration::from_secs(1),
            run_at: None,
            request_hash: [0; 32],
            created_at: 0,
        }
        .into_job();
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
        while let Ok(j) =
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
