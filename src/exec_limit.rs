//! The kernel's limit on what `execve` passes to a new program, as
//! `fs/exec.c` computes it, so that a request that cannot be executed is
//! refused as the request's fault, stating its size and the limit, before
//! it costs memory (see [`crate::request_decoding`]) or a process.
//!
//! The kernel copies the program's path, every argument and every
//! `KEY=VALUE` environment entry, each with its terminating NUL, onto the
//! new program's stack, plus a pointer to each. Their total may not exceed
//! a quarter of the stack size limit (`RLIMIT_STACK`, inherited from the
//! runner), capped at three quarters of `_STK_LIM` (8 MiB), but is at least
//! `ARG_MAX` (128 KiB) however small the stack limit; and no single string
//! may exceed `MAX_ARG_STRLEN` (32 pages) including its NUL.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest single argument or environment entry, including its
/// terminating NUL (`MAX_ARG_STRLEN`: 32 pages of 4 KiB).
pub const MAX_ARG_STRLEN: u64 = 32 * 4096;

/// The limit however small `RLIMIT_STACK` is (`ARG_MAX`: 32 pages).
const ARG_MAX: u64 = 32 * 4096;

/// The kernel's default stack limit (`_STK_LIM`); the limit for exec is
/// capped at three quarters of it, however large `RLIMIT_STACK` is.
const STK_LIM: u64 = 8 * 1024 * 1024;

/// Size of a pointer in the new program's argv and envp arrays.
const POINTER_SIZE: u64 = 8;

/// The limit on the arguments and environment of a program started with
/// `stack_limit` as its `RLIMIT_STACK` soft limit (`RLIM_INFINITY`, the
/// largest value, is capped like any other).
pub fn exec_limit(stack_limit: u64) -> u64 {
    (STK_LIM / 4 * 3).min(stack_limit / 4).max(ARG_MAX)
}

/// The limit for programs this process starts: children inherit its
/// `RLIMIT_STACK`. If it cannot be read, the kernel's default stack limit.
///
/// Read from the kernel once and remembered: every request and every
/// action needs it (a `prlimit64` each, twice per action), and only
/// [`refresh_current_exec_limit`] changes it, called where the runner sets
/// its own limits at startup.
pub fn current_exec_limit() -> u64 {
    match CURRENT_EXEC_LIMIT.load(Ordering::Relaxed) {
        0 => refresh_current_exec_limit(),
        limit => limit,
    }
}

/// Reads `RLIMIT_STACK` again and remembers the limit it gives: call it
/// after changing this process's stack limit. Returns the limit.
pub fn refresh_current_exec_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively
    // borrowed `limit` and reads nothing else.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) };
    let computed = if result == 0 {
        exec_limit(limit.rlim_cur)
    } else {
        exec_limit(STK_LIM)
    };
    CURRENT_EXEC_LIMIT.store(computed, Ordering::Relaxed);
    computed
}

/// [`current_exec_limit`] once read (never 0: the limit is at least
/// [`ARG_MAX`]); 0 before.
static CURRENT_EXEC_LIMIT: AtomicU64 = AtomicU64::new(0);

/// What an argv and envp take on the new program's stack: every string
/// with its NUL, and a pointer to each plus the two terminating null
/// pointers. Counted as they arrive, so that a request can be measured
/// without building its strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecSize {
    /// Bytes of the strings, NULs included.
    strings: u64,
    /// Number of strings.
    count: u64,
}

/// Why a program cannot be executed with some argv and envp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecLimitError {
    /// One string is longer than the kernel copies.
    #[error(
        "{what} is {bytes} bytes long with its terminating NUL; the kernel passes at most \
         {MAX_ARG_STRLEN} bytes per argument or environment entry (MAX_ARG_STRLEN)"
    )]
    StringTooLong {
        /// Which string, e.g. `arguments[3]`.
        what: String,
        /// Its length including the NUL.
        bytes: u64,
    },
    /// All of them together take more than the limit.
    #[error(
        "the arguments and environment take {bytes} bytes on the new program's stack \
         ({count} strings, each with its NUL and an 8-byte pointer); the kernel allows at most \
         {limit} bytes (a quarter of the stack size limit RLIMIT_STACK, at most 6 MiB, \
         at least 128 KiB)"
    )]
    TooLarge {
        /// What they take.
        bytes: u64,
        /// How many strings.
        count: u64,
        /// The limit.
        limit: u64,
    },
}

