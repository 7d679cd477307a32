//! Compiles `proto/switchyard/v1/*.proto` with protox (pure Rust: no system `protoc`), and
//! writes the descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/switchyard/v1/jobs.proto",
    "proto/switchyard/v1/workers.proto",
    "proto/switchyard/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("switchyard_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // `WorkerService.Connect` would clash with the generated `connect` constructor:
        // clients build a `Channel` and call `new`.
        .build_transport(false)
        .build_client(env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds(fds)?;
    Ok(())
}
