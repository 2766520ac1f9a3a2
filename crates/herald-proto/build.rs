//! Compiles `proto/herald/v1/herald.proto` with protox (pure Rust: no
//! system `protoc`) and generates prost messages and tonic services. Every
//! `bytes` field becomes `bytes::Bytes`, so payloads move without copies.
//! The file descriptor set is also written out for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/herald/v1/herald.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("herald_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Every method's path (`/herald.v1.Events/Publish`), for metrics that
    // label gRPC calls by method without letting unknown paths in.
    let mut methods = Vec::new();
    for file in &descriptors.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "    \"/{}.{}/{}\",\n",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    std::fs::write(
        out_dir.join("herald_methods.rs"),
        format!("&[\n{}]", methods.concat()),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
