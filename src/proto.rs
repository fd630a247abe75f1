//! Generated protocol types. The package layout mirrors proto/.

/// `buildbarn.runner`: the service bb_worker calls.
pub mod runner {
    tonic::include_proto!("buildbarn.runner");
}

/// `buildbarn.resourceusage`: what goes into `RunResponse.resource_usage`.
pub mod resourceusage {
    tonic::include_proto!("buildbarn.resourceusage");
}

/// `google.rpc`, nested as its package is, so that generated code of
/// packages importing it finds it.
pub mod google {
    /// `google.rpc.Status`, used to attach details to gRPC errors.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
pub use google::rpc;

/// rbe-runner's own packages, `rbe_runner.<name>.v1`.
pub mod rbe_runner {
    /// `rbe_runner.resourceusage.v1`: the OOM verdict and termination
    /// reason enums shared by events, metrics and limits, and an action's
    /// `ActionAccounting` (the verdict's evidence, the limits it ran under).
    pub mod resourceusage {
        pub mod v1 {
            tonic::include_proto!("rbe_runner.resourceusage.v1");
        }
    }

    /// `rbe_runner.events.v1`: the action event stream.
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("rbe_runner.events.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of all of the above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rbe_runner_descriptor");
