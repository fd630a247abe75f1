//! Creating a child that shares the runner's memory until it executes its
//! program, the way `posix_spawn` does, instead of `fork()`.
//!
//! `fork()` of a multi-threaded runner copies its page tables and then makes
//! every page the runner writes fault once (copy on write); a child created
//! with `CLONE_VM | CLONE_VFORK` copies nothing. The calling thread is
//! suspended until the child has called `execve` (or exited), so the child
//! may use the parent's memory: it runs on a stack of its own, and between
//! creation and exec it may only make raw, async-signal-safe system calls
//! and write nothing but its own failure report (see [`super::spawn`]).
//!
//! Two ways to create it, chosen once at startup ([`Method`]):
//! - `clone3`, which can also place the child into its cgroup atomically
//!   (`CLONE_INTO_CGROUP`: nothing of the action ever runs outside it, and
//!   no write to `cgroup.procs` is needed). glibc 2.36 has no `clone3`
//!   wrapper, and a raw system call that switches stacks cannot return into
//!   Rust code, so the child's first instructions are a few lines of
//!   assembly (x86_64 only; elsewhere `clone3` is reported unavailable).
//! - `clone`, through glibc's wrapper: the same sharing, but the child must
//!   join its cgroup by writing `cgroup.procs` itself. Container runtimes'
//!   default seccomp profiles answer `clone3` with ENOSYS (older ones with
//!   EPERM) yet allow this one.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;

/// How children are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// `clone3(CLONE_VM | CLONE_VFORK [| CLONE_INTO_CGROUP])`.
    Clone3,
    /// glibc's `clone(CLONE_VM | CLONE_VFORK)`; the child joins its cgroup
    /// itself. Available wherever the runner can start processes at all.
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

/// The code of a child started by [`create`]: called on the child's own
/// stack with `arg`; its return value becomes the child's exit status.
pub type ChildMain = extern "C" fn(arg: *mut c_void) -> libc::c_int;

/// Size of the child's stack. It holds the frames of the child's setup
/// (a few hundred bytes of locals, glibc's thin system call wrappers);
/// `posix_spawn` gets by with 32 KiB plus the argument vectors, which our
/// child does not copy.
const STACK_SIZE: usize = 64 * 1024;

/// The one stack children run on. Creation is serialised by this lock: the
/// creating thread holds it until the child has exec'd or exited, after
/// which nothing uses the stack any more.
static STACK: Mutex<Option<Stack>> = Mutex::new(None);

/// An anonymous mapping with a guard page below it.
struct Stack {
    base: *mut c_void,
    length: usize,
}

// SAFETY: the mapping is process-wide memory; the pointer is only used
// while `STACK`'s lock is held.
unsafe impl Send for Stack {}

