//! The one table of RPCs: every method of every service served on the port,
//! with the roles that may call it, the HTTP/JSON route that reaches it (if
//! any) and the label its metrics and spans carry. Auth
//! ([`crate::transport::auth`]), request metrics and spans
//! ([`crate::transport::grpc_metrics`]) and the HTTP routes
//! ([`crate::http`]) all read it, so a new RPC is one row here; a test holds
//! the table to the compiled descriptor set, so an RPC without a row (or a
//! row without an RPC) fails the build's tests, not an operator's scrape.

use crate::config::Role;

/// Who may call a method when authentication is on (`admin` may call
/// everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed: health and reflection, so probes and
    /// `grpcurl list` work.
    Open,
    /// These roles, and `admin`.
    Roles(&'static [Role]),
}

/// One method.
#[derive(Debug)]
pub struct Rpc {
    /// `/package.Service/Method`; also the metric and span label.
    pub path: &'static str,
    pub access: Access,
    /// The HTTP/JSON routes that call it: `"METHOD /path"`, with `{id}`
    /// (or `{name}`) for a path parameter. Submit has two: the JSON
    /// SubmitRequest, and the raw body as the payload.
    pub http: &'static [&'static str],
}

const READ: &[Role] = &[Role::Submit, Role::Viewer];
const SUBMIT: &[Role] = &[Role::Submit];
const VIEW: &[Role] = &[Role::Viewer];
const WORKER: &[Role] = &[Role::Worker];
const ADMIN: &[Role] = &[];

const fn rpc(path: &'static str, access: Access, http: &'static [&'static str]) -> Rpc {
    Rpc { path, access, http }
}

use Access::{Open, Roles};

/// Every method served, once.
pub const RPCS: &[Rpc] = &[
    rpc(
        "/jobd.v1.JobService/Submit",
        Roles(SUBMIT),
        &["POST /v1/jobs", "POST /v1/kinds/{name}/jobs"],
    ),
    rpc(
        "/jobd.v1.JobService/SubmitBatch",
        Roles(SUBMIT),
        &["POST /v1/jobs:batch"],
    ),
    rpc(
        "/jobd.v1.JobService/GetStatus",
        Roles(READ),
        &["GET /v1/jobs/{id}"],
    ),
    rpc(
        "/jobd.v1.JobService/WatchStatus",
        Roles(READ),
        &["GET /v1/jobs/{id}/events"],
    ),
    rpc(
        "/jobd.v1.JobService/Cancel",
        Roles(ADMIN),
        &["POST /v1/jobs/{id}:cancel"],
    ),
    rpc(
        "/jobd.v1.JobService/ListJobs",
        Roles(READ),
        &["GET /v1/jobs"],
    ),
    rpc(
        "/jobd.v1.JobService/WatchJobs",
        Roles(READ),
        &["GET /v1/events"],
    ),
    rpc(
        "/jobd.v1.JobService/GetLogs",
        Roles(READ),
        &["GET /v1/jobs/{id}/logs"],
    ),
    rpc("/jobd.v1.JobService/WatchLogs", Roles(READ), &[]),
    rpc(
        "/jobd.v1.JobService/GetJobGraph",
        Roles(READ),
        &["GET /v1/jobs/{id}/graph"],
    ),
    rpc("/jobd.v1.WorkerService/Connect", Roles(WORKER), &[]),
    rpc(
        "/jobd.v1.AdminService/ListWorkers",
        Roles(VIEW),
        &["GET /v1/workers"],
    ),
    rpc(
        "/jobd.v1.AdminService/PauseKind",
        Roles(ADMIN),
        &["POST /v1/kinds/{name}:pause"],
    ),
    rpc(
        "/jobd.v1.AdminService/ResumeKind",
        Roles(ADMIN),
        &["POST /v1/kinds/{name}:resume"],
    ),
    rpc(
        "/jobd.v1.AdminService/ListKinds",
        Roles(VIEW),
        &["GET /v1/kinds"],
    ),
    rpc(
        "/jobd.v1.AdminService/RetryJobs",
        Roles(ADMIN),
        &["POST /v1/jobs:retry"],
    ),
    rpc(
        "/jobd.v1.AdminService/ListSchedules",
        Roles(VIEW),
        &["GET /v1/schedules"],
    ),
    rpc(
        "/jobd.v1.AdminService/TriggerSchedule",
        Roles(ADMIN),
        &["POST /v1/schedules/{name}:trigger"],
    ),
    rpc(
        "/jobd.v1.AdminService/PauseSchedule",
        Roles(ADMIN),
        &["POST /v1/schedules/{name}:pause"],
    ),
    rpc(
        "/jobd.v1.AdminService/ResumeSchedule",
        Roles(ADMIN),
        &["POST /v1/schedules/{name}:resume"],
    ),
    rpc(
        "/jobd.v1.AdminService/CreateSchedule",
        Roles(ADMIN),
        &["POST /v1/schedules"],
    ),
    rpc(
        "/jobd.v1.AdminService/UpdateSchedule",
        Roles(ADMIN),
        &["PUT /v1/schedules/{name}"],
    ),
    rpc(
        "/jobd.v1.AdminService/DeleteSchedule",
        Roles(ADMIN),
        &["DELETE /v1/schedules/{name}"],
    ),
    rpc("/grpc.health.v1.Health/Check", Open, &[]),
    rpc("/grpc.health.v1.Health/Watch", Open, &[]),
    rpc(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Open,
        &[],
    ),
    rpc(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Open,
        &[],
    ),
];

/// The row of `path`, if it is a method served here.
pub fn find(path: &str) -> Option<&'static Rpc> {
    RPCS.iter().find(|r| r.path == path)
}

