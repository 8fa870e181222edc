//! Reading a run's jobs back: every job with the run's label, once the
//! last one finished.

use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::{progress, BenchError};
use crate::proto::{self, job_service_client::JobServiceClient};

pub(super) fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

/// Pages through every job with the given label value.
pub(super) async fn jobs_labelled(
    ch: &Channel,
    run: &str,
) -> Result<Vec<proto::Job>, tonic::Status> {
    let mut cl = JobServiceClient::new(ch.clone());
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = cl
            .list_jobs(proto::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(
            page.jobs
                .into_iter()
                .filter(|j| j.labels.get("bench").map(String::as_str) == Some(run)),
        );
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Waits until `n` jobs of this run finished. Polls one job (the last one
/// submitted, which runs about last) cheaply, then lists the run.
pub(super) async fn wait_all_done(
    ch: &Channel,
    run: &str,
    n: usize,
    last: &str,
    limit: Duration,
) -> Result<Vec<proto::Job>, BenchError> {
    let started = Instant::now();
    let mut cl = JobServiceClient::new(ch.clone());
    loop {
        let j = cl
            .get_status(proto::GetStatusRequest {
                id: last.to_string(),
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        if j.finished_at.is_some() || started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let jobs = jobs_labelled(ch, run).await?;
        let done = jobs.iter().filter(|j| j.finished_at.is_some()).count();
        progress("waiting for jobs", done as u64, started);
        if done >= n {
            return Ok(jobs);
        }
        if started.elapsed() > limit {
            return Err(BenchError::Unfinished { done, n, limit });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
