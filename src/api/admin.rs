//! `jobd.v1.AdminService`: operators' calls (every one needs the `admin`
//! role when authentication is on).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::{self, admin_service_server::AdminService};
use crate::remote::Workers;

pub struct AdminApi {
    workers: Arc<Workers>,
}

impl AdminApi {
    pub fn new(workers: Arc<Workers>) -> Self {
        AdminApi { workers }
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
}
