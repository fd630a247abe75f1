//! Generated protocol types. The package layout mirrors proto/.

/// `buildbarn.runner`: the service bb_worker calls.
pub mod runner {
    tonic::include_proto!("buildbarn.runner");
}

/// `buildbarn.resourceusage`: what goes into `RunResponse.resource_usage`.
pub mod resourceusage {
    tonic::include_proto!("buildbarn.resourceusage");
}

/// `rbe_runner.resourceusage.v1`: rbe-runner's own facts about an action
/// (the OOM verdict's evidence, the limits it ran under).
pub mod rbe_resourceusage {
    tonic::include_proto!("rbe_runner.resourceusage.v1");
}

/// `google.rpc.Status`, used to attach details to gRPC errors.
pub mod rpc {
    tonic::include_proto!("google.rpc");
}

/// Encoded `FileDescriptorSet` of all of the above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rbe_runner_descriptor");
