//! Build steps:
//! - rebuild when a migration changes (`sqlx::migrate!` embeds `migrations/` into the binary);
//! - compile `proto/ticket_service.proto` (and `proto/cluster.proto`, the replicas' internal service) with protox (a protobuf compiler in Rust, so no `protoc` has to be
//!   installed) into tonic code, and keep the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["ticket_service.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ticket_service_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    // The replicas' internal service: compiled apart, so it stays out of the public descriptor set (reflection).
    tonic_prost_build::configure().compile_fds(protox::compile(["cluster.proto"], ["proto"])?)?;
    Ok(())
}
