//! `jobd bench chain` and `jobd bench fanin`: what a dependency costs.
//! `chain`: `--jobs` jobs in one SubmitBatch, each depending on the one
//! before; the figure is each link's latency, from the parent's finish to
//! the child's start. `fanin`: `--jobs` parents (due a moment later, so
//! the callback is stored first) and one callback depending on all of
//! them; the figure is the time from the last parent's finish to the
//! callback's start.

use std::time::{Duration, SystemTime};

use tonic::transport::Channel;

use super::results::{micros, wait_all_done};
use super::{echo, hist, row, BenchArgs, BenchError, Row};
use crate::proto::{self, job_service_client::JobServiceClient};

/// Longest a run may take before it is called unfinished.
const LIMIT: Duration = Duration::from_secs(600);

fn labelled(a: &BenchArgs, i: usize, run: &str) -> proto::SubmitRequest {
    proto::SubmitRequest {
        labels: [("bench".to_string(), run.to_string())].into(),
        ..echo(&a.kind, i as u64)
    }
}

/// The id of each accepted entry, in order.
fn accepted(r: proto::SubmitBatchResponse) -> Result<Vec<String>, BenchError> {
    r.results
        .into_iter()
        .map(|r| match r.result {
            Some(proto::submit_result::Result::Accepted(a)) => Ok(a.job.unwrap_or_default().id),
            Some(proto::submit_result::Result::Error(e)) => Err(BenchError::Rpc(
                tonic::Status::new(tonic::Code::from(e.code), e.message),
            )),
            None => Err(BenchError::Rpc(tonic::Status::internal("no result"))),
        })
        .collect()
}

pub(super) async fn chain(a: &BenchArgs, chans: &[Channel]) -> Result<Row, BenchError> {
    let run = format!("chain-{}", std::process::id());
    let n = a.jobs.clamp(2, 1000);
    let requests = (0..n)
        .map(|i| proto::SubmitRequest {
            depends_on: if i == 0 {
                vec![]
            } else {
                vec![format!("${}", i - 1)]
            },
            ..labelled(a, i, &run)
        })
        .collect();
    let mut cl = JobServiceClient::new(chans[0].clone());
    let ids = accepted(
        cl.submit_batch(proto::SubmitBatchRequest { requests })
            .await?
            .into_inner(),
    )?;
    let last = ids.last().cloned().unwrap_or_default();
    let jobs = wait_all_done(&chans[0], &run, n, &last, LIMIT).await?;
    let by_id: std::collections::HashMap<&str, &proto::Job> =
        jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let mut h = hist();
    for pair in ids.windows(2) {
        let (p, c) = (by_id[pair[0].as_str()], by_id[pair[1].as_str()]);
        let link = micros(&c.started_at) - micros(&p.finished_at);
        let _ = h.record(link.max(1) as u64);
    }
    let first = micros(&by_id[ids[0].as_str()].started_at);
    let secs = (micros(&by_id[last.as_str()].finished_at) - first) as f64 / 1e6;
    Ok(row(
        "chain",
        format!("n={n}"),
        (n - 1) as f64 / secs.max(1e-9),
        "links/s",
        &h,
        format!("link = a parent's finish to its child's start; whole chain {secs:.2}s"),
    ))
}

pub(super) async fn fanin(a: &BenchArgs, chans: &[Channel]) -> Result<Row, BenchError> {
    let run = format!("fanin-{}", std::process::id());
    let n = a.jobs.max(1);
    // Due after loading (at 20k jobs/s, plus 2 s), so the callback is
    // stored WAITING before any parent runs.
    let due = SystemTime::now() + Duration::from_secs_f64(n as f64 / 20_000.0 + 2.0);
    let mut cl = JobServiceClient::new(chans[0].clone());
    let mut parents = Vec::with_capacity(n);
    while parents.len() < n {
        let k = (n - parents.len()).min(1000);
        let requests = (0..k)
            .map(|i| proto::SubmitRequest {
                run_at: Some(prost_types::Timestamp::from(due)),
                ..labelled(a, parents.len() + i, &run)
            })
            .collect();
        parents.extend(accepted(
            cl.submit_batch(proto::SubmitBatchRequest { requests })
                .await?
                .into_inner(),
        )?);
    }
    let cb = cl
        .submit(proto::SubmitRequest {
            depends_on: parents.clone(),
            on_dependency_failure: proto::DependencyFailure::Run as i32,
            ..labelled(a, n, &run)
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    let late = SystemTime::now() > due;
    let jobs = wait_all_done(&chans[0], &run, n + 1, &cb.id, LIMIT).await?;
    let last_parent = jobs
        .iter()
        .filter(|j| j.id != cb.id)
        .map(|j| micros(&j.finished_at))
        .max()
        .unwrap_or(0);
    let cb = jobs
        .iter()
        .find(|j| j.id == cb.id)
        .cloned()
        .unwrap_or_default();
    let wait = micros(&cb.started_at) - last_parent;
    let mut h = hist();
    let _ = h.record(wait.max(1) as u64);
    let note = if late {
        "WARNING: loading outlasted the parents' start".to_string()
    } else {
        format!(
            "{n} parents; the last parent's finish to the callback's start: {:.3} ms",
            wait as f64 / 1000.0
        )
    };
    Ok(row(
        "fanin",
        format!("n={n}"),
        1e6 / wait.max(1) as f64,
        "callbacks/s",
        &h,
        note,
    ))
}
