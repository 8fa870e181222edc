//! Claims on PostgreSQL. A plain claim locks due rows with `FOR UPDATE
//! SKIP LOCKED`, so instances never wait on each other's picks. A claim
//! where some kinds have ordering keys or a rate serializes each such
//! kind's claims across instances (its bucket row, or an advisory lock),
//! reads its queue with the key check and updates its bucket, all in the
//! claim's one transaction.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::{fair, pooled, rows, sql, PostgresStore, Tx};
use crate::config::Fairness;
use crate::job::{add_micros, now_micros, Job, JobState};
use crate::store::fairness::{min_some, FairClaim, PRUNE_EVERY};
use crate::store::limits::{self, Bucket, KindBudget};
use crate::store::{transition, ClaimOutcome, ClaimRequest, StoreError};

/// A kind's budget for one claim, how many due jobs its read found, and
/// for a round_robin kind its plan and each candidate's key.
struct Budget<'k> {
    kind: &'k String,
    b: KindBudget,
    found: usize,
    fair: Option<(FairClaim, HashMap<Uuid, usize>)>,
}

/// What the claim's first locks answered for one kind.
struct Locked {
    bucket: Option<Bucket>,
    /// A round_robin kind's key served last.
    cursor: Option<String>,
}

impl PostgresStore {
    /// Each kind's own queue, up to its free slots; then the best `limit` of
    /// those by priority and age. Rows read but not taken stay QUEUED (their
    /// locks end with the transaction).
    pub(super) async fn claim_plain(&self, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let (kinds, caps): (Vec<&str>, Vec<i64>) = req
            .kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.as_str(), (*n).min(req.limit) as i64))
            .unzip();
        if kinds.is_empty() || req.limit == 0 {
            return Ok(ClaimOutcome::default());
        }
        // The time the rows were locked, not the request's: a job released
        // after the request was made (its parents' outcomes committed in
        // between) would otherwise start "before" its parents finished,
        // and a deadline would be checked against a past moment.
        let mut locked_at = None;
        let (jobs, expired) = self
            .transition_selected(&sql::CLAIM, &[&kinds, &caps, &(req.limit as i64)], |j| {
                let now = *locked_at.get_or_insert_with(|| now_micros().max(req.now));
                if transition::claim_or_expire(j, now, req.lease_slack) {
                    // The lease is renewed while this instance runs the attempt.
                    j.lease_expires_at = Some(add_micros(now, self.lease_ttl));
                }
                true
            })
            .await?
            .into_iter()
            .partition(|j| j.state == JobState::Running);
        Ok(ClaimOutcome {
            jobs,
            expired,
            rate_limited: Vec::new(),
        })
    }

    /// A claim where some kinds have ordering keys or a rate (see the
    /// module's comment).
    pub(super) async fn claim_limited(
        &self,
        req: &ClaimRequest,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut kinds: Vec<(&String, usize)> = req
            .kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k, (*n).min(req.limit)))
            .collect();
        // One lock order for every instance: no deadlock between claims.
        kinds.sort();
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            let locked = lock_kinds(&tx, &kinds, req).await?;
            // Buckets refill up to when the locks were ours (the claim may
            // have waited for another instance's claim of the same kind).
            let locked_at = now_micros().max(req.now);
            let (candidates, budgets) = read_due(&tx, kinds, locked, req, locked_at).await?;
            // Starts are stamped after the reads: whatever they saw ended
            // (a key's previous job) ended before these jobs started.
            let now = now_micros().max(locked_at);
            let lease = add_micros(now, self.lease_ttl);
            let mut jobs = Vec::new();
            let mut old = Vec::new();
            for (_, mut j) in limits::pick(candidates, req.limit) {
                old.push((j.state, j.attempt));
                if transition::claim_or_expire(&mut j, now, req.lease_slack) {
                    j.lease_expires_at = Some(lease);
                }
                jobs.push(j);
            }
            sql::save(&self.w, &tx, &jobs, &old).await?;
            let (jobs, expired): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.state == JobState::Running);
            let moved = super::deps::cascade(&self.w, &tx, &expired).await?;
            let prune = self.prune_due(now);
            let rate_limited = settle_buckets(&tx, budgets, &jobs, now, prune).await?;
            tx.commit().await?;
            self.w.publish(moved);
            Ok(ClaimOutcome {
                jobs,
                expired,
                rate_limited,
            })
        })
        .await
    }
}

