//! Compiles `proto/` with protox (pure Rust), so a fresh clone builds with cargo
//! alone: no system `protoc`.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(["jobd/v1/jobd.proto"], ["proto"])?;
    // The encoded set (with google.rpc.Status and the well-known types) feeds
    // server reflection, so `grpcurl list` works without the proto file.
    std::fs::write(
        out.join("jobd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // No `Client::connect(addr)` constructor: it would clash with
        // WorkerService's `Connect` RPC. Clients are built from a Channel.
        .build_transport(false)
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
