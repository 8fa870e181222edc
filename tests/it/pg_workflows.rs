//! Workflows on one PostgreSQL queue shared by two store instances: the
//! races a single process cannot have. Two parents of one child ending on
//! two instances at once release (or cancel) it exactly once; a child
//! submitted on one instance while its parent ends on the other never
//! stays WAITING.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jobd::job::{now_micros, Job, JobState, NewJob, ParentFailure};
use jobd::store::{ClaimRequest, InsertOutcome, Outcome, SharedStore};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::pg::PgSchema;

const ROUNDS: usize = 50;

fn job(kind: &str, parents: &[Uuid], policy: ParentFailure) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind.into(),
        max_attempts: 1,
        priority: 0,
        idempotency_key: None,
        labels: BTreeMap::new(),
        payload: Bytes::from_static(b"p"),
        timeout: Duration::from_secs(30),
        run_at: None,
        request_hash: [1; 32],
        created_at: now_micros(),
        ordering_key: None,
        trace: None,
        start: None,
        parents: parents.to_vec(),
        on_parent_failure: policy,
        start_before: None,
        dedup: None,
        fairness_key: String::new(),
    }
}

async fn insert(s: &SharedStore, j: NewJob) -> Job {
    match s.insert(vec![j], u64::MAX).await.unwrap().pop().unwrap() {
        InsertOutcome::Created(j) => j,
        other => panic!("{other:?}"),
    }
}

/// Claims the one due job of `kind` on `s`.
async fn claim_one(s: &SharedStore, kind: &str) -> Job {
    let req = ClaimRequest {
        now: now_micros(),
        limit: 1,
        kinds: HashMap::from([(kind.to_string(), 1)]),
        lease_slack: Duration::from_secs(30),
        limits: HashMap::new(),
    };
    let mut jobs = s.claim(&req).await.unwrap().jobs;
    assert_eq!(jobs.len(), 1, "one {kind} job due");
    jobs.pop().unwrap()
}

/// Ends `j` on `s` once every task at `start` is there.
fn finish_at(
    s: &SharedStore,
    j: &Job,
    outcome: Outcome,
    start: &Arc<Barrier>,
) -> tokio::task::JoinHandle<Job> {
    let (s, start) = (s.clone(), start.clone());
    let (id, attempt) = (j.id, j.attempt);
    tokio::spawn(async move {
        start.wait().await;
        s.finish(id, attempt, outcome, now_micros())
            .await
            .unwrap()
            .expect("the attempt is current")
    })
}

/// Rows of `job_events` recording `id` entering `state`.
async fn events_into(pg: &PgSchema, id: Uuid, state: JobState) -> i64 {
    let code = jobd::store::codec::state_code(state);
    let rows = pg
        .sql(&format!(
            "SELECT count(*) FROM job_events WHERE job_id = '{id}' AND state = {code}"
        ))
        .await;
    rows[0].get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parents_ending_on_two_instances_move_their_child_once() {
    let Some(pg) = PgSchema::new("wf_two_parents").await else {
        return;
    };
    let (a, b) = (pg.open().await, pg.open().await);
    for round in 0..ROUNDS {
        // Even rounds both parents succeed (released); odd rounds both
        // fail under CANCEL (cancelled, once, not twice).
        let fail = round % 2 == 1;
        let p1 = insert(&a, job("wf_a", &[], ParentFailure::Cancel)).await;
        let p2 = insert(&b, job("wf_b", &[], ParentFailure::Cancel)).await;
        let c = insert(&a, job("wf_c", &[p1.id, p2.id], ParentFailure::Cancel)).await;
        assert_eq!((c.state, c.waiting_on), (JobState::Waiting, 2));
        let (r1, r2) = (claim_one(&a, "wf_a").await, claim_one(&b, "wf_b").await);
        let outcome = || match fail {
            false => Outcome::Succeeded {
                result: Bytes::from_static(b"r"),
            },
            true => Outcome::Failed {
                error: "boom".into(),
            },
        };
        let start = Arc::new(Barrier::new(2));
        let f1 = finish_at(&a, &r1, outcome(), &start);
        let f2 = finish_at(&b, &r2, outcome(), &start);
        f1.await.unwrap();
        f2.await.unwrap();
        let now = a.get(c.id).await.unwrap().unwrap();
        let (want, events) = match fail {
            false => (
                JobState::Queued,
                events_into(&pg, c.id, JobState::Queued).await,
            ),
            true => (
                JobState::Cancelled,
                events_into(&pg, c.id, JobState::Cancelled).await,
            ),
        };
        assert_eq!(
            (now.state, now.waiting_on, now.sequence),
            (want, 0, c.sequence + 1),
            "round {round}: moved exactly once"
        );
        assert_eq!(events, 1, "round {round}: one event");
        let moved: Vec<_> = [a.take_moved(), b.take_moved()].concat();
        assert_eq!(moved.len(), 1, "round {round}: {moved:?}");
        assert_eq!((moved[0].job.id, moved[0].prev), (c.id, JobState::Waiting));
    }
    assert!(a
        .release_waiting(now_micros(), 100)
        .await
        .unwrap()
        .is_empty());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_submitted_while_its_parent_ends_elsewhere_never_stays_waiting() {
    let Some(pg) = PgSchema::new("wf_submit_race").await else {
        return;
    };
    let (a, b) = (pg.open().await, pg.open().await);
    for round in 0..ROUNDS {
        let p = insert(&b, job("wf_p", &[], ParentFailure::Cancel)).await;
        let running = claim_one(&b, "wf_p").await;
        let start = Arc::new(Barrier::new(2));
        let ok = Outcome::Succeeded {
            result: Bytes::from_static(b"r"),
        };
        let finished = finish_at(&b, &running, ok, &start);
        let submit = {
            let (a, start) = (a.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                insert(&a, job("wf_k", &[p.id], ParentFailure::Cancel)).await
            })
        };
        finished.await.unwrap();
        let c = submit.await.unwrap();
        let now = a.get(c.id).await.unwrap().unwrap();
        assert_eq!(
            (now.state, now.waiting_on),
            (JobState::Queued, 0),
            "round {round}: created {:?}, then {:?}",
            c.state,
            now.state
        );
        // Released by the parent's write, or created ready: never both.
        let moved: Vec<_> = [a.take_moved(), b.take_moved()].concat();
        let released = usize::from(c.state == JobState::Waiting);
        assert_eq!(moved.len(), released, "round {round}: {moved:?}");
    }
    assert!(a
        .release_waiting(now_micros(), 100)
        .await
        .unwrap()
        .is_empty());
    a.close().await.unwrap();
    b.close().await.unwrap();
}
