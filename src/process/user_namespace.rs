//! Isolation for a runner without CAP_SYS_ADMIN: the action's namespaces
//! made inside a user namespace of its own (docs/isolation.md, "Without
//! root").
//!
//! A runner without CAP_SYS_ADMIN may not create PID, mount, network, IPC
//! or UTS namespaces, but any process may create a user namespace (where
//! the kernel and its security policy allow), and is all-powerful over the
//! namespaces created with it. So such a runner creates the child with
//! `CLONE_NEWUSER` and the other flags at once ([`super::isolation`]):
//! the kernel creates the user namespace first, and makes it the owner of
//! the others. In it, the runner's uid and gid are mapped to themselves:
//! the action keeps the runner's identity, files it writes belong to the
//! runner's uid, and it holds no capability outside.
//!
//! Who writes the maps ([`MapWriter`]), chosen once at startup
//! ([`choose`]):
//! - the child itself, by default: a process may map its own uid and gid,
//!   once it has denied `setgroups` in the namespace;
//! - the process creating the child (the runner or the spawn server),
//!   with `runCommandsAs`: mapping another uid (the action's) needs
//!   CAP_SETUID and CAP_SETGID in the parent namespace, which only the
//!   creator can have. The child waits until it is told the maps are
//!   written ([`MapsWritten`]); the creator never waits for the child.
//!
//! A mount namespace created with the child would have lost the
//! temporary directory for a private `/tmp`: a runner without
//! CAP_SYS_ADMIN cannot make the detached mount a root runner hands the
//! child, and a directory of another mount namespace cannot be bound.
//! So in a user namespace the child creates its mount namespace itself
//! with `unshare`, standing in the temporary directory, which the kernel
//! then carries over into the new namespace ([`enter`]).
//!
//! Where the kernel refuses (a seccomp profile, a sysctl, AppArmor, a
//! container's masked `/proc`), the startup probe
//! ([`super::isolation_probe`]) stops the runner with [`explain`]'s
//! reason and fix.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::child::{check, errno};
use super::privileges::{self, Capability, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN};
use super::spec::SpawnStep;

/// A user namespace of the action's own, with what its maps say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// Who writes the maps.
    pub writer: MapWriter,
    /// `uid_map`'s content: one `inside outside 1` line per uid mapped.
    pub uid_map: String,
    /// `gid_map`'s content, likewise.
    pub gid_map: String,
}

/// Who writes a new user namespace's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapWriter {
    /// The child, for itself: only its own uid and gid, `setgroups`
    /// denied.
    Child,
    /// The process creating the child, with CAP_SETUID and CAP_SETGID,
    /// while the child waits.
    Creator,
}

impl UserNamespace {
    /// The runner's uid and gid mapped to themselves, written by the
    /// child.
    pub fn of_runner(uid: u32, gid: u32) -> UserNamespace {
        UserNamespace {
            writer: MapWriter::Child,
            uid_map: map_of(&[uid]),
            gid_map: map_of(&[gid]),
        }
    }

    /// The runner's and the action's uid and gid, each mapped to itself,
    /// written by the creator.
    pub fn of_runner_and_action(
        (uid, gid): (u32, u32),
        (action_uid, action_gid): (u32, u32),
    ) -> UserNamespace {
        UserNamespace {
            writer: MapWriter::Creator,
            uid_map: map_of(&[uid, action_uid]),
            gid_map: map_of(&[gid, action_gid]),
        }
    }
}

