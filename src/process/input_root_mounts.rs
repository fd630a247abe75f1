//! Mounts inside a chrooted action's input root: the action's own `/proc`
//! (`isolation.pid`), a minimal `/dev` (`isolation.dev`) and the
//! configured `inputRootMounts` ([`InputRootMounts`]), made by the child
//! in its mount namespace between clone and exec (docs/isolation.md,
//! "Chrooted actions"), so that every one of them disappears with the
//! namespace, whatever the action did.
//!
//! The runner never creates anything in the input root (it may be
//! bb_worker's read-only virtual directory): every mountpoint must exist
//! (checked when the action is prepared, `action/mountpoints.rs`), and
//! `/dev`'s nodes and links are made inside a tmpfs of the action's own,
//! mounted over the root's `dev` (and over whatever bb_worker's
//! `inputRootCharacterDeviceNodes` put there).
//!
//! A directory opened before the clone belongs to the runner's mount
//! namespace: a mount onto it is refused (EINVAL), and a root or working
//! directory left there would not show what the child mounts: relative
//! paths from it walk the runner's mounts (`../../../tmp` is the host's
//! `/tmp`, not the private one; `../../../proc` the host's processes),
//! and `..` climbs out of a chroot. So every child with a mount namespace
//! finds its working directory and input root again in its own namespace
//! and puts them in place of the descriptors the runner gave ([`reopen`]);
//! the chroot and the change of directory that follow use those. The
//! working directory costs nothing to find when the child made its mount
//! namespace standing in it (the kernel moved it along: the normal case,
//! see `super::isolation`); otherwise (the input root, and in a user
//! namespace the working directory) each is opened again by its path,
//! checked to be the same directory (device and inode).
//!
//! Mountpoints are resolved beneath the input root as the action would
//! see them (`openat2` with `RESOLVE_IN_ROOT`), and mounts are attached to
//! the descriptors found (the mount API of Linux 5.2, `mount_setattr` of
//! 5.12 for read-only binds), so no path of the action's can send a mount
//! outside its root.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use super::child::{check, errno};
use super::isolation::{PROC_MASKED, PROC_READ_ONLY, READ_ONLY_REMOUNT};
use super::spec::SpawnStep;

/// Whose mount a [`Mount`] is, which names the field in messages and the
/// step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOrigin {
    /// The action's `/proc` in the root (`isolation.pid`).
    Pid,
    /// The minimal `/dev` (`isolation.dev`).
    Dev,
    /// `inputRootMounts[index]`.
    Entry(u32),
}

impl MountOrigin {
    /// The field of the configuration that asks for this mount.
    pub fn field(self) -> String {
        match self {
            MountOrigin::Entry(_) => format!("{}.mountpoint", self.setting()),
            _ => self.setting(),
        }
    }

    /// The setting that asks for this mount: the option, or the whole
    /// `inputRootMounts` entry.
    pub fn setting(self) -> String {
        match self {
            MountOrigin::Pid => "isolation.pid".into(),
            MountOrigin::Dev => "isolation.dev".into(),
            MountOrigin::Entry(index) => format!("inputRootMounts[{index}]"),
        }
    }

    fn step(self) -> SpawnStep {
        match self {
            MountOrigin::Pid => SpawnStep::InputRootProc,
            MountOrigin::Dev => SpawnStep::InputRootDev,
            MountOrigin::Entry(_) => SpawnStep::InputRootMount,
        }
    }
}

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A recursive bind mount of the host path `source`.
    Bind { source: CString, read_only: bool },
    /// A new filesystem of `filesystem_type` from `source`; a `proc` gets
    /// the masks of the action's `/proc` (`isolation.pid`).
    Filesystem {
        source: CString,
        filesystem_type: CString,
        read_only: bool,
    },
    /// The minimal `/dev` (`isolation.dev`).
    Dev,
}

/// One mount, at `mountpoint` relative to the input root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: CString,
    pub kind: MountKind,
    pub origin: MountOrigin,
}

/// Every mount a chrooted action gets in its input root, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputRootMounts {
    pub mounts: Vec<Mount>,
}

/// A configured `inputRootMounts` entry, as the process layer takes it.
pub struct Entry<'a> {
    pub mountpoint: &'a str,
    pub source: &'a str,
    pub filesystem_type: &'a str,
    pub read_only: bool,
}

