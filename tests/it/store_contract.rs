//! The store contract: the same suite runs against every implementation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jobd::job::{now_micros, JobState, NewJob};
use jobd::store::{
    self, CancelOutcome, ClaimRequest, InsertOutcome, ListQuery, Outcome, RetryOutcome, SharedStore,
};
use uuid::Uuid;

fn new_job(kind: &str, priority: i32) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind.into(),
        max_attempts: 3,
        priority,
        idempotency_key: None,
        labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
        payload: Bytes::from_static(b"payload"),
        timeout: Duration::from_secs(10),
        run_at: None,
        request_hash: [7; 32],
        created_at: now_micros(),
        ordering_key: None,
        trace: Some(jobd::job::TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "a=1,b=2".into(),
        }),
        start: None,
        parents: Vec::new(),
        on_parent_failure: Default::default(),
        start_before: None,
        dedup: None,
        fairness_key: String::new(),
    }
}

fn claim_req(limit: usize, kinds: &[(&str, usize)]) -> ClaimRequest {
    ClaimRequest {
        now: now_micros(),
        limit,
        kinds: kinds
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect::<HashMap<_, _>>(),
        lease_slack: Duration::from_secs(30),
        limits: HashMap::new(),
    }
}

async fn insert(s: &SharedStore, j: NewJob) -> jobd::job::Job {
    match s.insert(vec![j], u64::MAX).await.unwrap().pop().unwrap() {
        InsertOutcome::Created(j) => j,
        other => panic!("{other:?}"),
    }
}

pub async fn transitions_and_fencing(s: SharedStore) {
    let j = insert(&s, new_job("k", 0)).await;
    assert_eq!((j.state, j.attempt, j.sequence), (JobState::Queued, 0, 1));
    let got = s.get(j.id).await.unwrap().unwrap();
    assert_eq!(got, j, "round trip keeps every field");
    let claimed = s.claim(&claim_req(10, &[("k", 10)])).await.unwrap().jobs;
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!((c.state, c.attempt, c.sequence), (JobState::Running, 1, 2));
    assert!(c.lease_expires_at.unwrap() > now_micros());
    // Retry, promote, claim again: attempt 2.
    let r = s
        .finish(
            j.id,
            1,
            Outcome::Retry {
                error: "e1".into(),
                at: now_micros() - 1,
            },
            now_micros(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, JobState::RetryWait);
    assert_eq!(s.promote_due(now_micros(), 10).await.unwrap().len(), 1);
    let c2 = s
        .claim(&claim_req(10, &[("k", 10)]))
        .await
        .unwrap()
        .jobs
        .pop()
        .unwrap();
    assert_eq!(c2.attempt, 2);
    // A stale attempt changes nothing.
    let stale = s
        .finish(
            j.id,
            1,
            Outcome::Succeeded {
                result: Bytes::from_static(b"old"),
            },
            now_micros(),
        )
        .await
        .unwrap();
    assert!(stale.is_none());
    let done = s
        .finish(
            j.id,
            2,
            Outcome::Succeeded {
                result: Bytes::from_static(b"new"),
            },
            now_micros(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(&done.result[..], b"new");
    assert!(done.finished_at.is_some());
    assert_eq!(done.sequence, 6);
    // Terminal: no more finishes, cancel refused.
    assert!(s
        .finish(j.id, 2, Outcome::Failed { error: "x".into() }, now_micros())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        s.cancel(j.id, now_micros()).await.unwrap(),
        CancelOutcome::AlreadyFinished(_)
    ));
    assert!(matches!(
        s.cancel(Uuid::now_v7(), now_micros()).await.unwrap(),
        CancelOutcome::NotFound
    ));
}

pub async fn cancel_and_requeue(s: SharedStore) {
    let q = insert(&s, new_job("k", 0)).await;
    match s.cancel(q.id, now_micros()).await.unwrap() {
        CancelOutcome::Cancelled { job, prev } => {
            assert_eq!(job.state, JobState::Cancelled);
            assert_eq!(prev, JobState::Queued);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.cancel(q.id, now_micros()).await.unwrap(),
        CancelOutcome::AlreadyCancelled(_)
    ));
    let r = insert(&s, new_job("k", 0)).await;
    s.claim(&claim_req(1, &[("k", 1)])).await.unwrap();
    // Drain requeue: attempt not counted.
    let back = s
        .finish(
            r.id,
            1,
            Outcome::Requeue {
                reason: "drain".into(),
            },
            now_micros(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((back.state, back.attempt), (JobState::Queued, 0));
    s.claim(&claim_req(1, &[("k", 1)])).await.unwrap();
    match s.cancel(r.id, now_micros()).await.unwrap() {
        CancelOutcome::Cancelled { prev, .. } => assert_eq!(prev, JobState::Running),
        other => panic!("{other:?}"),
    }
    // The cancelled attempt cannot write its outcome.
    assert!(s
        .finish(
            r.id,
            1,
            Outcome::Succeeded {
                result: Bytes::new()
            },
            now_micros()
        )
        .await
        .unwrap()
        .is_none());
}

pub async fn idempotency_race_yields_one_job(s: SharedStore) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let s = s.clone();
        tasks.spawn(async move {
            let mut j = new_job("k", 0);
            j.idempotency_key = Some("key-1".into());
            s.insert(vec![j], u64::MAX).await.unwrap().pop().unwrap()
        });
    }
    let (mut created, mut dedup) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            InsertOutcome::Created(j) => created.push(j.id),
            InsertOutcome::Deduplicated(j) => dedup.push(j.id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(dedup.len(), 99);
    assert!(dedup.iter().all(|id| *id == created[0]));
    let mut other = new_job("k", 0);
    other.idempotency_key = Some("key-1".into());
    other.request_hash = [8; 32];
    match s
        .insert(vec![other], u64::MAX)
        .await
        .unwrap()
        .pop()
        .unwrap()
    {
        InsertOutcome::Conflict { existing_id } => assert_eq!(existing_id, created[0]),
        o => panic!("{o:?}"),
    }
}

pub async fn claim_order_kinds_and_backlog(s: SharedStore) {
    let a = insert(&s, new_job("k", 0)).await;
    let b = insert(&s, new_job("k", 5)).await;
    let c = insert(&s, new_job("k", 0)).await;
    let d = insert(&s, new_job("other", 9)).await;
    // `other` has no free slot: skipped, not blocking.
    let got = s.claim(&claim_req(2, &[("k", 5)])).await.unwrap().jobs;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), [b.id, a.id]);
    // Per-kind caps within one claim.
    let got = s
        .claim(&claim_req(10, &[("k", 1), ("other", 1)]))
        .await
        .unwrap()
        .jobs;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), [d.id, c.id]);
    // Backlog bound: QUEUED + RETRY_WAIT.
    let counts = s.counts().await.unwrap();
    assert_eq!(counts.get(&JobState::Running), Some(&4));
    insert(&s, new_job("k", 0)).await;
    let out = s
        .insert(vec![new_job("k", 0), new_job("k", 0)], 2)
        .await
        .unwrap();
    assert!(matches!(out[0], InsertOutcome::Created(_)));
    assert!(matches!(out[1], InsertOutcome::BacklogFull));
}