/// Each of `ids` mapped to itself, once.
fn map_of(ids: &[u32]) -> String {
    let mut lines = String::new();
    for (index, id) in ids.iter().enumerate() {
        if !ids[..index].contains(id) {
            lines.push_str(&format!("{id} {id} 1\n"));
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// Choosing, at startup
// ---------------------------------------------------------------------------

/// The identity of `runCommandsAs`, as the choice needs it.
#[derive(Debug, Clone, Copy)]
pub struct ActionIdentity<'a> {
    pub user_id: u32,
    pub group_id: u32,
    pub additional_group_ids: &'a [u32],
}

/// The runner as the choice sees it.
#[derive(Debug, Clone, Copy)]
pub struct RunnerPrivileges {
    /// The effective capability set (`CapEff`).
    pub effective: u64,
    pub uid: u32,
    pub gid: u32,
}

impl RunnerPrivileges {
    /// This process's, read from `proc_root`.
    pub fn of_this_process(
        proc_root: &Path,
    ) -> Result<RunnerPrivileges, privileges::PrivilegeError> {
        Ok(RunnerPrivileges {
            effective: privileges::effective(proc_root)?,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        })
    }

    fn lacks(&self, wanted: &[Capability]) -> Vec<Capability> {
        privileges::missing_capabilities(self.effective, wanted)
    }
}

/// Why isolation cannot be had in a user namespace with this
/// configuration.
#[derive(Debug, thiserror::Error)]
pub enum UserNamespaceError {
    #[error(
        "runCommandsAs cannot be combined with {field} on this runner: it lacks CAP_SYS_ADMIN, \
         so actions' namespaces are made inside a user namespace, where runCommandsAs's \
         identity must be mapped by the runner with CAP_SETUID and CAP_SETGID; it runs as \
         uid {uid} without {missing}. Give the runner CAP_SETUID and CAP_SETGID (or \
         CAP_SYS_ADMIN), or remove runCommandsAs: actions then run as the runner's uid"
    )]
    IdentityNeedsCapabilities {
        field: &'static str,
        uid: u32,
        missing: String,
    },
    #[error(
        "runCommandsAs.additionalGroupIds cannot be combined with {field} on this runner: it \
         lacks CAP_SYS_ADMIN, so actions' namespaces are made inside a user namespace, where \
         supplementary groups cannot be kept. Remove additionalGroupIds, or give the runner \
         CAP_SYS_ADMIN"
    )]
    AdditionalGroups { field: &'static str },
}

/// Whether actions' namespaces (asked for by the configuration field
/// `field`) are made inside a user namespace, and with which maps: `None`
/// when the runner holds CAP_SYS_ADMIN and makes them itself. Refuses
/// what a user namespace cannot give: `runCommandsAs` without CAP_SETUID
/// and CAP_SETGID to map it, and `additionalGroupIds`.
pub fn choose(
    runner: RunnerPrivileges,
    field: &'static str,
    identity: Option<ActionIdentity>,
) -> Result<Option<UserNamespace>, UserNamespaceError> {
    if runner.lacks(&[CAP_SYS_ADMIN]).is_empty() {
        return Ok(None);
    }
    let Some(identity) = identity else {
        return Ok(Some(UserNamespace::of_runner(runner.uid, runner.gid)));
    };
    if !identity.additional_group_ids.is_empty() {
        return Err(UserNamespaceError::AdditionalGroups { field });
    }
    let missing = runner.lacks(&[CAP_SETUID, CAP_SETGID]);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|capability| capability.name).collect();
        return Err(UserNamespaceError::IdentityNeedsCapabilities {
            field,
            uid: runner.uid,
            missing: names.join(" and "),
        });
    }
    Ok(Some(UserNamespace::of_runner_and_action(
        (runner.uid, runner.gid),
        (identity.user_id, identity.group_id),
    )))
}

/// How actions' namespaces are made, for the startup line.
pub fn describe(user_namespace: Option<&UserNamespace>) -> &'static str {
    match user_namespace.map(|namespace| namespace.writer) {
        None => "by the runner (it holds CAP_SYS_ADMIN)",
        Some(MapWriter::Child) => {
            "inside a user namespace mapping the runner's uid and gid to themselves \
             (the runner lacks CAP_SYS_ADMIN)"
        }
        Some(MapWriter::Creator) => {
            "inside a user namespace mapping the runner's and runCommandsAs's uid and gid \
             to themselves, written by the runner (it lacks CAP_SYS_ADMIN)"
        }
    }
}

