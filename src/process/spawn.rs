//! The front door: starting an action's process.
//!
//! [`spawn`] prepares everything the child needs from the action's
//! [`ProcessSpec`] (C strings, descriptors, an empty stdin), asks the spawn
//! server ([`super::spawn_server`]) to create the child, or creates it
//! itself ([`super::child`]), registers it with the reaper and follows it
//! to its exec. [`start_spawn_server`] starts the spawn server the same way.
//!
//! [`choose_method`] decides once, at startup, which of the mechanisms in
//! [`super::clone`] creates children: what [`SPAWN_ENVIRONMENT_VARIABLE`]
//! asks for, and what a [`probe`] child shows this kernel and its seccomp
//! profile allow. `clone.rs` only carries out the choice. Likewise
//! [`choose_waiting`] decides how [`super::reaper`] waits for children.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use tokio::sync::oneshot;

use super::call::CallGone;
use super::child::{self, Child};
use super::clone::{self, Method};
use super::exit_report;
use super::init;
use super::reaper::{self, reaper, ChildExit, Expecting, SpawnedChild, Waiting};
use super::spawn_server::{self, NotAsked, SpawnServer};
use super::spec::{ExecArguments, OomScoreAdj, Parent, ProcessSpec, SpawnError, SpawnStep};
use super::status::{self, Status, StatusReader};
use super::stuck::StuckSpawns;

/// Starts the process described by `spec` with `method`, as the leader of
/// a new process group, registered with the reaper, for the Run call
/// `call`. The spawn server creates it when there is one (see
/// [`super::spawn_server`]); without one, or once it is gone, the runner
/// creates it itself. Returns once the child has exec'd or a step before
/// failed, which this task alone waits for, in the event loop, holding no
/// lock (the child's status channel says, see [`super::status`]).
///
/// A call that is over (its deadline passed, or it was dropped) creates
/// nothing: not here, not in the spawn server, not in a child that has not
/// reached its exec ([`SpawnStep::Deadline`], [`SpawnStep::Cancelled`]).
/// A child that was already inside `execve` is returned once its exec
/// returns, for its supervisor to stop. A spawn still waiting for its
/// exec after `stuck`'s timeout is counted there until it is over.
///
/// The exec is a plain `execve`: no PATH search and no fallback of running
/// a file that fails with ENOEXEC through `/bin/sh`, which would hide a
/// broken executable behind exit code 127 instead of reporting it, as
/// bb_runner does.
pub async fn spawn(
    spec: &ProcessSpec,
    method: Method,
    server: Option<&SpawnServer>,
    call: &mut CallGone,
    stuck: Option<&StuckSpawns>,
) -> Result<SpawnedChild, SpawnError> {
    let waiting = Waited {
        program: &spec.program,
        since: Instant::now(),
        stuck,
    };
    if call.is_over() {
        return Err(call.over_error());
    }
    let exec = ExecArguments::new(spec).map_err(|source| SpawnError {
        step: SpawnStep::Exec,
        source,
    })?;
    let stdin = match &spec.stdin {
        Some(stdin) => stdin.as_raw_fd(),
        None => empty_stdin().map_err(|source| SpawnError {
            step: SpawnStep::Setup,
            source,
        })?,
    };
    let child = Child::new(
        spec.cgroup.as_ref().map(AsRawFd::as_raw_fd),
        [stdin, spec.stdout.as_raw_fd(), spec.stderr.as_raw_fd()],
        spec.oom_score_adj.map(OomScoreAdj::new),
        spec.chroot_directory.as_ref().map(AsRawFd::as_raw_fd),
        spec.working_directory.as_raw_fd(),
        spec.identity.as_ref(),
        &exec,
    )
    .with_deadline(call.spawn_deadline())
    .with_descriptor_limit(spec.descriptor_limit)
    .with_isolation(
        spec.isolation.as_deref(),
        spec.temporary_directory.as_ref().map(AsRawFd::as_raw_fd),
    );
    let isolation = spec.isolation.as_deref();
    if let Some(server) = server.filter(|server| server.is_up()) {
        if let Some(spawned) = ask_server(server, &child, method, call, &waiting).await? {
            return Ok(holding_mount_namespace(spawned, isolation));
        }
    }
    let handed_over = handover_reservation(isolation);
    let (spawned, status) = create_here(&child, method, reaper().expecting())?;
    let pid = spawned.pid;
    let spawned = follow(status, None, Some(spawned), handed_over, call, &waiting)
        .await?
        .ok_or_else(|| SpawnError {
            step: SpawnStep::Create,
            source: io::Error::other(format!("child {pid} lost")),
        })?;
    Ok(holding_mount_namespace(spawned, isolation))
}

