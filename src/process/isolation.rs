//! Hermetic actions: the namespaces an action gets of its own
//! ([`Isolation`], from the `isolation` configuration), and the raw steps
//! that set them up in the child between clone and exec
//! (docs/isolation.md).
//!
//! The namespaces are created by the clone that creates the child
//! ([`Isolation::clone_flags`]), so every spawn path (the runner, the spawn
//! server) gets them alike, except the mount namespace, which the child
//! makes itself. The child then, before anything of the action runs
//! ([`enter`]):
//! 1. changes into its working directory and makes its mount namespace
//!    (`unshare`) there: the kernel moves a process's working directory
//!    into the new namespace's copy of its mount, so relative paths from
//!    it see the action's mounts, not the runner's (a directory opened
//!    before would stay in the runner's namespace: see
//!    [`input_root_mounts`] for a chrooted action's root, found again by
//!    its path); then makes every mount private (`MS_REC | MS_PRIVATE` on
//!    `/`), so that nothing mounted below reaches the host, and all of it
//!    goes with the namespace;
//! 2. brings up its loopback (`network: 'off'`);
//! 3. sets its host name (`hostname`);
//! 4. attaches the action's `temporary_directory` on `/tmp` and binds it
//!    on `/var/tmp` (`tmp: 'private'`). A directory opened before the
//!    clone belongs to the runner's mount namespace, which a bind mount
//!    refuses as its source (EINVAL), so the runner clones it into a
//!    detached mount first ([`detached_mount`]), which the child moves
//!    into its own namespace;
//! 5. mounts a private tmpfs on `/dev/shm` (`ipc`);
//! 6. mounts a procfs of its PID namespace on `/proc`, with the masks
//!    container runtimes apply (`pid`).
//!
//! With `pid`, the child is the namespace's first process: it forks the
//! action and becomes its init ([`super::init`]). Without, the spawn server
//! makes the namespaces and takes these steps itself, creates the action
//! in them as a plain child and goes back to its own
//! (`CreatorNamespaces`, where [`Isolation::entered_by_spawn_server`]);
//! on the runner's own path the child takes them and hands the action over
//! ([`Isolation::hands_over_action`]). Either way the action is a copy of
//! its creator that ran no setup code, so its maxrss is a plain action's.
//!
//! Everything here that runs in the child follows [`super::child`]'s
//! rules: raw system calls on values prepared beforehand, no allocation,
//! one `unsafe` block per call.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::child::{check, errno};
use super::input_root_mounts::{self, ActionDirectories, InputRootMounts};
use super::spec::SpawnStep;
use super::user_namespace::UserNamespace;
use crate::build_directory::Filesystem;

/// The namespaces each action gets, as the process layer does them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// A PID namespace with an init, and its own `/proc`.
    pub pid: bool,
    /// A network namespace with only its loopback, up.
    pub network_off: bool,
    /// The action's `temporary_directory` on `/tmp` and `/var/tmp`.
    pub private_tmp: bool,
    /// An IPC namespace and a private `/dev/shm`.
    pub ipc: bool,
    /// A UTS namespace with this host name.
    pub hostname: Option<String>,
    /// Mounts inside a chrooted action's input root (`isolation.dev`,
    /// `inputRootMounts`, `pid`'s `/proc`): see [`input_root_mounts`].
    pub input_root_mounts: Option<std::sync::Arc<InputRootMounts>>,
    /// Made inside a user namespace of the action's own, for a runner
    /// without CAP_SYS_ADMIN ([`super::user_namespace`]); `None`: by the
    /// runner itself.
    pub user_namespace: Option<UserNamespace>,
    /// Whether the spawn server may set the namespaces up itself
    /// ([`Self::entered_by_spawn_server`]), decided once at startup: where
    /// the build directory is on a local filesystem and actions are not
    /// chrooted. The server changes into the action's working directory to
    /// make its mount namespace there, which on FUSE (bb_worker's virtual
    /// build directory) may wait for the FUSE server (a permission check
    /// refreshing the directory's attributes), and a chrooted action's
    /// root is found again by its path; the server must never wait on one
    /// action's storage, so there the child does it.
    pub spawn_server_may_enter: bool,
}

impl Isolation {
    /// Whether this isolates anything.
    pub fn is_enabled(&self) -> bool {
        self.mounts() || self.hostname.is_some()
    }

