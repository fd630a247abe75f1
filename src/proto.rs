//! Generated protocol types. The package layout mirrors proto/.

/// `buildbarn.runner`: the service bb_worker calls.
pub mod runner {
    tonic::include_proto!("buildbarn.runner");
}

/// `buildbarn.resourceusage`: what goes into `RunResponse.resource_usage`.
pub mod resourceusage {
    tonic::include_proto!("buildbarn.resourceusage");
}

impl resourceusage::PosixResourceUsage {
    /// The int64 fields under their protobuf-JSON names, for the two JSON
    /// renderings (the events journal's and `exec`'s), which differ only in
    /// how they write the values.
    pub fn json_numbers(&self) -> [(&'static str, i64); 11] {
        [
            ("maximumResidentSetSize", self.maximum_resident_set_size),
            ("pageReclaims", self.page_reclaims),
            ("pageFaults", self.page_faults),
            ("swaps", self.swaps),
            ("blockInputOperations", self.block_input_operations),
            ("blockOutputOperations", self.block_output_operations),
            ("messagesSent", self.messages_sent),
            ("messagesReceived", self.messages_received),
            ("signalsReceived", self.signals_received),
            ("voluntaryContextSwitches", self.voluntary_context_switches),
            (
                "involuntaryContextSwitches",
                self.involuntary_context_switches,
            ),
        ]
    }

    /// The Duration fields under their protobuf-JSON names.
    pub fn json_durations(&self) -> [(&'static str, Option<&prost_types::Duration>); 2] {
        [
            ("userTime", self.user_time.as_ref()),
            ("systemTime", self.system_time.as_ref()),
        ]
    }
}

impl resourceusage::CgroupResourceUsage {
    /// The int64 fields under their protobuf-JSON names (see
    /// [`resourceusage::PosixResourceUsage::json_numbers`]).
    pub fn json_numbers(&self) -> [(&'static str, i64); 7] {
        [
            ("memoryEventsLow", self.memory_events_low),
            ("memoryEventsHigh", self.memory_events_high),
            ("memoryEventsMax", self.memory_events_max),
            ("memoryEventsOom", self.memory_events_oom),
            ("memoryEventsOomKill", self.memory_events_oom_kill),
            (
                "memoryEventsOomGroupKill",
                self.memory_events_oom_group_kill,
            ),
            ("memoryPeak", self.memory_peak),
        ]
    }

    /// The Duration fields (PSI totals) under their protobuf-JSON names.
    pub fn json_durations(&self) -> [(&'static str, Option<&prost_types::Duration>); 6] {
        [
            (
                "memoryPressureSomeTotal",
                self.memory_pressure_some_total.as_ref(),
            ),
            (
                "memoryPressureFullTotal",
                self.memory_pressure_full_total.as_ref(),
            ),
            (
                "cpuPressureSomeTotal",
                self.cpu_pressure_some_total.as_ref(),
            ),
            (
                "cpuPressureFullTotal",
                self.cpu_pressure_full_total.as_ref(),
            ),
            ("ioPressureSomeTotal", self.io_pressure_some_total.as_ref()),
            ("ioPressureFullTotal", self.io_pressure_full_total.as_ref()),
        ]
    }
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

    /// `rbe_runner.output.v1`: following an action's stdout and stderr.
    pub mod output {
        pub mod v1 {
            tonic::include_proto!("rbe_runner.output.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of all of the above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rbe_runner_descriptor");