// ---------------------------------------------------------------------------
// The creator's side: writing the maps while the child waits
// ---------------------------------------------------------------------------

/// The pipe on which the creator tells a child waiting in its new user
/// namespace that its maps are written (an errno of 0) or why not. Made
/// before the child, which has a copy of both ends (close-on-exec).
pub(crate) struct MapsWritten {
    reader: OwnedFd,
    writer: OwnedFd,
}

impl MapsWritten {
    pub(crate) fn new() -> io::Result<MapsWritten> {
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(MapsWritten { reader, writer })
    }

    /// The ends, as the child uses them (see [`enter`]).
    pub(crate) fn ends(&self) -> [RawFd; 2] {
        [self.reader.as_raw_fd(), self.writer.as_raw_fd()]
    }

    /// Writes the maps of `namespace` for the child `pid` (through
    /// `proc_root`) and tells the child; closes both ends, so that a
    /// child told nothing reads the end of file.
    pub(crate) fn write_for(self, proc_root: &Path, pid: i32, namespace: &UserNamespace) {
        drop(self.reader);
        let process = proc_root.join(pid.to_string());
        let written = std::fs::write(process.join("uid_map"), &namespace.uid_map)
            .and_then(|()| std::fs::write(process.join("gid_map"), &namespace.gid_map));
        let errno = match written {
            Ok(()) => 0,
            Err(error) => error.raw_os_error().unwrap_or(libc::EIO),
        };
        let _ = nix::unistd::write(&self.writer, &errno.to_ne_bytes());
    }
}

// ---------------------------------------------------------------------------
// The child's side, between clone and exec (see `super::child`'s rules)
// ---------------------------------------------------------------------------

/// In the child, first thing in its new user namespace: its maps, written
/// by itself, or by the creator while it waits on `maps_written` (the
/// ends of [`MapsWritten`]). Then, when the action gets a mount namespace
/// (`mounts`), creates it, standing in `temporary_directory` (for a
/// private `/tmp`), so that `.` is that directory in the new namespace.
pub(super) fn enter(
    namespace: &UserNamespace,
    maps_written: Option<[RawFd; 2]>,
    mounts: bool,
    temporary_directory: Option<RawFd>,
) -> Result<(), (SpawnStep, i32)> {
    match (namespace.writer, maps_written) {
        (MapWriter::Child, _) => {
            write_own(c"/proc/self/setgroups", b"deny")?;
            write_own(c"/proc/self/uid_map", namespace.uid_map.as_bytes())?;
            write_own(c"/proc/self/gid_map", namespace.gid_map.as_bytes())?;
        }
        (MapWriter::Creator, Some([reader, writer])) => wait_for_maps(reader, writer)?,
        (MapWriter::Creator, None) => return Err((SpawnStep::UserNamespace, libc::EINVAL)),
    }
    if !mounts {
        return Ok(());
    }
    if let Some(directory) = temporary_directory {
        // SAFETY: fchdir takes only a descriptor number (the creator's
        // open temporary directory).
        let entered = unsafe { libc::fchdir(directory) };
        check(SpawnStep::PrivateTmp, entered)?;
    }
    // SAFETY: unshare takes only flags.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(SpawnStep::MountPropagation, unshared)
}

/// Reads the creator's word on the maps: 0, or the errno of writing them.
fn wait_for_maps(reader: RawFd, writer: RawFd) -> Result<(), (SpawnStep, i32)> {
    // Our copy of the write end, closed so that a creator gone without a
    // word is an end of file.
    // SAFETY: close takes only a descriptor number of this process.
    unsafe { libc::close(writer) };
    let mut word = [0u8; 4];
    // SAFETY: the kernel writes at most `word.len()` bytes into the live
    // local array.
    let read = unsafe { libc::read(reader, word.as_mut_ptr().cast(), word.len()) };
    let read_errno = errno();
    // SAFETY: as above.
    unsafe { libc::close(reader) };
    if read < 0 {
        return Err((SpawnStep::UserNamespace, read_errno));
    }
    if read as usize != word.len() {
        return Err((SpawnStep::UserNamespace, libc::EPIPE));
    }
    match i32::from_ne_bytes(word) {
        0 => Ok(()),
        errno => Err((SpawnStep::UserNamespace, errno)),
    }
}

