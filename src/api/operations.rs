//! `jobd.v1.AdminService`: operators' calls (every one needs the `admin`
//! role when authentication is on).

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{job_to_proto, timestamp};
use super::error::ApiError;
use super::validate::{self, RetryFilter, RetrySelection};
use super::validate_schedule;
use crate::config::HandlerSpec;
use crate::engine::{Engine, ScheduleStatus};
use crate::handlers::remote::Workers;
use crate::job::JobState;
use crate::proto::{self, admin_service_server::AdminService};
use crate::store::{ListQuery, RetryOutcome};

/// Jobs a filtered RetryJobs reads at most to find its matches: the
/// label and time filters are applied to what the (state, kind) index
/// returns, so a narrow filter over many dead jobs must still end. Past it
/// the reply says `more`.
const MAX_RETRY_SCAN: usize = 100_000;
/// Rows per store read while scanning, and jobs per retry write.
const RETRY_PAGE: usize = 1000;

pub struct AdminApi {
    engine: Arc<Engine>,
    workers: Arc<Workers>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").finish_non_exhaustive()
    }
}

impl AdminApi {
    pub fn new(engine: Arc<Engine>, workers: Arc<Workers>) -> Self {
        AdminApi { engine, workers }
    }

    /// Every kind's status: configured ones, plus kinds that are paused or
    /// still have jobs in the store without being configured. `only`: just
    /// that kind.
    async fn kind_statuses(&self, only: Option<&str>) -> Result<Vec<proto::KindStatus>, ApiError> {
        let store = self.engine.store();
        let mut statuses: BTreeMap<String, proto::KindStatus> = BTreeMap::new();
        for k in self.engine.kinds() {
            if let Some(s) = entry(&mut statuses, only, &k.name) {
                s.handler = handler_name(&k.handler).into();
                s.concurrency = k.concurrency.min(u32::MAX as usize) as u32;
            }
        }
        for k in self.engine.paused() {
            if let Some(s) = entry(&mut statuses, only, &k) {
                s.paused = true;
            }
        }
        for (state, kind, n) in store.count_by_kind().await? {
            if let Some(s) = entry(&mut statuses, only, &kind) {
                match state {
                    JobState::Queued => s.queued = n,
                    JobState::Running => s.running = n,
                    JobState::RetryWait => s.retry_wait = n,
                    _ => {}
                }
            }
        }
        for (kind, n) in store.count_failed_by_kind().await? {
            if let Some(s) = entry(&mut statuses, only, &kind) {
                s.failed = n;
            }
        }
        for w in self.workers.list() {
            for k in &w.kinds {
                if let Some(s) = statuses.get_mut(k) {
                    s.connected_workers += 1;
                }
            }
        }
        Ok(statuses.into_values().collect())
    }

    async fn set_paused(&self, kind: &str, paused: bool) -> Result<proto::KindStatus, ApiError> {
        validate::kind_name("kind", kind)?;
        self.engine
            .set_paused(kind, paused)
            .await
            .map_err(|e| match ApiError::from(e) {
                ApiError::UnknownKind { kind, .. } => {
                    let names: Vec<String> = self.engine.kinds().map(|k| k.name.clone()).collect();
                    let hint =
                        crate::suggest::hint("kind", &kind, names.iter().map(String::as_str));
                    ApiError::UnknownKind { kind, hint }
                }
                other => other,
            })?;
        // A stale pause of a kind no longer configured, just cleared, with
        // no jobs left: nothing lists it any more.
        Ok(self
            .kind_statuses(Some(kind))
            .await?
            .pop()
            .unwrap_or_else(|| proto::KindStatus {
                kind: kind.to_string(),
                handler: "unconfigured".into(),
                ..Default::default()
            }))
    }

    async fn retry_jobs(
        &self,
        req: proto::RetryJobsRequest,
    ) -> Result<proto::RetryJobsResponse, ApiError> {
        let (selection, limit) = validate::retry(&req)?;
        let mut reply = proto::RetryJobsResponse::default();
        let candidates = match selection {
            RetrySelection::Ids(ids) => ids,
            RetrySelection::Filter(f) => {
                let (ids, more) = self.matching(&f, limit).await?;
                reply.more = more;
                ids
            }
        };
        if req.dry_run {
            for id in candidates {
                match self.engine.store().get(id).await? {
                    None => skip(&mut reply, id, RetryOutcome::NotFound),
                    Some(j) if !crate::store::transition::retryable(j.state) => {
                        skip(&mut reply, id, RetryOutcome::NotRetryable(j))
                    }
                    Some(_) => {
                        reply.matched += 1;
                        reply.ids.push(id.to_string());
                    }
                }
            }
            return Ok(reply);
        }
        for chunk in candidates.chunks(RETRY_PAGE) {
            let outcomes = self.engine.retry(chunk).await?;
            for (id, o) in chunk.iter().zip(outcomes) {
                match o {
                    RetryOutcome::Retried { .. } => {
                        reply.matched += 1;
                        reply.retried += 1;
                        reply.ids.push(id.to_string());
                    }
                    RetryOutcome::BacklogFull => {
                        reply.matched += 1;
                        skip(&mut reply, *id, RetryOutcome::BacklogFull);
                    }
                    other => skip(&mut reply, *id, other),
                }
            }
        }
        Ok(reply)
    }

