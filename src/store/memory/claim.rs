//! The claim in memory: each kind's due jobs as far as its budget reads
//! (a round_robin kind's key by key, see `store::fairness`), then the best
//! `limit` over all kinds, as the SQL stores do.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use uuid::Uuid;

use super::Inner;
use crate::config::Fairness;
use crate::job::{now_micros, Job, JobState, Micros};
use crate::store::fairness::{min_some, FairClaim};
use crate::store::limits::{self, KindBudget};
use crate::store::{transition, ClaimOutcome, ClaimRequest};

/// A due job's place in its kind's claim order.
type Head = (Reverse<i32>, u64, Uuid);

/// One kind's due jobs by fairness key.
pub(super) type ByKey = BTreeMap<String, BTreeSet<Head>>;

impl Inner {
    /// Keeps the per-key ready index (`fair`) in step with `ready`.
    pub(super) fn fair_index(&mut self, j: &Job, k: Head, add: bool) {
        let keys = match self.fair.get_mut(&j.kind) {
            Some(keys) => keys,
            None if add => self.fair.entry(j.kind.clone()).or_default(),
            None => return,
        };
        match keys.get_mut(&j.fairness_key) {
            Some(set) if add => {
                set.insert(k);
            }
            Some(set) => {
                set.remove(&k);
                if set.is_empty() {
                    keys.remove(&j.fairness_key);
                }
            }
            None if add => {
                keys.insert(j.fairness_key.clone(), BTreeSet::from([k]));
            }
            None => {}
        }
    }

    pub(super) fn claim(&mut self, req: &ClaimRequest) -> ClaimOutcome {
        // Stamped when the claim takes effect, under the lock.
        let now = now_micros().max(req.now);
        let budgets: HashMap<&str, KindBudget> = req
            .kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| {
                let limits = req.limits.get(k).copied().unwrap_or_default();
                let bucket = self.buckets.get(k).copied();
                (
                    k.as_str(),
                    KindBudget::new((*n).min(req.limit), limits, bucket, now),
                )
            })
            .collect();
        let mut found: HashMap<&str, usize> = HashMap::new();
        let mut candidates = Vec::new();
        let mut plans: HashMap<&str, (FairClaim, HashMap<Uuid, usize>)> = HashMap::new();
        for (name, b) in &budgets {
            if b.limits.fairness == Fairness::RoundRobin {
                let (plan, heads) = self.read_fair(name, b.to_read(), b, now);
                found.insert(name, heads.len());
                let mut keys = HashMap::new();
                for (i, (Reverse(p), seq, id)) in heads.into_iter().take(b.allowed()) {
                    keys.insert(id, i);
                    candidates.push((p, seq as i64, name.to_string(), id));
                }
                plans.insert(name, (plan, keys));
            } else {
                found.insert(name, self.read_plain(name, b, &mut candidates));
            }
        }
        let picked: Vec<Uuid> = limits::pick(candidates, req.limit)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let (jobs, expired): (Vec<Job>, Vec<Job>) = picked
            .into_iter()
            .filter_map(|id| {
                self.update(id, |j| transition::claim_or_expire(j, now, req.lease_slack))
                    .map(|(_, j)| j)
            })
            .partition(|j| j.state == JobState::Running);
        for j in &expired {
            self.ended(j, now);
        }
        let taken = limits::taken_per_kind(jobs.iter().map(|j| j.kind.as_str()));
        let mut rate_limited = Vec::new();
        for (kind, b) in &budgets {
            let got = taken.get(*kind).copied().unwrap_or(0);
            let (bucket, mut wake) = b.settle(found.get(kind).copied().unwrap_or(0), got, now);
            if let Some(bucket) = bucket {
                self.buckets.insert(kind.to_string(), bucket);
            }
            if let Some((plan, keys)) = plans.get(kind) {
                let served: Vec<usize> = jobs
                    .iter()
                    .filter_map(|j| keys.get(&j.id))
                    .copied()
                    .collect();
                let s = plan.settle(&served);
                if let Some(c) = s.cursor {
                    self.cursors.insert(kind.to_string(), c);
                }
                if let Some(rate) = b.limits.key_rate {
                    self.key_buckets.save(kind, &rate, s.buckets, now);
                }
                wake = min_some(wake, s.wake);
            }
            if let Some(at) = wake {
                rate_limited.push((kind.to_string(), at));
            }
        }
        ClaimOutcome {
            jobs,
            expired,
            rate_limited,
        }
    }

    /// A kind's due jobs in priority order, as far as its budget reads
    /// (one past what a rate allows, to learn whether the rate held it
    /// back), with the ordering-key check. Answers how many it found.
    fn read_plain(
        &self,
        name: &str,
        b: &KindBudget,
        candidates: &mut Vec<(i32, i64, String, Uuid)>,
    ) -> usize {
        let Some(ready) = self.ready.get(name) else {
            return 0;
        };
        let mut n = 0;
        for (Reverse(priority), seq, id) in ready {
            if n >= b.to_read() {
                break;
            }
            let job = &self.jobs[id].job;
            if let (Some(max), Some(key)) = (b.limits.key_concurrency, &job.ordering_key) {
                // Places held: the key's running and retrying jobs, then
                // its queued ones submitted earlier.
                let max = max as usize;
                let held = self
                    .by_key
                    .get(&(job.kind.clone(), key.clone()))
                    .map_or(0, |k| k.busy + k.queued.range(..*seq).take(max).count());
                if held >= max {
                    continue;
                }
            }
            n += 1;
            if n <= b.allowed() {
                candidates.push((*priority, *seq as i64, name.to_string(), *id));
            }
        }
        n
    }

    /// A round_robin kind's due jobs: the keys after its cursor (wrapping
    /// around), their heads turn by turn; `(key index, head)`.
    fn read_fair(
        &self,
        name: &str,
        want: usize,
        b: &KindBudget,
        now: Micros,
    ) -> (FairClaim, Vec<(usize, Head)>) {
        let mut plan = FairClaim::new(want, b.limits.key_rate, now);
        let Some(keys) = self.fair.get(name) else {
            return (plan, Vec::new());
        };
        // After the cursor, then from the first key up to it.
        let cursor = self.cursors.get(name).map(String::as_str);
        let after = match cursor {
            Some(c) => keys.range::<str, _>((Bound::Excluded(c), Bound::Unbounded)),
            None => keys.range::<str, _>((Bound::Unbounded, Bound::Unbounded)),
        };
        let upto = cursor.map(|c| keys.range::<str, _>((Bound::Unbounded, Bound::Included(c))));
        for (key, _) in after.chain(upto.into_iter().flatten()) {
            if want == 0 || !plan.offer(key.clone(), self.key_buckets.get(name, key)) {
                break;
            }
        }
        let read = |plan: &FairClaim, n: &dyn Fn(usize) -> usize| -> Vec<Vec<Head>> {
            plan.keys()
                .enumerate()
                .map(|(i, k)| keys[k].iter().take(n(i)).copied().collect())
                .collect()
        };
        let mut heads = read(&plan, &|i| plan.first_read(i));
        if plan.short(&heads) {
            heads = read(&plan, &|i| plan.second_read(i));
        }
        let heads = plan.interleave(heads);
        (plan, heads)
    }
}
