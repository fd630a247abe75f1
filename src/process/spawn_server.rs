//! The spawn server: a small process of our own that creates the actions'
//! processes as children of the runner.
//!
//! Creating a child as a copy of the runner (see [`super::clone`] for why
//! a copy) costs the runner a copy of its page tables and, afterwards, a
//! fault on every page it writes, which are all copy-on-write until the
//! child has exec'd: about half of the runner's CPU per action in a
//! profile. The spawn server is this executable started once more (so it
//! shares nothing with the runner but the kernel), single-threaded and
//! small. It receives each child's description and descriptors over a
//! Unix socket, creates the child with `CLONE_PARENT`, so that the child is
//! the runner's (waited for by the runner's reaper, its rusage the
//! runner's to read, its orphans re-parented to the runner), and goes on
//! to the next request at once.
//!
//! It never answers, and never waits for a child's exec: among the
//! descriptors of each request is the write end of the child's status pipe
//! ([`super::status`]), through which the child itself tells the runner
//! its pid and the step that failed, and whose end of file is its exec.
//! The server only writes there when it could not create the child. So one
//! slow exec holds up no other request, and the runner learns a child's
//! pid even if the server dies right after creating it.
//!
//! The runner asks from the async task of the action (no blocking-pool
//! thread, no lock held across a wait for the server): the socket is
//! non-blocking, and requests are written one whole request at a time
//! under an async lock that waits only while the socket is full (the
//! server stopped, say). A spawn whose call ends while it waits for its
//! turn sends nothing. Each request carries the call's deadline, and the
//! server creates no child whose deadline passed or whose spawn the
//! runner cancelled meanwhile (see [`super::call`]).
//!
//! If the server is gone (it never is unless killed), the runner creates
//! children itself from then on, and says so in its log. A request the
//! server took with it ends the status pipe without a word: nothing was
//! created, and the runner creates that child itself. The server exits at
//! the end of file on the socket: when the runner exits, however it dies.

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, Mutex};

use super::call::{CallGone, SpawnDeadline};
use super::child::{self, Child};
use super::clone::{self, Method};
use super::exit_report;
use super::input_root_mounts::{ActionDirectories, InputRootMounts};
use super::isolation::{CreatorNamespaces, Isolation};
use super::reaper::ChildExit;
use super::spec::{DescriptorLimit, ExecArguments, Identity, OomScoreAdj, Parent, SpawnStep};
use super::status::{self, StatusReader, StatusWriter};
use super::user_namespace::{MapWriter, UserNamespace};
use crate::room_to_write::RoomToWrite;

/// This executable, as the kernel knows it: still there when the file was
/// replaced since (`rbe-runner install` over a running copy).
pub const DEFAULT_PROC_SELF_EXE: &str = "/proc/self/exe";

/// The hidden first argument that makes the executable a spawn server.
pub const SERVE_ARGUMENT: &str = "__spawn-server";

/// Marks a request; bumped if its layout changes (the server is always
/// the same executable as the runner, so this only guards against bugs).
const REQUEST_MAGIC: u32 = 0x5242_5332;

/// Sent by the server once it is ready.
const READY: &[u8; 4] = b"RDY1";

/// The most descriptors one request carries: the status pipe, stdin,
/// stdout, stderr, the working directory, the root, the cgroup, the
/// temporary directory of a private `/tmp` and the exit report of an
/// init.
const MOST_DESCRIPTORS: usize = 9;

/// The largest request: the exec size limit is at most a quarter of an
/// 8 GiB stack, but requests are measured against the real limit long
/// before; this only bounds what a corrupted length could make us read.
const LARGEST_REQUEST: usize = 1 << 30;

/// The runner's end of the connection to its spawn server.
#[derive(Debug)]
pub struct SpawnServer {
    /// Where requests are written (non-blocking), one whole request at a
    /// time: held only while a request is written, which waits only while
    /// the socket is full.
    connection: Mutex<Connection>,
    /// Whether the server is still there, as far as the runner knows;
    /// read without a lock, by `/metrics` too.
    up: AtomicBool,
    pid: u32,
}

/// The socket requests are written to. The event loop does not watch it
/// (nothing is read from it once the server is ready): only a request
/// that finds it full waits for room ([`RoomToWrite`]), so that the
/// server reading each request does not wake the runner.
#[derive(Debug)]
struct Connection {
    socket: UnixStream,
    room: RoomToWrite,
}

/// Why a request was not sent.
#[derive(Debug)]
pub(crate) enum NotAsked {
    /// The server is gone: nothing was created, ask no more.
    Gone,
    /// The call ended before any of the request was sent.
    CallOver,
    /// The request's status channel could not be made here.
    Setup(io::Error),
}