/// The reservation for the action that an isolated child without a PID
/// namespace forks once it has set up the namespaces (see
/// `super::child`): taken before the child is created, so that the
/// action, created under it, cannot be taken for an orphan before it is
/// registered.
fn handover_reservation(isolation: Option<&super::isolation::Isolation>) -> Option<Expecting> {
    isolation
        .is_some_and(super::isolation::Isolation::hands_over_action)
        .then(|| reaper().expecting())
}

/// `spawned`, which has exec'd, holding its mount namespace when it has
/// one of its own and no init (which would hold it). The last process of
/// a mount namespace dismantles it as it exits, before its parent learns
/// of the exit: about 55 µs more between an action's end and its Run's
/// answer, measured, against 10 to 15 µs for the runner to let it go once
/// the action's exit is known (the held namespace is closed with the
/// returned value). An action that has ended already is not held.
fn holding_mount_namespace(
    mut spawned: SpawnedChild,
    isolation: Option<&super::isolation::Isolation>,
) -> SpawnedChild {
    if isolation.is_some_and(|isolation| isolation.mounts() && !isolation.pid) {
        let path = format!("{}/{}/ns/mnt", super::DEFAULT_PROC_ROOT, spawned.pid);
        spawned.mount_namespace = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok();
    }
    spawned
}

/// Every action's stdin: it reads end-of-file, as from /dev/null, but from
/// a pipe whose write end is closed, since the runner must not depend on
/// /dev, which a bare root (a chroot, an image FROM scratch) may lack. One
/// pipe for all, made once while no child of ours can be created: a child
/// that inherited a write end would keep the stdin of every action that
/// shares it from ending until its own exec, as one pipe per action did.
fn empty_stdin() -> io::Result<RawFd> {
    static EMPTY: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(stdin) = EMPTY.get() {
        return Ok(stdin.as_raw_fd());
    }
    let _creator = clone::creator()?;
    let (stdin, writer) = std::io::pipe()?;
    drop(writer);
    Ok(EMPTY.get_or_init(|| stdin.into()).as_raw_fd())
}

/// Has the spawn server create `child` with `method`, and follows it to
/// its exec. `Ok(None)` when the server is gone without having created
/// it: the caller creates it instead, never twice.
async fn ask_server(
    server: &SpawnServer,
    child: &Child<'_>,
    method: Method,
    call: &mut CallGone,
    waiting: &Waited<'_>,
) -> Result<Option<SpawnedChild>, SpawnError> {
    let expecting = reaper().expecting();
    // The server sets up namespaces it can leave again itself, and
    // creates the action in them: nothing is handed over then.
    let handed_over = handover_reservation(
        child
            .isolation
            .filter(|isolation| !isolation.entered_by_spawn_server()),
    );
    let status = match server.ask(child, method, call).await {
        Ok(status) => status,
        Err(NotAsked::Gone) => return Ok(None),
        Err(NotAsked::CallOver) => return Err(call.over_error()),
        Err(NotAsked::Setup(source)) => {
            return Err(SpawnError {
                step: SpawnStep::Setup,
                source,
            })
        }
    };
    let spawned = follow(status, Some(expecting), None, handed_over, call, waiting).await?;
    if spawned.is_none() {
        if call.is_over() {
            // The server saw the cancel before it read the request.
            return Err(call.over_error());
        }
        // Every copy of the child's end closed without a word: the server
        // died with the request, before creating the child (whose first
        // words are its pid).
        server.gone(&"it ended a request without creating the child");
    }
    Ok(spawned)
}

