//! Creating an action's child process without std's `fork()` path.
//!
//! The child is a copy of its creator (the spawn server, see
//! [`super::spawn_server`], or the runner), as with `fork()`, not a process
//! that shares the creator's memory until exec (`CLONE_VM`, as `posix_spawn` and
//! Go's os/exec do). That choice is about truthful accounting: at exec the
//! kernel folds the old address space's peak RSS into the new program's
//! `ru_maxrss`, so a child sharing the runner's memory would report at
//! least the runner's whole resident set (10 MiB and more) as the
//! `maximumResidentSetSize` of every action, `/bin/true` included. A copy
//! holds only the anonymous pages the kernel copies (under 1 MiB from the
//! small spawn server), below what any program reports on its own.
//! BENCHMARKS.md has the price of this choice.
//!
//! The child starts on a stack of its own (its copy of [`Creator`]'s one
//! stack) in a function of ours, and until exec it may only make raw,
//! async-signal-safe system calls (see [`super::child`]). Its creator goes
//! on at once: nothing waits here for the child's exec, which a program
//! on a slow FUSE or NFS mount can make take seconds. The child reports
//! what became of it through a pipe of its own ([`super::status`]).
//!
//! Two ways to create it ([`Method`]), chosen once at startup by the front
//! door ([`super::spawn::choose_method`]):
//! - `clone3`, which can also create the child in its cgroup
//!   (`CLONE_INTO_CGROUP`: nothing of the action ever runs outside it, and
//!   no write to `cgroup.procs` is needed). glibc 2.36 has no `clone3`
//!   wrapper, and a system call that switches stacks cannot return into
//!   Rust code, so the child's first instructions are a few lines of
//!   assembly (x86_64 only; elsewhere `clone3` is reported unavailable).
//! - `clone`, through glibc's wrapper: the child must join its cgroup by
//!   writing `cgroup.procs` itself. Container runtimes' default seccomp
//!   profiles answer `clone3` with ENOSYS (older ones with EPERM) yet
//!   allow this one.

use std::ffi::c_void;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

/// How children are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// `clone3([CLONE_INTO_CGROUP])`.
    Clone3,
    /// glibc's `clone`; the child joins its cgroup itself.
    /// Available wherever the runner can start processes at all.
    #[default]
    Clone,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Clone3 => "clone3",
            Method::Clone => "clone",
        })
    }
}

/// The code of a child started by [`Creator::create`]: called on the
/// child's own stack with `arg`; its return value becomes the child's exit
/// status.
pub type ChildMain = extern "C" fn(arg: *mut c_void) -> libc::c_int;

/// Size of the child's stack. It holds the frames of the child's setup:
/// in a release build about 17 KiB for the first function, its callees
/// inlined with their buffers (a path of 4 KiB among them), and, for an
/// isolated action's first process, those of its action too, which goes
/// on below them (see [`fork_into`]). Only the pages a child touches
/// become its memory; the creator touches none.
const STACK_SIZE: usize = 256 * 1024;

/// The child's stack, made once.
static AREA: Mutex<Option<Area>> = Mutex::new(None);

/// An anonymous mapping: the stack, with a guard page below it.
struct Area {
    base: *mut c_void,
    length: usize,
}

// SAFETY: the mapping is process-wide memory that is never unmapped; the
// pointer is only used while `AREA`'s lock is held.
unsafe impl Send for Area {}

impl Area {
    fn map() -> io::Result<Area> {
        let guard = page_size();
        let length = STACK_SIZE + guard;
        let base = map_anonymous(length, libc::MAP_PRIVATE | libc::MAP_STACK)?;
        // An overflow faults instead of writing below the stack.
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Area { base, length })
    }

    /// The lowest usable address of the stack (above the guard page).
    fn low(&self) -> usize {
        self.base as usize + page_size()
    }

    /// The initial stack pointer: the top, 16-byte aligned as both ABIs
    /// require (page-aligned here).
    fn top(&self) -> usize {
        self.base as usize + self.length
    }
}