fn cstring(text: &str) -> CString {
    // The configuration refuses NUL in every one of these strings.
    CString::new(text.replace('\0', "")).unwrap_or_default()
}

impl InputRootMounts {
    /// The mounts of a chrooted action: its own `/proc` with `pid` (unless
    /// an entry mounts a procfs on `proc`, which gets the same masks),
    /// the minimal `/dev` with `dev`, then `entries` in order. `None` when
    /// there are none.
    pub fn new<'a>(
        pid: bool,
        dev: bool,
        entries: impl IntoIterator<Item = Entry<'a>>,
    ) -> Option<InputRootMounts> {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let proc_entry = entries
            .iter()
            .any(|entry| entry.mountpoint == "proc" && entry.filesystem_type == "proc");
        let mut mounts = Vec::new();
        if pid && !proc_entry {
            mounts.push(Mount {
                mountpoint: c"proc".into(),
                kind: MountKind::Filesystem {
                    source: c"proc".into(),
                    filesystem_type: c"proc".into(),
                    read_only: false,
                },
                origin: MountOrigin::Pid,
            });
        }
        if dev {
            mounts.push(Mount {
                mountpoint: c"dev".into(),
                kind: MountKind::Dev,
                origin: MountOrigin::Dev,
            });
        }
        for (index, entry) in entries.iter().enumerate() {
            let kind = if entry.filesystem_type == "bind" {
                MountKind::Bind {
                    source: cstring(entry.source),
                    read_only: entry.read_only,
                }
            } else {
                MountKind::Filesystem {
                    source: cstring(entry.source),
                    filesystem_type: cstring(entry.filesystem_type),
                    read_only: entry.read_only,
                }
            };
            mounts.push(Mount {
                mountpoint: cstring(entry.mountpoint),
                kind,
                origin: MountOrigin::Entry(index as u32),
            });
        }
        (!mounts.is_empty()).then_some(InputRootMounts { mounts })
    }

    /// As bytes, for the spawn server.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let string = |bytes: &mut Vec<u8>, text: &CStr| {
            bytes.extend_from_slice(&(text.to_bytes().len() as u32).to_le_bytes());
            bytes.extend_from_slice(text.to_bytes());
        };
        bytes.extend_from_slice(&(self.mounts.len() as u32).to_le_bytes());
        for mount in &self.mounts {
            let (origin, index) = match mount.origin {
                MountOrigin::Pid => (0u8, 0u32),
                MountOrigin::Dev => (1, 0),
                MountOrigin::Entry(index) => (2, index),
            };
            bytes.push(origin);
            bytes.extend_from_slice(&index.to_le_bytes());
            string(&mut bytes, &mount.mountpoint);
            match &mount.kind {
                MountKind::Dev => bytes.push(0),
                MountKind::Bind { source, read_only } => {
                    bytes.push(1);
                    bytes.push(u8::from(*read_only));
                    string(&mut bytes, source);
                }
                MountKind::Filesystem {
                    source,
                    filesystem_type,
                    read_only,
                } => {
                    bytes.push(2);
                    bytes.push(u8::from(*read_only));
                    string(&mut bytes, source);
                    string(&mut bytes, filesystem_type);
                }
            }
        }
        bytes
    }

    /// What [`Self::encode`] made.
    pub(super) fn decode(mut bytes: &[u8]) -> Result<InputRootMounts, &'static str> {
        fn take<'a>(bytes: &mut &'a [u8], count: usize) -> Result<&'a [u8], &'static str> {
            if bytes.len() < count {
                return Err("truncated input root mounts");
            }
            let (taken, rest) = bytes.split_at(count);
            *bytes = rest;
            Ok(taken)
        }
        fn u32_of(bytes: &mut &[u8]) -> Result<u32, &'static str> {
            let taken = take(bytes, 4)?;
            Ok(u32::from_le_bytes([taken[0], taken[1], taken[2], taken[3]]))
        }
        fn string(bytes: &mut &[u8]) -> Result<CString, &'static str> {
            let length = u32_of(bytes)? as usize;
            CString::new(take(bytes, length)?).map_err(|_| "string with NUL")
        }
        let count = u32_of(&mut bytes)?;
        let mut mounts = Vec::new();
        for _ in 0..count {
            let origin = take(&mut bytes, 1)?[0];
            let index = u32_of(&mut bytes)?;
            let origin = match origin {
                0 => MountOrigin::Pid,
                1 => MountOrigin::Dev,
                2 => MountOrigin::Entry(index),
                _ => return Err("unknown mount origin"),
            };
            let mountpoint = string(&mut bytes)?;
            let kind = match take(&mut bytes, 1)?[0] {
                0 => MountKind::Dev,
                1 => MountKind::Bind {
                    read_only: take(&mut bytes, 1)?[0] != 0,
                    source: string(&mut bytes)?,
                },
                2 => MountKind::Filesystem {
                    read_only: take(&mut bytes, 1)?[0] != 0,
                    source: string(&mut bytes)?,
                    filesystem_type: string(&mut bytes)?,
                },
                _ => return Err("unknown mount kind"),
            };
            mounts.push(Mount {
                mountpoint,
                kind,
                origin,
            });
        }
        if !bytes.is_empty() {
            return Err("trailing bytes after the input root mounts");
        }
        Ok(InputRootMounts { mounts })
    }
}

