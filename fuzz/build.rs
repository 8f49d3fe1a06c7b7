//! The protobuf messages of `proto/ticket_service.proto` (messages only: no client, no server), compiled with
//! protox like the service's own build script, for the `grpc_decode` target.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let descriptors = protox::compile(["ticket_service.proto"], ["../proto"])?;
    tonic_prost_build::configure().build_client(false).build_server(false).compile_fds(descriptors)?;
    Ok(())
}
