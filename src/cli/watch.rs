//! `rbe-runner watch`: subscribes to a runner's events and prints them,
//! one line each, or keeps a tally.
//!
//! A runner that goes away (a restart) is reconnected to, said so on
//! stderr, and resumed with `runner_instance` set, so the new instance's
//! events are replayed from its first one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use prost::Name;

use super::client::{self, ClientError, Target};
use super::{run_client, Arguments, TargetFlags, USAGE};
use crate::action::ActionResult;
use crate::events::json::event_line;
use crate::events::{Published, Usage};
use crate::proto::rbe_runner::events::v1::event::Kind;
use crate::proto::rbe_runner::events::v1::events_client::EventsClient;
use crate::proto::rbe_runner::events::v1::{ActionFinished, Event, SubscribeRequest};
use crate::proto::rbe_runner::resourceusage::v1::{OomVerdict, TerminationReason};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

/// How long `watch` waits between attempts to reach a runner that went
/// away.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// What `watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The runner.
    pub target: Target,
    /// Replay events after this sequence (`--after`).
    pub after_sequence: u64,
    /// Skip the replay (`--live`).
    pub live_only: bool,
    /// Print the journal's JSON (`--json`).
    pub json: bool,
    /// Keep a tally instead of printing events (`--summary`).
    pub summary: bool,
    /// Keep following after the replay (not `--no-follow`).
    pub follow: bool,
}

fn parse_watch_args(args: &[String]) -> anyhow::Result<WatchOptions> {
    let mut target = TargetFlags::default();
    let mut options = WatchOptions {
        target: Target::Address(String::new()),
        after_sequence: 0,
        live_only: false,
        json: false,
        summary: false,
        follow: true,
    };
    let mut args = Arguments::new(args);
    while let Some(flag) = args.next_flag() {
        if target.take(flag, &mut args)? {
            continue;
        }
        match flag {
            "--after" => {
                let text = args.value(flag)?;
                options.after_sequence = text
                    .parse()
                    .with_context(|| format!("--after {text:?} is not a sequence number"))?;
            }
            "--live" => options.live_only = true,
            "--json" => options.json = true,
            "--summary" => options.summary = true,
            "--no-follow" => options.follow = false,
            other => bail!("watch: unknown argument {other:?}\n{USAGE}"),
        }
    }
    options.target = target.target("watch")?;
    Ok(options)
}

/// `watch`: exit status 0 when done (`--no-follow`) or interrupted, 2 on a
/// usage error or a runner that cannot be reached.
pub fn main(args: &[String]) -> ExitCode {
    let options = match parse_watch_args(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("rbe-runner watch: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run_client(watch(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rbe-runner watch: {err}");
            ExitCode::from(2)
        }
    }
}

/// Watches until the replay is printed (`--no-follow`), or until
/// interrupted. Fails only when the runner cannot be reached at first.
pub async fn watch(options: &WatchOptions) -> Result<(), ClientError> {
    let mut printer = Printer::new(options);
    let mut after_sequence = options.after_sequence;
    let mut instance = String::new();
    let mut first = true;
    loop {
        let channel = match client::connect(&options.target).await {
            Ok(channel) => channel,
            Err(error) if first => return Err(error),
            Err(_) => {
                tokio::time::sleep(RECONNECT_INTERVAL).await;
                continue;
            }
        };
        if !first {
            eprintln!("rbe-runner watch: reconnected");
        }
        let request = SubscribeRequest {
            after_sequence,
            live_only: options.live_only && first,
            runner_instance: instance.clone(),
            replay_only: !options.follow,
        };
        first = false;
        let mut stream = match EventsClient::new(channel).subscribe(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if !options.follow => return Err(ClientError::Subscribe(status)),
            Err(status) => {
                eprintln!(
                    "rbe-runner watch: {}; retrying",
                    client::describe_status(&status)
                );
                tokio::time::sleep(RECONNECT_INTERVAL).await;
                continue;
            }
        };
        let ended = loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = interrupted() => {
                    printer.finish();
                    return Ok(());
                }
            };
            match message {
                Ok(Some(event)) => {
                    if event.runner_instance != instance {
                        if !instance.is_empty() {
                            eprintln!(
                                "rbe-runner watch: the runner restarted: instance {} (was {instance})",
                                event.runner_instance
                            );
                        }
                        instance = event.runner_instance.clone();
                    }
                    if event.sequence != 0 {
                        after_sequence = event.sequence;
                    }
                    if printer.print(event).is_err() {
                        // Whoever read our stdout is gone (`watch | grep
                        // -m1 …`): nothing more can be shown.
                        return Ok(());
                    }
                }
                Ok(None) => break "the runner ended the stream".to_string(),
                Err(status) => break client::describe_status(&status),
            }
        };
        if !options.follow {
            printer.finish();
            return Ok(());
        }
        eprintln!("rbe-runner watch: {ended}; reconnecting");
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// The usages an `ActionFinished` carries, decoded (client side) from
/// its `Any`s; messages of other types are left out.
pub fn usages_of(finished: &ActionFinished) -> Vec<Usage> {
    finished
        .resource_usage
        .iter()
        .filter_map(|any| {
            if any.type_url == PosixResourceUsage::type_url() {
                any.to_msg().ok().map(Usage::Posix)
            } else if any.type_url == CgroupResourceUsage::type_url() {
                any.to_msg().ok().map(Usage::Cgroup)
            } else {
                None
            }
        })
        .collect()
}