    /// Whether the action gets a mount namespace: every option but
    /// `hostname` mounts something.
    pub fn mounts(&self) -> bool {
        self.pid
            || self.network_off
            || self.private_tmp
            || self.ipc
            || self.input_root_mounts.is_some()
    }

    /// Whether the child that sets up the namespaces forks the action as
    /// a sibling and exits (see `super::child`): without a PID namespace.
    /// With one, the namespace's init forks the action and stays. A child
    /// of the spawn server is created in namespaces set up already where
    /// [`Self::entered_by_spawn_server`], with no isolation of its own to
    /// set up, so it hands nothing over.
    pub fn hands_over_action(&self) -> bool {
        !self.pid
    }

    /// [`Self::spawn_server_may_enter`] for a build directory on
    /// `filesystem`, with actions `chrooted` into their input roots or
    /// not: only on a local filesystem, which cannot make anyone wait for
    /// long (the rule that also prepares actions on the async worker), and
    /// not chrooted.
    pub fn spawn_server_may_enter_for(filesystem: Filesystem, chrooted: bool) -> bool {
        filesystem.is_local() && !chrooted
    }

    /// Whether the spawn server sets these namespaces up itself, then
    /// creates the action in them as a plain child and goes back to its
    /// own ([`CreatorNamespaces`]): where it may
    /// ([`Self::spawn_server_may_enter`]), without a PID namespace (whose
    /// first process must be the action's init), without a user namespace
    /// (which a process cannot leave), and without mounts inside a
    /// chrooted input root. Then the action is a fresh copy of the
    /// server that ran no setup code, as a plain action is (its maxrss
    /// unchanged), and no second process is created and ended per action
    /// as with [`Self::hands_over_action`] (BENCHMARKS.md, issue 26).
    pub fn entered_by_spawn_server(&self) -> bool {
        self.spawn_server_may_enter
            && self.is_enabled()
            && !self.pid
            && self.user_namespace.is_none()
            && self.input_root_mounts.is_none()
    }

    /// The `CLONE_NEW*` flags that create the child in its namespaces.
    /// The child creates its mount namespace itself, once it stands in its
    /// working directory (see [`enter`]), or, in a user namespace, in its
    /// temporary directory (see [`super::user_namespace`]).
    pub fn clone_flags(&self) -> libc::c_int {
        let mut flags = 0;
        if !self.is_enabled() {
            return flags;
        }
        if self.user_namespace.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        if self.pid {
            flags |= libc::CLONE_NEWPID;
        }
        if self.network_off {
            flags |= libc::CLONE_NEWNET;
        }
        if self.ipc {
            flags |= libc::CLONE_NEWIPC;
        }
        if self.hostname.is_some() {
            flags |= libc::CLONE_NEWUTS;
        }
        flags
    }
}

