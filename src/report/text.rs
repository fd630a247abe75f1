//! The report as aligned tables for a terminal, at most 100 columns wide
//! (argv in the top lists is shortened to fit). Text from the journal is
//! shown through [`visible`]: a terminal must not act on what an action's
//! argv contains.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::json::rfc3339;
use super::stats::{Report, TopAction};
use super::visible::visible;

/// The widest line the tables write.
pub const WIDTH: usize = 100;

/// The whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    summary(&mut out, report);
    groups(&mut out, report);
    sizing(&mut out, report);
    top(&mut out, "Largest memory peaks", &report.top_memory);
    top(&mut out, "Longest wall times", &report.top_wall);
    let skipped = &report.skipped;
    let _ = writeln!(
        out,
        "\nSkipped lines: {} truncated, {} corrupt, {} of an unknown kind, {} EventsLost\n\
         Events missing from the journal (EventsLost ranges): {}",
        skipped.truncated,
        skipped.corrupt,
        skipped.unknown_kind,
        skipped.events_lost,
        skipped.lost_events
    );
    out
}

fn summary(out: &mut String, report: &Report) {
    let tallies = &report.tallies;
    let _ = writeln!(out, "Summary");
    if let Some((first, last)) = report.span {
        let _ = writeln!(
            out,
            "  time span      {} to {} ({})",
            rfc3339(first),
            rfc3339(last),
            seconds(last - first)
        );
    }
    let names: Vec<String> = report
        .runners
        .iter()
        .map(|r| format!("{} {}", visible(&r.instance), visible(&r.name)))
        .collect();
    let runners = match names.len() {
        0 => "0".to_string(),
        count => format!("{count} ({})", names.join(", ")),
    };
    let _ = writeln!(out, "  runners        {runners}");
    let _ = writeln!(out, "  actions        {}", tallies.actions);
    let _ = writeln!(out, "  results        {}", counts(&tallies.results));
    let _ = writeln!(out, "  failures       {}", counts(&tallies.failures));
    let _ = writeln!(out, "  OOM kills      {}", counts(&tallies.oom_kills));
    let _ = writeln!(out, "  terminations   {}", counts(&tallies.terminations));
    let _ = writeln!(out, "  cleanup fails  {}", tallies.cleanup_failures);
}

fn counts(counts: &BTreeMap<&'static str, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Aligned columns: the first left-aligned, the others right-aligned
/// except the last when `text_last` (argv).
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>], text_last: bool) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width - cell.chars().count();
            if index == 0 || (text_last && index == widths.len() - 1) {
                let lead = if index == 0 { " " } else { "  " };
                text.push_str(&format!("{lead}{cell}{}", " ".repeat(pad)));
            } else if index == 0 {
                text.push_str(&format!(" {cell}{}", " ".repeat(pad)));
            } else {
                text.push_str(&format!("  {}{cell}", " ".repeat(pad)));
            }
        }
        text.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

fn groups(out: &mut String, report: &Report) {
    let _ = writeln!(out, "\nTime and CPU per program (stall: PSI some ÷ wall)");
    let rows: Vec<Vec<String>> = report
        .groups
        .iter()
        .map(|group| {
            let stall = |pick: fn(&super::parse::Stall) -> f64| {
                group
                    .stall_share
                    .as_ref()
                    .map_or("-".into(), |share| percent(pick(share)))
            };
            vec![
                shorten(&visible(&group.program), 24),
                group.count.to_string(),
                seconds(group.wall_seconds[0]),
                seconds(group.wall_seconds[1]),
                seconds(group.wall_seconds[2]),
                seconds(group.cpu_seconds),
                stall(|s| s.cpu),
                stall(|s| s.memory),
                stall(|s| s.io),
            ]
        })
        .collect();
    table(
        out,
        &[
            "program",
            "count",
            "wall p50",
            "p95",
            "max",
            "CPU",
            "stall cpu",
            "mem",
            "io",
        ],
        &rows,
        false,
    );
    let _ = writeln!(
        out,
        "\nMemory peak per program (* = POSIX max RSS, no cgroup measurement)"
    );
    let rows: Vec<Vec<String>> = report
        .groups
        .iter()
        .map(|group| {
            let mark = if group.memory_from_rss { "*" } else { "" };
            let mut row = vec![
                format!("{}{mark}", shorten(&visible(&group.program), 24)),
                group.count.to_string(),
            ];
            match group.memory_bytes {
                Some(memory) => row.extend(memory.iter().map(|&b| bytes(b))),
                None => row.extend(["-", "-", "-", "-"].map(String::from)),
            }
            row
        })
        .collect();
    table(
        out,
        &["program", "count", "mem p50", "p95", "p99", "max"],
        &rows,
        false,
    );
}