impl PostgresStore {
    /// Whether this claim drops refilled key buckets: once per
    /// [`PRUNE_EVERY`] per instance.
    fn prune_due(&self, now: crate::job::Micros) -> bool {
        let last = self.key_rates_pruned.load(Ordering::Relaxed);
        now - last >= PRUNE_EVERY
            && self
                .key_rates_pruned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Locks first: each kind's bucket row (answered, for a rated kind), or its
/// advisory lock (a kind with ordering keys); then a round_robin kind's
/// cursor row.
async fn lock_kinds(
    tx: &Tx<'_>,
    kinds: &[(&String, usize)],
    req: &ClaimRequest,
) -> Result<Vec<Locked>, StoreError> {
    let mut locked = Vec::with_capacity(kinds.len());
    for (kind, _) in kinds {
        let limits = req.limits.get(*kind).copied().unwrap_or_default();
        let bucket = match limits.rate {
            Some(rate) => {
                let init = tx.prepare_cached(sql::RATE_INIT).await?;
                tx.execute(&init, &[kind, &f64::from(rate.burst), &req.now])
                    .await?;
                let lock = tx.prepare_cached(sql::RATE_LOCK).await?;
                let row = tx.query_one(&lock, &[kind]).await?;
                Some(Bucket {
                    tokens: rows::col(&row, 0)?,
                    at: rows::col(&row, 1)?,
                })
            }
            None => {
                if limits.key_concurrency.is_some() {
                    let lock = tx.prepare_cached(sql::LOCK_KIND).await?;
                    tx.execute(&lock, &[kind]).await?;
                }
                None
            }
        };
        let cursor = match limits.fairness {
            Fairness::RoundRobin => fair::lock(tx, kind).await?,
            Fairness::None => None,
        };
        locked.push(Locked { bucket, cursor });
    }
    Ok(locked)
}

/// Each kind's due jobs, as many as its budget allows (with the key check
/// for a kind with ordering keys): the candidates with their priority and
/// age, and each kind's budget.
#[allow(clippy::type_complexity)]
async fn read_due<'k>(
    tx: &Tx<'_>,
    kinds: Vec<(&'k String, usize)>,
    locked: Vec<Locked>,
    req: &ClaimRequest,
    locked_at: crate::job::Micros,
) -> Result<(Vec<(i32, i64, String, Job)>, Vec<Budget<'k>>), StoreError> {
    let mut candidates = Vec::new();
    let mut budgets = Vec::new();
    for ((kind, cap), l) in kinds.into_iter().zip(locked) {
        let limits = req.limits.get(kind).copied().unwrap_or_default();
        let b = KindBudget::new(cap, limits, l.bucket, locked_at);
        if limits.fairness == Fairness::RoundRobin {
            let (plan, heads) = fair::read(tx, kind, &b, l.cursor.as_deref(), locked_at).await?;
            let found = heads.len();
            let mut keys = HashMap::new();
            for (i, job, seq) in heads.into_iter().take(b.allowed()) {
                keys.insert(job.id, i);
                candidates.push((job.priority, seq, kind.clone(), job));
            }
            budgets.push(Budget {
                kind,
                b,
                found,
                fair: Some((plan, keys)),
            });
            continue;
        }
        let read = b.to_read() as i64;
        let found = match limits.key_concurrency {
            Some(max) => {
                let st = tx.prepare_cached(&sql::CLAIM_KEYED).await?;
                tx.query(&st, &[kind, &read, &i64::from(max)]).await?
            }
            None => {
                let st = tx.prepare_cached(&sql::CLAIM_KIND).await?;
                tx.query(&st, &[kind, &read]).await?
            }
        };
        for r in found.iter().take(b.allowed()) {
            let job = rows::job(r)?;
            let seq: i64 = rows::col(r, rows::COLS_LEN)?;
            candidates.push((job.priority, seq, kind.clone(), job));
        }
        budgets.push(Budget {
            kind,
            b,
            found: found.len(),
            fair: None,
        });
    }
    Ok((candidates, budgets))
}

/// Saves each rated kind's bucket after what the claim took, and each
/// round_robin kind's cursor and key buckets; answers the kinds that left
/// jobs waiting for tokens, with when the next one comes.
async fn settle_buckets(
    tx: &Tx<'_>,
    budgets: Vec<Budget<'_>>,
    jobs: &[Job],
    now: crate::job::Micros,
    prune: bool,
) -> Result<Vec<(String, crate::job::Micros)>, StoreError> {
    let taken = limits::taken_per_kind(jobs.iter().map(|j| j.kind.as_str()));
    let mut rate_limited = Vec::new();
    for Budget {
        kind,
        b,
        found,
        fair,
    } in budgets
    {
        let got = taken.get(kind).copied().unwrap_or(0);
        let (bucket, mut wake) = b.settle(found, got, now);
        if let Some(bucket) = bucket {
            let st = tx.prepare_cached(sql::RATE_SAVE).await?;
            tx.execute(&st, &[kind, &bucket.tokens, &bucket.at]).await?;
        }
        if let Some((plan, keys)) = fair {
            let served: Vec<usize> = jobs
                .iter()
                .filter_map(|j| keys.get(&j.id))
                .copied()
                .collect();
            let s = plan.settle(&served);
            fair::save(tx, kind, b.limits.key_rate, &s, prune, now).await?;
            wake = min_some(wake, s.wake);
        }
        if let Some(at) = wake {
            rate_limited.push((kind.clone(), at));
        }
    }
    Ok(rate_limited)
}