/// Prints events or the tally.
struct Printer {
    json: bool,
    summary: bool,
    terminal: bool,
    /// `argv[0]` of actions seen starting, for their last line.
    programs: HashMap<String, String>,
    tally: Tally,
}

impl Printer {
    fn new(options: &WatchOptions) -> Self {
        Printer {
            json: options.json,
            summary: options.summary,
            terminal: std::io::stdout().is_terminal(),
            programs: HashMap::new(),
            tally: Tally::default(),
        }
    }

    /// Prints `event` (or counts it); an error only when stdout's reader
    /// is gone (a broken pipe).
    fn print(&mut self, event: Event) -> Result<(), std::io::Error> {
        self.tally.count(&event);
        let mut stdout = std::io::stdout().lock();
        if self.summary {
            if self.terminal {
                let _ = write!(stdout, "\r\x1b[K{}", self.tally);
                let _ = stdout.flush();
            }
            return Ok(());
        }
        let line = if self.json {
            let usages = match &event.kind {
                Some(Kind::ActionFinished(finished)) => usages_of(finished),
                _ => Vec::new(),
            };
            event_line(&Published { event, usages })
        } else {
            human_line(&event, &mut self.programs)
        };
        match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(error),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) {
        if self.summary {
            let prefix = if self.terminal { "\r\x1b[K" } else { "" };
            println!("{prefix}{}", self.tally);
        }
    }
}

/// One line for people: time, action id, `argv[0]`, outcome, wall time,
/// memory peak, OOM verdict.
pub fn human_line(event: &Event, programs: &mut HashMap<String, String>) -> String {
    let time = event
        .time
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let text = match &event.kind {
        Some(Kind::ActionStarted(started)) => {
            let program = started.arguments.first().cloned().unwrap_or_default();
            programs.insert(started.action_id.clone(), program.clone());
            format!(
                "{} {program} started, pid {}",
                started.action_id, started.pid
            )
        }
        Some(Kind::ActionFinished(finished)) => {
            let program = programs
                .remove(&finished.action_id)
                .unwrap_or_else(|| "-".into());
            finished_line(finished, &program)
        }
        Some(Kind::ActionTerminating(terminating)) => {
            let how = if terminating.killed_at_grace_deadline {
                "killed with SIGKILL at the grace deadline"
            } else {
                "terminating (SIGTERM)"
            };
            format!(
                "{} {how}: {}",
                terminating.action_id,
                reason_name(terminating.reason)
            )
        }
        Some(Kind::CleanupFailed(failed)) => format!(
            "{} cleanup failed: {} pids {:?}: {}",
            failed.action_id, failed.cgroup, failed.pids, failed.detail
        ),
        Some(Kind::RunnerState(state)) => {
            let budget = match state.memory_budget_bytes {
                0 => "no memory budget".to_string(),
                bytes => format!("memory budget {}", mebibytes(bytes)),
            };
            format!(
                "runner {} {}: {} ({budget})",
                state.runner_name,
                if state.accepting_work {
                    "accepting work"
                } else {
                    "refusing work"
                },
                state.reason
            )
        }
        Some(Kind::EventsLost(lost)) => format!(
            "events {} to {} were lost (this client fell behind or asked for more than is kept)",
            lost.first_sequence, lost.last_sequence
        ),
        None => "an event of a kind this watch does not know".into(),
    };
    format!("{time} {text}")
}

