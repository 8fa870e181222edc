//! Fair claiming: the rules of a `fairness = "round_robin"` kind's claim,
//! written once for the three stores.
//!
//! A claim of such a kind looks at the fairness keys that have due jobs in
//! rotation order (the first key after the one served last, wrapping
//! around) and takes the keys' best jobs turn by turn: each key's first
//! job, then each key's second, and so on. So a key with 50,000 due jobs
//! holds up another key's first job by at most one rotation, and within a
//! key priority and submit order still hold.
//!
//! Each store finds the keys without walking a key's jobs (memory: a map
//! of keys to their due jobs; SQL: a skip scan of an index on
//! `(kind, fairness_key, priority, seq)`), offers them to a [`FairClaim`]
//! with each key's bucket (`key_rate`), reads as many heads per key as it
//! says, and saves what [`FairClaim::settle`] answers.

use std::collections::HashMap;

use super::limits::{Bucket, RateLimit};
use crate::job::Micros;

/// Keys a claim looks at, at most: with every key out of tokens, a claim
/// stops here and the next one goes on from the last key looked at.
pub const MAX_KEYS_PER_CLAIM: usize = 1000;

/// Key buckets a store keeps per kind, at most. A full bucket is the same
/// as none, so refilled buckets are dropped first; past the bound the
/// fullest go (their keys may then start up to `key_burst` a little early).
pub const MAX_KEY_BUCKETS: usize = 100_000;
/// Keys read at a time by a kind with a `key_rate` (see
/// [`FairClaim::keys_to_read`]).
pub const KEY_READ_BATCH: usize = 100;
/// How long a claim that served nothing, having looked at
/// [`MAX_KEYS_PER_CLAIM`] keys all out of tokens, waits before the next.
const EMPTY_CLAIM_PAUSE_US: Micros = 50_000;

/// How often (µs) a store drops the refilled key buckets it keeps.
pub const PRUNE_EVERY: Micros = 10_000_000;

/// One key a claim serves: its tokens (rated kinds), and the jobs it may
/// take at most this claim.
#[derive(Debug, Clone)]
struct KeyTurn {
    key: String,
    tokens: Option<f64>,
}

/// The plan of one round_robin kind's claim (see the module's comment).
#[derive(Debug)]
pub struct FairClaim {
    /// Jobs to find (the kind's slots, cut by its own rate).
    want: usize,
    key_rate: Option<RateLimit>,
    now: Micros,
    keys: Vec<KeyTurn>,
    looked: usize,
    last_looked: Option<String>,
    /// The earliest next token of a key held back by its bucket.
    held_until: Option<Micros>,
}

/// What a fair claim leaves behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The new cursor (the key served last), when it moved.
    pub cursor: Option<String>,
    /// Buckets to store, per key.
    pub buckets: Vec<(String, Bucket)>,
    /// When to claim again: a key was held back by its bucket (its next
    /// token), or the claim stopped at [`MAX_KEYS_PER_CLAIM`] (now).
    pub wake: Option<Micros>,
}

impl FairClaim {
    pub fn new(want: usize, key_rate: Option<RateLimit>, now: Micros) -> Self {
        FairClaim {
            want,
            key_rate,
            now,
            keys: Vec::new(),
            looked: 0,
            last_looked: None,
            held_until: None,
        }
    }

    /// Offers the next key in rotation, with its stored bucket. Answers
    /// whether the store should offer more.
    pub fn offer(&mut self, key: String, bucket: Option<Bucket>) -> bool {
        self.looked += 1;
        self.last_looked = Some(key.clone());
        let tokens = self.key_rate.map(|r| r.available(bucket, self.now));
        match (self.key_rate, tokens) {
            (Some(rate), Some(t)) if t < 1.0 => {
                let at = rate.next_token_at(t, self.now);
                self.held_until = Some(self.held_until.map_or(at, |h| h.min(at)));
            }
            _ => self.keys.push(KeyTurn { key, tokens }),
        }
        self.wants_keys()
    }

    /// The kind's `key_rate`, if it has one.
    pub fn key_rate(&self) -> Option<RateLimit> {
        self.key_rate
    }

    /// Whether more keys would help: fewer usable keys than jobs wanted,
    /// and the bound on keys looked at not reached.
    pub fn wants_keys(&self) -> bool {
        self.keys.len() < self.want && self.looked < MAX_KEYS_PER_CLAIM
    }

    /// How many keys the store may still offer in one read. With a
    /// `key_rate`, keys may be out of tokens: read at least
    /// [`KEY_READ_BATCH`] at a time, not a round trip per few keys.
    pub fn keys_to_read(&self) -> usize {
        let missing = self.want - self.keys.len().min(self.want);
        let n = match self.key_rate {
            Some(_) => missing.max(KEY_READ_BATCH),
            None => missing,
        };
        n.min(MAX_KEYS_PER_CLAIM - self.looked.min(MAX_KEYS_PER_CLAIM))
    }