/// The action's working directory and, when it is chrooted, its input
/// root, as the runner opened them (in its mount namespace).
#[derive(Debug, Clone, Copy)]
pub(super) struct ActionDirectories {
    pub(super) root: Option<RawFd>,
    pub(super) working_directory: RawFd,
}

// Everything below runs in the child, between its creation and exec: raw
// system calls on values prepared beforehand, no allocation, one `unsafe`
// block per call (see `super::child`).

/// `open_tree`'s flags: a copy of the mount, detached (Linux 5.2), with
/// every mount beneath it.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// `move_mount`'s flags: source and target given by descriptor alone.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` (Linux 5.12).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The host's device nodes bound into the minimal `/dev`, by name.
const DEV_NODES: [(&CStr, &CStr); 6] = [
    (c"/dev/null", c"null"),
    (c"/dev/zero", c"zero"),
    (c"/dev/full", c"full"),
    (c"/dev/random", c"random"),
    (c"/dev/urandom", c"urandom"),
    (c"/dev/tty", c"tty"),
];
/// The links of the minimal `/dev`: name, target.
const DEV_LINKS: [(&CStr, &CStr); 5] = [
    (c"fd", c"/proc/self/fd"),
    (c"stdin", c"/proc/self/fd/0"),
    (c"stdout", c"/proc/self/fd/1"),
    (c"stderr", c"/proc/self/fd/2"),
    (c"ptmx", c"pts/ptmx"),
];

/// Opens the input root (when chrooted) and the working directory again
/// in the child's mount namespace, in place of the runner's descriptors
/// (see the module). Done first, before anything is mounted over their
/// paths. A child `standing_in_working_directory` made its mount
/// namespace there: its working directory already is the action's (the
/// kernel moved it into the new namespace), and is taken as it is.
pub(super) fn reopen(
    directories: ActionDirectories,
    standing_in_working_directory: bool,
) -> Result<(), (SpawnStep, i32)> {
    let mut path = [0u8; 4097];
    if let Some(root) = directories.root {
        reopen_in_place(root, &mut path, SpawnStep::Chroot)?;
    }
    if standing_in_working_directory {
        return take_current_directory(directories.working_directory);
    }
    reopen_in_place(
        directories.working_directory,
        &mut path,
        SpawnStep::WorkingDirectory,
    )
}

