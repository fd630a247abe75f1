//! Live output: an action's stdout and stderr, followed from any offset
//! while the action runs, by any number of clients at once, without
//! polling (`rbe_runner.output.v1.Output`, `rbe-runner logs`).
//!
//! The runner creates those files itself (in [`crate::action::prepare`])
//! and the lifecycle says when each action starts, with its files, and
//! when it ends: [`observer::OutputObserver`] is one more observer of those
//! typed facts, wired in `main`; nothing is read from logs or decoded from
//! our own messages.
//!
//! - [`registry`]: which actions can be followed (every running one and
//!   the newest finished ones, a bounded number).
//! - [`observer`]: the observer filling the registry.
//! - [`changes`]: the one inotify instance that tells followers a file
//!   grew.
//! - [`follow`]: one follower, reading chunk by chunk, waiting for more.
//! - [`service`]: the gRPC `Output` service, where a Follow is admitted.
//!
//! Followers count against `events.maximumSubscribers` together with
//! event subscribers ([`crate::streams`]). What an action prints may hold
//! secrets: the service is gated as the Events service is.

pub mod changes;
pub mod follow;
pub mod observer;
pub mod registry;
pub mod service;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;

use crate::action::observer::OutputFile;
use crate::action::{Observer, RunnerInstance};
use crate::bounded::quoted;
use crate::build_directory::BuildDirectory;
use crate::proto::rbe_runner::output::v1::output_server::OutputServer;
use crate::proto::rbe_runner::output::v1::{FollowRequest, OutputStream};
use crate::streams::{StreamSlots, TooManyStreams};

use changes::ChangeWatcher;
use follow::Follower;
use registry::Followable;

/// Why a Follow was refused or ended early. Each names the action and
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("action_id is empty: name an action as the events do (<instance>-<n>)")]
    EmptyActionId,
    #[error("stream {0} is not an OutputStream (0: stdout, 1: stderr)")]
    UnknownStream(i32),
    #[error(
        "no action {}: this runner (instance {instance}) has not started it, \
         or it ended more than {kept} actions ago",
        quoted(id)
    )]
    UnknownAction {
        id: String,
        instance: String,
        kept: usize,
    },
    #[error(
        "the {stream} of action {id} ({path}) no longer exists: bb_worker \
         removes an action's directory once it has collected its outputs"
    )]
    Removed {
        id: String,
        stream: &'static str,
        path: String,
    },
    #[error(
        "the {stream} of action {id} ({path}) was replaced by another file \
         after the action started; only the file the runner created is followed"
    )]
    Replaced {
        id: String,
        stream: &'static str,
        path: String,
    },
    #[error("cannot open the {stream} of action {id} ({path}): {errno}")]
    Open {
        id: String,
        stream: &'static str,
        path: String,
        errno: Errno,
    },
    #[error("cannot watch {what} for new output: {reason}")]
    Watch { what: String, reason: String },
    #[error("cannot read {what} at offset {offset}: {source}")]
    Read {
        what: String,
        offset: u64,
        source: std::io::Error,
    },
    #[error(transparent)]
    TooManyStreams(#[from] TooManyStreams),
}

/// The runner's live output: the registry, the observer filling it, and
/// the service serving it.
pub struct Output {
    registry: Arc<Followable>,
    opener: Arc<Opener>,
}

/// What a Follow needs beyond the registry: the build directory the files
/// are beneath, the cap on streams and the inotify watcher.
pub struct Opener {
    build_directory: Arc<BuildDirectory>,
    stream_slots: Arc<StreamSlots>,
    /// The watcher, or why there is none (then only `follow: false` works).
    watcher: Result<Arc<ChangeWatcher>, String>,
}

impl Output {
    /// Live output of the actions of `instance`, whose files are beneath
    /// `build_directory`; followers take their places from `stream_slots`.
    /// `proc_root` is normally `/proc`. Needs the tokio runtime.
    pub fn start(
        instance: RunnerInstance,
        build_directory: Arc<BuildDirectory>,
        stream_slots: Arc<StreamSlots>,
        proc_root: &Path,
    ) -> Self {
        let watcher = ChangeWatcher::start(proc_root).map_err(|error| {
            tracing::warn!(%error, "cannot create an inotify instance: output can be read, not followed");
            format!("the runner has no inotify instance: {error}")
        });
        Output {
            registry: Arc::new(Followable::new(instance)),
            opener: Arc::new(Opener {
                build_directory,
                stream_slots,
                watcher,
            }),
        }
    }

    /// The observer that makes started actions followable.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(observer::OutputObserver::new(self.registry.clone()))
    }

    /// The gRPC service, for every listener.
    pub fn service(&self) -> OutputServer<service::OutputService> {
        OutputServer::new(service::OutputService::new(
            self.registry.clone(),
            self.opener.clone(),
        ))
    }
}

