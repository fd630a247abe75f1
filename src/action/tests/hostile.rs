//! Hostile and unlucky requests: the right code, nothing left behind.

use super::*;

/// Subdirectories of a directory (child cgroups, in a cgroup), sorted.
fn entries(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(directory)
        .unwrap_or_else(|err| panic!("{}: {err}", directory.display()))
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_exec_refused_with_e2big_is_invalid_argument_stating_the_size() {
    // Why it matters: arguments too large to execute are the request's
    // fault; INTERNAL would make Bazel retry it, in vain, elsewhere.
    let fixture = Fixture::process_groups(vec![FakeAction {
        cgroup_files: vec![],
        held: false,
        ending: Ending::CannotExecute(libc::E2BIG),
    }]);
    let result = fixture.run().await;
    let Err(RunnerError::InvalidArgument(message)) = &result else {
        panic!("{result:?}");
    };
    // "/bin/true\0" twice (the program's path and argv[0]), "--flag\0",
    // 2 pointers and the 2 terminating null pointers: 27 + 32.
    assert!(message.contains("59 bytes (2 strings)"), "{message}");
    assert!(
        message.contains(&crate::exec_limit::current_exec_limit().to_string()),
        "{message}"
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_node_out_of_descriptors_before_exec_is_unavailable() {
    // Why it matters: EMFILE or ENFILE is the node's trouble; another
    // worker can run the same action.
    for errno in [libc::EMFILE, libc::ENFILE] {
        let fixture = Fixture::process_groups(vec![FakeAction {
            cgroup_files: vec![],
            held: false,
            ending: Ending::CannotStart(SpawnStep::Setup, errno),
        }]);
        let result = fixture.run().await;
        assert!(
            matches!(&result, Err(RunnerError::Unavailable { .. })),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn a_run_that_does_not_start_leaves_no_output_files() {
    // Why it matters: a Run that failed must not leave files in the build
    // directory that the next one, or bb_worker's upload, trips over.
    let fixture = Fixture::process_groups(vec![FakeAction {
        cgroup_files: vec![],
        held: false,
        ending: Ending::CannotExecute(libc::ENOENT),
    }]);
    let before = fixture.action_files();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(_))),
        "{result:?}"
    );
    assert_eq!(fixture.action_files(), before);

    // stdout created, then stderr refused: stdout goes too.
    fs::write(fixture.build.path().join("action/taken"), "keep me").unwrap();
    let request = RunRequest {
        stderr_path: "action/taken".into(),
        ..fixture.request()
    };
    let result = fixture.runner.run(request, CallContext::default()).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message)) if message.contains("stderr_path")),
        "{result:?}"
    );
    let mut expected = before.clone();
    expected.push("taken".into());
    expected.sort();
    assert_eq!(fixture.action_files(), expected);
    assert_eq!(
        fs::read_to_string(fixture.build.path().join("action/taken")).unwrap(),
        "keep me"
    );
}

#[tokio::test]
async fn environment_keys_that_would_reach_the_program_as_another_variable_are_refused() {
    // Why it matters: `A=B` would reach the program as the variable `A`
    // with the value `B=…`: not what the request asked for.
    let fixture = Fixture::process_groups(vec![]);
    let cases: [(&str, &str, &str); 4] = [
        ("A=B", "x", "\"A=B\""),
        ("", "x", "\"\""),
        ("NUL\0KEY", "x", "NUL"),
        ("NULVALUE", "a\0b", "\"NULVALUE\""),
    ];
    for (key, value, named) in cases {
        let mut request = fixture.request();
        request
            .environment_variables
            .insert(key.to_string(), value.to_string());
        let result = fixture.runner.run(request, CallContext::default()).await;
        assert!(
            matches!(&result, Err(RunnerError::InvalidArgument(message))
                if message.contains("environment_variables") && message.contains(named)),
            "{key:?}: {result:?}"
        );
    }
    let mut request = fixture.request();
    request.arguments.push("nul\0byte".into());
    let result = fixture.runner.run(request, CallContext::default()).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message)) if message.contains("arguments[2]")),
        "{result:?}"
    );
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), 0);
    assert!(fixture.observer.calls().is_empty(), "not actions");
}