/// A kind with many urgent jobs but one free slot never keeps another
/// kind's job out of a claim (each kind's queue is read on its own).
pub async fn busy_kinds_never_crowd_out_others(s: SharedStore) {
    let jobs: Vec<NewJob> = (0..300).map(|_| new_job("busy", 10)).collect();
    s.insert(jobs, u64::MAX).await.unwrap();
    let quiet = insert(&s, new_job("quiet", 0)).await;
    let got = s
        .claim(&claim_req(10, &[("busy", 1), ("quiet", 1)]))
        .await
        .unwrap()
        .jobs;
    let kinds: Vec<&str> = got.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["busy", "quiet"],
        "priority order, each kind within its slots"
    );
    assert_eq!(got[1].id, quiet.id);
    // The global limit still applies, best first.
    let got = s
        .claim(&claim_req(1, &[("busy", 5), ("quiet", 5)]))
        .await
        .unwrap()
        .jobs;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, "busy");
}

pub async fn delayed_jobs_and_due_times(s: SharedStore) {
    let now = now_micros();
    let mut j = new_job("k", 100);
    j.run_at = Some(now + 60_000_000);
    let delayed = insert(&s, j).await;
    assert_eq!(delayed.next_attempt_at, Some(now + 60_000_000));
    assert!(s
        .claim(&claim_req(10, &[("k", 10)]))
        .await
        .unwrap()
        .jobs
        .is_empty());
    assert_eq!(s.next_due_at(now).await.unwrap(), Some(now + 60_000_000));
    let mut later = claim_req(10, &[("k", 10)]);
    later.now = now + 60_000_001;
    // Not claimable until the sweeper releases it.
    assert_eq!(s.release_delayed(now, 10).await.unwrap(), 0);
    assert_eq!(s.release_delayed(later.now, 10).await.unwrap(), 1);
    let c = s.claim(&later).await.unwrap().jobs;
    assert_eq!(c[0].id, delayed.id);
    assert_eq!(
        c[0].ready_at,
        Some(later.now),
        "queue wait counts from run_at"
    );
    // Leases: expired ones come back, the attempt counts.
    let lease = s
        .get(delayed.id)
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at
        .unwrap();
    let back = s.expire_leases(lease, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].state, back[0].attempt), (JobState::Queued, 1));
    assert!(back[0].last_error.contains("lease expired"));
}

pub async fn recover_counts_the_lost_attempt(s: SharedStore) {
    let mut j = new_job("k", 0);
    j.max_attempts = 1;
    let last = insert(&s, j).await;
    let more = insert(&s, new_job("k", 0)).await;
    s.claim(&claim_req(10, &[("k", 10)])).await.unwrap();
    let rec = s.recover(now_micros()).await.unwrap();
    assert_eq!(rec.len(), 2);
    let get = |id| s.get(id);
    assert_eq!(get(last.id).await.unwrap().unwrap().state, JobState::Failed);
    let m = get(more.id).await.unwrap().unwrap();
    assert_eq!((m.state, m.attempt), (JobState::Queued, 1));
}