/// The metric and span label of a request path: the method itself, or
/// `other` for a path that is not one, so a client cannot grow the label
/// set.
pub fn label(path: &str) -> &'static str {
    find(path).map_or("other", |r| r.path)
}

/// Whether `role` may call the method at `path` (an unknown path: admin
/// only, and the service answers UNIMPLEMENTED).
pub fn allowed(role: Role, path: &str) -> bool {
    match find(path).map(|r| r.access) {
        _ if role == Role::Admin => true,
        Some(Access::Open) => true,
        Some(Access::Roles(roles)) => roles.contains(&role),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every jobd method in the compiled descriptor set has a row, and every
    /// jobd row names a method there.
    #[test]
    fn table_matches_the_descriptor_set() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let mut compiled: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "jobd.v1")
            .flat_map(|f| {
                f.service.iter().flat_map(move |s| {
                    s.method
                        .iter()
                        .map(move |m| format!("/{}.{}/{}", f.package(), s.name(), m.name()))
                })
            })
            .collect();
        compiled.sort();
        let mut rows: Vec<String> = RPCS
            .iter()
            .filter(|r| r.path.starts_with("/jobd.v1."))
            .map(|r| r.path.to_string())
            .collect();
        rows.sort();
        assert!(!compiled.is_empty());
        assert_eq!(compiled, rows, "proto methods (left) vs the table (right)");
        let mut all: Vec<_> = RPCS.iter().map(|r| r.path).collect();
        all.dedup();
        assert_eq!(all.len(), RPCS.len(), "a method is listed twice");
    }

    #[test]
    fn viewer_reads_and_changes_nothing() {
        for r in RPCS {
            let name = r.path.rsplit('/').next().unwrap_or("");
            let read = r.http.first().map_or_else(
                || ["Get", "List", "Watch"].iter().any(|p| name.starts_with(p)),
                |h| h.starts_with("GET "),
            );
            if r.access != Access::Open && r.path.starts_with("/jobd.v1.") {
                assert_eq!(allowed(Role::Viewer, r.path), read, "{}", r.path);
            }
        }
        assert!(!allowed(Role::Viewer, "/jobd.v1.WorkerService/Connect"));
        assert!(allowed(Role::Worker, "/jobd.v1.WorkerService/Connect"));
        assert!(!allowed(Role::Worker, "/jobd.v1.JobService/Submit"));
        assert!(!allowed(Role::Submit, "/jobd.v1.JobService/Cancel"));
        assert!(allowed(Role::Admin, "/jobd.v1.JobService/Nope"));
        assert!(!allowed(Role::Submit, "/jobd.v1.JobService/Nope"));
        assert_eq!(
            label("/jobd.v1.JobService/WatchJobs"),
            "/jobd.v1.JobService/WatchJobs"
        );
        assert_eq!(label("/x/y"), "other");
    }
}
