//! Compiles `proto/repld/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates
//! prost messages plus tonic clients and servers. Also writes the encoded file descriptor set,
//! which the daemon serves for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/repld/v1/common.proto",
    "proto/repld/v1/storage.proto",
    "proto/repld/v1/admin.proto",
    "proto/repld/v1/replication.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("repld_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Content travels as `bytes::Bytes`, so chunks are passed on without copying.
        .bytes(".repld.v1")
        .compile_fds(fds)?;
    Ok(())
}