impl SpawnServer {
    /// The runner's end of a connection to the server `pid`, once the
    /// server has said that it is ready. Needs a Tokio runtime.
    pub(crate) async fn connect(connection: UnixStream, pid: u32) -> io::Result<SpawnServer> {
        connection.set_nonblocking(true)?;
        // Watched for reading only until the server says it is ready.
        // SAFETY: the AsyncFd owns the socket, which stays open and the
        // same until it is dropped.
        let connection = unsafe { AsyncFd::register_with_interest(connection, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let mut ready = [0u8; 4];
        let mut filled = 0;
        while filled < ready.len() {
            let read = connection
                .async_io(Interest::READABLE, |mut socket| {
                    socket.read(&mut ready[filled..])
                })
                .await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spawn server exited before it was ready",
                ));
            }
            filled += read;
        }
        if &ready != READY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the spawn server did not say it was ready",
            ));
        }
        Ok(SpawnServer {
            connection: Mutex::new(Connection {
                socket: connection.into_inner(),
                room: RoomToWrite::default(),
            }),
            up: AtomicBool::new(true),
            pid,
        })
    }

    /// The server's pid, for the log.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server is still there, as far as the runner knows.
    /// Never waits: an atomic.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Notes the server's end as soon as it exits: its exit comes like any
    /// child's (its pidfd, or the reaper thread), so `/metrics` says so at
    /// once, not at the next spawn.
    pub async fn watch(&self, exit: oneshot::Receiver<ChildExit>) {
        match exit.await {
            Ok(exit) => self.gone(&format_args!(
                "it exited (code {:?}, signal {:?})",
                exit.exit_code(),
                exit.signal().map(super::signal_name)
            )),
            Err(_) => self.gone(&"its exit was lost"),
        }
    }

    /// Notes that the server is gone, saying so once, when first noticed.
    pub(crate) fn gone(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(pid = self.pid, why = %why, "the spawn server is gone; the runner creates actions' processes itself from now on");
        }
    }

    /// Asks the server to create `child` with `method` as a child of the
    /// runner; returns the reader of the child's status channel once the
    /// whole request is written: whatever became of the child comes
    /// through it. Waits (in the event loop) for its turn and for room in
    /// the socket, unless `call` ends first, which sends nothing. Once the
    /// first part (with the descriptors) is sent, the rest is sent
    /// whatever the call does, so that the next request is whole.
    pub(crate) async fn ask(
        &self,
        child: &Child<'_>,
        method: Method,
        call: &mut CallGone,
    ) -> Result<StatusReader, NotAsked> {
        if !self.is_up() {
            return Err(NotAsked::Gone);
        }
        let (request, descriptors) = encode(child, method);
        let mut connection = tokio::select! {
            connection = self.connection.lock() => connection,
            _ = call.gone() => return Err(NotAsked::CallOver),
        };
        let Connection { socket, room } = &mut *connection;
        let sending = || send_first(socket, &request, &descriptors, child.is_init());
        let first = tokio::select! {
            first = room.write(socket.as_fd(), sending) => first,
            _ = call.gone() => return Err(NotAsked::CallOver),
        };
        let (status, mut sent) = match first {
            Ok(Ok(first)) => first,
            Ok(Err(setup)) => return Err(NotAsked::Setup(setup)),
            Err(error) => return Err(self.lost(&error)),
        };
        while sent < request.len() {
            let rest = || {
                nix::sys::socket::send(
                    socket.as_raw_fd(),
                    &request[sent..],
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)
            };
            match room.write(socket.as_fd(), rest).await {
                Ok(written) => sent += written,
                // The server has the first part (and the status channel):
                // it dies without creating the child, which the channel's
                // end of file without a word tells.
                Err(error) => {
                    self.lost(&error);
                    break;
                }
            }
        }
        Ok(status)
    }

    /// Notes that the connection failed with `error`: the server is gone.
    fn lost(&self, error: &io::Error) -> NotAsked {
        self.gone(error);
        NotAsked::Gone
    }
}

/// Sends the first part of `request` with its `descriptors`, the child's
/// end of a new status channel first (and, for an `init`, its exit
/// report's last), never waiting: `Err` is the connection's error
/// (`WouldBlock` when full), `Ok(Err)` a failure to make the channel.
/// Done holding the [`clone::Creator`], so that no child of ours inherits
/// the channel's end: it is closed on return, in flight to the server
/// with the request.
fn send_first(
    socket: &UnixStream,
    request: &[u8],
    descriptors: &[RawFd],
    init: bool,
) -> io::Result<io::Result<(StatusReader, usize)>> {
    let made = clone::creator().and_then(|creator| {
        let (status, writer) = status::pipe()?;
        let report = init.then(exit_report::pipe).transpose()?;
        Ok((creator, status, writer, report))
    });
    let (_creator, status, writer, report) = match made {
        Ok(made) => made,
        Err(error) => return Ok(Err(error)),
    };
    let mut attached = Vec::with_capacity(descriptors.len() + 2);
    attached.push(writer.as_raw_fd());
    attached.extend_from_slice(descriptors);
    let (status, _report_writer) = match report {
        Some((reader, writer)) => {
            attached.push(writer.as_raw_fd());
            (status.with_report(reader), Some(writer))
        }
        None => (status, None),
    };
    let rights = [ControlMessage::ScmRights(&attached)];
    loop {
        match sendmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &[IoSlice::new(request)],
            &rights,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(sent) => return Ok(Ok((status, sent))),
            Err(error) => return Err(error.into()),
        }
    }
}