fn sizing(out: &mut String, report: &Report) {
    let sizing = &report.sizing;
    let optional_bytes = |value: Option<i64>| value.map_or("-".into(), bytes);
    let _ = writeln!(out, "\nSizing");
    let _ = writeln!(
        out,
        "  per-action memoryMax holding 99 % of actions   {}",
        optional_bytes(sizing.memory_max_p99_bytes)
    );
    let _ = writeln!(
        out,
        "  per-action memoryMax holding 100 % of actions  {}",
        optional_bytes(sizing.memory_max_p100_bytes)
    );
    let _ = writeln!(
        out,
        "  CPU-pressure knee (concurrency)                {}",
        sizing
            .cpu_pressure_knee
            .map_or("not reached".into(), |knee| knee.to_string())
    );
    let _ = writeln!(
        out,
        "\n  Per runner: concurrent memory is the sum of the peaks of overlapping actions (an upper\n  \
         bound); pod memory adds {} headroom.",
        percent(sizing.headroom)
    );
    let rows: Vec<Vec<String>> = report
        .runners
        .iter()
        .map(|runner| {
            vec![
                format!(
                    "{} {}",
                    visible(&runner.instance),
                    shorten(&visible(&runner.name), 20)
                ),
                runner.peak_concurrency.to_string(),
                bytes(runner.peak_concurrent_memory_bytes),
                bytes(runner.pod_memory_bytes),
                match runner.memory_budget_bytes {
                    0 => "none".into(),
                    budget => bytes(budget),
                },
                format!("{:.2}", runner.peak_concurrent_cpu_cores),
            ]
        })
        .collect();
    table(
        out,
        &[
            "runner",
            "max actions",
            "concurrent mem",
            "pod memory",
            "budget",
            "CPU cores",
        ],
        &rows,
        false,
    );
    if !report.knee_table.is_empty() {
        let _ = writeln!(out, "\n  Median CPU-stall share by concurrency");
        let rows: Vec<Vec<String>> = report
            .knee_table
            .iter()
            .map(|row| {
                vec![
                    row.concurrency.to_string(),
                    row.actions.to_string(),
                    percent(row.median_cpu_stall_share),
                ]
            })
            .collect();
        table(
            out,
            &["concurrency", "actions", "median stall"],
            &rows,
            false,
        );
    }
}

fn top(out: &mut String, title: &str, actions: &[TopAction]) {
    let _ = writeln!(out, "\n{title}");
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|action| {
            let memory = action.memory_bytes.map_or("-".into(), |b| {
                format!(
                    "{}{}",
                    bytes(b),
                    if action.memory_from_rss { "*" } else { "" }
                )
            });
            vec![
                visible(&action.action_id).into_owned(),
                memory,
                seconds(action.wall_seconds),
                shorten(&visible(&action.arguments.join(" ")), 44),
            ]
        })
        .collect();
    table(out, &["action", "memory", "wall", "argv"], &rows, true);
}

fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}

/// Bytes with a binary unit: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(value: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut scaled = value as f64;
    let mut unit = 0;
    while scaled.abs() >= 1024.0 && unit < units.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{scaled:.1} {}", units[unit])
    }
}

/// Seconds for people: `0.042s`, `12.3s`, `4m05s`, `2h03m`.
pub fn seconds(value: f64) -> String {
    if value < 1.0 {
        format!("{value:.3}s")
    } else if value < 60.0 {
        format!("{value:.1}s")
    } else if value < 3600.0 {
        let whole = value.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        let minutes = (value / 60.0).round() as u64;
        format!("{}h{:02}m", minutes / 60, minutes % 60)
    }
}

/// A share as a percentage with one decimal.
pub fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}
