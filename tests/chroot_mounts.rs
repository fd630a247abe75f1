//! Chrooted actions with a `/proc` and a `/dev` (issue 27): `isolation.pid`
//! and `isolation.dev` with `chrootIntoInputRoot`, and `inputRootMounts`,
//! through the real runner.
//!
//! Every action runs in an input root holding only a static busybox (and,
//! for the pty, the host's `/usr` bound read-only through
//! `inputRootMounts`, for Python's `os.openpty`: busybox has no `script`).
//! Each test runs on both ways the runner creates an action's process:
//! through its spawn server, and by the runner itself once the spawn server
//! is killed; `tests/run-all` runs this file once more with
//! `RBE_RUNNER_SPAWN=fallback` (clone instead of clone3).
//!
//! Mounts need CAP_SYS_ADMIN and chroot CAP_SYS_CHROOT: every test needs
//! root and skips loudly without it (failing under CI), as without the
//! static busybox (Debian's `busybox-static`, installed by tests/run-all).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::spawn_paths::SpawnPath;
use common::*;
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::proto::runner::RunRequest;
use serde_json::{json, Value};
use tonic::Code;

/// How long an action may take to get ready (a debug build on a loaded
/// machine).
const SETTLE: Duration = Duration::from_secs(30);

/// Actions run by the test that counts mounts (RBE_CHROOT_ACTIONS to
/// change it).
const DEFAULT_ACTIONS: usize = 1000;

/// Runs in flight at once in that test.
const IN_FLIGHT: usize = 8;

// Each test below runs on both spawn paths (tests/common/spawn_paths.rs).
on_both_spawn_paths!(
    proc_and_dev_work_in_a_busybox_root,
    a_proc_entry_gives_dev_its_proc,
    a_pty_works_and_a_read_only_bind_refuses_writes,
    a_missing_mountpoint_is_invalid_argument_naming_it,
    nothing_is_left_on_the_host_after_1000_actions,
    relative_paths_from_the_working_directory_see_only_the_actions_mounts,
    a_chrooted_action_cannot_climb_out_of_its_root,
);

/// The static busybox, or `None` after a loud skip.
fn static_busybox(test: &str) -> Option<PathBuf> {
    if !running_as_root(test) {
        return None;
    }
    let busybox = PathBuf::from("/bin/busybox");
    let exists_and_runs_alone = std::fs::read(&busybox).is_ok_and(|elf| is_static(&elf));
    if !exists_and_runs_alone {
        skip(
            test,
            "a static busybox is needed at /bin/busybox (apt-get install busybox-static)",
        );
        return None;
    }
    Some(busybox)
}

/// Whether the 64-bit ELF `elf` has no program interpreter (`PT_INTERP`,
/// the dynamic loader it would need in the root).
fn is_static(elf: &[u8]) -> bool {
    let number = |at: usize, size: usize| -> Option<usize> {
        let bytes = elf.get(at..at + size)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0usize, |value, &byte| (value << 8) | usize::from(byte)),
        )
    };
    let headers = || -> Option<bool> {
        if elf.get(..5)? != b"\x7fELF\x02" {
            return None;
        }
        let (offset, size, count) = (number(0x20, 8)?, number(0x36, 2)?, number(0x38, 2)?);
        let mut interpreter = false;
        for index in 0..count {
            interpreter |= number(offset + index * size, 4)? == 3;
        }
        Some(!interpreter)
    };
    headers().unwrap_or(false)
}

/// Starts a runner with `config` whose actions' processes are created by
/// `path`.
async fn start(config: Value, path: SpawnPath) -> TestRunner {
    let runner = TestRunner::start(config);
    if let SpawnPath::Runner = path {
        runner.without_spawn_server(SETTLE).await;
    }
    runner
}

/// `chrootIntoInputRoot` with `extra`.
fn chrooted(extra: Value) -> Value {
    let mut config = json!({ "chrootIntoInputRoot": true });
    merge(&mut config, extra);
    config
}

/// An action directory whose input root holds only `bin/busybox`, its
/// `sh` link, and the empty directories named in `mountpoints`.
fn busybox_root(runner: &TestRunner, busybox: &Path, mountpoints: &[&str]) -> ActionDirectory {
    let action = runner.action();
    let root = action.path.join("root");
    std::fs::create_dir(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    for mountpoint in mountpoints {
        std::fs::create_dir_all(root.join(mountpoint)).unwrap();
    }
    action
}

/// `sh -c script` in `action`, with busybox's applets on PATH.
fn busybox_request(action: &ActionDirectory, script: &str) -> RunRequest {
    action.request(
        vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            format!("export PATH=/bin; /bin/busybox --install -s /bin 2>/dev/null; {script}"),
        ],
        vec![("PATH".into(), "/bin".into())],
    )
}