/// `open_tree`'s flag for a copy of the mount, detached (Linux 5.2).
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount`'s flag for a source given by its descriptor alone.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A detached bind mount of `directory` (an open directory of the
/// runner's mount namespace), which a child in a mount namespace of its
/// own can attach ([`enter`]). Closing it unattached dissolves it. Done by
/// the runner, before the child exists.
pub fn detached_mount(directory: BorrowedFd) -> io::Result<OwnedFd> {
    // SAFETY: open_tree reads an empty NUL-terminated path; the result is
    // checked and owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            directory.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as RawFd) })
}

/// What the child is handed for a private `/tmp`: a [`detached_mount`]
/// of `directory`, or, made inside a user namespace, the directory itself
/// (a runner without CAP_SYS_ADMIN cannot make the detached mount; the
/// child binds it, see [`super::user_namespace`]).
pub fn temporary_directory_for_child(
    directory: BorrowedFd,
    in_user_namespace: bool,
) -> io::Result<OwnedFd> {
    match in_user_namespace {
        false => detached_mount(directory),
        true => directory.try_clone_to_owned(),
    }
}

/// Where the host's process table is, before the action's is mounted.
const PROC: &CStr = c"/proc";

/// Read-only in the action's `/proc` (as runc and containerd make them).
pub(super) const PROC_READ_ONLY: [&CStr; 4] = [
    c"/proc/sys",
    c"/proc/irq",
    c"/proc/bus",
    c"/proc/sysrq-trigger",
];
/// The flags that make a bind mount of [`PROC_READ_ONLY`] read-only (and
/// nosuid, nodev, noexec): a remount of the bind.
pub(super) const READ_ONLY_REMOUNT: libc::c_ulong = libc::MS_BIND
    | libc::MS_REMOUNT
    | libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC;
/// Masked in the action's `/proc` by binding `/dev/null` over them.
pub(super) const PROC_MASKED: [&CStr; 3] = [c"/proc/kcore", c"/proc/keys", c"/proc/timer_list"];

// Everything below runs in the child, between its creation and exec.

/// The child's pid as the runner sees it, read from the host's `/proc`
/// (the link `self`) before the action's is mounted on it: its `getpid`
/// is 1 in its own PID namespace.
pub(super) fn host_pid() -> Result<i32, i32> {
    let mut link = [0u8; 16];
    // SAFETY: the kernel writes at most `link.len()` bytes into the live
    // local array; the path is a NUL-terminated literal.
    let length = unsafe {
        libc::readlinkat(
            libc::AT_FDCWD,
            c"/proc/self".as_ptr(),
            link.as_mut_ptr().cast(),
            link.len(),
        )
    };
    if length < 0 {
        return Err(errno());
    }
    parse_pid(&link[..length as usize]).ok_or(libc::EPROTO)
}

/// The decimal pid that is all of `digits`.
fn parse_pid(digits: &[u8]) -> Option<i32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut pid: i32 = 0;
    for &digit in digits {
        pid = pid
            .saturating_mul(10)
            .saturating_add(i32::from(digit - b'0'));
    }
    Some(pid)
}

/// The host's `/proc`, kept open (close-on-exec) so that the init can say
/// the action's pid as the runner sees it once the namespace's is mounted.
pub(super) fn open_host_proc() -> Result<RawFd, (SpawnStep, i32)> {
    // SAFETY: a NUL-terminated literal; the kernel checks the flags.
    let fd = unsafe {
        libc::open(
            PROC.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(SpawnStep::Proc, fd)?;
    Ok(fd)
}

/// The pid, as the runner sees it, of the first child of the calling
/// thread (the action, to its init), from the host's `/proc` open as
/// `host_proc`: `thread-self/children` there lists the thread's children
/// by their pids in the host's PID namespace, each followed by a space.
///
/// The action is not always the only child. By the time the init reads,
/// a quick action may have exec'd, started a background process and
/// exited; the kernel hands that orphan to the namespace's init, its
/// reaper. But the list keeps the order in which children joined it: a
/// fork appends the new child (`copy_process`), a dying process's
/// children are spliced onto the reaper's list at its end
/// (`forget_original_parent`), and the action, a zombie until the init
/// waits for it, keeps its place. The init forks only the action, so the
/// action is first.
pub(super) fn first_child_through(host_proc: RawFd) -> Result<i32, i32> {
    // SAFETY: a NUL-terminated literal; the kernel checks the flags.
    let fd = unsafe {
        libc::openat(
            host_proc,
            c"thread-self/children".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let mut listed = [0u8; 16];
    // SAFETY: the kernel writes at most `listed.len()` bytes into the live
    // local array.
    let length = unsafe { libc::read(fd, listed.as_mut_ptr().cast(), listed.len()) };
    let read_errno = errno();
    // SAFETY: close takes only the descriptor opened above.
    unsafe { libc::close(fd) };
    if length < 0 {
        return Err(read_errno);
    }
    first_listed_pid(&listed[..length as usize]).ok_or(libc::EPROTO)
}

/// The first pid of a `children` list, which ends with its space; the
/// buffer holds at least one whole entry (a pid has at most 7 digits, as
/// `pid_max` is at most 2^22), the others may be cut off.
fn first_listed_pid(listed: &[u8]) -> Option<i32> {
    let end = listed.iter().position(|&byte| byte == b' ')?;
    parse_pid(&listed[..end])
}

/// The namespaces a creator (the spawn server's one thread) stands in,
/// held open so that it can go back to them after setting up an action's
/// ([`Isolation::entered_by_spawn_server`]).
#[derive(Debug)]
pub(super) struct CreatorNamespaces {
    mount: OwnedFd,
    network: OwnedFd,
    ipc: OwnedFd,
    uts: OwnedFd,
}

impl CreatorNamespaces {
    /// The calling thread's namespaces, from `proc` (the host's `/proc`).
    pub(super) fn current(proc: &str) -> io::Result<CreatorNamespaces> {
        let open = |name: &str| -> io::Result<OwnedFd> {
            let path = format!("{proc}/thread-self/ns/{name}");
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|error| io::Error::new(error.kind(), format!("{path}: {error}")))
        };
        Ok(CreatorNamespaces {
            mount: open("mnt")?,
            network: open("net")?,
            ipc: open("ipc")?,
            uts: open("uts")?,
        })
    }

    /// Makes `isolation`'s namespaces (which
    /// [`Isolation::entered_by_spawn_server`]) and sets them up as a
    /// child would ([`enter`]), on the calling thread, which must be its
    /// process's only one: the child it creates next starts in them.
    /// `directories` are opened again in the new mount namespace, in place
    /// (the same descriptor numbers). Whatever happens, call
    /// [`Self::go_back`] after.
    pub(super) fn enter(
        &self,
        isolation: &Isolation,
        temporary_directory: Option<RawFd>,
        directories: ActionDirectories,
    ) -> Result<(), (SpawnStep, i32)> {
        debug_assert!(isolation.entered_by_spawn_server());
        // SAFETY: unshare takes only flags.
        let unshared = unsafe { libc::unshare(isolation.clone_flags()) };
        check(SpawnStep::Create, unshared)?;
        enter(isolation, temporary_directory, directories).map(drop)
    }

    /// Returns the calling thread to these namespaces after
    /// [`Self::enter`] of `isolation`, failed or not, leaving the ones it
    /// made to the child created in them (the last to hold them; going
    /// back to the mount namespace also moves the thread's working
    /// directory to its root). An error means the thread may still stand
    /// in an action's namespaces: it must create nothing more.
    pub(super) fn go_back(&self, isolation: &Isolation) -> io::Result<()> {
        // What `enter` made: the clone's namespaces, and the mount
        // namespace [`enter`] makes itself.
        let mount = if isolation.mounts() {
            libc::CLONE_NEWNS
        } else {
            0
        };
        let entered = isolation.clone_flags() | mount;
        for (namespace, kind) in [
            (&self.mount, libc::CLONE_NEWNS),
            (&self.network, libc::CLONE_NEWNET),
            (&self.ipc, libc::CLONE_NEWIPC),
            (&self.uts, libc::CLONE_NEWUTS),
        ] {
            if entered & kind == 0 {
                continue;
            }
            // SAFETY: setns takes a descriptor of ours and a flag; it
            // changes only the calling thread's namespaces.
            if unsafe { libc::setns(namespace.as_raw_fd(), kind) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Sets up the namespaces the child was created in (see the module's
/// steps), with `temporary_directory` (a [`detached_mount`]) for a
/// private `/tmp`, and `directories` (the working directory and input
/// root), which are opened again in the action's mount namespace. With
/// `pid`, returns the host's `/proc`, kept open for the init (see
/// [`open_host_proc`]).
pub(super) fn enter(
    isolation: &Isolation,
    temporary_directory: Option<RawFd>,
    directories: ActionDirectories,
) -> Result<Option<RawFd>, (SpawnStep, i32)> {
    // Outside a user namespace, the child makes its mount namespace
    // standing in its working directory: the kernel moves a process's
    // working directory (and root) into the copy of their mounts, so the
    // directory is the action's at once, with no path to look up again.
    let standing_in_working_directory = isolation.mounts() && isolation.user_namespace.is_none();
    if standing_in_working_directory {
        // SAFETY: fchdir takes only a descriptor number (the creator's
        // open working directory).
        let entered = unsafe { libc::fchdir(directories.working_directory) };
        check(SpawnStep::WorkingDirectory, entered)?;
        // SAFETY: unshare takes only flags.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        check(SpawnStep::MountPropagation, unshared)?;
    }
    if isolation.mounts() {
        // SAFETY: NUL-terminated literals and null pointers where the
        // kernel allows them (no source, type or data for a propagation
        // change).
        let made = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        check(SpawnStep::MountPropagation, made)?;
        input_root_mounts::reopen(directories, standing_in_working_directory)?;
    }
    if isolation.network_off {
        bring_up_loopback()?;
    }
    if let Some(hostname) = &isolation.hostname {
        // SAFETY: the kernel reads `hostname.len()` bytes of the child's
        // copy of the string, prepared before it was created.
        let set = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
        check(SpawnStep::Hostname, set)?;
    }
    if isolation.private_tmp {
        let Some(directory) = temporary_directory else {
            return Err((SpawnStep::PrivateTmp, libc::EINVAL));
        };
        if isolation.user_namespace.is_some() {
            // The child created its mount namespace standing in the
            // directory (a plain one: see `super::user_namespace`), which
            // `.` therefore is in this namespace.
            bind(c".", c"/tmp", SpawnStep::PrivateTmp)?;
        } else {
            // SAFETY: an empty NUL-terminated path with the descriptor of
            // a detached mount, and a NUL-terminated literal.
            let moved = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    directory,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    c"/tmp".as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            check(SpawnStep::PrivateTmp, moved as libc::c_int)?;
        }
        bind(c"/tmp", c"/var/tmp", SpawnStep::PrivateTmp)?;
    }
    if isolation.ipc {
        // SAFETY: NUL-terminated literals.
        let mounted = unsafe {
            libc::mount(
                c"shm".as_ptr(),
                c"/dev/shm".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr().cast(),
            )
        };
        check(SpawnStep::PrivateShm, mounted)?;
    }
    if let (Some(mounts), Some(root)) = (&isolation.input_root_mounts, directories.root) {
        input_root_mounts::enter(mounts, root)?;
    }
    if !isolation.pid {
        return Ok(None);
    }
    let host_proc = open_host_proc()?;
    mount_proc()?;
    Ok(Some(host_proc))
}

/// Mounts the PID namespace's procfs on `/proc` (over the host's), then
/// makes [`PROC_READ_ONLY`] read-only and masks [`PROC_MASKED`]. A path
/// this kernel lacks has nothing to protect.
fn mount_proc() -> Result<(), (SpawnStep, i32)> {
    // SAFETY: NUL-terminated literals; no data.
    let mounted = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            PROC.as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    check(SpawnStep::Proc, mounted)?;
    for path in PROC_READ_ONLY {
        match bind(path, path, SpawnStep::Proc) {
            Err((_, libc::ENOENT)) => continue,
            bound => bound?,
        }
        // SAFETY: a NUL-terminated literal; no source, type or data for a
        // remount of a bind mount.
        let remounted = unsafe {
            libc::mount(
                std::ptr::null(),
                path.as_ptr(),
                std::ptr::null(),
                READ_ONLY_REMOUNT,
                std::ptr::null(),
            )
        };
        check(SpawnStep::Proc, remounted)?;
    }
    for path in PROC_MASKED {
        match bind(c"/dev/null", path, SpawnStep::Proc) {
            Err((_, libc::ENOENT)) => continue,
            bound => bound?,
        }
    }
    Ok(())
}

/// Binds `source` on `target`, as `step`.
fn bind(source: &CStr, target: &CStr, step: SpawnStep) -> Result<(), (SpawnStep, i32)> {
    // SAFETY: NUL-terminated strings; no type or data for a bind mount.
    let bound = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    check(step, bound)
}

/// Sets `IFF_UP` on `lo`, the only interface of a new network namespace,
/// which starts down.
fn bring_up_loopback() -> Result<(), (SpawnStep, i32)> {
    // SAFETY: socket takes only numbers.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(SpawnStep::Loopback, socket)?;
    // SAFETY: all-zero bytes are a valid `ifreq` (a name and a union of
    // plain integers).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, &byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS writes the flags into `request`, a live local.
    let got = unsafe { libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) };
    let result = check(SpawnStep::Loopback, got).and_then(|()| {
        // SAFETY: the kernel filled the flags member of the union just now.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads `request`, a live local.
        let set = unsafe { libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) };
        check(SpawnStep::Loopback, set)
    });
    // SAFETY: `socket` was opened above and nothing else refers to it.
    unsafe { libc::close(socket) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the action's pid as the runner sees it is read from
    /// procfs text; anything but plain digits is no pid.
    #[test]
    fn a_pid_is_digits_only() {
        assert_eq!(parse_pid(b"4242"), Some(4242));
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"42 "), None);
        assert_eq!(parse_pid(b"-1"), None);
        assert_eq!(parse_pid(b"99999999999"), Some(i32::MAX));
    }

    /// Why it matters: the spawn server serves every action's creation;
    /// changing into one action's directory on FUSE or NFS may wait for
    /// their servers, so there each action's first process sets up its
    /// namespaces instead.
    #[test]
    fn the_spawn_server_enters_namespaces_only_on_a_local_filesystem_unchrooted() {
        for filesystem in [
            Filesystem::Tmpfs,
            Filesystem::Ext4,
            Filesystem::Xfs,
            Filesystem::Btrfs,
        ] {
            assert!(
                Isolation::spawn_server_may_enter_for(filesystem, false),
                "{filesystem}"
            );
            assert!(
                !Isolation::spawn_server_may_enter_for(filesystem, true),
                "{filesystem}"
            );
        }
        for filesystem in [
            Filesystem::Fuse,
            Filesystem::Nfs,
            Filesystem::Other(0x1234),
            Filesystem::Unknown,
        ] {
            assert!(
                !Isolation::spawn_server_may_enter_for(filesystem, false),
                "{filesystem}"
            );
        }
        let hostname = |may_enter| Isolation {
            hostname: Some("h".into()),
            spawn_server_may_enter: may_enter,
            ..Isolation::default()
        };
        assert!(hostname(true).entered_by_spawn_server());
        assert!(!hostname(false).entered_by_spawn_server());
        let with_pid = Isolation {
            pid: true,
            ..hostname(true)
        };
        assert!(!with_pid.entered_by_spawn_server());
    }

    /// Why it matters: an action that leaves a background process and
    /// exits before its init reads `children` gives the init a second
    /// child; the action is the first entry, whatever follows it (a whole
    /// pid or one cut off by the buffer), and an entry without its space
    /// is not yet whole.
    #[test]
    fn the_first_entry_of_a_children_list_is_the_action() {
        assert_eq!(first_listed_pid(b"4242 "), Some(4242));
        assert_eq!(first_listed_pid(b"4242 4250 "), Some(4242));
        assert_eq!(first_listed_pid(b"4242 4250 42"), Some(4242));
        assert_eq!(first_listed_pid(b"4242"), None);
        assert_eq!(first_listed_pid(b""), None);
        assert_eq!(first_listed_pid(b" 4242 "), None);
    }

    /// Why it matters: every option but `hostname` mounts something, which
    /// must never reach the host; `hostname` alone needs no mounts.
    #[test]
    fn every_option_but_hostname_implies_a_mount_namespace() {
        let hostname = Isolation {
            hostname: Some("localhost".into()),
            ..Isolation::default()
        };
        assert_eq!(hostname.clone_flags(), libc::CLONE_NEWUTS);
        for isolation in [
            Isolation {
                pid: true,
                ..Isolation::default()
            },
            Isolation {
                network_off: true,
                ..Isolation::default()
            },
            Isolation {
                private_tmp: true,
                ..Isolation::default()
            },
            Isolation {
                ipc: true,
                ..Isolation::default()
            },
        ] {
            // The child makes its mount namespace itself (`enter`).
            assert!(isolation.mounts(), "{isolation:?}");
            assert_eq!(
                isolation.clone_flags() & libc::CLONE_NEWNS,
                0,
                "{isolation:?}"
            );
        }
        assert_eq!(Isolation::default().clone_flags(), 0);
        assert!(!Isolation::default().is_enabled());
        // Inside a user namespace, the child makes its mount namespace
        // itself; a user namespace alone isolates nothing.
        let user_namespace = Some(UserNamespace::of_runner(65534, 65534));
        let in_user_namespace = Isolation {
            pid: true,
            user_namespace: user_namespace.clone(),
            ..Isolation::default()
        };
        assert_eq!(
            in_user_namespace.clone_flags(),
            libc::CLONE_NEWUSER | libc::CLONE_NEWPID
        );
        let nothing = Isolation {
            user_namespace,
            ..Isolation::default()
        };
        assert!(!nothing.is_enabled());
        assert_eq!(nothing.clone_flags(), 0);
    }

    /// Why it matters: the runner registers and signals the pid read here.
    #[test]
    fn the_host_pid_is_read_from_proc() {
        assert_eq!(host_pid(), Ok(std::process::id() as i32));
    }

    /// Why it matters: each option must hold for the action on either
    /// clone method, made by the runner or inside a user namespace, and
    /// nothing of it may reach the host. (`pid` execs
    /// the runner's executable as its init, which a unit test's
    /// executable is not: tests/isolation.rs covers it through the real
    /// binary.)
    #[tokio::test]
    async fn the_child_sets_up_every_option_but_pid_on_both_methods() {
        use crate::process::clone::Method;
        use crate::process::spawn::spawn;
        use crate::process::spec::ProcessSpec;
        use std::os::fd::AsFd;
        const TEST: &str = "the_child_sets_up_every_option_but_pid_on_both_methods";
        if !nix::unistd::geteuid().is_root() {
            crate::test_support::skip(TEST, "namespaces and mounts need root");
            return;
        }
        // As root itself, and inside a user namespace whose maps the child
        // or the creator writes (what a runner without CAP_SYS_ADMIN does).
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let namespaces = [
            None,
            Some(UserNamespace::of_runner(uid, gid)),
            Some(UserNamespace::of_runner_and_action(
                (uid, gid),
                (65534, 65534),
            )),
        ];
        for (method, user_namespace) in [Method::Clone, Method::Clone3]
            .into_iter()
            .flat_map(|method| namespaces.clone().map(|namespace| (method, namespace)))
        {
            let in_user_namespace = user_namespace.is_some();
            let isolation = std::sync::Arc::new(Isolation {
                pid: false,
                network_off: true,
                private_tmp: true,
                ipc: true,
                hostname: Some("isolated-host".into()),
                input_root_mounts: None,
                user_namespace,
                spawn_server_may_enter: true,
            });
            let dir = tempfile::tempdir().unwrap();
            let temporary = dir.path().join("tmp");
            std::fs::create_dir(&temporary).unwrap();
            std::fs::write(temporary.join("own-file"), "").unwrap();
            let open = |path: &std::path::Path| {
                nix::fcntl::open(
                    path,
                    nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
                    nix::sys::stat::Mode::empty(),
                )
                .unwrap()
            };
            let marker = format!("written-by-{}", std::process::id());
            let spec = ProcessSpec {
                program: "/bin/sh".into(),
                arguments: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!(
                        "hostname; grep -c : /proc/net/dev; ls /tmp; ls /var/tmp; \
                         ls -A /dev/shm | wc -l; touch /tmp/{marker}"
                    ),
                ],
                environment: vec![],
                working_directory: open(dir.path()),
                chroot_directory: None,
                identity: None,
                stdin: None,
                stdout: std::fs::File::create(dir.path().join("stdout")).unwrap(),
                stderr: std::fs::File::create(dir.path().join("stderr")).unwrap(),
                cgroup: None,
                oom_score_adj: None,
                descriptor_limit: None,
                isolation: Some(isolation.clone()),
                temporary_directory: Some(
                    temporary_directory_for_child(open(&temporary).as_fd(), in_user_namespace)
                        .unwrap(),
                ),
            };
            let (_call, dropped) = tokio::sync::oneshot::channel();
            let mut call = crate::process::call::CallGone::new(dropped, None);
            let child = match spawn(&spec, method, None, &mut call, None).await {
                Err(error)
                    if method == Method::Clone3
                        && error.step == SpawnStep::Create
                        && matches!(error.source.raw_os_error(), Some(libc::ENOSYS)) =>
                {
                    crate::test_support::skip(TEST, "its clone3 half: clone3 is unavailable");
                    continue;
                }
                spawned => spawned.unwrap(),
            };
            let exit = child.exit.await.unwrap();
            let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
            assert_eq!(exit.exit_code(), Some(0), "{method}: {stderr}");
            let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
            // Only the interfaces' lines of /proc/net/dev have a colon:
            // lo alone.
            assert_eq!(
                stdout, "isolated-host\n1\nown-file\nown-file\n0\n",
                "{method}: {stderr}"
            );
            assert!(temporary.join(&marker).exists(), "{method}");
            assert!(
                !std::path::Path::new("/tmp").join(&marker).exists(),
                "{method}: written to the host's /tmp"
            );
        }
    }
}