/// Writes `bytes` at once into the file `path` of this process.
fn write_own(path: &std::ffi::CStr, bytes: &[u8]) -> Result<(), (SpawnStep, i32)> {
    // SAFETY: a NUL-terminated path; the kernel checks the flags.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(SpawnStep::UserNamespace, fd)?;
    // SAFETY: the kernel reads `bytes.len()` bytes from a live slice.
    let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    let written_errno = errno();
    // SAFETY: `fd` was opened above and nothing else refers to it.
    unsafe { libc::close(fd) };
    if written < 0 {
        return Err((SpawnStep::UserNamespace, written_errno));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Explaining a refusal
// ---------------------------------------------------------------------------

/// What of the host decides whether user namespaces work, read when the
/// startup probe failed ([`HostFacts::read`]); `None`: not there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `user.max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// Ubuntu's `kernel.apparmor_restrict_unprivileged_userns`.
    pub apparmor_restrict_unprivileged_userns: Option<u64>,
    /// Debian's older `kernel.unprivileged_userns_clone`.
    pub unprivileged_userns_clone: Option<u64>,
    /// The mount points beneath `/proc` in the runner's mount namespace
    /// (a container runtime's masked paths, among others).
    pub proc_submounts: Vec<String>,
}

impl HostFacts {
    /// Reads them from `proc_root` (normally [`super::DEFAULT_PROC_ROOT`]).
    pub fn read(proc_root: &Path) -> HostFacts {
        let number = |path: &str| {
            std::fs::read_to_string(proc_root.join(path))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        HostFacts {
            max_user_namespaces: number("sys/user/max_user_namespaces"),
            apparmor_restrict_unprivileged_userns: number(
                "sys/kernel/apparmor_restrict_unprivileged_userns",
            ),
            unprivileged_userns_clone: number("sys/kernel/unprivileged_userns_clone"),
            proc_submounts: std::fs::read_to_string(proc_root.join("self/mountinfo"))
                .map(|mountinfo| mounts_beneath(&mountinfo, "/proc"))
                .unwrap_or_default(),
        }
    }
}

/// The mount points strictly beneath `directory` in a `mountinfo` text
/// (the fifth field of each line; octal escapes kept as they are).
pub fn mounts_beneath(mountinfo: &str, directory: &str) -> Vec<String> {
    let prefix = format!("{}/", directory.trim_end_matches('/'));
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|mount_point| mount_point.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Why the kernel refused `step` with `errno` to a runner making actions'
/// namespaces inside a user namespace, and what to change; `None` when
/// nothing particular to user namespaces explains it.
pub fn explain(step: SpawnStep, errno: i32, host: &HostFacts) -> Option<String> {
    let denied = matches!(errno, libc::EPERM | libc::EACCES);
    if host.apparmor_restrict_unprivileged_userns == Some(1)
        && denied
        && matches!(
            step,
            SpawnStep::Create
                | SpawnStep::UserNamespace
                | SpawnStep::MountPropagation
                | SpawnStep::Proc
                | SpawnStep::PrivateTmp
                | SpawnStep::PrivateShm
                | SpawnStep::Hostname
                | SpawnStep::Loopback
        )
    {
        return Some(
            "kernel.apparmor_restrict_unprivileged_userns is 1 (Ubuntu's AppArmor restriction): \
             an unprivileged process gets no capability in the user namespaces it creates. Set \
             it to 0 on the node (sysctl -w kernel.apparmor_restrict_unprivileged_userns=0), \
             or confine rbe-runner by an AppArmor profile that allows `userns,`"
                .into(),
        );
    }
    match (step, errno) {
        (SpawnStep::Create, libc::ENOSPC) => Some(match host.max_user_namespaces {
            Some(0) => "user.max_user_namespaces is 0, which forbids user namespaces: set it \
                        above the number of actions run at once, plus some (sysctl -w \
                        user.max_user_namespaces=15000 on the node)"
                .into(),
            Some(limit) => format!(
                "the limit of user namespaces is reached (user.max_user_namespaces is \
                 {limit}, per user too): raise it on the node"
            ),
            None => "the limit of user namespaces (user.max_user_namespaces) is reached: \
                     raise it on the node"
                .into(),
        }),
        (SpawnStep::Create, libc::EPERM | libc::ENOSYS | libc::EACCES) => {
            Some(match host.unprivileged_userns_clone {
                Some(0) => "kernel.unprivileged_userns_clone is 0, which forbids user \
                            namespaces to unprivileged processes: set it to 1 on the node"
                    .into(),
                _ => "a seccomp profile refuses CLONE_NEWUSER (Docker's and containerd's \
                      default profiles do without CAP_SYS_ADMIN): run the pod with \
                      `securityContext.seccompProfile: { type: Unconfined }`, or a \
                      Localhost profile that allows clone, clone3 and unshare with \
                      CLONE_NEWUSER"
                    .into(),
            })
        }
        (SpawnStep::Proc, libc::EPERM) => {
            let masked = match host.proc_submounts.as_slice() {
                [] => String::new(),
                mounts => format!(
                    " (mounted over: {})",
                    crate::bounded::quoted(&mounts.join(", "))
                ),
            };
            Some(format!(
                "the kernel mounts a fresh /proc inside a user namespace only where the \
                 container's /proc is wholly visible, and this one has masked paths{masked}: \
                 run the pod with `securityContext.procMount: Unmasked`, which Kubernetes \
                 allows only together with `hostUsers: false`; or leave out isolation.pid"
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = u64::MAX;
    const NONE: u64 = 0;
    const SETID: u64 = (1 << 6) | (1 << 7);

    fn runner(effective: u64) -> RunnerPrivileges {
        RunnerPrivileges {
            effective,
            uid: 65534,
            gid: 65534,
        }
    }

    fn nobody_identity(groups: &[u32]) -> ActionIdentity<'_> {
        ActionIdentity {
            user_id: 1000,
            group_id: 1001,
            additional_group_ids: groups,
        }
    }

    /// Why it matters: a root runner keeps part 1's path, unchanged.
    #[test]
    fn a_runner_with_cap_sys_admin_makes_the_namespaces_itself() {
        assert_eq!(choose(runner(ALL), "isolation.pid", None).unwrap(), None);
        assert_eq!(
            choose(runner(ALL), "isolation.pid", Some(nobody_identity(&[7]))).unwrap(),
            None
        );
    }

    /// Why it matters: the action keeps the runner's identity, which the
    /// child may map for itself, with no capability at all.
    #[test]
    fn without_cap_sys_admin_the_child_maps_the_runners_own_ids() {
        let namespace = choose(runner(NONE), "isolation.pid", None)
            .unwrap()
            .unwrap();
        assert_eq!(namespace.writer, MapWriter::Child);
        assert_eq!(namespace.uid_map, "65534 65534 1\n");
        assert_eq!(namespace.gid_map, "65534 65534 1\n");
    }

    /// Why it matters: another uid in the namespace needs a map only the
    /// creator, with CAP_SETUID and CAP_SETGID, can write.
    #[test]
    fn run_commands_as_is_mapped_by_the_creator_when_it_may() {
        let namespace = choose(
            RunnerPrivileges {
                effective: SETID,
                uid: 0,
                gid: 0,
            },
            "isolation.pid",
            Some(nobody_identity(&[])),
        )
        .unwrap()
        .unwrap();
        assert_eq!(namespace.writer, MapWriter::Creator);
        assert_eq!(namespace.uid_map, "0 0 1\n1000 1000 1\n");
        assert_eq!(namespace.gid_map, "0 0 1\n1001 1001 1\n");
        // The same id once: overlapping lines are refused by the kernel.
        assert_eq!(
            UserNamespace::of_runner_and_action((5, 5), (5, 6)).uid_map,
            "5 5 1\n"
        );
    }

    /// Why it matters: the operator must learn both fields and the fix.
    #[test]
    fn run_commands_as_without_setuid_is_refused_naming_both_fields() {
        let error = choose(
            runner(NONE),
            "isolation.network",
            Some(nobody_identity(&[])),
        )
        .unwrap_err()
        .to_string();
        for needed in [
            "runCommandsAs",
            "isolation.network",
            "CAP_SETUID and CAP_SETGID",
            "uid 65534",
        ] {
            assert!(error.contains(needed), "{needed}: {error}");
        }
        let only_setuid = runner(1 << 7);
        let error = choose(only_setuid, "isolation.pid", Some(nobody_identity(&[])))
            .unwrap_err()
            .to_string();
        assert!(error.contains("without CAP_SETGID."), "{error}");
    }

    /// Why it matters: setgroups is denied in such a namespace; the
    /// groups would silently be lost.
    #[test]
    fn additional_group_ids_are_refused_naming_them() {
        let error = choose(runner(SETID), "isolation.tmp", Some(nobody_identity(&[10])))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("runCommandsAs.additionalGroupIds"),
            "{error}"
        );
        assert!(error.contains("isolation.tmp"), "{error}");
    }

    /// Why it matters: each refusal must say its cause and its fix.
    #[test]
    fn each_refusal_is_explained_with_its_fix() {
        let plain = HostFacts::default();
        let zero = HostFacts {
            max_user_namespaces: Some(0),
            ..HostFacts::default()
        };
        let text = |step, errno, host: &HostFacts| explain(step, errno, host).unwrap();
        assert!(
            text(SpawnStep::Create, libc::ENOSPC, &zero).contains("user.max_user_namespaces is 0")
        );
        assert!(text(SpawnStep::Create, libc::EPERM, &plain).contains("seccompProfile"));
        assert!(text(SpawnStep::Create, libc::ENOSYS, &plain).contains("Unconfined"));
        let debian = HostFacts {
            unprivileged_userns_clone: Some(0),
            ..HostFacts::default()
        };
        assert!(text(SpawnStep::Create, libc::EPERM, &debian)
            .contains("kernel.unprivileged_userns_clone"));
        let masked = HostFacts {
            proc_submounts: vec!["/proc/kcore".into(), "/proc/keys".into()],
            ..HostFacts::default()
        };
        let proc = text(SpawnStep::Proc, libc::EPERM, &masked);
        for needed in ["procMount: Unmasked", "hostUsers: false", "/proc/kcore"] {
            assert!(proc.contains(needed), "{needed}: {proc}");
        }
        let ubuntu = HostFacts {
            apparmor_restrict_unprivileged_userns: Some(1),
            ..HostFacts::default()
        };
        for step in [
            SpawnStep::Create,
            SpawnStep::MountPropagation,
            SpawnStep::Proc,
        ] {
            assert!(text(step, libc::EPERM, &ubuntu)
                .contains("kernel.apparmor_restrict_unprivileged_userns is 1"));
        }
        assert_eq!(explain(SpawnStep::Exec, libc::ENOENT, &ubuntu), None);
    }

    /// Why it matters: the masked paths are named from the real table.
    #[test]
    fn mounts_beneath_proc_are_read_from_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
23 22 0:5 /null /proc/kcore rw - devtmpfs udev rw
24 22 0:22 / /proc/sys ro - proc proc ro
25 1 0:23 / /procedure rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_beneath(mountinfo, "/proc"),
            vec!["/proc/kcore".to_string(), "/proc/sys".to_string()]
        );
        assert_eq!(mounts_beneath("garbage\n\n", "/proc"), Vec::<String>::new());
        // This host's table reads without error.
        let _ = HostFacts::read(Path::new(crate::process::DEFAULT_PROC_ROOT));
    }
}
