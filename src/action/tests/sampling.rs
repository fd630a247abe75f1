//! Sampling the shared cgroup (ported from the sampling decorator's tests).

use super::*;

#[tokio::test]
async fn deltas_and_peak_are_appended_after_the_posix_usage() {
    // Why it matters: bb_worker and Bazel read the usages by type, but
    // tools that take the first one expect POSIXResourceUsage, as from a
    // runner without sampling.
    let fixture = Fixture::shared(
        [1, 2, 3, 4, 5, 6],
        vec![FakeAction::exits(
            0,
            vec![
                events([1, 5, 3, 4, 5, 6]),
                ("cpu.pressure", pressure_text(2_501_000, 0)),
                ("memory.pressure", pressure_text(1_010, 505)),
                ("memory.peak", "52428800\n".into()),
            ],
        )],
    );
    let response = fixture.run().await.unwrap();
    assert_eq!(response.exit_code, 0);
    assert_eq!(response.resource_usage.len(), 2);
    assert_eq!(
        posix(&response.resource_usage[0]).maximum_resident_set_size,
        7 << 20
    );
    let usage = cgroup_usage(&response.resource_usage[1]);
    assert_eq!(
        usage,
        CgroupResourceUsage {
            memory_events_high: 3,
            memory_peak: 52_428_800,
            cpu_pressure_some_total: seconds(2, 500_000_000),
            cpu_pressure_full_total: seconds(0, 0),
            memory_pressure_some_total: seconds(0, 1_000_000),
            memory_pressure_full_total: seconds(0, 500_000),
            io_pressure_some_total: seconds(0, 0),
            io_pressure_full_total: seconds(0, 0),
            ..CgroupResourceUsage::default()
        }
    );
    assert!(!fixture.diagnosis_path().exists());
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn an_action_reaching_its_own_limit_gets_its_normal_response() {
    // Why it matters: an action that needs more memory than it is given
    // must fail the build, with the evidence, not be retried forever.
    let fixture = Fixture::shared(
        [0; 6],
        vec![FakeAction::killed(vec![
            events([0, 0, 7, 1, 1, 0]),
            ("memory.peak", "268435456\n".into()),
        ])],
    );
    let response = fixture.run().await.expect("a normal response");
    assert_eq!(response.exit_code, -1);
    assert_eq!(
        posix(&response.resource_usage[0]).termination_signal,
        "KILL"
    );
    let usage = cgroup_usage(&response.resource_usage[1]);
    assert_eq!(usage.memory_events_oom, 1);
    assert_eq!(usage.memory_events_oom_kill, 1);
    assert_eq!(usage.memory_events_max, 7);
    assert_eq!(usage.memory_peak, 256 << 20);
    // Every OOM kill is explained in the server logs, this one as the
    // action's own.
    let diagnosis = std::fs::read_to_string(fixture.diagnosis_path()).expect("a diagnosis");
    assert!(
        diagnosis.contains("reached its own memory limit"),
        "{diagnosis}"
    );
    assert_eq!(
        fixture.observer.codes(),
        [(fixture.id(1), "Signal".into(), Code::Ok)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn an_oom_kill_without_an_own_oom_is_unavailable_with_the_evidence() {
    // Why it matters: the node ran out of memory, not the action; an
    // UNAVAILABLE is retried, and the usages and the diagnosis let an
    // operator see why.
    let fixture = Fixture::shared(
        [0, 0, 0, 2, 2, 0],
        vec![FakeAction::killed(vec![
            events([0, 0, 0, 2, 3, 0]),
            ("memory.peak", "104857600\n".into()),
        ])],
    );
    let Err(RunnerError::Unavailable { message, details }) = fixture.run().await else {
        panic!("expected UNAVAILABLE");
    };
    assert!(message.starts_with(FOREIGN_OOM_KILL_MESSAGE), "{message}");
    assert!(message.contains("oom_kill 1, oom 0"), "{message}");
    assert!(message.contains("104857600 bytes"), "{message}");
    assert_eq!(details.len(), 2);
    assert_eq!(posix(&details[0]).termination_signal, "KILL");
    let usage = cgroup_usage(&details[1]);
    assert_eq!(
        (usage.memory_events_oom, usage.memory_events_oom_kill),
        (0, 1)
    );
    assert_eq!(usage.memory_peak, 100 << 20);

    let diagnosis = fs::read_to_string(fixture.diagnosis_path()).unwrap();
    for expected in [
        FOREIGN_OOM_KILL_MESSAGE,
        &fixture.cgroup_path().display().to_string(),
        "oom 0, oom_kill 1",
        "104857600 bytes (100.0 MiB)",
        "exit code: -1",
        "termination signal: KILL",
        "What to do",
    ] {
        assert!(
            diagnosis.contains(expected),
            "{expected:?} not in:\n{diagnosis}"
        );
    }
    assert_eq!(
        fixture.observer.codes(),
        [(fixture.id(1), "Failure".into(), Code::Unavailable)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_diagnosis_that_cannot_be_written_does_not_change_the_outcome() {
    // Why it matters: the server logs directory is a convenience; the
    // retry must happen anyway, and an existing file is never clobbered.
    let fixture = Fixture::shared(
        [0; 6],
        vec![FakeAction::killed(vec![events([0, 0, 0, 0, 1, 0])])],
    );
    fs::write(fixture.diagnosis_path(), "planted\n").unwrap();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Unavailable { details, .. }) if details.len() == 2),
        "{result:?}"
    );
    assert_eq!(
        fs::read_to_string(fixture.diagnosis_path()).unwrap(),
        "planted\n"
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_second_concurrent_run_is_refused_with_the_reason() {
    // Why it matters: with a shared cgroup, two actions' deltas would be
    // charged to each other, and a node OOM blamed on the wrong one.
    let mut fixture = Fixture::shared(
        [0; 6],
        vec![
            FakeAction::exits(0, vec![]).held_until_released(),
            FakeAction::exits(0, vec![]),
        ],
    );
    let (first, spawned) = fixture.start_run(CallContext::default()).await;
    let Err(RunnerError::Internal(message)) = fixture.run().await else {
        panic!("expected INTERNAL for the second Run");
    };
    for expected in [
        "another action is already running",
        "sampleCgroupResourceUsage",
        "share",
        "one action at a time",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    spawned.held.expect("a held exit").release();
    within("the first Run", first)
        .await
        .unwrap()
        .expect("the first Run is unaffected");
    fixture.run().await.expect("the slot is free again");
    // A refused call is not an action: two ids, both finished normally.
    assert_eq!(
        fixture.observer.codes(),
        [
            (fixture.id(1), "Success".into(), Code::Ok),
            (fixture.id(2), "Success".into(), Code::Ok),
        ]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_refused_peak_reset_reports_zero() {
    // Why it matters: before Linux 6.12 memory.peak cannot be reset, and
    // its lifetime value would be passed off as the action's peak.
    let fixture = Fixture::shared([0; 6], vec![FakeAction::exits(0, vec![])]);
    // A directory in place of the file refuses the read-write open, for
    // root too.
    let peak = fixture.cgroup_path().join("memory.peak");
    fs::remove_file(&peak).unwrap();
    fs::create_dir(&peak).unwrap();
    let response = fixture.run().await.unwrap();
    assert_eq!(cgroup_usage(&response.resource_usage[1]).memory_peak, 0);
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_program_that_cannot_be_executed_is_invalid_argument_and_frees_the_slot() {
    // Why it matters: a bad request stays INVALID_ARGUMENT, and the slot
    // is released so that the runner is not stuck refusing work.
    let fixture = Fixture::shared(
        [0; 6],
        vec![
            FakeAction {
                cgroup_files: vec![],
                held: false,
                ending: Ending::CannotExecute(libc::ENOENT),
            },
            FakeAction::exits(0, vec![]),
        ],
    );
    let request = fixture.request_to_run("/no/such/program");
    let result = within("a Run", fixture.runner.run(request, CallContext::default())).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message))
            if message == r#"cannot execute "/no/such/program": No such file or directory (os error 2)"#),
        "{result:?}"
    );
    fixture.run().await.expect("the slot is free again");
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn an_action_is_not_started_when_the_cgroup_cannot_be_read() {
    // Why it matters: an action whose usage cannot be measured could not
    // have a node OOM told apart from its own; better not to run it.
    let fixture = Fixture::shared([0; 6], vec![FakeAction::exits(0, vec![])]);
    fs::remove_file(fixture.cgroup_path().join("memory.events")).unwrap();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Internal(message))
            if message.contains("before starting the action") && message.contains("memory.events")),
        "{result:?}"
    );
    assert_eq!(
        fixture.spawner.calls.load(Ordering::SeqCst),
        0,
        "the spawner was called"
    );
    assert_eq!(
        fixture.observer.calls(),
        [format!("finished {} Failure", fixture.id(1))]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn the_shared_cgroup_waits_for_an_action_still_being_stopped() {
    // Why it matters: the last moments of an action whose call was dropped
    // (SIGTERM, the grace period) would otherwise be charged to the next.
    let mut fixture = Fixture::shared(
        [0; 6],
        vec![
            FakeAction::running_until_released(),
            FakeAction::exits(0, vec![]),
        ],
    );
    let (first, spawned) = fixture.start_run(call_with_time_left()).await;
    first.abort();
    assert!(within("the dropped call", first)
        .await
        .unwrap_err()
        .is_cancelled());
    fixture
        .observer
        .wait_for(&format!("terminating {} Cancelled", fixture.id(1)))
        .await;
    // The dropped call freed the slot, but its action is still alive: the
    // next Run is admitted and must wait for it.
    let runner = fixture.runner.clone();
    let request = fixture.request();
    let second = tokio::spawn(async move { runner.run(request, CallContext::default()).await });
    // Not synchronisation: a window in which a gate that did not wait would
    // spawn the second action before the first finished, which the order
    // of the calls below would show.
    tokio::time::sleep(Duration::from_millis(50)).await;
    spawned.held.expect("a held exit").release();
    within("the second Run", second)
        .await
        .unwrap()
        .expect("the second Run succeeds");
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {}", fixture.id(1)),
            format!("terminating {} Cancelled", fixture.id(1)),
            format!("finished {} Failure", fixture.id(1)),
            format!("started {}", fixture.id(2)),
            format!("finished {} Success", fixture.id(2)),
        ]
    );
    fixture.assert_back_to_idle().await;
}