pub async fn pagination_and_filters(s: SharedStore) {
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            insert(&s, new_job(if i % 5 == 0 { "five" } else { "k" }, 0))
                .await
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .list(&ListQuery {
                after,
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|j| j.id);
        seen.extend(page.into_iter().map(|j| j.id));
    }
    assert_eq!(seen, ids);
    let five = s
        .list(&ListQuery {
            kind: Some("five".into()),
            state: Some(JobState::Queued),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(five.len(), 5);
    let none = s
        .list(&ListQuery {
            state: Some(JobState::Failed),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn pruning_removes_only_old_finished_jobs(s: SharedStore) {
    let done = insert(&s, {
        let mut j = new_job("k", 0);
        j.idempotency_key = Some("prune-me".into());
        j
    })
    .await;
    let keep = insert(&s, new_job("k", 0)).await;
    s.claim(&claim_req(1, &[("k", 1)])).await.unwrap();
    s.finish(
        done.id,
        1,
        Outcome::Succeeded {
            result: Bytes::new(),
        },
        now_micros(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.prune(now_micros() - 60_000_000, 100).await.unwrap(),
        0,
        "not old enough"
    );
    assert_eq!(s.prune(now_micros() + 1, 100).await.unwrap(), 1);
    assert!(s.get(done.id).await.unwrap().is_none());
    assert!(
        s.get(keep.id).await.unwrap().is_some(),
        "unfinished jobs stay"
    );
    // The key is free again once its job is gone.
    let mut again = new_job("k", 0);
    again.idempotency_key = Some("prune-me".into());
    again.request_hash = [1; 32];
    assert!(matches!(
        s.insert(vec![again], u64::MAX).await.unwrap()[0],
        InsertOutcome::Created(_)
    ));
}

/// A group of outcomes is applied as each alone would be: fenced by state
/// and attempt, an outcome for a job twice in one group applied once, an
/// unknown job skipped, the rest of the group stored.
pub async fn finish_many_fences_each_outcome(s: SharedStore) {
    assert!(s.finish_many(Vec::new()).await.unwrap().is_empty());
    for _ in 0..3 {
        insert(&s, new_job("k", 0)).await;
    }
    let c = s.claim(&claim_req(10, &[("k", 10)])).await.unwrap().jobs;
    assert_eq!(c.len(), 3);
    let now = now_micros();
    let done = |j: &jobd::job::Job, attempt: u32| store::Finish {
        id: j.id,
        attempt,
        outcome: Outcome::Succeeded {
            result: Bytes::from_static(b"ok"),
        },
        now,
        worker: "w-1".into(),
    };
    let retry = store::Finish {
        outcome: Outcome::Retry {
            error: "again".into(),
            at: now + 60_000_000,
        },
        ..done(&c[2], c[2].attempt)
    };
    let r = s
        .finish_many(vec![
            done(&c[0], c[0].attempt),
            done(&c[1], c[1].attempt + 1),
            done(&c[0], c[0].attempt),
            retry,
            store::Finish {
                id: Uuid::now_v7(),
                ..done(&c[0], 1)
            },
        ])
        .await
        .unwrap();
    let states: Vec<Option<JobState>> =
        r.into_iter().map(|r| r.unwrap().map(|j| j.state)).collect();
    assert_eq!(
        states,
        [
            Some(JobState::Succeeded),
            None,
            None,
            Some(JobState::RetryWait),
            None
        ]
    );
    let got = |i: usize| {
        let s = s.clone();
        let id = c[i].id;
        async move { s.get(id).await.unwrap().unwrap() }
    };
    let a = got(0).await;
    assert_eq!(
        (a.state, a.result.as_ref()),
        (JobState::Succeeded, &b"ok"[..])
    );
    assert_eq!(a.sequence, c[0].sequence + 1, "applied once");
    assert_eq!(
        got(1).await.state,
        JobState::Running,
        "stale attempt fenced"
    );
    assert_eq!(got(2).await.state, JobState::RetryWait);
    // Each attempt's end is in the job's history, with where it ran.
    let h = s.get(c[0].id).await.unwrap().unwrap().attempts;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (h[0].attempt, h[0].outcome.as_str(), h[0].worker.as_str()),
        (c[0].attempt, "succeeded", "w-1")
    );
    let h = s.get(c[2].id).await.unwrap().unwrap().attempts;
    assert_eq!(
        (h[0].outcome.as_str(), h[0].error.as_str()),
        ("retried", "again")
    );
}

/// RetryJobs: FAILED and CANCELLED jobs go back to QUEUED with their
/// attempts reset, same id, sequence going on; anything else is left alone
/// and said so, per id; the backlog bound holds; the job runs again.
pub async fn retry_requeues_dead_jobs(s: SharedStore) {
    let failed = insert(&s, new_job("k", 0)).await;
    let c = s.claim(&claim_req(10, &[("k", 10)])).await.unwrap().jobs;
    assert_eq!(c.len(), 1);
    let failed = s
        .finish(
            failed.id,
            1,
            Outcome::Failed {
                error: "boom".into(),
            },
            now_micros(),
        )
        .await
        .unwrap()
        .unwrap();
    let cancelled = insert(&s, new_job("k", 0)).await;
    let CancelOutcome::Cancelled { job: cancelled, .. } =
        s.cancel(cancelled.id, now_micros()).await.unwrap()
    else {
        panic!("cancel")
    };
    let queued = insert(&s, new_job("k", 0)).await;
    let missing = Uuid::now_v7();
    let now = now_micros();
    let out = s
        .retry(
            &[failed.id, missing, queued.id, cancelled.id],
            now,
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 4);
    match &out[0] {
        RetryOutcome::Retried { job, prev } => {
            assert_eq!(*prev, JobState::Failed);
            assert_eq!(
                (job.id, job.state, job.attempt, job.sequence),
                (failed.id, JobState::Queued, 0, failed.sequence + 1)
            );
            assert_eq!(
                (job.finished_at, job.started_at, job.lease_expires_at),
                (None, None, None)
            );
            assert_eq!(job.last_error, "boom", "the last error stays visible");
            assert_eq!(
                s.get(job.id).await.unwrap().unwrap(),
                *job,
                "stored as returned"
            );
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(out[1], RetryOutcome::NotFound));
    assert!(matches!(&out[2], RetryOutcome::NotRetryable(j) if j.state == JobState::Queued));
    assert!(
        matches!(&out[3], RetryOutcome::Retried { job, prev: JobState::Cancelled } if job.state == JobState::Queued)
    );
    // Retried again: no longer dead.
    let again = s.retry(&[failed.id], now, u64::MAX).await.unwrap();
    assert!(matches!(&again[0], RetryOutcome::NotRetryable(_)));
    // It runs again as attempt 1.
    let c = s.claim(&claim_req(10, &[("k", 10)])).await.unwrap().jobs;
    assert_eq!(c.len(), 3);
    assert!(c.iter().all(|j| j.attempt == 1));
    // The backlog bound: with 1 waiting already allowed, nothing more.
    for j in &c {
        s.finish(j.id, 1, Outcome::Failed { error: "x".into() }, now_micros())
            .await
            .unwrap()
            .unwrap();
    }
    insert(&s, new_job("k", 0)).await;
    let out = s.retry(&[failed.id], now_micros(), 1).await.unwrap();
    assert!(matches!(out[0], RetryOutcome::BacklogFull), "{out:?}");
    assert_eq!(
        s.get(failed.id).await.unwrap().unwrap().state,
        JobState::Failed
    );
    // FAILED counts by kind.
    let failed_counts = s.count_failed_by_kind().await.unwrap();
    assert_eq!(failed_counts, vec![("k".to_string(), 3)]);
}

/// Paused kinds are stored, idempotently both ways.
pub async fn paused_kinds_are_stored(s: SharedStore) {
    assert!(s.paused_kinds().await.unwrap().is_empty());
    for _ in 0..2 {
        s.set_kind_paused("a", true, now_micros()).await.unwrap();
        s.set_kind_paused("b", true, now_micros()).await.unwrap();
    }
    let got: Vec<String> = s.paused_kinds().await.unwrap().into_iter().collect();
    assert_eq!(got, ["a", "b"]);
    for _ in 0..2 {
        s.set_kind_paused("a", false, now_micros()).await.unwrap();
    }
    let got: Vec<String> = s.paused_kinds().await.unwrap().into_iter().collect();
    assert_eq!(got, ["b"]);
}

/// Schedule rows: created once (a restart keeps the stored fire time), the
/// fire taken by one compare-and-set only, pause and last job stored.
pub async fn schedules_are_stored(s: SharedStore) {
    assert!(s.schedules().await.unwrap().is_empty());
    s.init_schedule("b", 2_000).await.unwrap();
    s.init_schedule("a", 1_000).await.unwrap();
    s.init_schedule("a", 9_000).await.unwrap();
    let rows = s.schedules().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].id.as_str(), rows[0].next_fire_at), ("a", 1_000));
    assert!(!rows[0].paused && rows[0].last_job_id.is_none());
    assert!(s.advance_schedule("a", 1_000, 3_000).await.unwrap());
    assert!(
        !s.advance_schedule("a", 1_000, 3_000).await.unwrap(),
        "taken once"
    );
    assert!(!s.advance_schedule("zz", 1_000, 3_000).await.unwrap());
    let job = Uuid::now_v7();
    s.set_schedule_last_job("a", job).await.unwrap();
    assert!(s.set_schedule_paused("a", true).await.unwrap());
    assert!(!s.set_schedule_paused("zz", true).await.unwrap());
    let a = s.schedules().await.unwrap().remove(0);
    assert_eq!(a.next_fire_at, 3_000);
    assert_eq!(a.last_job_id, Some(job));
    assert!(a.paused);
    assert!(s.set_schedule_paused("a", false).await.unwrap());
    assert!(!s.schedules().await.unwrap()[0].paused);
}

/// Schedules created through the API: the definition is stored with the
/// row; an id in use by a stored schedule is refused, a config row (no
/// definition) is taken over; the bound on stored schedules holds in the
/// same commit; update and delete touch stored schedules only; two
/// concurrent creates of one id make one.
pub async fn stored_schedule_definitions(s: SharedStore) {
    use jobd::store::CreateSchedule::{Created, Exists, Full};
    s.init_schedule("cfg", 5_000).await.unwrap();
    assert_eq!(
        s.create_schedule("a", "{\"v\":1}", 1_000, 3).await.unwrap(),
        Created
    );
    assert_eq!(
        s.create_schedule("a", "{\"v\":2}", 2_000, 3).await.unwrap(),
        Exists
    );
    let a = s
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == "a")
        .unwrap();
    assert_eq!(a.definition.as_deref(), Some("{\"v\":1}"));
    assert_eq!(
        (a.next_fire_at, a.paused, a.last_job_id),
        (1_000, false, None)
    );
    // The config row stays a config row to update and delete...
    assert!(!s.update_schedule("cfg", "{}", None).await.unwrap());
    assert!(!s.delete_schedule("cfg").await.unwrap());
    assert!(!s.update_schedule("zz", "{}", None).await.unwrap());
    assert!(!s.delete_schedule("zz").await.unwrap());
    // ...and is taken over by a create (its config entry was removed).
    s.set_schedule_paused("cfg", true).await.unwrap();
    assert_eq!(
        s.create_schedule("cfg", "{}", 7_000, 3).await.unwrap(),
        Created
    );
    let cfg = s
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == "cfg")
        .unwrap();
    assert_eq!(
        (cfg.next_fire_at, cfg.paused, cfg.definition.as_deref()),
        (7_000, false, Some("{}"))
    );
    // The bound counts stored definitions only (config rows are free).
    s.init_schedule("cfg2", 5_000).await.unwrap();
    assert_eq!(
        s.create_schedule("b", "{}", 1_000, 3).await.unwrap(),
        Created
    );
    assert_eq!(s.create_schedule("c", "{}", 1_000, 3).await.unwrap(), Full);
    // Update: the definition, and the next fire only when given.
    assert!(s.update_schedule("a", "{\"v\":3}", None).await.unwrap());
    let a = s
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == "a")
        .unwrap();
    assert_eq!(
        (a.next_fire_at, a.definition.as_deref()),
        (1_000, Some("{\"v\":3}"))
    );
    assert!(s
        .update_schedule("a", "{\"v\":4}", Some(8_000))
        .await
        .unwrap());
    let a = s
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == "a")
        .unwrap();
    assert_eq!(
        (a.next_fire_at, a.definition.as_deref()),
        (8_000, Some("{\"v\":4}"))
    );
    // Fires still take the stored row by compare-and-set.
    assert!(s.advance_schedule("a", 8_000, 9_000).await.unwrap());
    // Delete: gone, and room for another.
    assert!(s.delete_schedule("a").await.unwrap());
    assert!(!s.delete_schedule("a").await.unwrap());
    assert!(!s.advance_schedule("a", 9_000, 10_000).await.unwrap());
    assert!(s.schedules().await.unwrap().iter().all(|r| r.id != "a"));
    assert_eq!(
        s.create_schedule("c", "{}", 1_000, 3).await.unwrap(),
        Created
    );
    // Racing creates of one id (and of two ids at the bound): one wins.
    let race = |id: &'static str| {
        let s = s.clone();
        tokio::spawn(async move { s.create_schedule(id, "{}", 1_000, 5).await.unwrap() })
    };
    let (x, y, z) = (race("r"), race("r"), race("q"));
    let mut got = vec![x.await.unwrap(), y.await.unwrap(), z.await.unwrap()];
    got.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(got.iter().filter(|o| **o == Created).count(), 2, "{got:?}");
    assert_eq!(
        s.schedules()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.definition.is_some())
            .count(),
        5
    );
}