/// Puts the current directory in place of `fd`.
fn take_current_directory(fd: RawFd) -> Result<(), (SpawnStep, i32)> {
    let step = SpawnStep::WorkingDirectory;
    // SAFETY: a NUL-terminated literal; the kernel checks the flags.
    let current = unsafe {
        libc::open(
            c".".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(step, current)?;
    // SAFETY: dup3 takes only descriptor numbers; `fd` is the child's
    // copy, which nothing else in it uses meanwhile.
    let duplicated = check(step, unsafe { libc::dup3(current, fd, libc::O_CLOEXEC) });
    close(current);
    duplicated
}

/// Makes every mount of `mounts` beneath `root` (already [`reopen`]ed).
pub(super) fn enter(mounts: &InputRootMounts, root: RawFd) -> Result<(), (SpawnStep, i32)> {
    for mount in &mounts.mounts {
        let step = mount.origin.step();
        let target = open_beneath(root, &mount.mountpoint, step)?;
        let made = match &mount.kind {
            MountKind::Bind { source, read_only } => bind(source, *read_only, target, step),
            MountKind::Filesystem {
                source,
                filesystem_type,
                read_only,
            } => filesystem(source, filesystem_type, *read_only, target, step),
            MountKind::Dev => dev(target, step),
        };
        close(target);
        made?;
    }
    Ok(())
}

/// Puts in place of `fd` (a directory of the runner's mount namespace)
/// the same directory opened by its path in the child's, refusing one
/// whose path now leads elsewhere (ESTALE), as `step`. `path` is scratch
/// space.
fn reopen_in_place(
    fd: RawFd,
    path: &mut [u8; 4097],
    step: SpawnStep,
) -> Result<(), (SpawnStep, i32)> {
    // "/proc/self/fd/" and up to 10 digits.
    let mut link = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let mut count = 0;
    let mut rest = fd.unsigned_abs();
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 || count == digits.len() {
            break;
        }
    }
    for (offset, &digit) in digits[..count].iter().rev().enumerate() {
        link[14 + offset] = digit;
    }
    // SAFETY: `link` is NUL-terminated (its last byte is never written);
    // the kernel writes at most `path.len() - 1` bytes into the live
    // buffer.
    let length = unsafe {
        libc::readlink(
            link.as_ptr().cast(),
            path.as_mut_ptr().cast(),
            path.len() - 1,
        )
    };
    if length < 0 {
        return Err((step, errno()));
    }
    let length = length as usize;
    if length >= path.len() - 1 || path[0] != b'/' {
        return Err((step, libc::ENAMETOOLONG));
    }
    path[length] = 0;
    // SAFETY: all-zero bytes are a valid `open_how` (plain integers).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    // The path the kernel gave has no symlinks; one now would be a swap.
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `path` is NUL-terminated above; the kernel reads `how`, a
    // live local of the size given.
    let reopened = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    } as RawFd;
    if reopened < 0 {
        return Err((step, errno()));
    }
    let same = identity(fd).and_then(|old| identity(reopened).map(|new| old == new));
    let result = match same {
        Ok(true) => {
            // SAFETY: dup3 takes only descriptor numbers; `fd` is the
            // child's copy, which nothing else in it uses meanwhile.
            let duplicated = unsafe { libc::dup3(reopened, fd, libc::O_CLOEXEC) };
            check(step, duplicated)
        }
        Ok(false) => Err((step, libc::ESTALE)),
        Err(errno) => Err((step, errno)),
    };
    close(reopened);
    result
}

/// The device and inode of the file open as `fd`.
fn identity(fd: RawFd) -> Result<(u64, u64), i32> {
    // SAFETY: all-zero bytes are a valid `stat` (plain integers).
    let mut status: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only `status`, a live local.
    if unsafe { libc::fstat(fd, &mut status) } != 0 {
        return Err(errno());
    }
    Ok((status.st_dev, status.st_ino))
}

/// `mountpoint` beneath `root` as the chrooted action would resolve it.
fn open_beneath(
    root: RawFd,
    mountpoint: &CStr,
    step: SpawnStep,
) -> Result<RawFd, (SpawnStep, i32)> {
    // SAFETY: all-zero bytes are a valid `open_how` (plain integers).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `mountpoint` is NUL-terminated; the kernel reads `how`, a
    // live local of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            mountpoint.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    } as RawFd;
    check(step, fd)?;
    Ok(fd)
}

/// A recursive bind of the host's `source` on `target`, read-only on
/// every mount beneath with `read_only`.
fn bind(
    source: &CStr,
    read_only: bool,
    target: RawFd,
    step: SpawnStep,
) -> Result<(), (SpawnStep, i32)> {
    // SAFETY: `source` is NUL-terminated; the kernel checks the flags.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    } as RawFd;
    check(step, tree)?;
    let result = (|| {
        if read_only {
            set_attributes(tree, MOUNT_ATTR_RDONLY, true, step)?;
        }
        attach(tree, target, step)
    })();
    close(tree);
    result
}

/// A new `filesystem_type` from `source` on `target`; a procfs gets the
/// masks of the action's `/proc`.
fn filesystem(
    source: &CStr,
    filesystem_type: &CStr,
    read_only: bool,
    target: RawFd,
    step: SpawnStep,
) -> Result<(), (SpawnStep, i32)> {
    let proc = filesystem_type.to_bytes() == b"proc";
    let mut attributes = if read_only { MOUNT_ATTR_RDONLY } else { 0 };
    if proc {
        attributes |= MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    }
    let mount = new_filesystem(filesystem_type, source, &[], attributes, step)?;
    let result =
        attach(mount, target, step).and_then(
            |()| {
                if proc {
                    mask_proc(mount, step)
                } else {
                    Ok(())
                }
            },
        );
    close(mount);
    result
}