fn finished_line(finished: &ActionFinished, program: &str) -> String {
    let usages = usages_of(finished);
    let code = finished
        .status
        .as_ref()
        .map_or(tonic::Code::Ok, |status| tonic::Code::from(status.code));
    let outcome = match ActionResult::classify(code, finished.exit_code) {
        ActionResult::Success => "exit 0".to_string(),
        ActionResult::NonZeroExitCode => format!("exit {}", finished.exit_code),
        ActionResult::Signal => {
            let signal = usages.iter().find_map(|usage| match usage {
                Usage::Posix(posix) => Some(posix.termination_signal.clone()),
                Usage::Cgroup(_) => None,
            });
            format!("killed by SIG{}", signal.unwrap_or_default())
        }
        ActionResult::Failure => {
            let message = finished
                .status
                .as_ref()
                .map(|status| status.message.as_str())
                .unwrap_or_default();
            format!("{code:?}: {}", shorten(message, 120))
        }
    };
    let wall = finished
        .wall_time
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "-".into());
    let peak = memory_peak(&usages);
    let mut line = format!(
        "{} {program} {outcome}, wall {wall}, memory peak {peak}",
        finished.action_id
    );
    if finished.oom_verdict != OomVerdict::None as i32 {
        line.push_str(&format!(", OOM {}", verdict_name(finished.oom_verdict)));
    }
    line
}

/// The cgroup's memory peak, else the POSIX maximum RSS (marked so).
fn memory_peak(usages: &[Usage]) -> String {
    let cgroup = usages.iter().find_map(|usage| match usage {
        Usage::Cgroup(cgroup) if cgroup.memory_peak > 0 => Some(cgroup.memory_peak),
        _ => None,
    });
    let rss = usages.iter().find_map(|usage| match usage {
        Usage::Posix(posix) => Some(posix.maximum_resident_set_size),
        Usage::Cgroup(_) => None,
    });
    match (cgroup, rss) {
        (Some(bytes), _) => mebibytes(bytes),
        (None, Some(bytes)) => format!("{} (max RSS)", mebibytes(bytes)),
        (None, None) => "-".into(),
    }
}

fn mebibytes(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}

fn reason_name(reason: i32) -> String {
    match TerminationReason::try_from(reason) {
        Ok(TerminationReason::Deadline) => "Deadline".into(),
        Ok(TerminationReason::Cancelled) => "Cancelled".into(),
        Ok(TerminationReason::Shutdown) => "Shutdown".into(),
        Ok(TerminationReason::None) => "None".into(),
        Err(_) => reason.to_string(),
    }
}

fn verdict_name(verdict: i32) -> String {
    match OomVerdict::try_from(verdict) {
        Ok(OomVerdict::None) => "None".into(),
        Ok(OomVerdict::OwnLimit) => "OwnLimit".into(),
        Ok(OomVerdict::SharedLimit) => "SharedLimit".into(),
        Ok(OomVerdict::NotOwnLimit) => "NotOwnLimit".into(),
        Err(_) => verdict.to_string(),
    }
}

/// What `--summary` counts, by the lifecycle's classification.
#[derive(Debug, Default)]
pub struct Tally {
    running: HashSet<String>,
    succeeded: u64,
    non_zero_exit: u64,
    killed_by_signal: u64,
    failed: BTreeMap<String, u64>,
    oom_kills: BTreeMap<String, u64>,
    terminated: BTreeMap<String, u64>,
    cleanup_failures: u64,
    events_lost: u64,
}