/// `NewJob::start`: a job the engine holds a free slot for is stored
/// RUNNING in its insert's commit, unless a job of its kind is ready before
/// it or it is delayed. PostgreSQL declines (instances share the queue).
pub async fn start_at_insert_only_when_nothing_of_its_kind_is_ready(s: SharedStore) {
    let starting = |kind: &str| NewJob {
        start: Some(Duration::from_secs(30)),
        ..new_job(kind, 0)
    };
    let a = insert(&s, starting("k")).await;
    if s.is_shared() {
        assert_eq!((a.state, a.attempt), (JobState::Queued, 0));
        return;
    }
    assert_eq!((a.state, a.attempt, a.sequence), (JobState::Running, 1, 2));
    let started = a.started_at.unwrap();
    assert!(started >= a.created_at);
    // The lease covers the timeout (10 s) and the slack (30 s).
    assert_eq!(a.lease_expires_at, Some(started + 40_000_000));
    // `ready_at` is a claim's note for metrics, not a stored column.
    let stored = s.get(a.id).await.unwrap().unwrap();
    assert_eq!(
        jobd::job::Job {
            ready_at: a.ready_at,
            ..stored
        },
        a,
        "stored as answered"
    );
    assert!(
        s.claim(&claim_req(10, &[("k", 10)]))
            .await
            .unwrap()
            .jobs
            .is_empty(),
        "a started job is not claimed again"
    );
    // A job of its kind ready before it: it waits behind that one.
    let b = insert(&s, new_job("k", 0)).await;
    let c = insert(&s, starting("k")).await;
    assert_eq!((c.state, c.attempt), (JobState::Queued, 0));
    // Another kind's ready jobs do not hold it back.
    let d = insert(&s, starting("other")).await;
    assert_eq!(d.state, JobState::Running);
    // A delayed job never starts at insert.
    let e = insert(
        &s,
        NewJob {
            run_at: Some(now_micros() + 3_600_000_000),
            ..starting("late")
        },
    )
    .await;
    assert_eq!((e.state, e.attempt), (JobState::Queued, 0));
    // Its outcome is fenced by attempt like a claimed job's.
    let ok = Outcome::Succeeded {
        result: Bytes::from_static(b"r"),
    };
    assert!(s
        .finish(a.id, 2, ok.clone(), now_micros())
        .await
        .unwrap()
        .is_none());
    let done = s.finish(a.id, 1, ok, now_micros()).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    // The queue is as the claim left it: b, then c, in order.
    let next = s.claim(&claim_req(10, &[("k", 10)])).await.unwrap().jobs;
    let ids: Vec<Uuid> = next.iter().map(|j| j.id).collect();
    assert_eq!(ids, [b.id, c.id]);
    let counts = s.counts().await.unwrap();
    assert_eq!(
        counts.get(&JobState::Running).copied(),
        Some(3),
        "{counts:?}"
    );
}