/// A detached mount of a new `filesystem_type` from `source`, with the
/// string `options` (key, value) and mount `attributes`.
fn new_filesystem(
    filesystem_type: &CStr,
    source: &CStr,
    options: &[(&CStr, &CStr)],
    attributes: u64,
    step: SpawnStep,
) -> Result<RawFd, (SpawnStep, i32)> {
    // SAFETY: `filesystem_type` is NUL-terminated.
    let context =
        unsafe { libc::syscall(libc::SYS_fsopen, filesystem_type.as_ptr(), FSOPEN_CLOEXEC) }
            as RawFd;
    check(step, context)?;
    let result = (|| {
        for &(key, value) in [(c"source", source)].iter().chain(options) {
            // SAFETY: NUL-terminated key and value.
            let set = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    context,
                    FSCONFIG_SET_STRING,
                    key.as_ptr(),
                    value.as_ptr(),
                    0,
                )
            };
            check(step, set as libc::c_int)?;
        }
        // SAFETY: no key or value for this command.
        let created = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context,
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        check(step, created as libc::c_int)?;
        // SAFETY: fsmount takes only numbers.
        let mount =
            unsafe { libc::syscall(libc::SYS_fsmount, context, FSMOUNT_CLOEXEC, attributes) }
                as RawFd;
        check(step, mount)?;
        Ok(mount)
    })();
    close(context);
    result
}

/// Attaches the detached mount `mount` on `target`.
fn attach(mount: RawFd, target: RawFd, step: SpawnStep) -> Result<(), (SpawnStep, i32)> {
    // SAFETY: empty NUL-terminated paths with descriptors.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount,
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(step, moved as libc::c_int)
}