/// The request for `child`: its descriptors (to which the status
/// channel's is prepended when sent), and everything else as bytes.
fn encode(child: &Child, method: Method) -> (Vec<u8>, Vec<RawFd>) {
    let mut descriptors = Vec::with_capacity(MOST_DESCRIPTORS);
    descriptors.extend(child.standard);
    descriptors.push(child.working_directory);
    let mut flags = 0u8;
    if let Some(root) = child.chroot_directory {
        flags |= FLAG_CHROOT;
        descriptors.push(root);
    }
    if let Some(cgroup) = child.cgroup {
        flags |= FLAG_CGROUP;
        descriptors.push(cgroup);
    }
    if let Some(temporary_directory) = child.temporary_directory {
        flags |= FLAG_TEMPORARY_DIRECTORY;
        descriptors.push(temporary_directory);
    }
    let mut body = Writer::default();
    body.u32(REQUEST_MAGIC);
    body.u8(match method {
        Method::Clone3 => 1,
        Method::Clone => 2,
    });
    if child.oom_score_adj.is_some() {
        flags |= FLAG_OOM_SCORE_ADJ;
    }
    if child.identity.is_some() {
        flags |= FLAG_IDENTITY;
    }
    if child.descriptor_limit.is_some() {
        flags |= FLAG_DESCRIPTOR_LIMIT;
    }
    body.u8(flags);
    body.u32(child.oom_score_adj.map_or(0, |value| value.value()) as u32);
    // 0: no deadline (CLOCK_MONOTONIC is never 0 once the system runs).
    body.u64(child.deadline.map_or(0, SpawnDeadline::nanoseconds));
    let no_groups = Vec::new();
    let (user, group, groups) = child.identity.map_or((0, 0, &no_groups), |identity| {
        (
            identity.user_id,
            identity.group_id,
            &identity.additional_group_ids,
        )
    });
    body.u32(user);
    body.u32(group);
    body.u32(groups.len() as u32);
    for &group in groups {
        body.u32(group);
    }
    body.bytes(child.exec.program.as_bytes());
    for strings in [&child.exec.arguments, &child.exec.environment] {
        body.u32(strings.len() as u32);
        for string in strings {
            body.bytes(string.as_bytes());
        }
    }
    if let Some(limit) = child.descriptor_limit {
        body.u64(limit.soft);
        body.u64(limit.hard);
    }
    if let Some(isolation) = child.isolation {
        flags |= FLAG_ISOLATION;
        encode_isolation(&mut body, isolation);
    }
    body.0[5] = flags;
    let mut request = (body.0.len() as u32).to_le_bytes().to_vec();
    request.extend(body.0);
    (request, descriptors)
}

const FLAG_CHROOT: u8 = 1;
const FLAG_CGROUP: u8 = 2;
const FLAG_OOM_SCORE_ADJ: u8 = 4;
const FLAG_IDENTITY: u8 = 8;
/// Two u64 (soft, hard) at the end of the body.
const FLAG_DESCRIPTOR_LIMIT: u8 = 16;
/// The isolation's options and host name at the end of the body.
const FLAG_ISOLATION: u8 = 32;
/// The temporary directory of a private `/tmp`, after the cgroup.
const FLAG_TEMPORARY_DIRECTORY: u8 = 64;

/// `isolation` as a byte of options, then the host name (empty: none),
/// then the input root's mounts if any, then, in a user namespace, who
/// writes its maps and the maps.
fn encode_isolation(body: &mut Writer, isolation: &Isolation) {
    let options = [
        isolation.pid,
        isolation.network_off,
        isolation.private_tmp,
        isolation.ipc,
        isolation.input_root_mounts.is_some(),
        isolation.user_namespace.is_some(),
        isolation.spawn_server_may_enter,
    ]
    .iter()
    .enumerate()
    .fold(0u8, |options, (bit, &set)| options | (u8::from(set) << bit));
    body.u8(options);
    body.bytes(isolation.hostname.as_deref().unwrap_or("").as_bytes());
    if let Some(mounts) = &isolation.input_root_mounts {
        body.bytes(&mounts.encode());
    }
    if let Some(namespace) = &isolation.user_namespace {
        body.u8(match namespace.writer {
            MapWriter::Child => 1,
            MapWriter::Creator => 2,
        });
        body.bytes(namespace.uid_map.as_bytes());
        body.bytes(namespace.gid_map.as_bytes());
    }
}