/// Long-running jobs: progress, log lines and a checkpoint are written for
/// the running attempt only; the newest `keep` lines are kept; the
/// checkpoint goes to the next attempt's claim.
pub async fn progress_logs_and_checkpoints(s: SharedStore) {
    let j = insert(&s, new_job("k", 0)).await;
    let c = s.claim(&claim_req(1, &[("k", 1)])).await.unwrap().jobs;
    assert_eq!(c.len(), 1);
    assert!(c[0].checkpoint.is_empty());
    let p = jobd::job::Progress {
        percent: 40,
        message: "m".into(),
        details: Bytes::from_static(b"{}"),
        updated_at: now_micros(),
    };
    let stored = s.set_progress(j.id, 1, p.clone()).await.unwrap().unwrap();
    assert_eq!(stored.sequence, c[0].sequence + 1, "an event");
    assert_eq!(stored.state, JobState::Running);
    assert!(s.set_progress(j.id, 2, p.clone()).await.unwrap().is_none());
    assert_eq!(s.get(j.id).await.unwrap().unwrap().progress, Some(p));
    let lines = |r: std::ops::Range<u32>| r.map(|i| format!("l{i}")).collect::<Vec<_>>();
    assert!(s
        .append_logs(j.id, 1, lines(0..3), now_micros(), 4)
        .await
        .unwrap());
    assert!(s
        .append_logs(j.id, 1, lines(3..6), now_micros(), 4)
        .await
        .unwrap());
    assert!(!s
        .append_logs(j.id, 2, lines(6..7), now_micros(), 4)
        .await
        .unwrap());
    let kept: Vec<(u64, String)> = s
        .logs(j.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.seq, l.text))
        .collect();
    assert_eq!(
        kept,
        (3..7)
            .map(|i| (i, format!("l{}", i - 1)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        s.logs(j.id, 5, 1).await.unwrap()[0].seq,
        6,
        "pages after `after`"
    );
    assert!(s
        .set_checkpoint(j.id, 1, Bytes::from_static(b"cp1"))
        .await
        .unwrap());
    assert!(!s
        .set_checkpoint(j.id, 2, Bytes::from_static(b"no"))
        .await
        .unwrap());
    let retry = Outcome::Retry {
        error: "e".into(),
        at: now_micros() - 1,
    };
    s.finish(j.id, 1, retry, now_micros())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !s.set_checkpoint(j.id, 1, Bytes::from_static(b"late"))
            .await
            .unwrap(),
        "not while the job waits"
    );
    s.promote_due(now_micros(), 10).await.unwrap();
    let c2 = s.claim(&claim_req(1, &[("k", 1)])).await.unwrap().jobs;
    assert_eq!((c2[0].attempt, &c2[0].checkpoint[..]), (2, &b"cp1"[..]));
    assert_eq!(
        s.get(j.id).await.unwrap().unwrap().checkpoint,
        Bytes::from_static(b"cp1")
    );
}