#[tokio::test]
async fn an_action_cgroup_nothing_can_join_is_removed() {
    // Why it matters: the cgroup is made before the child joins it, which
    // can fail (out of descriptors, a cgroup the kernel refuses); such
    // cgroups piled up under actions/ until the next start. A directory
    // stands in for the cgroup tree: mkdir works, but there is no
    // cgroup.procs to join through (the clone path's child writes it).
    let tree = tempfile::tempdir().unwrap();
    let actions = tree.path().join(ACTIONS_DIRECTORY);
    fs::create_dir(&actions).unwrap();
    let real = Arc::new(ProcessSpawner {
        method: SpawnMethod::Clone,
        server: None,
        stuck: None,
    });
    let fixture = Fixture::action_cgroups_spawning(tree.path(), false, vec![], Some(real));
    let before = fixture.action_files();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Internal(message)) if message.contains("cgroup")),
        "{result:?}"
    );
    assert!(entries(&actions).is_empty(), "{:?}", entries(&actions));
    assert_eq!(fixture.dirty_reason(), None);
    assert_eq!(fixture.action_files(), before, "outputs left behind");
}

/// A parent cgroup of this test's own on the machine's cgroup2 mount,
/// with an `actions` child, removed with everything in it on drop.
struct RealCgroupTree {
    parent: PathBuf,
}

impl RealCgroupTree {
    /// The tree, or `None` with `test` skipped, saying why this machine
    /// cannot have one.
    fn create(test: &str) -> Option<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let problem = if nix::unistd::geteuid().is_root() {
            match locate_own_cgroup(
                Path::new(DEFAULT_PROC_SELF_CGROUP),
                Path::new(DEFAULT_PROC_SELF_MOUNTINFO),
            ) {
                Ok(own) => {
                    let parent = mount_point_of(&own).join(format!(
                        "rbe-runner-unit-{}-{}",
                        std::process::id(),
                        COUNTER.fetch_add(1, Ordering::SeqCst)
                    ));
                    match fs::create_dir(&parent)
                        .and_then(|()| fs::create_dir(parent.join(ACTIONS_DIRECTORY)))
                    {
                        Ok(()) => return Some(RealCgroupTree { parent }),
                        Err(err) => {
                            let _ = kill_and_remove(&parent, PATIENCE);
                            format!("cannot create {}: {err}", parent.display())
                        }
                    }
                }
                Err(err) => format!("no cgroup v2 here: {err}"),
            }
        } else {
            "needs root".to_string()
        };
        crate::test_support::skip(test, &problem);
        None
    }

    fn actions(&self) -> Vec<String> {
        entries(&self.parent.join(ACTIONS_DIRECTORY))
    }
}

impl Drop for RealCgroupTree {
    fn drop(&mut self) {
        if let Err(err) = kill_and_remove(&self.parent, PATIENCE) {
            eprintln!("cannot remove the test cgroup: {err}");
        }
    }
}

#[tokio::test]
async fn action_cgroups_are_removed_whichever_step_fails_after_they_were_made() {
    // Why it matters: every failure after the cgroup exists (measuring it,
    // a step before exec, the exec itself) must remove it, or cgroups pile
    // up under actions/ and the runner's outputs stay behind.
    let Some(tree) = RealCgroupTree::create(
        "action_cgroups_are_removed_whichever_step_fails_after_they_were_made",
    ) else {
        return;
    };
    let failures = [
        Ending::CannotStart(SpawnStep::Setup, libc::EMFILE),
        Ending::CannotStart(SpawnStep::JoinCgroup, libc::EBUSY),
        Ending::CannotExecute(libc::ENOENT),
        Ending::CannotExecute(libc::E2BIG),
    ];
    let script = failures
        .iter()
        .map(|&ending| FakeAction {
            cgroup_files: vec![],
            held: false,
            ending,
        })
        .collect();
    let fixture = Fixture::action_cgroups(&tree.parent, false, script);
    let before = fixture.action_files();
    for ending in failures {
        let result = fixture.run().await;
        assert!(result.is_err(), "{ending:?}: {result:?}");
        assert_eq!(tree.actions(), Vec::<String>::new(), "{ending:?}");
        assert_eq!(fixture.action_files(), before, "{ending:?}");
    }
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), failures.len());
    assert_eq!(fixture.dirty_reason(), None);

    // Sampled, on a tree without the memory controller: reading the new
    // cgroup's counters fails after it was made.
    let fixture = Fixture::action_cgroups(&tree.parent, true, vec![]);
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Internal(_))),
        "{result:?}"
    );
    assert_eq!(tree.actions(), Vec::<String>::new());
    assert_eq!(fixture.dirty_reason(), None);
}