    /// The usable keys, in rotation order: the store reads their heads.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.key.as_str())
    }

    /// Heads to read of key `i` in the first round: an equal share of the
    /// jobs wanted, at most its whole tokens.
    pub fn first_read(&self, i: usize) -> usize {
        self.cap(i, self.want.div_ceil(self.keys.len().max(1)))
    }

    /// Heads to read of key `i` in a second round (some keys ran short of
    /// their share): as many as wanted, at most its whole tokens.
    pub fn second_read(&self, i: usize) -> usize {
        self.cap(i, self.want)
    }

    fn cap(&self, i: usize, n: usize) -> usize {
        match self.keys[i].tokens {
            Some(t) => n.min(t.floor() as usize),
            None => n,
        }
    }

    /// Whether a second round could find more: fewer jobs than wanted, and
    /// a key gave all of its first round while allowed more.
    pub fn short<T>(&self, heads: &[Vec<T>]) -> bool {
        let found: usize = heads.iter().map(Vec::len).sum();
        found < self.want
            && heads.iter().enumerate().any(|(i, h)| {
                let first = self.first_read(i);
                h.len() == first && self.second_read(i) > first
            })
    }

    /// The heads of each key (in the order of [`FairClaim::keys`]), turn
    /// by turn, at most as many as wanted: `(key index, item)`.
    pub fn interleave<T>(&self, heads: Vec<Vec<T>>) -> Vec<(usize, T)> {
        let mut iters: Vec<_> = heads.into_iter().map(Vec::into_iter).collect();
        let mut out = Vec::new();
        loop {
            let before = out.len();
            for (i, it) in iters.iter_mut().enumerate() {
                if out.len() == self.want {
                    return out;
                }
                if let Some(t) = it.next() {
                    out.push((i, t));
                }
            }
            if out.len() == before {
                return out;
            }
        }
    }

    /// After the claim took `taken` (key indexes, in interleave order):
    /// the cursor, the buckets to store and when to claim again.
    pub fn settle(&self, taken: &[usize]) -> Settled {
        let mut per_key: HashMap<usize, usize> = HashMap::new();
        for i in taken {
            *per_key.entry(*i).or_default() += 1;
        }
        let cursor = match taken.last() {
            Some(i) => Some(self.keys[*i].key.clone()),
            // Nothing served: go on past the keys looked at only when the
            // claim stopped at its bound (they were all out of tokens).
            None if self.looked >= MAX_KEYS_PER_CLAIM => self.last_looked.clone(),
            None => None,
        };
        let mut held = self.held_until;
        let mut buckets = Vec::new();
        if let Some(rate) = self.key_rate {
            let share = self.want.div_ceil(self.keys.len().max(1));
            for (i, k) in self.keys.iter().enumerate() {
                let got = per_key.get(&i).copied().unwrap_or(0);
                let Some(tokens) = k.tokens else { continue };
                let left = (tokens - got as f64).max(0.0);
                if got > 0 {
                    buckets.push((
                        k.key.clone(),
                        Bucket {
                            tokens: left,
                            at: self.now,
                        },
                    ));
                }
                // Its bucket cut its share: it may have jobs left.
                if (tokens.floor() as usize) < share && left < 1.0 {
                    let at = rate.next_token_at(left, self.now);
                    held = Some(held.map_or(at, |h| h.min(at)));
                }
            }
        }
        if self.looked >= MAX_KEYS_PER_CLAIM && taken.len() < self.want {
            // More keys past the bound may have tokens: claim again soon.
            // Not at once when this claim served nothing (every key it
            // looked at was out of tokens), or thousands of such keys
            // would keep the claim spinning until tokens come back.
            let again = match taken.is_empty() {
                true => self.now + EMPTY_CLAIM_PAUSE_US,
                false => self.now,
            };
            held = Some(held.map_or(again, |h| h.min(again)));
        }
        Settled {
            cursor,
            buckets,
            wake: held.filter(|_| taken.len() < self.want),
        }
    }
}

/// The earlier of two optional times (a kind's wake and its keys').
pub fn min_some(a: Option<Micros>, b: Option<Micros>) -> Option<Micros> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a stored key bucket is no longer needed at `now`: it has
/// refilled, which is the same as having none.
pub fn refilled(rate: &RateLimit, bucket: Bucket, now: Micros) -> bool {
    rate.available(Some(bucket), now) >= f64::from(rate.burst)
}

/// Key buckets kept in the process (memory and SQLite: one process claims):
/// per kind, per key.
#[derive(Debug, Default)]
pub struct KeyBuckets {
    kinds: HashMap<String, HashMap<String, Bucket>>,
    pruned_at: Micros,
}

impl KeyBuckets {
    pub fn get(&self, kind: &str, key: &str) -> Option<Bucket> {
        self.kinds.get(kind)?.get(key).copied()
    }