fn decode_isolation(reader: &mut Reader) -> Result<Isolation, &'static str> {
    let options = reader.u8()?;
    let hostname = reader.cstring()?;
    let hostname = hostname.into_string().map_err(|_| "host name not UTF-8")?;
    let input_root_mounts = if options & 16 != 0 {
        let length = reader.u32()? as usize;
        let mounts = InputRootMounts::decode(reader.take(length)?)?;
        Some(std::sync::Arc::new(mounts))
    } else {
        None
    };
    let user_namespace = match options & 32 != 0 {
        false => None,
        true => {
            let writer = match reader.u8()? {
                1 => MapWriter::Child,
                2 => MapWriter::Creator,
                _ => return Err("unknown writer of the user namespace's maps"),
            };
            let mut map = || reader.cstring()?.into_string().map_err(|_| "map not UTF-8");
            Some(UserNamespace {
                writer,
                uid_map: map()?,
                gid_map: map()?,
            })
        }
    };
    Ok(Isolation {
        pid: options & 1 != 0,
        network_off: options & 2 != 0,
        private_tmp: options & 4 != 0,
        ipc: options & 8 != 0,
        hostname: (!hostname.is_empty()).then_some(hostname),
        input_root_mounts,
        user_namespace,
        spawn_server_may_enter: options & 64 != 0,
    })
}

/// A request as the server received it, owning what the child needs.
struct Request {
    method: Method,
    /// stdin, stdout, stderr, working directory, then root and cgroup when
    /// flagged.
    descriptors: Vec<OwnedFd>,
    has_root: bool,
    has_cgroup: bool,
    has_temporary_directory: bool,
    /// The exit report's write end, last: the child is an init.
    has_report: bool,
    isolation: Option<Isolation>,
    oom_score_adj: Option<i32>,
    identity: Option<Identity>,
    exec: ExecArguments,
    deadline: Option<SpawnDeadline>,
    descriptor_limit: Option<DescriptorLimit>,
}

impl Request {
    fn decode(body: &[u8], descriptors: Vec<OwnedFd>) -> Result<Request, &'static str> {
        let mut reader = Reader(body);
        if reader.u32()? != REQUEST_MAGIC {
            return Err("not a spawn request");
        }
        let method = match reader.u8()? {
            1 => Method::Clone3,
            2 => Method::Clone,
            _ => return Err("unknown method"),
        };
        let flags = reader.u8()?;
        let oom_score_adj = reader.u32()? as i32;
        let deadline = reader.u64()?;
        let (user_id, group_id) = (reader.u32()?, reader.u32()?);
        let group_count = reader.u32()? as usize;
        let mut additional_group_ids = Vec::new();
        for _ in 0..group_count {
            additional_group_ids.push(reader.u32()?);
        }
        let program = reader.cstring()?;
        let mut vectors = [Vec::new(), Vec::new()];
        for strings in &mut vectors {
            let count = reader.u32()? as usize;
            for _ in 0..count {
                strings.push(reader.cstring()?);
            }
        }
        let [arguments, environment] = vectors;
        let descriptor_limit = if flags & FLAG_DESCRIPTOR_LIMIT != 0 {
            Some(DescriptorLimit {
                soft: reader.u64()?,
                hard: reader.u64()?,
            })
        } else {
            None
        };
        let isolation = if flags & FLAG_ISOLATION != 0 {
            Some(decode_isolation(&mut reader)?)
        } else {
            None
        };
        let has_root = flags & FLAG_CHROOT != 0;
        let has_cgroup = flags & FLAG_CGROUP != 0;
        let has_temporary_directory = flags & FLAG_TEMPORARY_DIRECTORY != 0;
        let has_report = isolation.as_ref().is_some_and(|isolation| isolation.pid);
        let expected = 4
            + usize::from(has_root)
            + usize::from(has_cgroup)
            + usize::from(has_temporary_directory)
            + usize::from(has_report);
        if descriptors.len() != expected {
            return Err("wrong number of descriptors");
        }
        Ok(Request {
            method,
            descriptors,
            has_root,
            has_cgroup,
            has_temporary_directory,
            has_report,
            isolation,
            oom_score_adj: (flags & FLAG_OOM_SCORE_ADJ != 0).then_some(oom_score_adj),
            identity: (flags & FLAG_IDENTITY != 0).then_some(Identity {
                user_id,
                group_id,
                additional_group_ids,
            }),
            exec: ExecArguments::of(program, arguments, environment),
            deadline: (deadline != 0).then(|| SpawnDeadline::from_nanoseconds(deadline)),
            descriptor_limit,
        })
    }

    fn child(&self) -> Child<'_> {
        let fd = |index: usize| self.descriptors[index].as_raw_fd();
        let mut next = 4;
        let mut take = |present: bool| {
            present.then(|| {
                next += 1;
                fd(next - 1)
            })
        };
        let chroot_directory = take(self.has_root);
        let cgroup = take(self.has_cgroup);
        let temporary_directory = take(self.has_temporary_directory);
        let report = take(self.has_report);
        Child::new(
            cgroup,
            [fd(0), fd(1), fd(2)],
            self.oom_score_adj.map(OomScoreAdj::new),
            chroot_directory,
            fd(3),
            self.identity.as_ref(),
            &self.exec,
        )
        .with_deadline(self.deadline)
        .with_descriptor_limit(self.descriptor_limit)
        .with_isolation(self.isolation.as_ref(), temporary_directory)
        .with_report(report)
    }
}