fn child(kind: &str, parents: &[Uuid], policy: jobd::job::ParentFailure) -> NewJob {
    NewJob {
        parents: parents.to_vec(),
        on_parent_failure: policy,
        ..new_job(kind, 0)
    }
}

async fn get(s: &SharedStore, id: Uuid) -> jobd::job::Job {
    s.get(id).await.unwrap().unwrap()
}

/// Claims `id` (kind `k` must hold only it as due) and ends it with `outcome`.
async fn run_to(s: &SharedStore, id: Uuid, outcome: Outcome) -> jobd::job::Job {
    let claimed = s
        .claim(&claim_req(1000, &[("w", 1000)]))
        .await
        .unwrap()
        .jobs;
    assert!(claimed.iter().any(|j| j.id == id), "{id} claimed");
    for j in claimed.iter().filter(|j| j.id != id) {
        // Others claimed with it go back untouched (a drain's requeue).
        let back = Outcome::Requeue {
            reason: "test".into(),
        };
        s.finish(j.id, j.attempt, back, now_micros()).await.unwrap();
    }
    let a = claimed.iter().find(|j| j.id == id).unwrap().attempt;
    s.finish(id, a, outcome, now_micros())
        .await
        .unwrap()
        .unwrap()
}

/// Workflows: WAITING until the parents end; a parent's end releases or
/// cancels its children in the same write, down the graph (`take_moved`
/// hands each such move out once); RUN waits for every parent whatever
/// its outcome; RetryJobs re-evaluates a cancelled child; unknown parents
/// are refused.
pub async fn workflows_release_and_cascade(s: SharedStore) {
    use jobd::job::ParentFailure::{Cancel, Run};
    let ok = || Outcome::Succeeded {
        result: Bytes::from_static(b"r"),
    };
    let failed = || Outcome::Failed {
        error: "boom".into(),
    };
    let a = insert(&s, new_job("w", 0)).await;
    let b = insert(&s, child("w", &[a.id], Cancel)).await;
    assert_eq!(
        (b.state, b.waiting_on, b.parents.clone()),
        (JobState::Waiting, 1, vec![a.id])
    );
    let ghost = Uuid::now_v7();
    let out = s
        .insert(vec![child("w", &[a.id, ghost], Cancel)], u64::MAX)
        .await
        .unwrap();
    assert!(
        matches!(out[0], InsertOutcome::UnknownParent(id) if id == ghost),
        "{out:?}"
    );
    assert_eq!(s.children(a.id, 10).await.unwrap(), vec![b.id]);
    s.take_moved();
    run_to(&s, a.id, ok()).await;
    let moved = s.take_moved();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        (moved[0].prev, moved[0].job.id, moved[0].job.state),
        (JobState::Waiting, b.id, JobState::Queued)
    );
    assert!(s.take_moved().is_empty(), "handed out once");
    run_to(&s, b.id, ok()).await;
    // A diamond in one insert: x -> (y, z) -> d; x fails: all cancelled.
    let x = new_job("w", 0);
    let y = child("w", &[x.id], Cancel);
    let z = child("w", &[x.id], Cancel);
    let d = child("w", &[y.id, z.id], Cancel);
    let ids = [x.id, y.id, z.id, d.id];
    let out = s.insert(vec![x, y, z, d], u64::MAX).await.unwrap();
    assert!(
        out.iter().all(|o| matches!(o, InsertOutcome::Created(_))),
        "{out:?}"
    );
    assert_eq!(get(&s, ids[3]).await.waiting_on, 2);
    run_to(&s, ids[0], failed()).await;
    for id in &ids[1..] {
        let j = get(&s, *id).await;
        assert_eq!(j.state, JobState::Cancelled, "{id}");
        assert!(j.last_error.contains("dependency"), "{}", j.last_error);
    }
    assert_eq!(s.take_moved().len(), 3);
    // Repair: retry x, then y and z (WAITING on x again), then d.
    let retried = s.retry(&[ids[3]], now_micros(), u64::MAX).await.unwrap();
    assert!(
        matches!(retried[0], RetryOutcome::NotRetryable(_)),
        "y, z still cancelled: {retried:?}"
    );
    s.retry(&ids[..3], now_micros(), u64::MAX).await.unwrap();
    assert_eq!(get(&s, ids[1]).await.state, JobState::Waiting);
    let r = s.retry(&[ids[3]], now_micros(), u64::MAX).await.unwrap();
    assert!(
        matches!(&r[0], RetryOutcome::Retried { job, .. } if job.state == JobState::Waiting && job.waiting_on == 2),
        "{r:?}"
    );
    run_to(&s, ids[0], ok()).await;
    assert_eq!(get(&s, ids[1]).await.state, JobState::Queued);
    run_to(&s, ids[1], ok()).await;
    assert_eq!(get(&s, ids[3]).await.waiting_on, 1);
    run_to(&s, ids[2], ok()).await;
    assert_eq!(get(&s, ids[3]).await.state, JobState::Queued);
    run_to(&s, ids[3], ok()).await;
    // RUN: waits for every parent, whatever their outcome.
    let p1 = insert(&s, new_job("w", 0)).await;
    let p2 = insert(&s, new_job("w", 0)).await;
    let r = insert(&s, child("w", &[p1.id, p2.id], Run)).await;
    run_to(&s, p1.id, failed()).await;
    assert_eq!(get(&s, r.id).await.state, JobState::Waiting);
    assert!(matches!(
        s.cancel(p2.id, now_micros()).await.unwrap(),
        CancelOutcome::Cancelled { .. }
    ));
    assert_eq!(get(&s, r.id).await.state, JobState::Queued);
    // A child of a parent already failed is created cancelled (CANCEL),
    // or ready (RUN).
    let late = insert(&s, child("w", &[p1.id], Cancel)).await;
    assert_eq!(late.state, JobState::Cancelled);
    let late_run = insert(&s, child("w", &[p1.id], Run)).await;
    assert_eq!(late_run.state, JobState::Queued);
    assert!(s
        .release_waiting(now_micros(), 100)
        .await
        .unwrap()
        .is_empty());
}