    /// Up to `limit` ids of jobs the filter matches, oldest first, and
    /// whether more matched (or the scan bound was reached first).
    async fn matching(&self, f: &RetryFilter, limit: usize) -> Result<(Vec<Uuid>, bool), ApiError> {
        let query = ListQuery {
            state: Some(f.state),
            kind: f.kind.clone(),
            limit: RETRY_PAGE,
            ..Default::default()
        };
        // One more than the limit tells whether more matched.
        let (mut jobs, stopped) = self
            .engine
            .scan(query, limit + 1, MAX_RETRY_SCAN, |j| f.matches(j))
            .await?;
        let more = jobs.len() > limit || stopped.is_some();
        jobs.truncate(limit);
        Ok((jobs.into_iter().map(|j| j.id).collect(), more))
    }
}

/// The status of `kind` in `statuses`, made on first use; `None` when
/// `only` names another kind.
fn entry<'a>(
    statuses: &'a mut BTreeMap<String, proto::KindStatus>,
    only: Option<&str>,
    kind: &str,
) -> Option<&'a mut proto::KindStatus> {
    if only.is_some_and(|o| o != kind) {
        return None;
    }
    Some(
        statuses
            .entry(kind.to_string())
            .or_insert_with(|| proto::KindStatus {
                kind: kind.to_string(),
                handler: "unconfigured".into(),
                ..Default::default()
            }),
    )
}

/// Records an id that was not retried, with why.
fn skip(reply: &mut proto::RetryJobsResponse, id: Uuid, why: RetryOutcome) {
    let reason = match why {
        RetryOutcome::NotFound => "job not found".to_string(),
        RetryOutcome::NotRetryable(j) => format!(
            "job is {}; only FAILED or CANCELLED jobs can be retried",
            j.state.to_string().to_uppercase()
        ),
        RetryOutcome::BacklogFull => "backlog is full; retry later".to_string(),
        RetryOutcome::Retried { .. } => return,
    };
    reply.skipped.push(proto::RetrySkipped {
        id: id.to_string(),
        reason,
    });
}

fn schedule_to_proto(s: ScheduleStatus) -> proto::ScheduleStatus {
    proto::ScheduleStatus {
        id: s.schedule.id,
        kind: s.schedule.kind,
        cron: s.schedule.cron_text,
        timezone: s.schedule.timezone.name().to_string(),
        next_fire_at: s.next_fire_at.map(timestamp),
        paused: s.paused,
        last_job_id: s.last_job_id.map(|u| u.to_string()).unwrap_or_default(),
        source: if s.from_config {
            proto::ScheduleSource::Config
        } else {
            proto::ScheduleSource::Api
        } as i32,
        payload: s.schedule.payload,
        labels: s.schedule.labels.into_iter().collect(),
        overlap: validate_schedule::overlap_to_proto(s.schedule.overlap) as i32,
        catchup: (!s.schedule.catchup.is_zero())
            .then(|| prost_types::Duration::try_from(s.schedule.catchup).ok())
            .flatten(),
    }
}

/// Checks a schedule id field (ids are named like kinds).
fn schedule_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid("id", "required"));
    }
    if !validate::is_valid_kind(id) {
        return Err(ApiError::invalid(
            "id",
            "schedule ids match [a-z0-9][a-z0-9_.-]{0,63}",
        ));
    }
    Ok(())
}

impl AdminApi {
    async fn schedule_paused(
        &self,
        id: &str,
        paused: bool,
    ) -> Result<proto::ScheduleStatus, ApiError> {
        schedule_id(id)?;
        if let Err(e) = self.engine.set_schedule_paused(id, paused).await {
            return Err(self.with_schedule_hint(e.into()).await);
        }
        self.engine
            .list_schedules()
            .await?
            .into_iter()
            .find(|s| s.schedule.id == id)
            .map(schedule_to_proto)
            .ok_or_else(|| ApiError::UnknownSchedule {
                id: id.to_string(),
                hint: String::new(),
            })
    }

    /// An unknown schedule's refusal with the closest configured id and
    /// the list of them; any other error as it is.
    async fn with_schedule_hint(&self, e: ApiError) -> ApiError {
        let ApiError::UnknownSchedule { id, .. } = e else {
            return e;
        };
        let ids: Vec<String> = self
            .engine
            .list_schedules()
            .await
            .map(|l| l.into_iter().map(|s| s.schedule.id).collect())
            .unwrap_or_default();
        let hint = crate::suggest::hint("schedule", &id, ids.iter().map(String::as_str));
        ApiError::UnknownSchedule { id, hint }
    }
}