fn map_anonymous(length: usize, flags: libc::c_int) -> io::Result<*mut c_void> {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    // The result is checked before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(base)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The right to create children: one at a time in this process, which
/// keeps the one stack to the clone system call that uses it, and keeps
/// any child from inheriting another's status pipe (see
/// [`super::status`]). Hold it only around creating one child: never
/// while anything waits for a child. Obtain it with [`creator`].
pub struct Creator {
    area: MutexGuard<'static, Option<Area>>,
}

/// Takes the right to create children (mapping the stack on first use).
pub fn creator() -> io::Result<Creator> {
    let mut area = crate::sync::lock_unpoisoned(&AREA);
    if area.is_none() {
        *area = Some(Area::map()?);
    }
    Ok(Creator { area })
}

impl Creator {
    fn area(&self) -> &Area {
        match self.area.as_ref() {
            Some(area) => area,
            None => unreachable!("mapped by `creator`"),
        }
    }

    /// Creates a child running `main(arg)` with `method`, in the cgroup
    /// whose directory is open as `cgroup` (clone3 only; with
    /// [`Method::Clone`] the child must join by itself), as our child or,
    /// when `sibling`, our parent's. The child has no exit signal (a
    /// sibling takes its creator's: none, for the spawn server), so that
    /// only a wait with `__WALL` sees it (see [`super::reaper`]). Returns
    /// its pid as soon as it exists,
    /// while the child runs on in its copy of this process. Every signal
    /// should be blocked in the calling thread (see [`block_all_signals`])
    /// so that no handler of the runner runs in the child before it has
    /// reset them.
    ///
    /// # Safety
    /// `main` runs in a copy of this process between creation and exec: it
    /// must make only async-signal-safe calls, never allocate, take locks,
    /// unwind or return into Rust frames, and `arg` must point to memory
    /// that is valid when this function is called (the child reads its
    /// copy).
    pub unsafe fn create(
        &self,
        method: Method,
        cgroup: Option<RawFd>,
        sibling: bool,
        main: ChildMain,
        arg: *mut c_void,
    ) -> io::Result<i32> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.create_in_namespaces(method, cgroup, sibling, 0, main, arg) }
    }

    /// [`Creator::create`], with the child in new namespaces: `namespaces`
    /// holds `CLONE_NEW*` flags (see [`super::isolation`]).
    ///
    /// # Safety
    /// As [`Creator::create`].
    pub unsafe fn create_in_namespaces(
        &self,
        method: Method,
        cgroup: Option<RawFd>,
        sibling: bool,
        namespaces: libc::c_int,
        main: ChildMain,
        arg: *mut c_void,
    ) -> io::Result<i32> {
        let area = self.area();
        // A sibling is a child of our parent (the spawn server creates
        // children of the runner).
        let parent = if sibling { libc::CLONE_PARENT } else { 0 } | namespaces;
        let pid = match method {
            // SAFETY: forwarded from this function's contract; the stack is
            // ours while the lock is held.
            Method::Clone3 => unsafe { clone3_on_stack(area, cgroup, parent as u64, main, arg) },
            // SAFETY: as above. glibc's wrapper takes the top of the stack;
            // no signal number in the flags: no exit signal.
            Method::Clone => unsafe {
                libc::clone(main, area.top() as *mut c_void, parent, arg) as isize
            },
        };
        if pid < 0 {
            let errno = match method {
                Method::Clone3 => -pid as i32,
                Method::Clone => io::Error::last_os_error().raw_os_error().unwrap_or(0),
            };
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(pid as i32)
    }
}