impl ExecSize {
    /// The size of `arguments` and `environment` (as `KEY=VALUE`).
    pub fn of<'a>(
        arguments: &[String],
        environment: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, ExecLimitError> {
        let mut size = ExecSize::default();
        for (index, argument) in arguments.iter().enumerate() {
            size.add_argument(index, argument.len())?;
        }
        for (key, value) in environment {
            size.add_environment_variable(|| key.clone(), key.len(), value.len())?;
        }
        Ok(size)
    }

    /// Counts argument `index`, `length` bytes long without its NUL.
    pub fn add_argument(&mut self, index: usize, length: usize) -> Result<(), ExecLimitError> {
        self.add_string(|| format!("arguments[{index}]"), length as u64 + 1)
    }

    /// Counts the environment entry `KEY=VALUE`; `key` names it in errors.
    pub fn add_environment_variable(
        &mut self,
        key: impl FnOnce() -> String,
        key_length: usize,
        value_length: usize,
    ) -> Result<(), ExecLimitError> {
        let bytes = key_length as u64 + 1 + value_length as u64 + 1;
        self.add_string(|| format!("environment variable {:?}", key()), bytes)
    }

    /// Counts the program's path, which the kernel copies as well.
    pub fn add_program(&mut self, length: usize) {
        self.strings = self.strings.saturating_add(length as u64 + 1);
    }

    fn add_string(
        &mut self,
        what: impl FnOnce() -> String,
        bytes: u64,
    ) -> Result<(), ExecLimitError> {
        if bytes > MAX_ARG_STRLEN {
            return Err(ExecLimitError::StringTooLong {
                what: what(),
                bytes,
            });
        }
        self.strings = self.strings.saturating_add(bytes);
        self.count += 1;
        Ok(())
    }

    /// Bytes taken on the new program's stack.
    pub fn bytes(&self) -> u64 {
        self.strings
            .saturating_add(POINTER_SIZE.saturating_mul(self.count + 2))
    }

    /// Whether this fits in `limit`.
    pub fn check(&self, limit: u64) -> Result<(), ExecLimitError> {
        if self.bytes() > limit {
            return Err(ExecLimitError::TooLarge {
                bytes: self.bytes(),
                count: self.count,
                limit,
            });
        }
        Ok(())
    }
}

impl fmt::Display for ExecSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes ({} strings)", self.bytes(), self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the limit must be the kernel's, or requests that
    /// would run are refused (or ones that cannot run cost memory).
    #[test]
    fn the_limit_follows_the_kernels_rule() {
        let kib = 1024;
        let mib = 1024 * kib;
        // The default 8 MiB stack: a quarter.
        assert_eq!(exec_limit(8 * mib), 2 * mib);
        // A small stack still allows ARG_MAX.
        assert_eq!(exec_limit(64 * kib), 128 * kib);
        assert_eq!(exec_limit(0), 128 * kib);
        // A large or unlimited stack is capped at 3/4 of _STK_LIM.
        assert_eq!(exec_limit(64 * mib), 6 * mib);
        assert_eq!(exec_limit(u64::MAX), 6 * mib);
    }

    #[test]
    fn strings_count_with_their_nul_and_a_pointer() {
        let arguments = vec!["echo".to_string(), "hi".to_string()];
        let environment = [("PATH".to_string(), "/bin".to_string())];
        let size = ExecSize::of(&arguments, environment.iter().map(|(k, v)| (k, v))).unwrap();
        // "echo\0" "hi\0" "PATH=/bin\0" + 8 * (3 + 2).
        assert_eq!(size.bytes(), 5 + 3 + 10 + 40);
        assert!(size.check(size.bytes()).is_ok());
        let err = size.check(size.bytes() - 1).unwrap_err();
        assert!(err.to_string().contains("58 bytes"), "{err}");
    }

    #[test]
    fn a_single_string_may_not_exceed_max_arg_strlen_with_its_nul() {
        let mut size = ExecSize::default();
        size.add_argument(0, 131_071).unwrap();
        let err = size.add_argument(1, 131_072).unwrap_err();
        assert_eq!(
            err,
            ExecLimitError::StringTooLong {
                what: "arguments[1]".into(),
                bytes: 131_073
            }
        );
        let err = size
            .add_environment_variable(|| "HUGE".into(), 4, 131_068)
            .unwrap_err();
        assert!(err.to_string().contains("\"HUGE\""), "{err}");
    }

    #[test]
    fn the_current_limit_is_within_the_kernels_bounds() {
        let limit = current_exec_limit();
        assert!((128 * 1024..=6 * 1024 * 1024).contains(&limit), "{limit}");
    }
}
