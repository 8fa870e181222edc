//! Attempts' results, written in batches: every result waiting when a
//! transaction starts goes into it, so one commit (and one round of
//! NOTIFY, which PostgreSQL serializes across commits) serves many workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{deps, pooled, sql, Writer};
use crate::job::{Job, JobState, Micros};
use crate::store::{transition, Outcome, StoreError};

/// Results written in one transaction at most.
const FINISH_BATCH: usize = 512;
/// Results waiting for the batcher at most; workers wait (async) past it.
const FINISH_QUEUE: usize = 4096;

/// One attempt's result, waiting for the batcher.
struct FinishRequest {
    id: Uuid,
    attempt: u32,
    outcome: Outcome,
    now: Micros,
    /// Where the attempt ran (its history's `worker`).
    worker: String,
    reply: oneshot::Sender<Result<Option<Job>, StoreError>>,
}

/// The way into the batcher task; the task ends with `stop`.
pub(super) struct Batcher {
    tx: mpsc::Sender<FinishRequest>,
}

impl Batcher {
    /// Starts the batcher task; each batch gets `timeout`.
    pub(super) fn start(
        pool: Pool,
        w: Arc<Writer>,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(FINISH_QUEUE);
        tokio::spawn(finish_loop(pool, w, timeout, rx, stop));
        Batcher { tx }
    }

    /// Ends attempt `attempt` of job `id` in the next batch: the job after
    /// the result, or `None` where fencing refused it.
    pub(super) async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
        worker: String,
    ) -> Result<Option<Job>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let req = FinishRequest {
            id,
            attempt,
            outcome,
            now,
            worker,
            reply,
        };
        let gone = || StoreError::Unavailable("postgres store is closed".into());
        self.tx.send(req).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn finish_loop(
    pool: Pool,
    w: Arc<Writer>,
    timeout: Duration,
    mut rx: mpsc::Receiver<FinishRequest>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(FINISH_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, FINISH_BATCH) => n,
            _ = stop.cancelled() => return,
        };
        if n == 0 {
            return;
        }
        // Only the replies are needed afterwards: the rest moves out.
        let requests: Vec<(Uuid, u32, Outcome, Micros, String)> = batch
            .iter_mut()
            .map(|r| {
                let outcome = std::mem::replace(
                    &mut r.outcome,
                    Outcome::Requeue {
                        reason: String::new(),
                    },
                );
                (
                    r.id,
                    r.attempt,
                    outcome,
                    r.now,
                    std::mem::take(&mut r.worker),
                )
            })
            .collect();
        let result = match tokio::time::timeout(timeout, finish_batch(&pool, &w, requests)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(
                format!("postgres did not answer within {timeout:?}").into(),
            )),
        };
        match result {
            Ok(jobs) => {
                for (r, j) in batch.drain(..).zip(jobs) {
                    let _ = r.reply.send(Ok(j));
                }
            }
            Err(e) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One transaction for a batch of results; each answer is the job after
/// its result, or `None` where fencing refused it.
async fn finish_batch(
    pool: &Pool,
    w: &Writer,
    requests: Vec<(Uuid, u32, Outcome, Micros, String)>,
) -> Result<Vec<Option<Job>>, StoreError> {
    let mut c = pooled(pool).await?;
    let tx = c.transaction().await?;
    let mut ids: Vec<Uuid> = requests.iter().map(|r| r.0).collect();
    // Locks in id order: batches never wait on each other in a cycle.
    ids.sort_unstable();
    ids.dedup();
    let mut jobs: HashMap<Uuid, (Job, (JobState, u32))> = sql::select(&tx, &sql::LOCK_IDS, &[&ids])
        .await?
        .into_iter()
        .map(|j| {
            let old = (j.state, j.attempt);
            (j.id, (j, old))
        })
        .collect();
    let mut answers = Vec::with_capacity(requests.len());
    let mut changed = HashSet::new();
    for (id, attempt, outcome, now, worker) in requests {
        let answer = jobs.get_mut(&id).and_then(|(j, _)| {
            transition::finish_on(j, attempt, outcome, now, &worker).then(|| {
                changed.insert(id);
                j.clone()
            })
        });
        answers.push(answer);
    }
    let (done, old): (Vec<Job>, Vec<(JobState, u32)>) = jobs
        .into_values()
        .filter(|(j, _)| changed.contains(&j.id))
        .unzip();
    let parents = sql::save_finished(w, &tx, &done, &old).await?;
    // Only RUNNING jobs finish, so every terminal one just ended. Without
    // children among them the cascade has nothing to read: one round trip
    // of the batch's five saved (and its lock query on the server).
    let moved = match parents {
        true => deps::cascade(w, &tx, &done).await?,
        false => Vec::new(),
    };
    tx.commit().await?;
    w.publish(moved);
    Ok(answers)
}