/// The spawn server's main: serves the runner on standard input until the
/// runner closes it. What follows [`SERVE_ARGUMENT`] (the runner's pid) is
/// only there for `ps`, to tell whose server it is.
pub fn serve(_args: &[String]) -> ExitCode {
    // Started through /proc/self/exe, it would be called "exe" in ps and
    // top.
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"rbe-spawnserver".as_ptr(), 0, 0, 0) };
    // No PR_SET_PDEATHSIG: it fires when the *thread* that started us
    // exits (a blocking-pool thread of the runner's, gone after 10 s
    // idle), not the runner. The runner's end of the connection is ours
    // alone (close-on-exec, never passed on), so its end of file is the
    // runner's exit, however it died.
    // Signals meant for the runner's process group (a terminal's ^C) must
    // not stop the server while the runner shuts down gracefully. Blocked,
    // not ignored: children start with every signal unblocked, while an
    // ignored signal would stay ignored in them.
    let _ = super::clone::block_all_signals();
    // Standard input is the connection; moved above 2 (and close-on-exec)
    // so that children never see it and descriptors received stay above
    // the standard ones.
    // SAFETY: duplicating our standard input; the result is checked.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return ExitCode::FAILURE;
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut connection = unsafe { UnixStream::from_raw_fd(fd) };
    if connection.write_all(READY).is_err() {
        return ExitCode::FAILURE;
    }
    loop {
        match receive(&mut connection) {
            Ok(Some((body, descriptors))) => serve_one(&body, descriptors),
            Ok(None) => return ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("rbe-runner {SERVE_ARGUMENT}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Creates the child a request describes, and goes on: the child tells
/// the rest through its status pipe. Only a child that cannot be created
/// is reported here. Dropping the request closes the server's copies of
/// its descriptors, the status pipe's among them.
fn serve_one(body: &[u8], mut descriptors: Vec<OwnedFd>) {
    if descriptors.is_empty() {
        eprintln!("rbe-runner {SERVE_ARGUMENT}: a request without descriptors");
        return;
    }
    let status_pipe = descriptors.remove(0);
    let status = StatusWriter(status_pipe.as_raw_fd());
    let created = Request::decode(body, descriptors)
        .map_err(|problem| {
            eprintln!("rbe-runner {SERVE_ARGUMENT}: {problem}");
            io::Error::from_raw_os_error(libc::EPROTO)
        })
        .and_then(|request| {
            // A request that waited (in the socket, or for a stopped
            // server) past its call's end creates nothing.
            if request.deadline.is_some_and(SpawnDeadline::passed) {
                status.failed(SpawnStep::Deadline, libc::ETIMEDOUT);
                return Ok(0);
            }
            if status.cancelled() {
                status.failed(SpawnStep::Cancelled, libc::ECANCELED);
                return Ok(0);
            }
            let creator = clone::creator()?;
            let child = request.child();
            match request
                .isolation
                .as_ref()
                .filter(|isolation| isolation.entered_by_spawn_server())
            {
                Some(isolation) => {
                    create_in_namespaces(&creator, &child, isolation, request.method, status)
                }
                None => child::create(
                    &creator,
                    &child,
                    request.method,
                    Parent::CreatorsParent,
                    status.0,
                ),
            }
        });
    if let Err(error) = created {
        status.not_created(error.raw_os_error().unwrap_or(libc::EIO));
    }
}

/// Creates `child` in namespaces of its own that this server sets up
/// first and leaves after ([`Isolation::entered_by_spawn_server`]): the
/// child is then a plain copy of the server, with nothing of the isolation
/// left for it to do. A step that fails is told on `status`, as the child
/// would have told it; no child is created then (`Ok(0)`). A server that
/// cannot go back to its own namespaces exits, never to create another
/// child in an action's: the runner then creates actions itself.
fn create_in_namespaces(
    creator: &clone::Creator,
    child: &Child,
    isolation: &Isolation,
    method: Method,
    status: StatusWriter,
) -> io::Result<i32> {
    static OWN: std::sync::OnceLock<Result<CreatorNamespaces, i32>> = std::sync::OnceLock::new();
    // Opened at the first such request, while this process still stands
    // in its own (it always goes back).
    let own = OWN
        .get_or_init(|| {
            CreatorNamespaces::current(super::DEFAULT_PROC_ROOT).map_err(|error| {
                eprintln!("rbe-runner {SERVE_ARGUMENT}: {error}");
                error.raw_os_error().unwrap_or(libc::EIO)
            })
        })
        .as_ref()
        .map_err(|errno| io::Error::from_raw_os_error(*errno))?;
    let directories = ActionDirectories {
        root: child.chroot_directory,
        working_directory: child.working_directory,
    };
    let created = match own.enter(isolation, child.temporary_directory, directories) {
        Ok(()) => {
            let plain = Child {
                isolation: None,
                temporary_directory: None,
                ..*child
            };
            child::create(creator, &plain, method, Parent::CreatorsParent, status.0)
        }
        Err((step, errno)) => {
            status.failed(step, errno);
            Ok(0)
        }
    };
    if let Err(error) = own.go_back(isolation) {
        eprintln!(
            "rbe-runner {SERVE_ARGUMENT}: cannot go back to its own namespaces after setting up \
             an action's ({error}); exiting, so that no other action is created in them"
        );
        std::process::exit(1);
    }
    created
}

/// One request: its body and descriptors, or `None` at the end.
fn receive(connection: &mut UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut first = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MOST_DESCRIPTORS]);
    let (received, descriptors) = {
        let mut iov = [IoSliceMut::new(&mut first)];
        let message = recvmsg::<UnixAddr>(
            connection.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut descriptors = Vec::new();
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = control {
                // SAFETY: the kernel just installed these descriptors in
                // this process; nothing else owns them.
                descriptors.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, descriptors)
    };
    if received == 0 {
        return Ok(None);
    }
    if received < 4 {
        connection.read_exact(&mut first[received..4])?;
    }
    let length = u32::from_le_bytes([first[0], first[1], first[2], first[3]]) as usize;
    if length > LARGEST_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request too large",
        ));
    }
    let have = received.max(4) - 4;
    let mut body = Vec::with_capacity(length);
    body.extend_from_slice(&first[4..4 + have.min(length)]);
    if body.len() < length {
        let start = body.len();
        body.resize(length, 0);
        connection.read_exact(&mut body[start..])?;
    }
    Ok(Some((body, descriptors)))
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], &'static str> {
        if self.0.len() < count {
            return Err("truncated request");
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }

    fn cstring(&mut self) -> Result<CString, &'static str> {
        let length = self.u32()? as usize;
        CString::new(self.take(length)?).map_err(|_| "string with NUL")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> ExecArguments {
        let cstring = |text: &str| CString::new(text).unwrap();
        ExecArguments::of(
            cstring("/bin/echo"),
            vec![cstring("echo"), cstring(""), cstring("é €")],
            vec![cstring("A=1"), cstring("PATH=/bin")],
        )
    }

    /// Why it matters: the server must create exactly the child the
    /// runner described, or refuse; a mismatch would run another program,
    /// identity or root.
    #[test]
    fn a_request_decodes_to_what_was_encoded() {
        let exec = exec();
        let identity = Identity {
            user_id: 65534,
            group_id: 65533,
            additional_group_ids: vec![1, 2, 3],
        };
        let files: Vec<std::fs::File> = (0..6).map(|_| tempfile::tempfile().unwrap()).collect();
        let fd = |index: usize| files[index].as_raw_fd();
        let child = Child::new(
            Some(fd(5)),
            [fd(0), fd(1), fd(2)],
            Some(OomScoreAdj::new(-17)),
            Some(fd(4)),
            fd(3),
            Some(&identity),
            &exec,
        );
        let deadline = SpawnDeadline::from_nanoseconds(123_456_789);
        let child = child
            .with_deadline(Some(deadline))
            .with_descriptor_limit(Some(DescriptorLimit {
                soft: 1024,
                hard: u64::MAX,
            }));
        let (request, descriptors) = encode(&child, Method::Clone3);
        assert_eq!(descriptors, vec![fd(0), fd(1), fd(2), fd(3), fd(4), fd(5)]);
        let length = u32::from_le_bytes(request[0..4].try_into().unwrap()) as usize;
        assert_eq!(length, request.len() - 4);
        let owned = files
            .iter()
            .map(|file| OwnedFd::from(file.try_clone().unwrap()))
            .collect();
        let decoded = Request::decode(&request[4..], owned).unwrap();
        assert_eq!(decoded.method, Method::Clone3);
        assert_eq!(decoded.oom_score_adj, Some(-17));
        assert_eq!(decoded.identity, Some(identity.clone()));
        assert_eq!(decoded.exec.program, exec.program);
        assert_eq!(decoded.exec.arguments, exec.arguments);
        assert_eq!(decoded.exec.environment, exec.environment);
        assert_eq!(decoded.deadline, Some(deadline));
        let rebuilt = decoded.child();
        assert!(rebuilt.chroot_directory.is_some() && rebuilt.cgroup.is_some());
        assert_eq!(rebuilt.oom_score_adj.map(|value| value.value()), Some(-17));
        assert_eq!(
            rebuilt.descriptor_limit,
            Some(DescriptorLimit {
                soft: 1024,
                hard: u64::MAX
            })
        );

        // Without root, cgroup, identity and oom_score_adj.
        let plain = Child::new(None, [fd(0), fd(1), fd(2)], None, None, fd(3), None, &exec);
        let (request, descriptors) = encode(&plain, Method::Clone);
        assert_eq!(descriptors.len(), 4);
        let owned = files[..4]
            .iter()
            .map(|file| OwnedFd::from(file.try_clone().unwrap()))
            .collect();
        let decoded = Request::decode(&request[4..], owned).unwrap();
        assert_eq!(decoded.method, Method::Clone);
        assert_eq!((decoded.oom_score_adj, &decoded.identity), (None, &None));
        assert_eq!(decoded.deadline, None);
        let rebuilt = decoded.child();
        assert!(rebuilt.chroot_directory.is_none() && rebuilt.cgroup.is_none());
        assert_eq!(rebuilt.descriptor_limit, None);
    }

    /// Why it matters: an action created by the server must get exactly
    /// the isolation configured, never less.
    #[test]
    fn isolation_and_the_temporary_directory_decode_to_what_was_encoded() {
        let exec = exec();
        let files: Vec<std::fs::File> = (0..7).map(|_| tempfile::tempfile().unwrap()).collect();
        let fd = |index: usize| files[index].as_raw_fd();
        let cases = [
            Isolation {
                pid: true,
                network_off: true,
                private_tmp: true,
                ipc: true,
                hostname: Some("localhost".into()),
                input_root_mounts: None,
                user_namespace: None,
                spawn_server_may_enter: true,
            },
            Isolation {
                input_root_mounts: InputRootMounts::new(
                    true,
                    true,
                    [crate::process::input_root_mounts::Entry {
                        mountpoint: "opt",
                        source: "/opt",
                        filesystem_type: "bind",
                        read_only: true,
                    }],
                )
                .map(std::sync::Arc::new),
                user_namespace: Some(UserNamespace::of_runner(65534, 65533)),
                ..Isolation::default()
            },
            Isolation {
                network_off: true,
                spawn_server_may_enter: true,
                ..Isolation::default()
            },
            Isolation {
                pid: true,
                private_tmp: true,
                user_namespace: Some(UserNamespace::of_runner(65534, 65533)),
                ..Isolation::default()
            },
            Isolation {
                hostname: Some("h".into()),
                user_namespace: Some(UserNamespace::of_runner_and_action((0, 0), (7, 8))),
                ..Isolation::default()
            },
            Isolation {
                hostname: Some("h".into()),
                ..Isolation::default()
            },
        ];
        for isolation in cases {
            let temporary = isolation.private_tmp.then(|| fd(5));
            let child = Child::new(
                Some(fd(4)),
                [fd(0), fd(1), fd(2)],
                None,
                None,
                fd(3),
                None,
                &exec,
            )
            .with_isolation(Some(&isolation), temporary);
            let (request, descriptors) = encode(&child, Method::Clone);
            assert_eq!(descriptors.len(), 5 + usize::from(isolation.private_tmp));
            // An init's exit report comes last, attached when sent.
            let owned = files[..descriptors.len() + usize::from(isolation.pid)]
                .iter()
                .map(|file| OwnedFd::from(file.try_clone().unwrap()))
                .collect();
            let decoded = Request::decode(&request[4..], owned).unwrap();
            assert_eq!(decoded.isolation.as_ref(), Some(&isolation));
            let rebuilt = decoded.child();
            assert_eq!(rebuilt.isolation, Some(&isolation));
            assert!(rebuilt.cgroup.is_some());
            assert_eq!(rebuilt.temporary_directory.is_some(), isolation.private_tmp);
            assert_eq!(rebuilt.report.is_some(), isolation.pid);
        }
    }

    #[test]
    fn a_damaged_request_is_refused_not_run() {
        let exec = exec();
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let child = Child::new(None, [fd; 3], None, None, fd, None, &exec);
        let (request, _) = encode(&child, Method::Clone);
        let descriptors = || {
            (0..4)
                .map(|_| OwnedFd::from(file.try_clone().unwrap()))
                .collect::<Vec<_>>()
        };
        for cut in [0, 3, 9, request.len() - 5] {
            let result = Request::decode(&request[4..4 + cut], descriptors());
            assert!(result.is_err(), "cut at {cut}");
        }
        let mut wrong_magic = request[4..].to_vec();
        wrong_magic[0] ^= 1;
        assert!(Request::decode(&wrong_magic, descriptors()).is_err());
        let too_few = descriptors().into_iter().take(3).collect();
        assert!(Request::decode(&request[4..], too_few).is_err());
    }

    /// Why it matters: a server that is gone must be noticed at once and
    /// never asked again, and `/metrics` reads that without a lock.
    #[tokio::test]
    async fn a_server_gone_before_the_request_is_down_and_not_asked_again() {
        let exec = exec();
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let child = Child::new(None, [fd; 3], None, None, fd, None, &exec);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(READY).unwrap();
        let server = SpawnServer::connect(ours, 0).await.unwrap();
        assert!(server.is_up());
        drop(theirs);
        let (_call, dropped) = oneshot::channel();
        let mut call = CallGone::new(dropped, None);
        let asked = server.ask(&child, Method::Clone, &mut call).await;
        assert!(matches!(asked, Err(NotAsked::Gone)), "{asked:?}");
        assert!(!server.is_up());
        let asked = server.ask(&child, Method::Clone, &mut call).await;
        assert!(matches!(asked, Err(NotAsked::Gone)), "{asked:?}");
    }

    /// Why it matters: a server that does not read (stopped with SIGSTOP)
    /// must hold up no thread, and a Run whose call ends while it waits
    /// for room must send nothing, so that nothing of it runs on resume.
    #[tokio::test]
    async fn a_full_socket_is_waited_for_in_the_event_loop_and_an_ended_call_sends_nothing() {
        use futures_util::FutureExt;
        let exec = exec();
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let child = Child::new(None, [fd; 3], None, None, fd, None, &exec);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(READY).unwrap();
        ours.set_nonblocking(true).unwrap();
        let filler = [0u8; 4096];
        while (&ours).write(&filler).is_ok() {}
        let server = SpawnServer::connect(ours, 0).await.unwrap();
        let (call, dropped) = oneshot::channel::<()>();
        let mut gone = CallGone::new(dropped, None);
        let asking = server.ask(&child, Method::Clone, &mut gone);
        tokio::pin!(asking);
        assert!(
            (&mut asking).now_or_never().is_none(),
            "sent into a full socket"
        );
        drop(call);
        let asked = asking.await;
        assert!(matches!(asked, Err(NotAsked::CallOver)), "{asked:?}");
        assert!(server.is_up());
        drop(theirs);
    }

    /// Why it matters: a request the server cannot understand must be
    /// refused through the child's status pipe, not left unanswered.
    #[tokio::test]
    async fn a_damaged_request_is_answered_not_created() {
        let (mut reader, writer) = crate::process::status::pipe().unwrap();
        serve_one(b"garbage", vec![writer]);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(crate::process::status::Status::NotCreated(libc::EPROTO))
        );
        assert_eq!(reader.next().await.unwrap(), None);
    }

    /// Why it matters: a request that waited for a stopped server past its
    /// call's deadline, or whose call was cancelled meanwhile, must never
    /// run its command (issue 23: such Runs were created on resume).
    #[tokio::test]
    async fn a_request_past_its_deadline_or_cancelled_creates_nothing() {
        let exec = exec();
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let directory = std::fs::File::open(dir.path()).unwrap();
        let (fd, cwd) = (file.as_raw_fd(), directory.as_raw_fd());
        let descriptors = || -> Vec<OwnedFd> {
            [fd, fd, fd, cwd]
                .iter()
                .map(|&fd| {
                    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the
                    // result is checked and owned by nothing else.
                    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
                    assert!(copy >= 0);
                    // SAFETY: just created, owned by nothing else.
                    unsafe { OwnedFd::from_raw_fd(copy) }
                })
                .collect()
        };
        // What the server says of `child`, its call cancelled first or not.
        let answer = |child: Child<'_>, cancelled: bool| {
            let (request, _) = encode(&child, Method::Clone);
            let (mut reader, writer) = crate::process::status::pipe().unwrap();
            if cancelled {
                reader.cancel();
            }
            let mut all = vec![writer];
            all.extend(descriptors());
            serve_one(&request[4..], all);
            async move {
                let first = reader.next().await.unwrap();
                assert_eq!(reader.next().await.unwrap(), None, "then the end");
                first
            }
        };
        let past = SpawnDeadline::at(tokio::time::Instant::now());
        let child =
            Child::new(None, [fd; 3], None, None, cwd, None, &exec).with_deadline(Some(past));
        assert_eq!(
            answer(child, false).await,
            Some(crate::process::status::Status::Failed(
                SpawnStep::Deadline,
                libc::ETIMEDOUT
            ))
        );
        let child = Child::new(None, [fd; 3], None, None, cwd, None, &exec);
        assert_eq!(
            answer(child, true).await,
            Some(crate::process::status::Status::Failed(
                SpawnStep::Cancelled,
                libc::ECANCELED
            ))
        );
    }
}
