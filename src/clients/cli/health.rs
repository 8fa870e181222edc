//! `jobd health`: the daemon's gRPC health service.

use serde_json::json;

use super::connection::channel_to;
use super::{exit, Common, Failure};

/// `jobd health`: the daemon's overall gRPC health (exit 5 unless SERVING).
pub(super) async fn health(common: &Common) -> Result<u8, Failure> {
    let ch = channel_to(common).await?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let serving =
        r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let name = if serving { "SERVING" } else { "NOT_SERVING" };
    if common.json {
        out!("{}", json!({ "status": name }));
    } else {
        out!("{name}");
    }
    Ok(if serving { exit::OK } else { exit::UNAVAILABLE })
}