impl Stack {
    fn map() -> io::Result<Stack> {
        let guard = page_size();
        let length = STACK_SIZE + guard;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched. The result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // An overflow faults instead of writing below the stack.
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            let error = io::Error::last_os_error();
            // SAFETY: unmapping exactly the mapping made above.
            unsafe { libc::munmap(base, length) };
            return Err(error);
        }
        Ok(Stack { base, length })
    }

    /// The lowest usable address (above the guard page).
    fn low(&self) -> usize {
        self.base as usize + page_size()
    }

    /// The initial stack pointer: the top, 16-byte aligned as both ABIs
    /// require (page-aligned here).
    fn top(&self) -> usize {
        self.base as usize + self.length
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Creates a child running `main(arg)` with `method`, in the cgroup whose
/// directory is open as `cgroup` (clone3 only; with [`Method::Clone`] the
/// child must join by itself). Returns its pid once it has exec'd or
/// exited. Every signal should be blocked in the calling thread (see
/// [`block_all_signals`]) so that no handler of the runner runs in the
/// child before it has reset them.
///
/// # Safety
/// `main` runs in the runner's address space on a separate stack while the
/// calling thread is suspended: it must make only async-signal-safe calls,
/// never allocate, take locks, unwind or return into Rust frames of the
/// parent, and `arg` must stay valid until this function returns.
pub unsafe fn create(
    method: Method,
    cgroup: Option<RawFd>,
    main: ChildMain,
    arg: *mut c_void,
) -> io::Result<i32> {
    let mut stack = crate::sync::lock_unpoisoned(&STACK);
    if stack.is_none() {
        *stack = Some(Stack::map()?);
    }
    let Some(stack) = stack.as_ref() else {
        unreachable!("mapped just above");
    };
    let pid = match method {
        // SAFETY: forwarded from this function's contract; the stack is
        // ours while the lock is held.
        Method::Clone3 => unsafe { clone3_vfork(stack, cgroup, main, arg) },
        // SAFETY: as above. glibc's wrapper takes the top of the stack.
        Method::Clone => unsafe {
            libc::clone(
                main,
                stack.top() as *mut c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg,
            ) as isize
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
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    stack: &Stack,
    cgroup: Option<RawFd>,
    main: ChildMain,
    arg: *mut c_void,
) -> isize {
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.low() as u64,
        stack_size: (stack.top() - stack.low()) as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    let result: isize;
    // SAFETY: the system call creates a child that shares our memory and
    // starts on `stack` (the kernel sets its stack pointer to the top).
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
            in("rdi") &args as *const CloneArgs,
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
unsafe fn clone3_vfork(
    _stack: &Stack,
    _cgroup: Option<RawFd>,
    _main: ChildMain,
    _arg: *mut c_void,
) -> isize {
    -(libc::ENOSYS as isize)
}

/// Blocks every signal in the calling thread; the returned mask restores
/// it. A child sharing our memory must not run one of the runner's
/// handlers (which would write the runner's state) before it has reset
/// them to the default.
pub fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only
    // write the sets passed, which are valid locals.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        previous
    }
}

/// Restores a mask returned by [`block_all_signals`].
pub fn restore_signals(previous: &libc::sigset_t) {
    // SAFETY: `previous` is a valid set; only the thread's mask changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, previous, std::ptr::null_mut());
    }
}

/// Whether `method` can create children here, tried with a child that
/// exits at once (placed into the cgroup open as `cgroup` when given, as
/// actions will be). The child is reaped before this returns; the caller
/// must keep the reaper from reaping it first (see
/// [`super::reaper::Reaper::holding_children`]).
pub fn probe(method: Method, cgroup: Option<RawFd>) -> io::Result<()> {
    extern "C" fn exit_at_once(_: *mut c_void) -> libc::c_int {
        0
    }
    let previous = block_all_signals();
    // SAFETY: the child only returns 0; nothing is passed to it.
    let created = unsafe { create(method, cgroup, exit_at_once, std::ptr::null_mut()) };
    restore_signals(&previous);
    let pid = created?;
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(())
}

/// Whether an error of [`create`] means "this method is not available
/// here" rather than a failure of this one child: ENOSYS (no such system
/// call, or a seccomp profile's default answer) and EPERM (older seccomp
/// profiles).
pub fn is_unavailable(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
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
}

impl Method {
    /// Chooses how to create children from `setting` (the value of
    /// [`SPAWN_ENVIRONMENT_VARIABLE`]) by trying clone3 once, placing the
    /// test child into `cgroup` (a directory where the runner's children
    /// may be placed, such as the runner's own cgroup) when actions will
    /// be placed into cgroups: a kernel older than 5.7 has clone3 without
    /// `CLONE_INTO_CGROUP`.
    pub fn choose(setting: Option<&str>, cgroup: Option<&Path>) -> Result<Choice, ChoiceError> {
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
                    let _children = super::reaper::reaper().holding_children();
                    probe(Method::Clone3, Some(directory.as_raw_fd()))
                        .map_err(|error| format!("clone3 into {}: {error}", path.display()))
                }),
            None => {
                let _children = super::reaper::reaper().holding_children();
                probe(Method::Clone3, None).map_err(|error| format!("clone3: {error}"))
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// Why it matters: the child shares our memory, so what it writes
    /// (its failure report, in the real spawn) is what the parent reads,
    /// and the parent resumes only after the child is done.
    #[test]
    fn the_child_runs_in_our_memory_before_the_parent_resumes() {
        extern "C" fn write_pid(arg: *mut c_void) -> libc::c_int {
            // SAFETY: `arg` is the AtomicI32 below, alive until `create`
            // returns; getpid is async-signal-safe.
            let slot = unsafe { &*(arg as *const AtomicI32) };
            slot.store(unsafe { libc::getpid() }, Ordering::SeqCst);
            7
        }
        for method in [Method::Clone3, Method::Clone] {
            let _children = crate::process::reaper::reaper().holding_children();
            let slot = AtomicI32::new(0);
            let previous = block_all_signals();
            // SAFETY: `write_pid` only stores into `slot`.
            let created =
                unsafe { create(method, None, write_pid, &slot as *const _ as *mut c_void) };
            restore_signals(&previous);
            let pid = match created {
                Err(error) if method == Method::Clone3 && is_unavailable(&error) => {
                    eprintln!("SKIPPED clone3: unavailable here ({error})");
                    continue;
                }
                created => created.unwrap(),
            };
            assert_eq!(slot.load(Ordering::SeqCst), pid, "{method}");
            let mut status = 0;
            // SAFETY: our own child; `status` is a valid local.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "{method}: {status:#x}");
            assert_eq!(libc::WEXITSTATUS(status), 7, "{method}");
        }
    }

    /// Why it matters: CI forces the fallback with the variable to test
    /// both paths, and a typo must not silently pick one.
    #[test]
    fn the_setting_forces_or_requires_a_method_and_typos_are_refused() {
        let forced = Method::choose(Some("fallback"), None).unwrap();
        assert_eq!(forced.method, Method::Clone);
        assert!(
            forced.reason.contains("RBE_RUNNER_SPAWN=fallback"),
            "{forced:?}"
        );
        let error = Method::choose(Some("clone4"), None).unwrap_err();
        assert!(
            error.to_string().contains("RBE_RUNNER_SPAWN=\"clone4\""),
            "{error}"
        );
        match Method::choose(Some("clone3"), None) {
            Ok(choice) => assert_eq!(choice.method, Method::Clone3),
            Err(error) => assert!(matches!(error, ChoiceError::Clone3Required(_)), "{error}"),
        }
    }

    #[test]
    fn a_cgroup_that_cannot_be_opened_falls_back_with_the_reason() {
        let choice = Method::choose(None, Some(Path::new("/nonexistent/cgroup"))).unwrap();
        assert_eq!(choice.method, Method::Clone);
        assert!(choice.reason.contains("/nonexistent/cgroup"), "{choice:?}");
    }

    #[test]
    fn unavailability_is_enosys_or_eperm() {
        assert!(is_unavailable(&io::Error::from_raw_os_error(libc::ENOSYS)));
        assert!(is_unavailable(&io::Error::from_raw_os_error(libc::EPERM)));
        assert!(!is_unavailable(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!is_unavailable(&io::Error::from_raw_os_error(libc::EINVAL)));
    }
}