/// The kernel's `struct clone_args` (include/uapi/linux/sched.h), up to
/// `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7); not in the libc crate's constants for
/// every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Returns the child's pid, or minus the errno.
///
/// # Safety
/// As [`create`]; `stack` must be unused by anything else.
unsafe fn clone3_on_stack(
    stack: &Area,
    cgroup: Option<RawFd>,
    flags: u64,
    main: ChildMain,
    arg: *mut c_void,
) -> isize {
    let mut args = CloneArgs {
        flags,
        // None (a sibling takes its creator's; clone3 refuses one given
        // with CLONE_PARENT).
        exit_signal: 0,
        stack: stack.low() as u64,
        stack_size: (stack.top() - stack.low()) as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { clone3_with(&args, main, arg) }
}

/// A fork that runs `main(arg)`, made the way `method` makes every child
/// (`clone3`'s own first instructions, or the raw `clone` system call, not
/// glibc's `fork`, whose handlers take locks another thread of the
/// creator may have held when this copy was made, nor its `clone`, which
/// needs a stack). The child goes on on its copy of the caller's stack,
/// below the caller's frames, as after a `fork` (no stack is given:
/// `main`'s frame may be larger than any stack carved out of the
/// caller's), and ends with `main`'s value. A `sibling` is a child of the
/// caller's parent (`CLONE_PARENT`) and takes the caller's exit signal;
/// otherwise the caller is its parent and `SIGCHLD` says it ended.
///
/// Used by the process that sets up an isolated action's namespaces to
/// fork the action itself, so that the action runs the very code a plain
/// child runs from its first instruction (see `super::init` and
/// `super::child`). Returns the child's pid, or the errno.
///
/// # Safety
/// As [`Creator::create`]: `main` keeps the contract of a child between
/// clone and exec, in a single-threaded caller.
pub(super) unsafe fn fork_into(
    method: Method,
    main: ChildMain,
    arg: *mut c_void,
    sibling: bool,
) -> Result<i32, i32> {
    let (flags, exit_signal) = if sibling {
        (libc::CLONE_PARENT as u64, 0)
    } else {
        (0, libc::SIGCHLD as u64)
    };
    match method {
        Method::Clone3 => {
            let args = CloneArgs {
                flags,
                exit_signal,
                ..CloneArgs::default()
            };
            // SAFETY: forwarded from this function's contract.
            let pid = unsafe { clone3_with(&args, main, arg) };
            if pid < 0 {
                Err(-pid as i32)
            } else {
                Ok(pid as i32)
            }
        }
        Method::Clone => {
            // SAFETY: a fork (no CLONE_VM, no stack): the child returns
            // here with its own copy of this single-threaded process's
            // memory and goes on only to `main` and `_exit`.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (flags | exit_signal) as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            } as i32;
            if pid == 0 {
                let code = main(arg);
                // SAFETY: _exit ends the child without running anything
                // of its creator's.
                unsafe { libc::_exit(code) }
            }
            if pid < 0 {
                Err(super::child::errno())
            } else {
                Ok(pid)
            }
        }
    }
}

/// `clone3(args)`, the child calling `main(arg)` on the stack `args`
/// gives (or, with none, below the caller's). Returns the child's pid, or
/// minus the errno.
///
/// # Safety
/// As [`Creator::create`]; the stack in `args` must be unused by anything
/// else.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_with(args: &CloneArgs, main: ChildMain, arg: *mut c_void) -> isize {
    let result: isize;
    // SAFETY: the system call creates a child (a copy of us) that starts on
    // its copy of the stack in `args` (the kernel sets its stack pointer to
    // the top), or, with none, of ours, where the stack pointer is aligned
    // for a call on entry to this block and nothing below it is in use.
    // The parent's path is a plain system call: rcx and r11 are clobbered
    // by `syscall`, rax holds the result. The child's path never returns
    // into Rust code: it calls `main(arg)` (a C-ABI function, with the
    // stack 16-byte aligned before the call) and exits with its value
    // through `exit`, which ends only the child. r12 and r13 carry `main`
    // and `arg` across the system call (the child starts with the
    // parent's registers).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 as isize => result,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") main,
            in("r13") arg,
            out("rcx") _,
            out("r11") _,
        );
    }
    result
}

