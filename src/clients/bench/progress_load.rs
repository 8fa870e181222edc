//! `jobd bench progress`: what long-running jobs' progress costs the rest
//! of the queue. Burn-down (`drain`) runs twice in one run: alone, then
//! beside `--progress-jobs` remote jobs that each report progress
//! `--progress-rate` times a second (the daemon coalesces them to one
//! stored write per job every 200 ms), then alone again. The middle row's
//! ratio is the burn-down throughput kept.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{drain, BenchArgs, BenchError, Row};
use crate::clients::worker::{serve, WorkJob, WorkerOptions};
use crate::proto::{self, job_service_client::JobServiceClient};

/// Longest wait for every held job to start.
const START_LIMIT: Duration = Duration::from_secs(120);

pub(super) async fn progress_load(
    a: &BenchArgs,
    addr: &str,
    chans: &[Channel],
) -> Result<Vec<Row>, BenchError> {
    // Alone before and after, so the store's growth between runs (the
    // first run fills an empty file) does not pass for the progress' cost.
    let before = drain(a, chans).await?;
    let holders = Holders::start(a, addr, chans).await?;
    let mut beside = drain(a, chans).await?;
    let per_s = holders.stop().await;
    let after = drain(a, chans).await?;
    let alone = (before.per_s + after.per_s) / 2.0;
    beside.scenario = "drain+progress".into();
    beside.ratio = Some(beside.per_s / alone.max(1e-9));
    beside.note = format!(
        "{}; beside {} running remote jobs reporting {}/s each ({per_s:.0} Progress messages/s sent); \
         ratio to the mean of the runs alone before and after",
        beside.note, a.progress_jobs, a.progress_rate,
    );
    Ok(vec![before, beside, after])
}

/// Remote jobs held running by a worker session of this process, each
/// sending Progress at the asked rate until stopped.
struct Holders {
    done: CancellationToken,
    stop_session: CancellationToken,
    sent: Arc<AtomicU64>,
    since: Instant,
    session: tokio::task::JoinHandle<()>,
}

impl Holders {
    async fn start(a: &BenchArgs, addr: &str, chans: &[Channel]) -> Result<Holders, BenchError> {
        let n = a.progress_jobs;
        let mut opts = WorkerOptions::new(addr, [a.progress_kind.clone()]);
        opts.max_in_flight = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        opts.worker_id = "jobd-bench-progress".into();
        let (done, stop_session) = (CancellationToken::new(), CancellationToken::new());
        let (sent, running) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
        let every = Duration::from_secs_f64(1.0 / a.progress_rate.max(1) as f64);
        let work = {
            let (done, sent, running) = (done.clone(), sent.clone(), running.clone());
            move |job: WorkJob| {
                let (done, sent, running) = (done.clone(), sent.clone(), running.clone());
                async move {
                    running.fetch_add(1, Ordering::Relaxed);
                    let mut tick = tokio::time::interval(every);
                    for i in 0u32.. {
                        tokio::select! {
                            _ = tick.tick() => {
                                job.progress(i % 100, "working", b"");
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            _ = done.cancelled() => break,
                            _ = job.cancel.cancelled() => break,
                        }
                    }
                    Ok(Bytes::new())
                }
            }
        };
        let session = {
            let stop = stop_session.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(opts, stop, work).await {
                    tracing::warn!(error = %e, "progress worker ended");
                }
            })
        };
        let mut cl = JobServiceClient::new(chans[0].clone());
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let requests = chunk
                .iter()
                .map(|_| proto::SubmitRequest {
                    kind: a.progress_kind.clone(),
                    ..Default::default()
                })
                .collect();
            cl.submit_batch(proto::SubmitBatchRequest { requests })
                .await?;
        }
        let started = Instant::now();
        while running.load(Ordering::Relaxed) < n {
            if started.elapsed() > START_LIMIT {
                let started = running.load(Ordering::Relaxed);
                return Err(BenchError::Unfinished {
                    done: started,
                    n,
                    limit: START_LIMIT,
                });
            }
            super::progress(
                "holding jobs",
                running.load(Ordering::Relaxed) as u64,
                started,
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent.store(0, Ordering::Relaxed);
        Ok(Holders {
            done,
            stop_session,
            sent,
            since: Instant::now(),
            session,
        })
    }

    /// Ends the held jobs (they succeed) and the session; Progress
    /// messages sent per second while they ran.
    async fn stop(self) -> f64 {
        let per_s = self.sent.load(Ordering::Relaxed) as f64 / self.since.elapsed().as_secs_f64();
        self.done.cancel();
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.stop_session.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.session).await;
        per_s
    }
}