/// Creates `child` in this process with `method`; returns it, registered
/// under `expecting`, and its status channel. Only the clone system call
/// is done holding the [`clone::Creator`] (with making and closing the
/// child's end of the channel around it), on this thread: the copy of the
/// runner costs CPU, never a wait.
fn create_here(
    child: &Child,
    method: Method,
    expecting: Expecting,
) -> Result<(SpawnedChild, StatusReader), SpawnError> {
    let setup = |source| SpawnError {
        step: SpawnStep::Setup,
        source,
    };
    let (created, status) = {
        let creator = clone::creator().map_err(setup)?;
        let (status, writer) = status::pipe().map_err(setup)?;
        let (status, report) = if child.is_init() {
            let (reader, writer) = exit_report::pipe().map_err(setup)?;
            (status.with_report(reader), Some(writer))
        } else {
            (status, None)
        };
        let child = child.with_report(report.as_ref().map(AsRawFd::as_raw_fd));
        let created = child::create(
            &creator,
            &child,
            method,
            Parent::Creator,
            writer.as_raw_fd(),
        );
        drop(writer);
        drop(report);
        (created, status)
    };
    let pid = created.map_err(|source| creation_error(method, child, source))?;
    Ok((expecting.register(pid), status))
}

/// The error of a child that could not be created with `method`.
fn creation_error(method: Method, child: &Child, source: io::Error) -> SpawnError {
    SpawnError {
        // With CLONE_INTO_CGROUP, the kernel's refusal to place the child
        // is the only failure particular to this spawn.
        step: if method == Method::Clone3 && child.cgroup.is_some() {
            SpawnStep::JoinCgroup
        } else {
            SpawnStep::Create
        },
        source,
    }
}

/// A spawn as the wait for its exec sees it.
struct Waited<'a> {
    /// The program, to name it when the spawn is stuck.
    program: &'a str,
    /// When the spawn began.
    since: Instant,
    /// Where a spawn that waits too long is counted.
    stuck: Option<&'a StuckSpawns>,
}

impl Waited<'_> {
    /// Registers the spawn with the watchdog of stuck spawns while it
    /// waits for its exec.
    fn register(&self) -> Option<super::stuck::WaitingSpawn<'_>> {
        self.stuck?.waiting(self.program, self.since)
    }
}

/// Reads a child's status channel up to its exec, in the event loop:
/// registers the child under `expecting` once it has said its pid,
/// unless it is `spawned` already. A child that hands its action over
/// (`handed_over`: isolated, no PID namespace) says the action's pid too,
/// registered under that reservation: the action is what the call waits
/// for; the child, which exits, is reaped. When `call` ends meanwhile, cancels
/// (the child exits before its exec; the server creates nothing) and goes
/// on reading, so that a child created anyway is known and stopped. Still
/// waiting after the stuck-spawn timeout, counts itself as stuck until it
/// returns. `Ok(None)`: the channel ended without a word, so no child was
/// created.
///
/// The channel wakes this only at its end ([`super::status`]), when the
/// pid is read with the rest; until then the reservation holds. Only an
/// orphan waiting for reservations to end ([`super::reaper`]) has it
/// read sooner: then each message wakes this as it comes.
async fn follow(
    mut status: StatusReader,
    mut expecting: Option<Expecting>,
    mut spawned: Option<SpawnedChild>,
    mut handed_over: Option<Expecting>,
    call: &mut CallGone,
    waiting: &Waited<'_>,
) -> Result<Option<SpawnedChild>, SpawnError> {
    let setup = |source| SpawnError {
        step: SpawnStep::Setup,
        source,
    };
    let mut cancelled = false;
    // An isolated action under an init: its pid as the runner sees it.
    let mut action = None;
    // An isolated action handed over by the child that set it up.
    let mut handed = None;
    // A failure said before the handed-over action's pid.
    let mut failure = None;
    let mut eager = false;
    // Counted as stuck by the watchdog if it waits too long, until this
    // returns.
    let _waiting = waiting.register();
    loop {
        let hurried = reaper().hurried();
        tokio::pin!(hurried);
        let wanted = (expecting.is_some() || handed_over.is_some()) && !eager;
        if wanted {
            hurried.as_mut().enable();
            if reaper().is_hurrying() {
                status.wake_for_messages().map_err(setup)?;
                eager = true;
                continue;
            }
        }
        let told = tokio::select! {
            told = status.next() => told,
            _ = call.gone(), if !cancelled => {
                status.cancel();
                cancelled = true;
                continue;
            }
            _ = &mut hurried, if wanted => continue,
        };
        match told.map_err(setup)? {
            Some(Status::Started(pid)) => {
                if let Some(expecting) = expecting.take() {
                    spawned = Some(expecting.register(pid));
                }
            }
            // Registered already (it said its pid first): the reaper
            // reaps it once it has exited.
            Some(Status::Failed(step, errno)) => {
                let failed = SpawnError {
                    step,
                    source: io::Error::from_raw_os_error(errno),
                };
                if handed_over.is_none() {
                    return Err(failed);
                }
                // A handed-over action can fail before the child that
                // forked it has said its pid: read on to the end, so that
                // it is registered (and reaped: never having exec'd, its
                // exit sends no SIGCHLD for the orphan sweep to see).
                failure.get_or_insert(failed);
            }
            Some(Status::NotCreated(errno)) => {
                return Err(SpawnError {
                    step: SpawnStep::Create,
                    source: io::Error::from_raw_os_error(errno),
                })
            }
            Some(Status::ActionStarted(pid)) => match handed_over.take() {
                Some(expecting) => handed = Some(expecting.register(pid)),
                None => action = Some(pid),
            },
            // The exec (an init closes its end once its action has
            // exec'd), or a child that ended without a word.
            None => {
                if let Some(failed) = failure {
                    return Err(failed);
                }
                return Ok(match (spawned, action, status.take_report()) {
                    (Some(init), Some(action), Some(report)) => {
                        Some(init::follow_action(init, action, report))
                    }
                    // The child that handed its action over is reaped
                    // as it exits; the call waits for the action.
                    (spawned, _, _) => handed.or(spawned),
                });
            }
        }
    }
}

