//! Compiles `hvagent/v1/*.proto` with protox (pure Rust, no protoc on the build machine) and
//! writes the file descriptor set that the daemon serves through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<PathBuf> = std::fs::read_dir("hvagent/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    // The directory too: a new .proto file must rebuild.
    println!("cargo:rerun-if-changed=hvagent/v1");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let descriptors = protox::compile(&protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("hvagent_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Deterministic key order in maps (extra_specs), also in hvctl's JSON.
        .btree_map(".")
        // hvctl prints these messages as JSON; the proto field names are the stable keys.
        .message_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
