//! What a claim enforces inside the store besides free slots: ordering keys
//! (at most N jobs of one key at once, in submit order) and rate limits (a
//! token bucket on attempt starts). The rules live here so the three stores
//! apply the same ones; each store keeps its buckets where its claims are
//! serialized (memory and SQLite: in the process; PostgreSQL: a row per kind
//! that every instance's claim locks).

use std::collections::HashMap;

use crate::job::Micros;

pub use crate::config::{KindLimits, RateLimit};

/// A token bucket as stored: tokens left at `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: Micros,
}

impl RateLimit {
    /// Tokens in the bucket at `now`: refilled since it was last taken
    /// from, at most `burst`; a kind never claimed starts full.
    pub fn available(&self, bucket: Option<Bucket>, now: Micros) -> f64 {
        let burst = f64::from(self.burst);
        match bucket {
            None => burst,
            Some(b) => {
                let secs = (now.saturating_sub(b.at)).max(0) as f64 / 1e6;
                (b.tokens + secs * self.per_second).min(burst)
            }
        }
    }

    /// When the bucket, holding `left` tokens at `now`, next holds one.
    pub fn next_token_at(&self, left: f64, now: Micros) -> Micros {
        let missing = (1.0 - left).max(0.0);
        now + (missing / self.per_second * 1e6).ceil() as Micros
    }
}

/// One kind's share of a claim: how many of its jobs may start now, and
/// (once the store has looked) how many were there.
#[derive(Debug, Clone)]
pub struct KindBudget {
    /// Free slots (and jobs claimed ahead) the dispatcher offers.
    pub slots: usize,
    pub limits: KindLimits,
    /// Tokens in the bucket now, when the kind is rated.
    pub tokens: Option<f64>,
}

impl KindBudget {
    pub fn new(slots: usize, limits: KindLimits, bucket: Option<Bucket>, now: Micros) -> Self {
        let tokens = limits.rate.map(|r| r.available(bucket, now));
        KindBudget {
            slots,
            limits,
            tokens,
        }
    }

    /// Jobs of this kind the claim may take: free slots, cut to whole tokens.
    pub fn allowed(&self) -> usize {
        match self.tokens {
            Some(t) => self.slots.min(t.max(0.0).floor() as usize),
            None => self.slots,
        }
    }

    /// Rows to read: one more than allowed when the rate cuts the slots, so
    /// the store learns whether the rate held jobs back.
    pub fn to_read(&self) -> usize {
        let a = self.allowed();
        if a < self.slots {
            a + 1
        } else {
            a
        }
    }

    /// After the claim took `taken` of `found` rows: the bucket to store, and
    /// when to claim again if the rate held jobs back.
    pub fn settle(
        &self,
        found: usize,
        taken: usize,
        now: Micros,
    ) -> (Option<Bucket>, Option<Micros>) {
        let (Some(rate), Some(tokens)) = (self.limits.rate, self.tokens) else {
            return (None, None);
        };
        let left = (tokens - taken as f64).max(0.0);
        let held = found > self.allowed() && self.allowed() < self.slots;
        let bucket = Bucket {
            tokens: left,
            at: now,
        };
        (Some(bucket), held.then(|| rate.next_token_at(left, now)))
    }
}

/// The best `limit` candidates over all kinds, highest priority first, then
/// oldest (`seq`), as every claim orders them. Candidates are
/// `(priority, seq, kind, item)`, each kind's in the order the kind takes
/// them: the global order decides how many of each kind are taken, the
/// kind's own order which (a round_robin kind's rotation; for the others
/// the two orders agree).
pub fn pick<T>(candidates: Vec<(i32, i64, String, T)>, limit: usize) -> Vec<(String, T)> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_unstable_by(|a, b| {
        let (a, b) = (&candidates[*a], &candidates[*b]);
        b.0.cmp(&a.0).then(a.1.cmp(&b.1))
    });
    order.truncate(limit);
    // The places, in global order, each filled by its kind's next job in
    // the kind's own order.
    let places: Vec<String> = order.iter().map(|i| candidates[*i].2.clone()).collect();
    let mut own: HashMap<String, std::collections::VecDeque<T>> = HashMap::new();
    for (_, _, k, t) in candidates {
        own.entry(k).or_default().push_back(t);
    }
    places
        .into_iter()
        .filter_map(|k| {
            let t = own.get_mut(&k)?.pop_front()?;
            Some((k, t))
        })
        .collect()
}

/// Jobs taken per kind.
pub fn taken_per_kind<'a>(kinds: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in kinds {
        *m.entry(k.to_string()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: RateLimit = RateLimit {
        per_second: 20.0,
        burst: 5,
    };

    #[test]
    fn a_new_bucket_is_full_and_refills_at_the_rate_up_to_burst() {
        assert_eq!(RATE.available(None, 0), 5.0);
        let empty = Some(Bucket { tokens: 0.0, at: 0 });
        assert_eq!(RATE.available(empty, 100_000), 2.0);
        assert_eq!(RATE.available(empty, 10_000_000), 5.0);
        assert_eq!(RATE.next_token_at(0.0, 0), 50_000);
        assert_eq!(RATE.next_token_at(1.5, 7), 7);
    }

    #[test]
    fn the_rate_cuts_slots_and_says_when_it_held_jobs_back() {
        let limits = KindLimits {
            rate: Some(RATE),
            ..KindLimits::default()
        };
        let b = KindBudget::new(16, limits, Some(Bucket { tokens: 2.5, at: 0 }), 0);
        assert_eq!((b.allowed(), b.to_read()), (2, 3));
        // Three were waiting, two taken: held back, next token in 25 ms.
        let (bucket, wake) = b.settle(3, 2, 0);
        assert_eq!(bucket, Some(Bucket { tokens: 0.5, at: 0 }));
        assert_eq!(wake, Some(25_000));
        // Only two were waiting: the rate held nothing back.
        assert_eq!(b.settle(2, 2, 0).1, None);
        // Unrated kinds: no bucket, no wake.
        let free = KindBudget::new(4, KindLimits::default(), None, 0);
        assert_eq!(
            (free.allowed(), free.to_read(), free.settle(9, 4, 0)),
            (4, 4, (None, None))
        );
    }

    #[test]
    fn pick_orders_by_priority_then_age() {
        let c = vec![
            (0, 1, "a".to_string(), 'z'),
            (5, 9, "b".to_string(), 'y'),
            (0, 3, "a".to_string(), 'x'),
        ];
        let got: Vec<char> = pick(c, 2).into_iter().map(|(_, t)| t).collect();
        assert_eq!(got, vec!['y', 'z']);
        // A kind's own order decides which of its jobs fill its places: a
        // round_robin kind lists another key's younger job first.
        let c = vec![
            (0, 7, "r".to_string(), 'b'),
            (0, 2, "r".to_string(), 'a'),
            (1, 5, "p".to_string(), 'p'),
        ];
        let got: Vec<char> = pick(c, 2).into_iter().map(|(_, t)| t).collect();
        assert_eq!(got, vec!['p', 'b']);
    }
}