/// Starts `executable` (this program, normally
/// [`spawn_server::DEFAULT_PROC_SELF_EXE`]) as the spawn server: a child of
/// the runner created as actions are, with `method` and no exit signal,
/// which the children it creates with `CLONE_PARENT` take from it (see
/// [`super::reaper`]). Its connection is its standard input. Returns the
/// server, ready, and its exit.
pub async fn start_spawn_server(
    executable: &Path,
    method: Method,
) -> io::Result<(SpawnServer, oneshot::Receiver<ChildExit>)> {
    let (ours, theirs) = UnixStream::pair()?;
    let stderr = || {
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
    };
    let root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let spec = ProcessSpec {
        program: executable.to_string_lossy().into_owned(),
        arguments: vec![
            "rbe-runner".into(),
            spawn_server::SERVE_ARGUMENT.into(),
            std::process::id().to_string(),
        ],
        environment: Vec::new(),
        working_directory: root,
        chroot_directory: None,
        identity: None,
        stdin: Some(theirs.into()),
        // It never writes to its standard output.
        stdout: stderr()?,
        stderr: stderr()?,
        cgroup: None,
        oom_score_adj: None,
        descriptor_limit: None,
        isolation: None,
        temporary_directory: None,
    };
    let (_forever, dropped) = oneshot::channel();
    let mut call = CallGone::new(dropped, None);
    let child = spawn(&spec, method, None, &mut call, None)
        .await
        .map_err(|error| io::Error::new(error.source.kind(), error))?;
    // Its end of the connection is the server's alone from now on: if it
    // dies before it is ready, ours reads the end of file.
    drop(spec);
    let server = SpawnServer::connect(ours, child.pid as u32).await?;
    Ok((server, child.exit))
}

/// The environment variable that overrides the choice of [`Method`]:
/// `auto` (the default) uses clone3 where it works, `clone3` refuses to
/// start without it, `fallback` always uses clone.
pub const SPAWN_ENVIRONMENT_VARIABLE: &str = "RBE_RUNNER_SPAWN";

/// The method chosen at startup, and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// How children will be created.
    pub method: Method,
    /// Why, in words for the startup log.
    pub reason: String,
}

/// Why no method could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// The environment variable has a value we do not know.
    #[error("RBE_RUNNER_SPAWN={0}: expected auto, clone3 or fallback")]
    UnknownSetting(String),
    /// `clone3` was required and does not work here.
    #[error("RBE_RUNNER_SPAWN=clone3, but clone3 cannot create children here: {0}")]
    Clone3Required(String),
    /// [`WAIT_ENVIRONMENT_VARIABLE`] has a value we do not know.
    #[error("RBE_RUNNER_WAIT={0}: expected auto or thread")]
    UnknownWaitSetting(String),
}

/// The environment variable that overrides the choice of [`Waiting`]:
/// `auto` (the default) waits on pidfds where they work, `thread` always
/// with one thread (as where they do not).
pub const WAIT_ENVIRONMENT_VARIABLE: &str = "RBE_RUNNER_WAIT";