/// Dedup keys (`store::dedup`): held while a job has not started, merged
/// into by KEEP and REPLACE, free again once it starts; a drain requeue or
/// RetryJobs does not take a key back (no second holder, no error).
pub async fn dedup_keys_are_held_until_a_job_starts(s: SharedStore) {
    use jobd::job::{Dedup, DedupMode};
    use jobd::store::dedup::DedupOutcome;
    let keyed = |mode: DedupMode, payload: &'static [u8]| NewJob {
        payload: Bytes::from_static(payload),
        dedup: Some(Dedup {
            key: "k1".into(),
            mode,
        }),
        ..new_job("d", 0)
    };
    let merged = |o: InsertOutcome| match o {
        InsertOutcome::Merged { job, outcome } => (job, outcome),
        other => panic!("{other:?}"),
    };
    // A longer payload first: a REPLACE that shrinks it must keep the
    // memory store's byte count right.
    let a = insert(&s, keyed(DedupMode::Keep, b"one, the longest payload")).await;
    assert_eq!(a.dedup_key.as_deref(), Some("k1"));
    let out = s
        .insert(vec![keyed(DedupMode::Replace, b"two")], u64::MAX)
        .await;
    let (r, outcome) = merged(out.unwrap().pop().unwrap());
    assert_eq!((r.id, outcome), (a.id, DedupOutcome::Replaced));
    assert_eq!((&r.payload[..], r.sequence), (&b"two"[..], a.sequence + 1));
    assert_eq!(get(&s, a.id).await.payload, r.payload);
    let out = s
        .insert(vec![keyed(DedupMode::Keep, b"three")], u64::MAX)
        .await;
    let (k, outcome) = merged(out.unwrap().pop().unwrap());
    assert_eq!(
        (k.id, outcome, &k.payload[..]),
        (a.id, DedupOutcome::Kept, &b"two"[..])
    );
    // Started: the key is free for a new job.
    let claimed = s.claim(&claim_req(1, &[("d", 1)])).await.unwrap().jobs;
    assert_eq!(claimed[0].id, a.id);
    let b = insert(&s, keyed(DedupMode::Keep, b"four")).await;
    assert_ne!(b.id, a.id);
    // A drained attempt goes back QUEUED at attempt 0 without its key.
    let back = Outcome::Requeue {
        reason: "drain".into(),
    };
    let a2 = s
        .finish(a.id, 1, back, now_micros())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a2.state, a2.attempt, a2.dedup_key),
        (JobState::Queued, 0, None)
    );
    let out = s
        .insert(vec![keyed(DedupMode::Keep, b"five")], u64::MAX)
        .await;
    assert_eq!(merged(out.unwrap().pop().unwrap()).0.id, b.id);
    // RetryJobs: a fresh start, without the key.
    s.cancel(b.id, now_micros()).await.unwrap();
    let c = insert(&s, keyed(DedupMode::Keep, b"six")).await;
    let retried = s.retry(&[b.id], now_micros(), u64::MAX).await.unwrap();
    match &retried[0] {
        RetryOutcome::Retried { job, .. } => assert_eq!(job.dedup_key, None),
        other => panic!("{other:?}"),
    }
    let out = s
        .insert(vec![keyed(DedupMode::Keep, b"seven")], u64::MAX)
        .await;
    assert_eq!(merged(out.unwrap().pop().unwrap()).0.id, c.id);
}

fn fair_limits(key_rate: Option<(f64, u32)>) -> HashMap<String, store::KindLimits> {
    HashMap::from([(
        "rr".to_string(),
        store::KindLimits {
            fairness: jobd::config::Fairness::RoundRobin,
            key_rate: key_rate.map(|(per_second, burst)| store::RateLimit { per_second, burst }),
            ..Default::default()
        },
    )])
}

fn fair_job(key: &str, priority: i32) -> NewJob {
    NewJob {
        fairness_key: key.into(),
        ..new_job("rr", priority)
    }
}