/// Which file a request names.
fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

impl Opener {
    /// A follower for `request`, whose action is `action`'s, in its place
    /// under the cap. Blocking (opens the file).
    fn follower(
        &self,
        request: &FollowRequest,
        action: &registry::FollowableAction,
    ) -> Result<Follower, FollowError> {
        let stream = OutputStream::try_from(request.stream)
            .map_err(|_| FollowError::UnknownStream(request.stream))?;
        let slot = self.stream_slots.take()?;
        let output = match stream {
            OutputStream::Stdout => &action.outputs.stdout,
            OutputStream::Stderr => &action.outputs.stderr,
        };
        let name = stream_name(stream);
        let file = self.open(&request.action_id, name, output)?;
        let what = format!("the {name} of action {}", request.action_id);
        let changes = match (&self.watcher, request.follow) {
            (_, false) => None,
            (Ok(watcher), true) => {
                Some(watcher.watch(&file).map_err(|error| FollowError::Watch {
                    what: what.clone(),
                    reason: error.to_string(),
                })?)
            }
            (Err(reason), true) => {
                return Err(FollowError::Watch {
                    what,
                    reason: reason.clone(),
                })
            }
        };
        Ok(Follower::new(
            file,
            what,
            request.offset,
            action.ended(),
            changes,
            slot,
        ))
    }

    /// Opens the output file the runner created for `id`, and only that
    /// file: beneath the build directory, through no symlink, with the
    /// device and inode it had when created.
    fn open(
        &self,
        id: &str,
        stream: &'static str,
        output: &OutputFile,
    ) -> Result<File, FollowError> {
        let path = self
            .build_directory
            .path()
            .join(&output.path)
            .display()
            .to_string();
        let file = self
            .build_directory
            .open_for_reading(&output.path)
            .map_err(|errno| match errno {
                Errno::ENOENT | Errno::ENOTDIR => FollowError::Removed {
                    id: id.into(),
                    stream,
                    path: path.clone(),
                },
                // A symlink, or a path leaving the build directory, where
                // the runner created a file.
                Errno::ELOOP | Errno::EXDEV => FollowError::Replaced {
                    id: id.into(),
                    stream,
                    path: path.clone(),
                },
                errno => FollowError::Open {
                    id: id.into(),
                    stream,
                    path: path.clone(),
                    errno,
                },
            })?;
        let same = match (file.metadata(), output.identity) {
            (Ok(metadata), Some(identity)) => (metadata.dev(), metadata.ino()) == identity,
            (Ok(metadata), None) => metadata.is_file(),
            (Err(_), _) => false,
        };
        if !same {
            return Err(FollowError::Replaced {
                id: id.into(),
                stream,
                path,
            });
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opener(build_directory: BuildDirectory) -> Opener {
        Opener {
            build_directory: Arc::new(build_directory),
            stream_slots: StreamSlots::new(1),
            watcher: Err("not needed".into()),
        }
    }

    #[test]
    fn only_the_file_the_runner_created_is_opened() {
        // Why it matters: the action may replace its own stdout with a
        // symlink, a hard link or a FIFO; a follower must then read
        // nothing else (another action's secret) and never hang.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("secret"), "secret").unwrap();
        let build = BuildDirectory::open(dir.path()).unwrap();
        let (_file, created) = build.create_output("a/stdout", "stdout_path").unwrap();
        let output = OutputFile {
            path: "a/stdout".into(),
            identity: created.identity(),
        };
        let opener = opener(build);
        assert!(opener.open("x-1", "stdout", &output).is_ok());

        let stdout = dir.path().join("a/stdout");
        let replacements: [(&str, &dyn Fn()); 3] = [
            ("symlink", &|| {
                std::os::unix::fs::symlink("../secret", &stdout).unwrap()
            }),
            ("hard link", &|| {
                std::fs::hard_link(dir.path().join("secret"), &stdout).unwrap()
            }),
            ("FIFO", &|| {
                nix::unistd::mkfifo(&stdout, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap()
            }),
        ];
        for (what, replace) in replacements {
            std::fs::remove_file(&stdout).unwrap();
            replace();
            let error = opener.open("x-1", "stdout", &output).unwrap_err();
            assert!(
                matches!(error, FollowError::Replaced { .. }),
                "{what}: {error}"
            );
        }

        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        let error = opener.open("x-1", "stdout", &output).unwrap_err();
        assert!(matches!(error, FollowError::Removed { .. }), "{error}");
        assert!(error.to_string().contains("no longer exists"), "{error}");
    }
}