/// How children will be waited for, and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitChoice {
    /// How children will be waited for.
    pub waiting: Waiting,
    /// Why, in words for the startup log.
    pub reason: String,
}

/// Chooses how to wait for children from `setting` (the value of
/// [`WAIT_ENVIRONMENT_VARIABLE`]), trying pidfds once.
pub fn choose_waiting(setting: Option<&str>) -> Result<WaitChoice, ChoiceError> {
    match setting.unwrap_or("auto") {
        "auto" | "" => Ok(match reaper::pidfds_work() {
            Ok(()) => WaitChoice {
                waiting: Waiting::Pidfd,
                reason: "pidfds work here".into(),
            },
            Err(error) => WaitChoice {
                waiting: Waiting::Thread,
                reason: format!("pidfds are unavailable ({error})"),
            },
        }),
        "thread" => Ok(WaitChoice {
            waiting: Waiting::Thread,
            reason: format!("forced by {WAIT_ENVIRONMENT_VARIABLE}=thread"),
        }),
        other => Err(ChoiceError::UnknownWaitSetting(
            crate::bounded::quoted(other).to_string(),
        )),
    }
}

/// Chooses how to create children from `setting` (the value of
/// [`SPAWN_ENVIRONMENT_VARIABLE`]) by trying clone3 once, placing the
/// test child into `cgroup` (a directory where the runner's children
/// may be placed, such as the runner's own cgroup) when actions will
/// be placed into cgroups: a kernel older than 5.7 has clone3 without
/// `CLONE_INTO_CGROUP`.
pub fn choose_method(setting: Option<&str>, cgroup: Option<&Path>) -> Result<Choice, ChoiceError> {
    let required = match setting.unwrap_or("auto") {
        "auto" | "" => false,
        "clone3" => true,
        "fallback" => {
            return Ok(Choice {
                method: Method::Clone,
                reason: format!("forced by {SPAWN_ENVIRONMENT_VARIABLE}=fallback"),
            })
        }
        other => {
            return Err(ChoiceError::UnknownSetting(
                crate::bounded::quoted(other).to_string(),
            ))
        }
    };
    let tried = match cgroup {
        Some(path) => std::fs::File::open(path)
            .map_err(|error| format!("cannot open {}: {error}", path.display()))
            .and_then(|directory| {
                probe(Method::Clone3, Some(directory.as_raw_fd()))
                    .map_err(|error| format!("clone3 into {}: {error}", path.display()))
            }),
        None => probe(Method::Clone3, None).map_err(|error| format!("clone3: {error}")),
    };
    match tried {
        Ok(()) => Ok(Choice {
            method: Method::Clone3,
            reason: match cgroup {
                Some(_) => "clone3 works here, placing children into their cgroups".into(),
                None => "clone3 works here".into(),
            },
        }),
        Err(error) if required => Err(ChoiceError::Clone3Required(error)),
        Err(error) => Ok(Choice {
            method: Method::Clone,
            reason: format!(
                "clone3 is unavailable ({error}); children join their cgroups themselves"
            ),
        }),
    }
}

