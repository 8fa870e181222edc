//! The schedule routes: `GET /v1/schedules` (ListSchedules), `POST
//! /v1/schedules` (CreateSchedule), `PUT` / `DELETE /v1/schedules/{id}`
//! (UpdateSchedule, DeleteSchedule) and the `:trigger` / `:pause` /
//! `:resume` verbs.

use axum::body::Body;
use axum::response::Response;
use http::HeaderMap;
use tonic::Status;

use super::{GrpcParts, HttpApi, HttpError, Route};
use crate::api::operations::AdminApi;
use crate::proto::{self, admin_service_server::AdminService};

impl HttpApi {
    pub(super) async fn schedules(
        &self,
        admin: &AdminApi,
        grpc: &GrpcParts<'_>,
        route: Route,
        query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, HttpError> {
        match route {
            Route::TriggerSchedule(id) => {
                let m = proto::TriggerScheduleRequest { id };
                self.reply(admin.trigger_schedule(grpc.request(m)).await?.get_ref())
            }
            Route::PauseSchedule(id) => {
                let m = proto::PauseScheduleRequest { id };
                self.reply(admin.pause_schedule(grpc.request(m)).await?.get_ref())
            }
            Route::ResumeSchedule(id) => {
                let m = proto::ResumeScheduleRequest { id };
                self.reply(admin.resume_schedule(grpc.request(m)).await?.get_ref())
            }
            Route::CreateSchedule => {
                let m: proto::CreateScheduleRequest = self.body(headers, body).await?;
                self.reply(admin.create_schedule(grpc.request(m)).await?.get_ref())
            }
            Route::UpdateSchedule(id) => {
                let mut m: proto::UpdateScheduleRequest = self.body(headers, body).await?;
                // The path names the schedule; a body may repeat it.
                let def = m.schedule.get_or_insert_with(Default::default);
                if def.id.is_empty() {
                    def.id = id;
                } else if def.id != id {
                    let why = format!("{:?} differs from the path's {id:?}", def.id);
                    return Err(Status::from(crate::api::error::ApiError::invalid(
                        "schedule.id",
                        why,
                    ))
                    .into());
                }
                self.reply(admin.update_schedule(grpc.request(m)).await?.get_ref())
            }
            Route::DeleteSchedule(id) => {
                let m = proto::DeleteScheduleRequest { id };
                self.reply(admin.delete_schedule(grpc.request(m)).await?.get_ref())
            }
            _ => {
                let m: proto::ListSchedulesRequest = self.json.from_query(query)?;
                self.reply(admin.list_schedules(grpc.request(m)).await?.get_ref())
            }
        }
    }
}