/// What the action printed on stdout and stderr, for messages.
fn outputs(action: &ActionDirectory) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        std::fs::read_to_string(action.path.join("stdout")).unwrap_or_default(),
        std::fs::read_to_string(action.path.join("stderr")).unwrap_or_default()
    )
}

/// Runs `script` in `action` and returns its stdout; it must exit 0.
async fn run_ok(runner: &TestRunner, action: &ActionDirectory, script: &str) -> String {
    let response = runner
        .client()
        .await
        .run(busybox_request(action, script))
        .await
        .unwrap_or_else(|status| panic!("Run of {script:?}: {status:?}"))
        .into_inner();
    assert_eq!(response.exit_code, 0, "{script}: {}", outputs(action));
    read(&action.path.join("stdout"))
}

/// Why it matters: the first promise. Every `cmd 2>/dev/null`,
/// `/dev/stdin` and `/proc/self` must work in a chroot, with the action's
/// own `/proc` (its pids only) and a `/dev` holding what it should.
async fn proc_and_dev_work_in_a_busybox_root(test: &str, path: SpawnPath) {
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    let runner = start(
        chrooted(json!({ "isolation": { "pid": true, "dev": "minimal" } })),
        path,
    )
    .await;
    let action = busybox_root(&runner, &busybox, &["proc", "dev"]);
    // What bb_worker's inputRootCharacterDeviceNodes would have made,
    // which the action's /dev covers.
    std::fs::write(action.path.join("root/dev/null"), "not the null device").unwrap();
    std::fs::write(action.path.join("root/dev/left-by-bb-worker"), "").unwrap();
    let stdout = run_ok(
        &runner,
        &action,
        "sh -c 'ls /proc/self >/dev/null && echo ok 2>/dev/null </dev/null'; \
         echo through-stdin | cat /dev/stdin; \
         (echo to-stdout > /dev/stdout) | cat; \
         head -c 16 /dev/urandom | wc -c; head -c 3 /dev/zero | wc -c; \
         ls /dev | tr '\\n' ' '; echo; \
         ls -d /proc/[0-9]* | wc -l; \
         cat /proc/sys/kernel/ostype; echo x > /proc/sys/kernel/ostype 2>/dev/null || echo ro",
    )
    .await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..5], ["ok", "through-stdin", "to-stdout", "16", "3"]);
    assert_eq!(
        lines[5].trim(),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "{stdout}"
    );
    // The init, the shell, ls and wc at most: none of the host's.
    let pids: usize = lines[6].trim().parse().unwrap();
    assert!(
        pids <= 5,
        "{pids} processes in the action's /proc: {stdout}"
    );
    assert_eq!(lines[7..], ["Linux", "ro"], "{stdout}");
}

/// Why it matters: without a PID namespace, a `proc` entry (PR #116's
/// shape) is what gives `/dev`'s links their target.
async fn a_proc_entry_gives_dev_its_proc(test: &str, path: SpawnPath) {
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    let runner = start(
        chrooted(json!({
            "isolation": { "dev": "minimal" },
            "inputRootMounts": [{ "mountpoint": "proc", "source": "proc", "filesystemType": "proc" }],
        })),
        path,
    )
    .await;
    let action = busybox_root(&runner, &busybox, &["proc", "dev"]);
    let stdout = run_ok(
        &runner,
        &action,
        "echo in | cat /dev/stdin; test -e /proc/self/status && echo proc; \
         cat /proc/kcore | wc -c",
    )
    .await;
    assert_eq!(stdout, "in\nproc\n0\n", "{}", outputs(&action));
}