    /// Stores the buckets a claim settled; drops refilled ones every
    /// [`PRUNE_EVERY`] and keeps at most [`MAX_KEY_BUCKETS`] per kind.
    pub fn save(
        &mut self,
        kind: &str,
        rate: &RateLimit,
        buckets: Vec<(String, Bucket)>,
        now: Micros,
    ) {
        if buckets.is_empty() {
            return;
        }
        let m = self.kinds.entry(kind.to_string()).or_default();
        m.extend(buckets);
        if m.len() > MAX_KEY_BUCKETS || now - self.pruned_at >= PRUNE_EVERY {
            m.retain(|_, b| !refilled(rate, *b, now));
            if m.len() > MAX_KEY_BUCKETS {
                let mut by_fill: Vec<(f64, String)> = m
                    .iter()
                    .map(|(k, b)| (rate.available(Some(*b), now), k.clone()))
                    .collect();
                by_fill.sort_by(|a, b| b.0.total_cmp(&a.0));
                // Down to 90%, so the sort is not paid on every claim.
                let extra = m.len() - MAX_KEY_BUCKETS * 9 / 10;
                for (_, k) in by_fill.into_iter().take(extra) {
                    m.remove(&k);
                }
            }
            self.pruned_at = now;
        }
    }

    /// Buckets kept for `kind` (tests, metrics).
    pub fn len(&self, kind: &str) -> usize {
        self.kinds.get(kind).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: RateLimit = RateLimit {
        per_second: 10.0,
        burst: 2,
    };

    fn keys(c: &mut FairClaim, names: &[&str]) {
        for k in names {
            c.offer(k.to_string(), None);
        }
    }

    #[test]
    fn turns_take_one_job_per_key_then_the_next() {
        let mut c = FairClaim::new(5, None, 0);
        keys(&mut c, &["b", "c", "a"]);
        assert!(!c.wants_keys() || c.keys().count() == 3);
        assert_eq!(c.first_read(0), 2);
        let got = c.interleave(vec![vec!["b1", "b2"], vec!["c1"], vec!["a1", "a2"]]);
        assert_eq!(
            got.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            vec!["b1", "c1", "a1", "b2", "a2"]
        );
        let s = c.settle(&got.iter().map(|(i, _)| *i).collect::<Vec<_>>());
        assert_eq!(s.cursor.as_deref(), Some("a"));
        assert_eq!((s.buckets.len(), s.wake), (0, None));
    }

    #[test]
    fn a_short_key_asks_for_a_second_round() {
        let mut c = FairClaim::new(4, None, 0);
        keys(&mut c, &["a", "b"]);
        let first = vec![vec![1, 2], vec![3]];
        assert!(c.short(&first));
        assert_eq!(c.second_read(0), 4);
        assert!(!c.short(&[vec![1, 2], vec![3, 4]]));
        assert!(!c.short(&[vec![1], vec![3]]));
    }

    #[test]
    fn key_buckets_cut_and_skip_keys_and_say_when_to_come_back() {
        let empty = Bucket { tokens: 0.0, at: 0 };
        let mut c = FairClaim::new(4, Some(RATE), 0);
        assert!(c.offer("a".into(), Some(empty)));
        assert!(c.offer("b".into(), None));
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["b"]);
        // b may take its burst (2) of the 4 wanted.
        assert_eq!(c.first_read(0), 2);
        let s = c.settle(&[0, 0]);
        assert_eq!(s.cursor.as_deref(), Some("b"));
        assert_eq!(s.buckets, vec![("b".into(), Bucket { tokens: 0.0, at: 0 })]);
        // a's next token comes in 100 ms (b's too).
        assert_eq!(s.wake, Some(100_000));
    }

    #[test]
    fn keys_looked_at_are_bounded_and_the_cursor_moves_past_them() {
        let empty = Bucket { tokens: 0.0, at: 0 };
        let mut c = FairClaim::new(2, Some(RATE), 0);
        let mut n = 0;
        while c.offer(format!("k{n:05}"), Some(empty)) {
            n += 1;
        }
        assert_eq!(n + 1, MAX_KEYS_PER_CLAIM);
        let s = c.settle(&[]);
        assert_eq!(s.cursor.as_deref(), Some("k00999"));
        // Nothing served: not at once (1,000s of held keys must not spin
        // the claim), but before the keys' own next token.
        assert_eq!(s.wake, Some(EMPTY_CLAIM_PAUSE_US));
    }

    #[test]
    fn refilled_buckets_are_dropped_and_the_count_is_bounded() {
        let mut b = KeyBuckets::default();
        let half = Bucket { tokens: 1.0, at: 0 };
        b.save("k", &RATE, vec![("a".into(), half)], 0);
        assert_eq!(b.get("k", "a"), Some(half));
        // 1 s later a is full again: dropped at the next prune.
        b.save("k", &RATE, vec![("b".into(), half)], PRUNE_EVERY);
        assert_eq!((b.get("k", "a"), b.len("k")), (None, 0));
        let now = PRUNE_EVERY + 1;
        let many = (0..MAX_KEY_BUCKETS + 5).map(|i| {
            (
                i.to_string(),
                Bucket {
                    tokens: 0.0,
                    at: now,
                },
            )
        });
        b.save("k", &RATE, many.collect(), now);
        assert_eq!(b.len("k"), MAX_KEY_BUCKETS * 9 / 10);
    }
}