/// A round_robin kind's claims take one job per key per turn, from the key
/// after the one served last; a key's own jobs keep priority order; jobs
/// with no key share the key "".
pub async fn round_robin_claims_rotate_over_keys(s: SharedStore) {
    let mut ids = HashMap::new();
    for (key, prio, name) in [
        ("a", 0, "a1"),
        ("a", 0, "a2"),
        ("a", 0, "a3"),
        ("b", 0, "b1"),
        ("c", 0, "c2"),
        ("c", 5, "c1"),
        ("", 0, "none"),
    ] {
        let j = insert(&s, fair_job(key, prio)).await;
        assert_eq!(j.fairness_key, key);
        assert_eq!(get(&s, j.id).await.fairness_key, key, "stored");
        ids.insert(j.id, name);
    }
    let mut req = claim_req(1, &[("rr", 1)]);
    req.limits = fair_limits(None);
    let mut order = Vec::new();
    for _ in 0..3 {
        req.now = now_micros();
        let got = s.claim(&req).await.unwrap().jobs;
        assert_eq!(got.len(), 1);
        order.push(ids[&got[0].id]);
    }
    assert_eq!(order, ["none", "a1", "b1"]);
    // Four at once: one per key per turn, c (after b) first.
    req.kinds.insert("rr".into(), 4);
    req.limit = 4;
    req.now = now_micros();
    let got = s.claim(&req).await.unwrap().jobs;
    let names: Vec<&str> = got.iter().map(|j| ids[&j.id]).collect();
    assert_eq!(names, ["c1", "a2", "c2", "a3"]);
    req.now = now_micros();
    assert!(s.claim(&req).await.unwrap().jobs.is_empty());
}

/// `key_rate`: each key has its own bucket, kept by the store; a claim
/// held back by a key's bucket says when it next has a token.
pub async fn key_rate_holds_each_key_to_its_bucket(s: SharedStore) {
    for key in ["a", "b"] {
        for _ in 0..4 {
            insert(&s, fair_job(key, 0)).await;
        }
    }
    let mut req = claim_req(10, &[("rr", 10)]);
    req.limits = fair_limits(Some((1.0, 2)));
    let before = now_micros();
    let out = s.claim(&req).await.unwrap();
    let mut keys: Vec<&str> = out.jobs.iter().map(|j| j.fairness_key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["a", "a", "b", "b"], "each key's burst, no more");
    let wake = out
        .rate_limited
        .iter()
        .find(|(k, _)| k == "rr")
        .expect("held back")
        .1;
    assert!(
        (before + 900_000..before + 1_500_000).contains(&wake),
        "next token in about 1 s: {}",
        wake - before
    );
    req.now = now_micros();
    let again = s.claim(&req).await.unwrap();
    assert!(again.jobs.is_empty(), "{:?}", again.jobs);
    assert!(!again.rate_limited.is_empty());
    // Another key is not held back by a and b's empty buckets.
    insert(&s, fair_job("c", 0)).await;
    req.now = now_micros();
    let got = s.claim(&req).await.unwrap().jobs;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].fairness_key, "c");
}

macro_rules! contract {
    ($($name:ident),*) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(std::sync::Arc::new(jobd::store::memory::MemoryStore::new())).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:{}/t.db", dir.path().display());
                let s = jobd::store::open(&url).await.unwrap();
                super::$name(s.clone()).await;
                s.close().await.unwrap();
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(pg) = crate::pg::PgSchema::new(stringify!($name)).await else { return };
                let s = pg.open().await;
                super::$name(s.clone()).await;
                s.close().await.unwrap();
            })*
        }
    };
}

contract!(
    transitions_and_fencing,
    cancel_and_requeue,
    idempotency_race_yields_one_job,
    claim_order_kinds_and_backlog,
    busy_kinds_never_crowd_out_others,
    delayed_jobs_and_due_times,
    recover_counts_the_lost_attempt,
    pagination_and_filters,
    pruning_removes_only_old_finished_jobs,
    finish_many_fences_each_outcome,
    retry_requeues_dead_jobs,
    paused_kinds_are_stored,
    schedules_are_stored,
    stored_schedule_definitions,
    start_at_insert_only_when_nothing_of_its_kind_is_ready,
    progress_logs_and_checkpoints,
    workflows_release_and_cascade,
    dedup_keys_are_held_until_a_job_starts,
    round_robin_claims_rotate_over_keys,
    key_rate_holds_each_key_to_its_bucket
);

#[tokio::test]
async fn sqlite_survives_reopen_and_refuses_newer_schema_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/t.db", dir.path().display());
    let s = store::open(&url).await.unwrap();
    let j = insert(&s, new_job("k", 0)).await;
    s.close().await.unwrap();
    let s = store::open(&url).await.unwrap();
    assert_eq!(s.get(j.id).await.unwrap().unwrap(), j);
    s.close().await.unwrap();
    // A file from a newer jobd.
    let c = rusqlite_version_bump(&dir.path().join("t.db"));
    assert!(c.contains("newer"), "{c}");
    // Not a database at all.
    let bad = dir.path().join("garbage.db");
    std::fs::write(&bad, vec![0x5a; 8192]).unwrap();
    let e = store::open(&format!("sqlite:{}", bad.display()))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, store::StoreError::Corrupt(_)), "{e}");
    let _ = Arc::new(());
}

/// Sets `user_version` past what this jobd knows and returns the error.
fn rusqlite_version_bump(path: &std::path::Path) -> String {
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version=99'); c.commit()",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    let rt = tokio::runtime::Handle::current();
    let url = format!("sqlite:{}", path.display());
    let e = std::thread::spawn(move || rt.block_on(store::open(&url)).err().expect("refused"))
        .join()
        .unwrap();
    e.to_string()
}
