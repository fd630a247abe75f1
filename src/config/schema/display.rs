//! What `check-config` prints: every field, defaults included, in the
//! order of bb_runner's schema. Fields with structure are written by their
//! group's module, next to their decoding.

use std::fmt;
use std::path::Path;

use super::{
    cleaning, diagnostics, environment, extensions, input_root_mounts, isolation, serving,
};
use crate::config::duration::format_duration;
use crate::config::Config;

/// A list of displayable items as `["a", "b"]`.
pub(super) fn quoted_list<T: AsRef<Path>>(items: &[T]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("{:?}", item.as_ref().display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

impl fmt::Display for Config {
    /// Every field, defaults included, under the names used in the file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "buildDirectoryPath: {:?}",
            self.build_directory_path.display().to_string()
        )?;
        serving::write_grpc_servers(f, &self.grpc_servers)?;
        writeln!(
            f,
            "cleanTemporaryDirectories: {}",
            quoted_list(&self.clean_temporary_directories)
        )?;
        environment::write_global(f, &self.global)?;
        writeln!(
            f,
            "setTmpdirEnvironmentVariable: {}",
            self.set_tmpdir_environment_variable
        )?;
        writeln!(f, "chrootIntoInputRoot: {}", self.chroot_into_input_root)?;
        writeln!(f, "cleanProcessTable: {}", self.clean_process_table)?;
        writeln!(
            f,
            "readinessCheckingPathnames: {}",
            quoted_list(&self.readiness_checking_pathnames)
        )?;
        environment::write_run_commands_as(f, &self.run_commands_as)?;
        writeln!(
            f,
            "symlinkTemporaryDirectories: {}",
            quoted_list(&self.symlink_temporary_directories)
        )?;
        cleaning::write_run_command_cleaner(f, &self.run_command_cleaner)?;
        environment::write_apple_xcode_developer_directories(
            f,
            &self.apple_xcode_developer_directories,
        )?;
        writeln!(
            f,
            "terminationGracePeriod: {}",
            format_duration(self.termination_grace_period)
        )?;
        writeln!(
            f,
            "stuckSpawnTimeout: {}",
            format_duration(self.stuck_spawn_timeout.unwrap_or_default())
        )?;
        writeln!(
            f,
            "sampleCgroupResourceUsage: {}",
            self.sample_cgroup_resource_usage
        )?;
        extensions::write_action_cgroups(f, &self.action_cgroups)?;
        serving::write_listen_path_mode(f, self.listen_path_mode)?;
        extensions::write_events(f, &self.events)?;
        isolation::write(f, &self.isolation)?;
        input_root_mounts::write(f, &self.input_root_mounts)?;
        diagnostics::write_log_format(f, self.log_format)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{assert_mentions, load_text, load_with, EVERY_FIELD_CAMEL};

    /// `check-config` prints every field, defaults included.
    #[test]
    fn display_lists_every_field() {
        let summary = load_with("").expect("decodes").to_string();
        assert_mentions(
            &summary,
            &[
                "buildDirectoryPath: \"/worker/build\"",
                "listenPaths: [\"/worker/runner\"]",
                "listenAddresses: []",
                "authenticationPolicy:\n      allow: {}",
                "runAuthorizer: allow",
                "eventsAuthorizer: allow",
                "stopGracefully: false",
                "maximumReceivedMessageSizeBytes: default",
                "cleanTemporaryDirectories: []",
                "setUmask: not set",
                "setTmpdirEnvironmentVariable: false",
                "chrootIntoInputRoot: false",
                "cleanProcessTable: false",
                "readinessCheckingPathnames: []",
                "runCommandsAs: not set",
                "symlinkTemporaryDirectories: []",
                "runCommandCleaner: not set",
                "appleXcodeDeveloperDirectories: none",
                "terminationGracePeriod: 5s",
                "sampleCgroupResourceUsage: false",
                "actionCgroups: not set",
                "events: { replayBufferSize: 4096, journalPath: not set, journalMaxBytes: 67108864, runnerName: not set (the host name) }",
            ],
        );
        let summary = load_text(EVERY_FIELD_CAMEL).expect("decodes").to_string();
        assert_mentions(
            &summary,
            &[
                "setUmask: { umask: 0o022 }",
                "runCommandsAs: { userId: 1000, groupId: 1001, additionalGroupIds: [10, 20] }",
                "runCommandCleaner: [\"/usr/bin/docker-cleanup\", \"--all\"]",
                "terminationGracePeriod: 0.25s",
                "actionCgroups: { parentPath: \"/rbe-runner\" }",
                "events: { replayBufferSize: 16, journalPath: \"/worker/events.jsonl\", journalMaxBytes: 1048576, runnerName: \"runner-0\" }",
                "maximumReceivedMessageSizeBytes: 16777216",
            ],
        );
    }
}