/// Why it matters: terminals (tests, `script`, interactive tools) need a
/// devpts of the action's own; a read-only bind must refuse every write,
/// even root's.
async fn a_pty_works_and_a_read_only_bind_refuses_writes(test: &str, path: SpawnPath) {
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    if !Path::new("/usr/bin/python3").exists() {
        skip(test, "/usr/bin/python3 is needed for the pty");
        return;
    }
    let runner = start(
        chrooted(json!({
            "isolation": { "pid": true, "dev": "minimal" },
            "inputRootMounts": [{ "mountpoint": "usr", "source": "/usr", "filesystemType": "bind" }],
        })),
        path,
    )
    .await;
    let action = busybox_root(&runner, &busybox, &["proc", "dev", "usr"]);
    // The host's /usr is merged: /lib and /lib64 lead into it.
    let root = action.path.join("root");
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
    let stdout = run_ok(
        &runner,
        &action,
        "/usr/bin/python3 -c 'import os
leader, follower = os.openpty()
print(os.ttyname(follower))
os.write(leader, b\"typed\\n\")
print(os.read(follower, 64).decode().strip())'; \
         touch /usr/written-by-an-action 2>&1 | grep -c 'Read-only file system'",
    )
    .await;
    // The first pty of a devpts instance of its own.
    assert_eq!(stdout, "/dev/pts/0\ntyped\n1\n", "{}", outputs(&action));
    assert!(!Path::new("/usr/written-by-an-action").exists());
}

/// Why it matters: the runner never creates a mountpoint (the input root
/// may be read-only); a root without one is the request's fault, said
/// with the path and the field.
async fn a_missing_mountpoint_is_invalid_argument_naming_it(test: &str, path: SpawnPath) {
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    let runner = start(
        chrooted(json!({
            "isolation": { "pid": true, "dev": "minimal" },
            "inputRootMounts": [{ "mountpoint": "opt/toolchain", "source": "/usr", "filesystemType": "bind" }],
        })),
        path,
    )
    .await;
    let no_dev = busybox_root(&runner, &busybox, &["proc", "opt/toolchain"]);
    let status = runner
        .client()
        .await
        .run(busybox_request(&no_dev, "true"))
        .await
        .expect_err("no dev in the input root");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("\"dev\"") && status.message().contains("isolation.dev"),
        "{status:?}"
    );
    let no_toolchain = busybox_root(&runner, &busybox, &["proc", "dev", "opt"]);
    let status = runner
        .client()
        .await
        .run(busybox_request(&no_toolchain, "true"))
        .await
        .expect_err("no opt/toolchain in the input root");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("\"opt/toolchain\"")
            && status.message().contains("inputRootMounts[0]"),
        "{status:?}"
    );
    assert!(!no_toolchain.path.join("root/opt/toolchain").exists());
    let complete = busybox_root(&runner, &busybox, &["proc", "dev", "opt/toolchain"]);
    run_ok(&runner, &complete, "test -x /opt/toolchain/bin/env").await;
}

