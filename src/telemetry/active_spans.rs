//! The running actions' spans, for the diagnostics server's
//! `/active_spans` (`enableActiveSpans`), as bb-storage lists the spans
//! that have not ended: kept from the action's started and terminating
//! facts whether or not the runner exports traces, so that an operator
//! can see what runs, under which trace, and whether it is being stopped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::action::observer::{ActionStarted, ActionTerminating, Observer};
use crate::action::{ActionId, ActionOutcome};
use crate::sync::lock_unpoisoned;
use crate::trace_context::CallTrace;

/// One running action's span.
#[derive(Debug, Clone)]
struct ActiveSpan {
    started: SystemTime,
    argv0: String,
    pid: i32,
    trace: Option<CallTrace>,
    /// The last termination step, if it is being stopped.
    last_event: Option<String>,
}

/// The running actions, by id (ids sort by start).
#[derive(Default)]
pub struct ActiveSpans {
    running: Mutex<BTreeMap<ActionId, ActiveSpan>>,
}

impl ActiveSpans {
    /// How many actions are listed.
    pub fn len(&self) -> usize {
        lock_unpoisoned(&self.running).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The page: one row per running action.
    pub fn render_html(&self) -> String {
        let running = lock_unpoisoned(&self.running).clone();
        let mut page = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rbe-runner: active spans</title></head>\n<body>\n<h1>Active spans</h1>\n",
        );
        if running.is_empty() {
            page.push_str("<p>No action is running.</p>\n");
        } else {
            page.push_str("<table border=\"1\">\n<tr><th>Span</th><th>Start</th><th>Trace ID</th><th>Parent span ID</th><th>rbe_runner.action.id</th><th>rbe_runner.action.argv0</th><th>rbe_runner.action.pid</th><th>Last event</th></tr>\n");
            for (id, span) in &running {
                let started = span
                    .started
                    .duration_since(UNIX_EPOCH)
                    .map(|since| format!("{:.3}", since.as_secs_f64()))
                    .unwrap_or_default();
                let (trace_id, parent) = span.trace.map_or_else(
                    || (String::new(), String::new()),
                    |trace| (trace.trace_id_hex(), trace.span_id_hex()),
                );
                let _ = writeln!(
                    page,
                    "<tr><td>action</td><td>{started}</td><td>{trace_id}</td><td>{parent}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&id.to_string()),
                    escape(&span.argv0),
                    span.pid,
                    escape(span.last_event.as_deref().unwrap_or("")),
                );
            }
            page.push_str("</table>\n");
        }
        page.push_str("</body></html>\n");
        page
    }
}

/// Text as HTML shows it literally.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

impl Observer for ActiveSpans {
    fn action_started(&self, started: &ActionStarted) {
        lock_unpoisoned(&self.running).insert(
            started.id.clone(),
            ActiveSpan {
                started: SystemTime::now(),
                argv0: started.arguments.first().cloned().unwrap_or_default(),
                pid: started.pid,
                trace: started.trace,
                last_event: None,
            },
        );
    }

    fn action_terminating(&self, terminating: &ActionTerminating) {
        if let Some(span) = lock_unpoisoned(&self.running).get_mut(&terminating.id) {
            let signal = if terminating.killed_at_grace_deadline {
                "SIGKILL"
            } else {
                "SIGTERM"
            };
            span.last_event = Some(format!("{signal} sent ({})", terminating.reason));
        }
    }

    fn action_finished(&self, outcome: &ActionOutcome) {
        lock_unpoisoned(&self.running).remove(&outcome.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::observer::OutputFiles;
    use crate::action::{ActionIds, RunnerInstance};

    #[test]
    fn a_running_action_is_listed_with_its_trace_until_it_finishes() {
        // Why it matters: the page is how an operator finds which trace a
        // stuck action belongs to.
        let spans = ActiveSpans::default();
        let id = ActionIds::new(RunnerInstance::random()).next();
        spans.action_started(&ActionStarted {
            id: id.clone(),
            arguments: vec!["<cc>".into()],
            input_root_directory: String::new(),
            pid: 7,
            cgroup: None,
            outputs: OutputFiles::default(),
            trace: Some(CallTrace {
                trace_id: [0xab; 16],
                span_id: [0xcd; 8],
                sampled: true,
            }),
        });
        let page = spans.render_html();
        assert!(page.contains(&id.to_string()), "{page}");
        assert!(page.contains(&"ab".repeat(16)), "{page}");
        assert!(page.contains("&lt;cc&gt;"), "{page}");
        assert_eq!(spans.len(), 1);
    }
}