/// Elsewhere `clone3` with a stack of our own is not implemented.
///
/// # Safety
/// Always safe; kept `unsafe` for the same signature.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_with(_args: &CloneArgs, _main: ChildMain, _arg: *mut c_void) -> isize {
    -(libc::ENOSYS as isize)
}

/// Blocks every signal in the calling thread; the returned mask restores
/// it. The child must not run one of the runner's handlers before it has
/// reset them to the default: they write to descriptors it shares with the
/// runner (tokio's signal pipe would tell the runner it got SIGTERM).
pub fn block_all_signals() -> libc::sigset_t {
    // SAFETY: all-zero bytes are a valid `sigset_t` (plain integers).
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset writes only `all`, a valid local.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: pthread_sigmask reads `all` and writes `previous`, valid
    // locals; only this thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous) };
    previous
}

/// Restores a mask returned by [`block_all_signals`].
pub fn restore_signals(previous: &libc::sigset_t) {
    // SAFETY: `previous` is a valid set; only the thread's mask changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, previous, std::ptr::null_mut());
    }
}

/// Whether an error of [`Creator::create`] means "this method is not
/// available here" rather than a failure of this one child: ENOSYS (no such
/// system call, or a seccomp profile's default answer) and EPERM (older
/// seccomp profiles).
pub fn is_unavailable(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Why it matters: a creator suspended until its child's exec would
    /// stall whoever waits for it behind one slow exec; and the child is a
    /// copy, so its writes stay its own (its maxrss is its own too).
    #[test]
    fn the_creator_goes_on_while_the_child_runs_on_its_own_copy() {
        struct Arg {
            /// The child waits here for a byte from the parent.
            go: RawFd,
            written: std::sync::atomic::AtomicI32,
        }
        extern "C" fn wait_then_write(arg: *mut c_void) -> libc::c_int {
            // SAFETY: `arg` is the `Arg` below (in the child, its copy).
            let arg = unsafe { &*(arg as *const Arg) };
            arg.written.store(1, std::sync::atomic::Ordering::SeqCst);
            let mut byte = 0u8;
            // SAFETY: reads one byte into a live local.
            unsafe { libc::read(arg.go, (&mut byte as *mut u8).cast(), 1) };
            byte.into()
        }
        for method in [Method::Clone3, Method::Clone] {
            let (go_reader, mut go_writer) = std::io::pipe().unwrap();
            let expecting = crate::process::reaper::reaper().expecting();
            let creator = creator().unwrap();
            let arg = Arg {
                go: go_reader.as_raw_fd(),
                written: std::sync::atomic::AtomicI32::new(0),
            };
            let previous = block_all_signals();
            // SAFETY: `wait_then_write` only stores into its copy of `arg`
            // and reads from a pipe.
            let created = unsafe {
                creator.create(
                    method,
                    None,
                    false,
                    wait_then_write,
                    &arg as *const _ as *mut c_void,
                )
            };
            restore_signals(&previous);
            drop(creator);
            let pid = match created {
                Err(error) if method == Method::Clone3 && is_unavailable(&error) => {
                    crate::test_support::skip(
                        "the_child_reports_through_the_shared_page_and_writes_nothing_else_of_ours",
                        &format!("its clone3 half: clone3 is unavailable here ({error})"),
                    );
                    continue;
                }
                created => created.unwrap(),
            };
            // The child is still waiting for us: we are not suspended.
            std::io::Write::write_all(&mut go_writer, &[7]).unwrap();
            let exit = expecting.register(pid).exit.blocking_recv().unwrap();
            assert_eq!(exit.exit_code(), Some(7), "{method}");
            let written = arg.written.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(written, 0, "{method}: a copy");
        }
    }

    #[test]
    fn unavailability_is_enosys_or_eperm() {
        assert!(is_unavailable(&io::Error::from_raw_os_error(libc::ENOSYS)));
        assert!(is_unavailable(&io::Error::from_raw_os_error(libc::EPERM)));
        assert!(!is_unavailable(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!is_unavailable(&io::Error::from_raw_os_error(libc::EINVAL)));
    }
}
