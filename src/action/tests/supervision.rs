//! The lifecycle and its supervisor: ids, the observer's order, and every
//! way an action ends.

use super::*;

#[tokio::test]
async fn the_observer_sees_each_action_start_and_finish_in_order() {
    // Why it matters: events, metrics and logs are observers; an id must
    // name one action, counted from 1 within the runner instance.
    let mut fixture = Fixture::process_groups(vec![
        FakeAction::exits(0, vec![]),
        FakeAction::exits(3, vec![]),
    ]);
    assert_eq!(fixture.run().await.unwrap().exit_code, 0);
    assert_eq!(fixture.run().await.unwrap().exit_code, 3);
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {}", fixture.id(1)),
            format!("finished {} Success", fixture.id(1)),
            format!("started {}", fixture.id(2)),
            format!("finished {} NonZeroExitCode", fixture.id(2)),
        ]
    );
    let spawned = fixture.spawned.recv().await.unwrap();
    assert_eq!(spawned.arguments, ["/bin/true", "--flag"]);
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_missing_program_is_not_started_and_not_reported_as_started() {
    // Why it matters: a request naming no real program is the client's
    // fault (INVALID_ARGUMENT, not retried), and an event stream must not
    // show an action start that never happened.
    let fixture = Fixture::process_groups(vec![]);
    let request = fixture.request_to_run("no-such-program");
    let (_call, dropped) = oneshot::channel();
    let outcome = within(
        "the action",
        fixture.actions.clone().run(
            request,
            CallGone::new(dropped, None),
            None,
            fixture.actions.count_in(),
        ),
    )
    .await;
    assert!(
        matches!(&outcome.ended, Ended::NotStarted(RunnerError::InvalidArgument(message))
            if message.contains("\"no-such-program\"")),
        "{:?}",
        outcome.ended
    );
    assert_eq!(outcome.grpc_code(), Code::InvalidArgument);
    assert_eq!(outcome.pid, None);
    assert_eq!(outcome.cleanup, Cleanup::NothingStarted);
    assert_eq!(outcome.posix_usage, None);
    assert_eq!(
        fixture.observer.calls(),
        [format!("finished {} Failure", fixture.id(1))]
    );
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), 0);

    // Through the runner, the same request is answered INVALID_ARGUMENT.
    let request = fixture.request_to_run("no-such-program");
    let result = within("a Run", fixture.runner.run(request, CallContext::default())).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(_))),
        "{result:?}"
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_request_without_arguments_is_refused_before_an_action_exists() {
    // Why it matters: calls refused before an action exists are not
    // actions; they must not consume an id or show in the action events.
    let fixture = Fixture::process_groups(vec![FakeAction::exits(0, vec![])]);
    let request = RunRequest {
        arguments: vec![],
        ..fixture.request()
    };
    let result = fixture.runner.run(request, CallContext::default()).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message)) if message.contains("arguments")),
        "{result:?}"
    );
    assert!(fixture.observer.calls().is_empty());
    fixture.run().await.unwrap();
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {}", fixture.id(1)),
            format!("finished {} Success", fixture.id(1)),
        ]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_call_dropped_before_its_deadline_is_cancelled() {
    // Why it matters: a user's cancellation is not a timeout; metrics and
    // events must tell them apart, and the action must still be stopped.
    let mut fixture = Fixture::process_groups(vec![FakeAction::running_until_released()]);
    let (run, spawned) = fixture.start_run(call_with_time_left()).await;
    run.abort();
    let id = fixture.id(1);
    fixture
        .observer
        .wait_for(&format!("terminating {id} Cancelled"))
        .await;
    spawned.held.expect("a held exit").release();
    fixture
        .observer
        .wait_for(&format!("finished {id} Failure"))
        .await;
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {id}"),
            format!("terminating {id} Cancelled"),
            format!("finished {id} Failure"),
        ]
    );
    assert_eq!(
        fixture.observer.codes(),
        [(id, "Failure".into(), Code::Cancelled)]
    );
    assert!(run.await.unwrap_err().is_cancelled());
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_call_dropped_at_its_deadline_is_a_deadline() {
    // Why it matters: bb_worker enforces action timeouts by letting the
    // call's deadline pass; that must count as DEADLINE_EXCEEDED.
    let mut fixture = Fixture::process_groups(vec![FakeAction::running_until_released()]);
    let deadline = Instant::now() + Duration::from_millis(200);
    let call = CallContext {
        deadline: Some(deadline),
        ..CallContext::default()
    };
    let (run, spawned) = fixture.start_run(call).await;
    // The deadline itself is what this test waits for.
    tokio::time::sleep_until(deadline).await;
    run.abort();
    let id = fixture.id(1);
    fixture
        .observer
        .wait_for(&format!("terminating {id} Deadline"))
        .await;
    spawned.held.expect("a held exit").release();
    fixture
        .observer
        .wait_for(&format!("finished {id} Failure"))
        .await;
    assert_eq!(
        fixture.observer.codes(),
        [(id, "Failure".into(), Code::DeadlineExceeded)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_call_whose_deadline_passed_creates_nothing() {
    // Why it matters: a call sent with `grpc-timeout: 1n` (or one that
    // waited for a thread past its deadline) must be answered
    // DEADLINE_EXCEEDED without anything being started: no outputs, no
    // child, no command run (issue 23: the answer was a race).
    let fixture = Fixture::process_groups(vec![]);
    let before = fixture.action_files();
    let call = CallContext {
        deadline: Some(Instant::now()),
        ..CallContext::default()
    };
    let result = fixture.runner.run(fixture.request(), call).await;
    assert!(
        matches!(&result, Err(error @ RunnerError::DeadlineExceeded(message))
            if error.code() == Code::DeadlineExceeded && message.contains("nothing was run")),
        "{result:?}"
    );
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), 0);
    assert_eq!(fixture.action_files(), before, "outputs were created");
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn shutdown_stops_a_running_action_and_answers_unavailable() {
    // Why it matters: an action cut short by a restarting runner is not
    // the action's fault; UNAVAILABLE makes bb_worker retry it elsewhere.
    let mut fixture = Fixture::process_groups(vec![FakeAction::running_until_released()]);
    let (run, spawned) = fixture.start_run(CallContext::default()).await;
    fixture.actions.shutdown().terminate_all();
    let id = fixture.id(1);
    fixture
        .observer
        .wait_for(&format!("terminating {id} Shutdown"))
        .await;
    spawned.held.expect("a held exit").release();
    let result = within("the Run", run).await.unwrap();
    assert!(
        matches!(&result, Err(error @ RunnerError::Unavailable { message, .. })
            if error.code() == Code::Unavailable && message.contains("shutting down")),
        "{result:?}"
    );
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {id}"),
            format!("terminating {id} Shutdown"),
            format!("finished {id} Failure"),
        ]
    );
    assert_eq!(
        fixture.observer.codes(),
        [(id, "Failure".into(), Code::Unavailable)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn process_groups_report_only_the_posix_usage() {
    // Why it matters: without sampling there is no cgroup to measure; an
    // empty or made-up CgroupResourceUsage would mislead capacity analysts.
    let fixture = Fixture::process_groups(vec![FakeAction::killed(vec![])]);
    let response = fixture.run().await.unwrap();
    assert_eq!(response.exit_code, -1);
    assert_eq!(response.resource_usage.len(), 1);
    let usage = posix(&response.resource_usage[0]);
    assert_eq!(usage.maximum_resident_set_size, 7 << 20);
    assert_eq!(usage.termination_signal, "KILL");
    assert_eq!(
        fixture.observer.codes(),
        [(fixture.id(1), "Signal".into(), Code::Ok)]
    );
    fixture.assert_back_to_idle().await;
}