impl Tally {
    /// Counts one event.
    pub fn count(&mut self, event: &Event) {
        match &event.kind {
            Some(Kind::ActionStarted(started)) => {
                self.running.insert(started.action_id.clone());
            }
            Some(Kind::ActionFinished(finished)) => {
                self.running.remove(&finished.action_id);
                let code = finished
                    .status
                    .as_ref()
                    .map_or(tonic::Code::Ok, |status| tonic::Code::from(status.code));
                match ActionResult::classify(code, finished.exit_code) {
                    ActionResult::Success => self.succeeded += 1,
                    ActionResult::NonZeroExitCode => self.non_zero_exit += 1,
                    ActionResult::Signal => self.killed_by_signal += 1,
                    ActionResult::Failure => {
                        *self.failed.entry(format!("{code:?}")).or_default() += 1
                    }
                }
                if finished.oom_verdict != OomVerdict::None as i32 {
                    *self
                        .oom_kills
                        .entry(verdict_name(finished.oom_verdict))
                        .or_default() += 1;
                }
                if finished.termination_reason != TerminationReason::None as i32 {
                    *self
                        .terminated
                        .entry(reason_name(finished.termination_reason))
                        .or_default() += 1;
                }
            }
            Some(Kind::CleanupFailed(_)) => self.cleanup_failures += 1,
            Some(Kind::EventsLost(lost)) => {
                self.events_lost += lost.last_sequence.saturating_sub(lost.first_sequence) + 1;
            }
            _ => {}
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = |counts: &BTreeMap<String, u64>| {
            let total: u64 = counts.values().sum();
            if counts.is_empty() {
                return "0".to_string();
            }
            let parts: Vec<String> = counts
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            format!("{total} ({})", parts.join(", "))
        };
        write!(
            f,
            "running {}, succeeded {}, non-zero exit {}, killed by signal {}, failed {}, \
             OOM kills {}, terminated {}, cleanup failures {}",
            self.running.len(),
            self.succeeded,
            self.non_zero_exit,
            self.killed_by_signal,
            counts(&self.failed),
            counts(&self.oom_kills),
            counts(&self.terminated),
            self.cleanup_failures,
        )?;
        if self.events_lost > 0 {
            write!(f, ", events lost {}", self.events_lost)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rbe_runner::events::v1::ActionStarted;
    use crate::proto::rpc;

    fn event(kind: Kind) -> Event {
        Event {
            sequence: 1,
            time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            runner_instance: "0badcafe".into(),
            kind: Some(kind),
        }
    }

    fn finished(id: &str, code: tonic::Code, exit_code: i64) -> Event {
        event(Kind::ActionFinished(ActionFinished {
            action_id: id.into(),
            exit_code,
            status: Some(rpc::Status {
                code: code as i32,
                message: String::new(),
                details: Vec::new(),
            }),
            resource_usage: vec![prost_types::Any::from_msg(&PosixResourceUsage {
                maximum_resident_set_size: 3 << 20,
                termination_signal: if exit_code == -1 {
                    "KILL".into()
                } else {
                    String::new()
                },
                ..PosixResourceUsage::default()
            })
            .unwrap()],
            wall_time: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            oom_verdict: 0,
            termination_reason: if code == tonic::Code::DeadlineExceeded {
                TerminationReason::Deadline as i32
            } else {
                0
            },
            trace_id: String::new(),
        }))
    }

    #[test]
    fn the_tally_counts_by_the_lifecycles_classification() {
        // Why it matters: `watch --summary`, metrics and the report must
        // agree on what a success, a failure and a signal are.
        let mut tally = Tally::default();
        tally.count(&event(Kind::ActionStarted(ActionStarted {
            action_id: "a-1".into(),
            ..ActionStarted::default()
        })));
        tally.count(&event(Kind::ActionStarted(ActionStarted {
            action_id: "a-2".into(),
            ..ActionStarted::default()
        })));
        tally.count(&finished("a-1", tonic::Code::Ok, 0));
        tally.count(&finished("a-3", tonic::Code::Ok, 2));
        tally.count(&finished("a-4", tonic::Code::Ok, -1));
        tally.count(&finished("a-5", tonic::Code::DeadlineExceeded, 0));
        tally.count(&finished("a-6", tonic::Code::InvalidArgument, 0));
        assert_eq!(
            tally.to_string(),
            "running 1, succeeded 1, non-zero exit 1, killed by signal 1, \
             failed 2 (DeadlineExceeded 1, InvalidArgument 1), OOM kills 0, \
             terminated 1 (Deadline 1), cleanup failures 0"
        );
    }

    #[test]
    fn a_finished_line_names_the_program_outcome_wall_time_and_peak() {
        let mut programs = HashMap::new();
        let started = event(Kind::ActionStarted(ActionStarted {
            action_id: "a-1".into(),
            arguments: vec!["cc".into(), "-c".into()],
            pid: 42,
            ..ActionStarted::default()
        }));
        assert_eq!(
            human_line(&started, &mut programs),
            "1970-01-01T00:00:00Z a-1 cc started, pid 42"
        );
        assert_eq!(
            human_line(&finished("a-1", tonic::Code::Ok, -1), &mut programs),
            "1970-01-01T00:00:00Z a-1 cc killed by SIGKILL, wall 1s, memory peak 3.0 MiB (max RSS)"
        );
    }
}