/// Sets `attributes` on the mount open as `mount`, and on every mount
/// beneath with `recursive`.
fn set_attributes(
    mount: RawFd,
    attributes: u64,
    recursive: bool,
    step: SpawnStep,
) -> Result<(), (SpawnStep, i32)> {
    let attr = MountAttr {
        attr_set: attributes,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: an empty NUL-terminated path with a descriptor; the kernel
    // reads `attr`, a live local of the size given.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount,
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(step, set as libc::c_int)
}

/// Applies the masks of the action's `/proc` (part 1's) to the procfs
/// attached as `proc`: the read-only paths bound on themselves read-only,
/// `/dev/null` bound over the masked ones. A path this kernel lacks has
/// nothing to protect.
fn mask_proc(proc: RawFd, step: SpawnStep) -> Result<(), (SpawnStep, i32)> {
    // Relative paths from here resolve in the attached procfs.
    // SAFETY: fchdir takes only a descriptor number.
    check(step, unsafe { libc::fchdir(proc) })?;
    for path in PROC_READ_ONLY {
        let name = beneath_proc(path);
        match mount(name, name, None, libc::MS_BIND, None, step) {
            Err((_, libc::ENOENT)) => continue,
            bound => bound?,
        }
        mount(c"", name, None, READ_ONLY_REMOUNT, None, step)?;
    }
    for path in PROC_MASKED {
        match mount(
            c"/dev/null",
            beneath_proc(path),
            None,
            libc::MS_BIND,
            None,
            step,
        ) {
            Err((_, libc::ENOENT)) => continue,
            bound => bound?,
        }
    }
    Ok(())
}

/// `/proc/sys` → `sys`.
fn beneath_proc(path: &'static CStr) -> &'static CStr {
    let bytes = path.to_bytes_with_nul();
    let start = if bytes.starts_with(b"/proc/") { 6 } else { 0 };
    CStr::from_bytes_with_nul(&bytes[start..]).unwrap_or(path)
}

/// The minimal `/dev` on `target`: a small tmpfs holding the links and
/// the files the host's nodes are bound on, attached, then the nodes, a
/// `devpts` of its own and a private `shm` mounted inside.
fn dev(target: RawFd, step: SpawnStep) -> Result<(), (SpawnStep, i32)> {
    let tmpfs = new_filesystem(
        c"tmpfs",
        c"dev",
        &[(c"mode", c"755"), (c"size", c"64k")],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        step,
    )?;
    let result = populate_dev(tmpfs, step).and_then(|()| attach(tmpfs, target, step));
    let result = result.and_then(|()| {
        // Relative paths from here resolve in the attached tmpfs.
        // SAFETY: fchdir takes only a descriptor number.
        check(step, unsafe { libc::fchdir(tmpfs) })?;
        for (source, name) in DEV_NODES {
            mount(source, name, None, libc::MS_BIND, None, step)?;
        }
        mount(
            c"devpts",
            c"pts",
            Some(c"devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
            step,
        )?;
        mount(
            c"shm",
            c"shm",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=1777"),
            step,
        )
    });
    close(tmpfs);
    result
}

/// Creates in the detached tmpfs `dev` what the nodes and mounts go on,
/// and the links.
fn populate_dev(dev: RawFd, step: SpawnStep) -> Result<(), (SpawnStep, i32)> {
    for directory in [c"pts", c"shm"] {
        // SAFETY: a NUL-terminated literal beneath a descriptor.
        check(step, unsafe {
            libc::mkdirat(dev, directory.as_ptr(), 0o755)
        })?;
    }
    for (_, name) in DEV_NODES {
        // SAFETY: a NUL-terminated literal beneath a descriptor.
        let file = unsafe {
            libc::openat(
                dev,
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            )
        };
        check(step, file)?;
        close(file);
    }
    for (name, target) in DEV_LINKS {
        // SAFETY: NUL-terminated literals beneath a descriptor.
        check(step, unsafe {
            libc::symlinkat(target.as_ptr(), dev, name.as_ptr())
        })?;
    }
    Ok(())
}

/// mount(2) with `source` and `target` (relative to the working
/// directory, or absolute), as `step`.
fn mount(
    source: &CStr,
    target: &CStr,
    filesystem_type: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
    step: SpawnStep,
) -> Result<(), (SpawnStep, i32)> {
    let source = if source.is_empty() {
        std::ptr::null()
    } else {
        source.as_ptr()
    };
    // SAFETY: NUL-terminated strings, or null pointers where the kernel
    // allows them (no source or type for a bind or remount, no data).
    let mounted = unsafe {
        libc::mount(
            source,
            target.as_ptr(),
            filesystem_type.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |data| data.as_ptr().cast()),
        )
    };
    check(step, mounted)
}

fn close(fd: RawFd) {
    // SAFETY: `fd` was opened by this child and nothing else refers to it.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(mountpoint: &'a str, source: &'a str, filesystem_type: &'a str) -> Entry<'a> {
        Entry {
            mountpoint,
            source,
            filesystem_type,
            read_only: filesystem_type == "bind",
        }
    }

    /// Why it matters: `/proc` must be there before `/dev`'s links are
    /// used, and a configured procfs on `proc` is the action's `/proc`,
    /// not a second one.
    #[test]
    fn the_runners_mounts_come_first_and_a_proc_entry_replaces_pids() {
        let mounts =
            InputRootMounts::new(true, true, [entry("opt", "/opt", "bind")]).expect("mounts");
        let origins: Vec<_> = mounts.mounts.iter().map(|mount| mount.origin).collect();
        assert_eq!(
            origins,
            [MountOrigin::Pid, MountOrigin::Dev, MountOrigin::Entry(0)]
        );
        let mounts =
            InputRootMounts::new(true, false, [entry("proc", "proc", "proc")]).expect("mounts");
        assert_eq!(mounts.mounts.len(), 1);
        assert_eq!(mounts.mounts[0].origin, MountOrigin::Entry(0));
        assert_eq!(InputRootMounts::new(false, false, []), None);
    }

    /// Why it matters: the spawn server must make exactly the mounts the
    /// runner was configured with.
    #[test]
    fn the_spawn_servers_copy_decodes_to_what_was_encoded() {
        let mounts = InputRootMounts::new(
            true,
            true,
            [
                entry("opt/tc", "/opt/tc", "bind"),
                Entry {
                    read_only: true,
                    ..entry("scratch", "none", "tmpfs")
                },
            ],
        )
        .expect("mounts");
        let bytes = mounts.encode();
        assert_eq!(InputRootMounts::decode(&bytes), Ok(mounts));
        assert!(InputRootMounts::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Why it matters: the masks are the ones of the action's `/proc`.
    #[test]
    fn the_masks_are_named_beneath_proc() {
        assert_eq!(beneath_proc(c"/proc/sys"), c"sys");
        assert_eq!(beneath_proc(c"/proc/timer_list"), c"timer_list");
    }
}