fn handler_name(h: &HandlerSpec) -> &'static str {
    match h {
        HandlerSpec::Echo => "echo",
        HandlerSpec::Sleep => "sleep",
        HandlerSpec::Fail => "fail",
        HandlerSpec::Command { .. } => "command",
        HandlerSpec::Http { .. } => "http",
        HandlerSpec::Remote => "remote",
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_workers(
        &self,
        request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let kind = request.into_inner().kind;
        let workers = self
            .workers
            .list()
            .into_iter()
            .filter(|s| kind.is_empty() || s.kinds.contains(&kind))
            .map(|s| proto::WorkerSession {
                session_id: s.session_id.to_string(),
                worker_id: s.worker_id,
                kinds: s.kinds,
                in_flight: s.in_flight as u32,
                max_in_flight: s.max_in_flight as u32,
                connected_at: Some(s.connected_at.into()),
                last_seen: Some(s.last_seen.into()),
                address: s.address.map(|a| a.to_string()).unwrap_or_default(),
                labels: s.labels.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(proto::ListWorkersResponse { workers }))
    }

    async fn pause_kind(
        &self,
        request: Request<proto::PauseKindRequest>,
    ) -> Result<Response<proto::PauseKindResponse>, Status> {
        let kind_status = self.set_paused(&request.into_inner().kind, true).await?;
        Ok(Response::new(proto::PauseKindResponse {
            kind_status: Some(kind_status),
        }))
    }

    async fn resume_kind(
        &self,
        request: Request<proto::ResumeKindRequest>,
    ) -> Result<Response<proto::ResumeKindResponse>, Status> {
        let kind_status = self.set_paused(&request.into_inner().kind, false).await?;
        Ok(Response::new(proto::ResumeKindResponse {
            kind_status: Some(kind_status),
        }))
    }

    async fn list_kinds(
        &self,
        _request: Request<proto::ListKindsRequest>,
    ) -> Result<Response<proto::ListKindsResponse>, Status> {
        let kinds = self.kind_statuses(None).await?;
        Ok(Response::new(proto::ListKindsResponse { kinds }))
    }

    async fn retry_jobs(
        &self,
        request: Request<proto::RetryJobsRequest>,
    ) -> Result<Response<proto::RetryJobsResponse>, Status> {
        Ok(Response::new(self.retry_jobs(request.into_inner()).await?))
    }

    async fn list_schedules(
        &self,
        _request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let schedules = self
            .engine
            .list_schedules()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(schedule_to_proto)
            .collect();
        Ok(Response::new(proto::ListSchedulesResponse { schedules }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<proto::TriggerScheduleRequest>,
    ) -> Result<Response<proto::TriggerScheduleResponse>, Status> {
        let id = request.into_inner().id;
        schedule_id(&id)?;
        let job = match self.engine.trigger_schedule(&id).await {
            Ok(job) => job,
            Err(e) => return Err(self.with_schedule_hint(e.into()).await.into()),
        };
        Ok(Response::new(proto::TriggerScheduleResponse {
            job: Some(job_to_proto(&job)),
        }))
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::PauseScheduleRequest>,
    ) -> Result<Response<proto::PauseScheduleResponse>, Status> {
        let schedule = self.schedule_paused(&request.into_inner().id, true).await?;
        Ok(Response::new(proto::PauseScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::CreateScheduleResponse>, Status> {
        let engine = &self.engine;
        let s = validate_schedule::schedule(request.into_inner().schedule, &|k| {
            engine.schedule_payload_bound(k)
        })?;
        let status = engine.create_schedule(s).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::CreateScheduleResponse {
            schedule: Some(schedule_to_proto(status)),
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<proto::UpdateScheduleRequest>,
    ) -> Result<Response<proto::UpdateScheduleResponse>, Status> {
        let engine = &self.engine;
        let s = validate_schedule::schedule(request.into_inner().schedule, &|k| {
            engine.schedule_payload_bound(k)
        })?;
        let status = match engine.update_schedule(s).await {
            Ok(s) => s,
            Err(e) => return Err(self.with_schedule_hint(e.into()).await.into()),
        };
        Ok(Response::new(proto::UpdateScheduleResponse {
            schedule: Some(schedule_to_proto(status)),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::DeleteScheduleRequest>,
    ) -> Result<Response<proto::DeleteScheduleResponse>, Status> {
        let id = request.into_inner().id;
        schedule_id(&id)?;
        if let Err(e) = self.engine.delete_schedule(&id).await {
            return Err(self.with_schedule_hint(e.into()).await.into());
        }
        Ok(Response::new(proto::DeleteScheduleResponse {}))
    }

    async fn resume_schedule(
        &self,
        request: Request<proto::ResumeScheduleRequest>,
    ) -> Result<Response<proto::ResumeScheduleResponse>, Status> {
        let schedule = self
            .schedule_paused(&request.into_inner().id, false)
            .await?;
        Ok(Response::new(proto::ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }
}
