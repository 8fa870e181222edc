//! GetJobGraph: a job's ancestors and descendants (depends_on edges),
//! bounded in depth and size; results are left out (GetStatus has them) so
//! a graph of 1,000 jobs fits one reply.

use tonic::{Request, Response, Status};

use super::{validate, JobApi};
use crate::api::error::ApiError;
use crate::proto;

pub(super) async fn get(
    api: &JobApi,
    request: Request<proto::GetJobGraphRequest>,
) -> Result<Response<proto::GetJobGraphResponse>, Status> {
    let req = request.into_inner();
    let id = validate::job_id("id", &req.id)?;
    let g = api
        .engine
        .graph(id, req.depth)
        .await
        .map_err(ApiError::from)?;
    let jobs = g
        .jobs
        .iter()
        .map(|j| {
            let mut p = crate::api::convert::job_to_proto(j);
            p.result = Vec::new();
            p
        })
        .collect();
    let edges = g
        .edges
        .iter()
        .map(|(parent, child)| proto::JobEdge {
            parent: parent.to_string(),
            child: child.to_string(),
        })
        .collect();
    Ok(Response::new(proto::GetJobGraphResponse {
        jobs,
        edges,
        truncated: g.truncated,
    }))
}
