//! Clients of a running daemon besides JobService's: AdminService and the
//! `jobd` binary's client commands.

use jobd::proto::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

/// An AdminService client of the daemon at `url`.
pub async fn admin(url: &str) -> AdminServiceClient<Channel> {
    let ch = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminServiceClient::new(ch)
}

/// Runs `jobd ARGS` against the daemon at `addr`, with no token.
pub async fn cli(addr: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(super::bin());
    cmd.args(args)
        .env("JOBD_ADDR", addr)
        .env_remove("JOBD_TOKEN");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}