/// Why it matters: every mount lives in the action's mount namespace and
/// must go with it, whatever the action did; a leak would pile up a
/// mount per action on the node.
async fn nothing_is_left_on_the_host_after_1000_actions(test: &str, path: SpawnPath) {
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    let runner = start(
        chrooted(json!({
            "isolation": { "pid": true, "dev": "minimal" },
            "inputRootMounts": [
                { "mountpoint": "usr", "source": "/usr", "filesystemType": "bind" },
                { "mountpoint": "scratch", "source": "scratch", "filesystemType": "tmpfs" },
            ],
        })),
        path,
    )
    .await;
    let actions = std::env::var("RBE_CHROOT_ACTIONS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(DEFAULT_ACTIONS);
    let slots = (0..IN_FLIGHT)
        .map(|_| busybox_root(&runner, &busybox, &["proc", "dev", "usr", "scratch"]))
        .collect();
    let before = mounts_that_matter(runner.dir.path());
    let problems = run_in_slots(&runner, slots, actions, |slot, index| {
        // Some actions try to undo or add mounts themselves.
        let script = match index % 4 {
            0 => "umount -l /proc 2>/dev/null; mount -t tmpfs t /scratch; true",
            _ => "true </dev/null >/dev/null",
        };
        busybox_request(slot, script)
    })
    .await;
    assert!(
        problems.is_empty(),
        "{} of {actions} chrooted Runs failed:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    assert_eq!(
        mounts_that_matter(runner.dir.path()),
        before,
        "mounts left on the host by {actions} chrooted actions"
    );
}

/// The host's mounts (`/proc/self/mountinfo`) an action's mounts could
/// leave: anything in the runner's directory, and every procfs, devpts
/// and mount of the host's `/usr` or `/dev` nodes, counted by mountpoint,
/// type and root.
fn mounts_that_matter(runner_dir: &Path) -> BTreeMap<(String, String, String), usize> {
    let runner_dir = runner_dir.to_string_lossy().into_owned();
    host_mounts_where(|point, fstype, root| {
        point.starts_with(&runner_dir)
            || ["proc", "devpts"].contains(&fstype)
            || root.starts_with("/usr")
            || ["/null", "/zero", "/full", "/random", "/urandom", "/tty"].contains(&root)
    })
}

/// Why it matters: the runner opens the working directory in its own
/// mount namespace; left there, `../../..` from it walked the runner's
/// mounts, to the host's `/tmp` and the host's processes in `/proc`,
/// past a private `/tmp` and a PID namespace (no chroot here).
async fn relative_paths_from_the_working_directory_see_only_the_actions_mounts(
    test: &str,
    path: SpawnPath,
) {
    if !running_as_root(test) {
        return;
    }
    let marker = std::env::temp_dir().join(format!("host-only-{}", std::process::id()));
    std::fs::write(&marker, "").unwrap();
    let runner = start(
        json!({ "isolation": { "pid": true, "tmp": "private" } }),
        path,
    )
    .await;
    let action = runner.action();
    let up = "../".repeat(Path::new(&action.path).components().count() + 4);
    let name = marker.file_name().unwrap().to_string_lossy().into_owned();
    let script = format!(
        "ls -A {up}tmp | grep -c '^{name}$'; ls {up}proc | grep -c '^[0-9]' ; \
         ls /proc | grep -c '^[0-9]'"
    );
    let response = runner
        .client()
        .await
        .run(shell_request(&action, &script))
        .await
        .unwrap_or_else(|status| panic!("{status:?}"))
        .into_inner();
    let stdout = read(&action.path.join("stdout"));
    let _ = std::fs::remove_file(&marker);
    let counts: Vec<u32> = stdout
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect();
    // Not the host's file; the namespace's handful of processes either way
    // (init, sh, and the pipeline's ls and grep, which sh starts one
    // after the other: each ls may or may not see its grep), not the
    // host's (over a hundred through the escape).
    assert_eq!(counts.first(), Some(&0), "{}", outputs(&action));
    let (relative, absolute) = (counts.get(1).copied(), counts.get(2).copied());
    assert!(
        relative.zip(absolute).is_some_and(|(relative, absolute)| {
            relative.abs_diff(absolute) <= 1 && (1..=6).contains(&relative)
        }),
        "{}",
        outputs(&action)
    );
    assert_eq!(response.exit_code, 0, "{}", outputs(&action));
}

/// Why it matters: a chroot whose working directory stayed in the
/// runner's mount namespace would let `..` climb past the root.
async fn a_chrooted_action_cannot_climb_out_of_its_root(test: &str, path: SpawnPath) {
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    let runner = start(chrooted(json!({ "isolation": { "pid": true } })), path).await;
    let action = busybox_root(&runner, &busybox, &["proc", "work/deep"]);
    let mut request = busybox_request(
        &action,
        "cd ../../../../../../../..; ls -A | tr '\\n' ' '; echo; pwd -P",
    );
    request.working_directory = "work/deep".into();
    let response = runner
        .client()
        .await
        .run(request)
        .await
        .unwrap_or_else(|status| panic!("{status:?}"))
        .into_inner();
    assert_eq!(response.exit_code, 0, "{}", outputs(&action));
    assert_eq!(
        read(&action.path.join("stdout")),
        "bin proc work \n/\n",
        "{}",
        outputs(&action)
    );
}

/// Why it matters: a mount the kernel refuses (an unknown
/// `filesystemType`, a bind source that is missing) used to fail every Run
/// while the runner said it was ready; the startup probe now makes the
/// input root's mounts too, and names the entry it refuses.
#[test]
fn a_mount_the_kernel_refuses_stops_startup_naming_its_entry() {
    if !running_as_root("a_mount_the_kernel_refuses_stops_startup_naming_its_entry") {
        return;
    }
    let said = startup_refusal(
        chrooted(json!({ "inputRootMounts": [
            { "mountpoint": "opt", "source": "/usr", "filesystemType": "bind" },
            { "mountpoint": "data", "source": "none", "filesystemType": "rbe-no-such-filesystem" },
        ] })),
        &[],
    );
    assert!(said.contains("inputRootMounts[1]: "), "{said}");
    assert!(said.contains("No such device"), "{said}");
    let gone = tempfile::tempdir().unwrap();
    let missing = gone.path().join("missing");
    let said = startup_refusal(
        chrooted(json!({ "isolation": { "pid": true }, "inputRootMounts": [
            { "mountpoint": "opt/toolchain", "source": missing, "filesystemType": "bind" },
        ] })),
        &[],
    );
    assert!(said.contains("inputRootMounts[0]: "), "{said}");
    assert!(said.contains("No such file or directory"), "{said}");
}
