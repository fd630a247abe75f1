//! Compiles the protocol definitions under proto/ with a vendored protoc, so
//! that building needs no system protobuf installation.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known_includes = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/buildbarn/runner/runner.proto",
        "proto/buildbarn/resourceusage/resourceusage.proto",
        "proto/google/rpc/status.proto",
        "proto/rbe_runner/resourceusage/v1/resourceusage.proto",
        "proto/rbe_runner/events/v1/events.proto",
        "proto/rbe_runner/output/v1/output.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Any.type_url must read type.googleapis.com/<full name>, which is what
    // bb_worker and Bazel expect when they unpack resource usage.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        // Refuses a RunRequest too large to execute before prost builds
        // its strings (see src/request_decoding.rs).
        .codec_path("crate::request_decoding::BoundedCodec")
        .file_descriptor_set_path(out_dir.join("rbe_runner_descriptor.bin"))
        .compile_with_config(
            config,
            &protos.map(PathBuf::from),
            &[PathBuf::from("proto"), well_known_includes],
        )?;
    Ok(())
}