/// Whether `method` can create children here, tried with a child that
/// exits at once (placed into the cgroup open as `cgroup` when given, as
/// actions will be). Blocking: waits for the child's exit.
pub fn probe(method: Method, cgroup: Option<RawFd>) -> io::Result<()> {
    extern "C" fn exit_at_once(_: *mut c_void) -> libc::c_int {
        0
    }
    let expecting = reaper().expecting();
    let creator = clone::creator()?;
    let previous = clone::block_all_signals();
    // SAFETY: the child only returns 0; nothing is passed to it.
    let created =
        unsafe { creator.create(method, cgroup, false, exit_at_once, std::ptr::null_mut()) };
    clone::restore_signals(&previous);
    drop(creator);
    // Waited for like any child, by the reaper.
    let child = expecting.register(created?);
    let _ = child.exit.blocking_recv();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call without a deadline that never ends.
    fn forever() -> CallGone {
        let (call, dropped) = oneshot::channel();
        std::mem::forget(call);
        CallGone::new(dropped, None)
    }

    fn spec(dir: &std::path::Path, program: &str) -> ProcessSpec {
        let working_directory = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        ProcessSpec {
            program: program.into(),
            arguments: vec![program.into()],
            environment: vec![],
            working_directory,
            chroot_directory: None,
            identity: None,
            stdin: None,
            stdout: std::fs::File::create(dir.join("stdout")).unwrap(),
            stderr: std::fs::File::create(dir.join("stderr")).unwrap(),
            cgroup: None,
            oom_score_adj: None,
            descriptor_limit: None,
            isolation: None,
            temporary_directory: None,
        }
    }

    /// Both ways of creating children for `test`, the clone3 one only
    /// where this machine has it (otherwise that half is skipped).
    fn methods(test: &str) -> Vec<Method> {
        let mut methods = vec![Method::Clone];
        // The probe waits for its child, which a test's runtime thread
        // must not.
        match std::thread::spawn(|| probe(Method::Clone3, None))
            .join()
            .unwrap()
        {
            Ok(()) => methods.push(Method::Clone3),
            Err(error) => crate::test_support::skip(
                test,
                &format!("its clone3 half: clone3 is unavailable here ({error})"),
            ),
        }
        methods
    }

    /// Why it matters: a missing program is the request's fault (the build
    /// fails), a step before exec failing is the host's (retry elsewhere);
    /// the caller can only tell them apart by the step.
    #[tokio::test]
    async fn a_failing_exec_is_reported_as_the_exec_step() {
        for method in methods("a_failing_exec_is_reported_as_the_exec_step") {
            let dir = tempfile::tempdir().unwrap();
            let err = spawn(
                &spec(dir.path(), "/nonexistent/program"),
                method,
                None,
                &mut forever(),
                None,
            )
            .await
            .unwrap_err();
            assert_eq!(err.step, SpawnStep::Exec, "{method}");
            assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT), "{method}");
        }
    }

    #[tokio::test]
    async fn a_failing_step_before_exec_is_named() {
        for method in methods("a_failing_step_before_exec_is_named") {
            let dir = tempfile::tempdir().unwrap();
            // A directory that is not a cgroup: the child cannot join it.
            let mut joining = spec(dir.path(), "/bin/true");
            joining.cgroup = Some(
                nix::fcntl::open(
                    dir.path(),
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                    nix::sys::stat::Mode::empty(),
                )
                .unwrap(),
            );
            let err = spawn(&joining, method, None, &mut forever(), None)
                .await
                .unwrap_err();
            assert_eq!(err.step, SpawnStep::JoinCgroup, "{method}: {err}");
            assert!(err.to_string().contains("cgroup"), "{method}: {err}");

            // A working directory that is not a directory.
            let mut entering = spec(dir.path(), "/bin/true");
            entering.working_directory = nix::fcntl::open(
                &dir.path().join("stderr"),
                nix::fcntl::OFlag::O_PATH,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            let err = spawn(&entering, method, None, &mut forever(), None)
                .await
                .unwrap_err();
            assert_eq!(err.step, SpawnStep::WorkingDirectory, "{method}: {err}");
        }
    }

    #[tokio::test]
    async fn a_successful_spawn_runs_the_program() {
        for method in methods("a_successful_spawn_runs_the_program") {
            let dir = tempfile::tempdir().unwrap();
            let child = spawn(
                &spec(dir.path(), "/bin/true"),
                method,
                None,
                &mut forever(),
                None,
            )
            .await
            .unwrap();
            let exit = child.exit.await.unwrap();
            assert_eq!(exit.exit_code(), Some(0), "{method}");
        }
    }

    /// Why it matters: the child shares the runner's memory, so a handler
    /// of the runner's must never run in it, and an action must start as
    /// from a shell: nothing blocked, SIGPIPE not ignored (Rust ignores it
    /// in the runner), its own process group, stdin at end of file.
    #[tokio::test]
    async fn the_action_starts_with_clean_signals_its_own_group_and_empty_stdin() {
        for method in methods("the_action_starts_with_clean_signals_its_own_group_and_empty_stdin")
        {
            let dir = tempfile::tempdir().unwrap();
            let mut shell = spec(dir.path(), "/bin/sh");
            shell.arguments = vec![
                "/bin/sh".into(),
                "-c".into(),
                "grep -E '^Sig(Blk|Ign)' /proc/self/status; \
                 ps -o pgid= -p $$ | tr -d ' '; echo $$; cat; echo end"
                    .into(),
            ];
            let _previous = clone::block_all_signals();
            let child = spawn(&shell, method, None, &mut forever(), None)
                .await
                .unwrap();
            let pid = child.pid;
            let exit = child.exit.await.unwrap();
            assert_eq!(exit.exit_code(), Some(0), "{method}");
            let output = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
            let lines: Vec<&str> = output.lines().collect();
            assert_eq!(lines[0], "SigBlk:\t0000000000000000", "{method}: {output}");
            // Signals ignored by whoever started us stay ignored, as with
            // a shell; SIGPIPE, which Rust ignores, is back to default.
            let ours = std::fs::read_to_string("/proc/self/status").unwrap();
            let ignored_here = ours
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:\t"))
                .map(|mask| u64::from_str_radix(mask, 16).unwrap())
                .unwrap();
            assert_ne!(ignored_here & (1 << (libc::SIGPIPE - 1)), 0);
            let expected = ignored_here & !(1 << (libc::SIGPIPE - 1));
            assert_eq!(
                lines[1],
                format!("SigIgn:\t{expected:016x}"),
                "{method}: {output}"
            );
            assert_eq!(lines[2], pid.to_string(), "{method}: group, {output}");
            assert_eq!(lines[3], pid.to_string(), "{method}: {output}");
            assert_eq!(lines[4], "end", "{method}: {output}");
        }
    }

    /// Why it matters: a spawn server that dies holding a request must
    /// neither lose the action nor let it run twice: nothing was created
    /// (a child's first words are its pid), so the runner creates it.
    #[tokio::test]
    async fn a_request_the_server_took_with_it_is_created_here_once() {
        use std::io::{Read, Write};
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let dying = std::thread::spawn(move || {
            theirs.write_all(b"RDY1").unwrap();
            let mut first = [0u8; 4];
            theirs.read_exact(&mut first).unwrap();
            // Dies with the request and its descriptors.
        });
        let server = SpawnServer::connect(ours, 0).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut shell = spec(dir.path(), "/bin/sh");
        shell.arguments = vec!["/bin/sh".into(), "-c".into(), "echo ran".into()];
        let child = spawn(&shell, Method::Clone, Some(&server), &mut forever(), None)
            .await
            .unwrap();
        dying.join().unwrap();
        let exit = child.exit.await.unwrap();
        assert_eq!(exit.exit_code(), Some(0));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
            "ran\n"
        );
        assert!(!server.is_up());
    }

    /// Why it matters: CI forces the fallback with the variable to test
    /// both paths, and a typo must not silently pick one.
    #[test]
    fn the_setting_forces_or_requires_a_method_and_typos_are_refused() {
        let forced = choose_method(Some("fallback"), None).unwrap();
        assert_eq!(forced.method, Method::Clone);
        assert!(
            forced.reason.contains("RBE_RUNNER_SPAWN=fallback"),
            "{forced:?}"
        );
        let error = choose_method(Some("clone4"), None).unwrap_err();
        assert!(
            error.to_string().contains("RBE_RUNNER_SPAWN=\"clone4\""),
            "{error}"
        );
        match choose_method(Some("clone3"), None) {
            Ok(choice) => assert_eq!(choice.method, Method::Clone3),
            Err(error) => assert!(matches!(error, ChoiceError::Clone3Required(_)), "{error}"),
        }
    }

    /// Why it matters: CI runs the suites once more waiting with one
    /// thread, and a typo must not silently pick a way.
    #[test]
    fn the_wait_setting_forces_the_thread_and_typos_are_refused() {
        let forced = choose_waiting(Some("thread")).unwrap();
        assert_eq!(forced.waiting, Waiting::Thread);
        assert!(
            forced.reason.contains("RBE_RUNNER_WAIT=thread"),
            "{forced:?}"
        );
        let error = choose_waiting(Some("pidfds")).unwrap_err();
        assert!(
            error.to_string().contains("RBE_RUNNER_WAIT=\"pidfds\""),
            "{error}"
        );
        assert_eq!(choose_waiting(None).unwrap().waiting, Waiting::Pidfd);
    }

    #[test]
    fn a_cgroup_that_cannot_be_opened_falls_back_with_the_reason() {
        let choice = choose_method(None, Some(Path::new("/nonexistent/cgroup"))).unwrap();
        assert_eq!(choice.method, Method::Clone);
        assert!(choice.reason.contains("/nonexistent/cgroup"), "{choice:?}");
    }
}
