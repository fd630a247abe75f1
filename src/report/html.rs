//! `report --html`: one self-contained page (inline CSS and SVG, no
//! script, nothing fetched) an analyst can open offline or attach to a
//! ticket. Its Content-Security-Policy forbids loading anything and
//! running any script, so a page that tried would show the gap rather
//! than leak a request or run what an argv smuggled in.

use std::fmt::Write;

use super::json::rfc3339;
use super::stats::{GroupStats, Report, RunnerSizing, TopAction};
use super::text::{bytes, percent, seconds};
use super::visible::visible;
use crate::cgroup::attribution::OomVerdict;

/// The page's Content-Security-Policy: inline styles only (no
/// `script-src`, so `default-src 'none'` forbids every script).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// Chart width in pixels: two charts side by side fit a 1280 px window.
const HALF_WIDTH: f64 = 580.0;
/// The fewest power-of-two ranges a histogram shows.
const MIN_BINS: i32 = 10;
const FULL_WIDTH: f64 = 1180.0;

const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2937;background:#f3f4f6;margin:0}
main{max-width:1200px;margin:0 auto;padding:20px}
h1{font-size:24px;margin:4px 0 2px}h2{font-size:18px;margin:26px 0 8px}
.sub{color:#6b7280;margin:0 0 14px}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:10px}
.card{background:#fff;border-radius:8px;padding:10px 14px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:22px}.card span{color:#6b7280;font-size:12px}
.row{display:flex;gap:20px}.panel{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px;box-shadow:0 1px 2px #0002}
th,td{padding:5px 8px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}
th{background:#f9fafb;font-weight:600}td:first-child,th:first-child{text-align:left}
td.text{text-align:left}td.argv{text-align:left;font-family:ui-monospace,monospace;font-size:12px;white-space:normal;word-break:break-all}
.note{color:#6b7280;font-size:12px;margin:6px 0}
svg text{font-size:11px;fill:#374151}
";

/// The page.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>rbe-runner report</title><style>{STYLE}</style></head><body><main>"
    );
    header(&mut page, report);
    let _ = write!(page, "<h2>Distributions</h2><div class=\"row\">");
    let memory_panel = histogram(
        "Memory peak per action",
        &report.memory_bytes,
        |value| bytes(value as i64),
        "#2563eb",
    );
    let wall_panel = histogram(
        "Wall time per action",
        &report.wall_seconds,
        seconds,
        "#0d9488",
    );
    let _ = write!(page, "{memory_panel}{wall_panel}</div>");
    let _ = write!(
        page,
        "<p class=\"note\">Bars count actions per power-of-two range (log scale).</p>"
    );
    stall_chart(&mut page, &report.groups);
    let _ = write!(page, "<h2>Concurrent memory</h2>");
    for runner in report.runners.iter().take(8) {
        timeline(&mut page, runner);
    }
    if report.runners.is_empty() {
        let _ = write!(page, "<p class=\"note\">No finished actions.</p>");
    }
    sizing_table(&mut page, report);
    groups_table(&mut page, &report.groups);
    top_table(&mut page, "Largest memory peaks", &report.top_memory);
    top_table(&mut page, "Longest wall times", &report.top_wall);
    let skipped = &report.skipped;
    let _ = writeln!(
        page,
        "<p class=\"note\">Skipped journal lines: {} truncated, {} corrupt, {} of an unknown kind, \
         {} EventsLost ({} events missing from the journal).</p></main></body></html>",
        skipped.truncated,
        skipped.corrupt,
        skipped.unknown_kind,
        skipped.events_lost,
        skipped.lost_events
    );
    page
}

/// Text made safe for HTML content and attribute values, with control
/// and bidirectional characters shown as escapes ([`visible`]).
pub fn escape(text: &str) -> String {
    let text = visible(text);
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn header(page: &mut String, report: &Report) {
    let tallies = &report.tallies;
    let span = report
        .span
        .map_or("no actions".to_string(), |(first, last)| {
            format!(
                "{} to {} ({})",
                rfc3339(first),
                rfc3339(last),
                seconds(last - first)
            )
        });
    let _ = write!(
        page,
        "<h1>rbe-runner report</h1><p class=\"sub\">{}</p><div class=\"cards\">",
        escape(&span)
    );
    let count = |map: &std::collections::BTreeMap<&str, u64>| map.values().sum::<u64>();
    let success = tallies.results.get("Success").copied().unwrap_or(0);
    let cards = [
        ("actions", tallies.actions.to_string()),
        ("succeeded", success.to_string()),
        (
            "non-zero exit / signal",
            format!(
                "{} / {}",
                tallies.results.get("NonZeroExitCode").unwrap_or(&0),
                tallies.results.get("Signal").unwrap_or(&0)
            ),
        ),
        ("failed Run calls", count(&tallies.failures).to_string()),
        ("OOM kills", count(&tallies.oom_kills).to_string()),
        ("runners", report.runners.len().to_string()),
    ];
    for (label, value) in cards {
        let _ = write!(
            page,
            "<div class=\"card\"><b>{}</b><span>{}</span></div>",
            escape(&value),
            escape(label)
        );
    }
    let _ = write!(page, "</div>");
    let lists = [
        ("Failures by gRPC code", &tallies.failures),
        ("OOM kills by verdict", &tallies.oom_kills),
        ("Terminations by reason", &tallies.terminations),
    ];
    let mut details: Vec<String> = lists
        .iter()
        .filter(|(_, map)| !map.is_empty())
        .map(|(title, map)| {
            let items: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{title}: {}", items.join(", "))
        })
        .collect();
    details.push(format!("Cleanup failures: {}", tallies.cleanup_failures));
    let _ = write!(
        page,
        "<p class=\"note\">{}</p>",
        escape(&details.join(" · "))
    );
}

/// A histogram over power-of-two ranges of `values`.
fn histogram(title: &str, values: &[f64], label: impl Fn(f64) -> String, color: &str) -> String {
    let (width, height) = (HALF_WIDTH, 260.0);
    let (left, right, top, bottom) = (44.0, 12.0, 28.0, 40.0);
    let mut svg = format!(
        "<div class=\"panel\"><svg width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-label=\"{title}\"><text x=\"4\" y=\"16\" style=\"font-size:13px;font-weight:600\">{title}</text>"
    );
    let positive = values.iter().copied().filter(|v| *v > 0.0);
    let (Some(min), Some(max)) = (positive.clone().reduce(f64::min), positive.reduce(f64::max))
    else {
        svg.push_str("<text x=\"200\" y=\"130\">no values</text></svg></div>");
        return svg;
    };
    let (mut low, mut high) = (min.log2().floor() as i32, max.log2().floor() as i32 + 1);
    // A few empty ranges either side keep one tall bar from filling the
    // chart and show where the values sit on the scale.
    while high - low < MIN_BINS {
        low -= 1;
        if high - low < MIN_BINS {
            high += 1;
        }
    }
    let bins = (high - low) as usize;
    let mut counts = vec![0u64; bins];
    for value in values {
        let bin = if *value > 0.0 {
            (value.log2().floor() as i32 - low).clamp(0, bins as i32 - 1) as usize
        } else {
            0
        };
        counts[bin] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let plot_width = width - left - right;
    let plot_height = height - top - bottom;
    for step in 0..=4 {
        let value = most * f64::from(step) / 4.0;
        let y = top + plot_height - plot_height * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            width - right,
            left - 4.0,
            y + 4.0,
            value.round()
        );
    }
    let bar_width = plot_width / bins as f64;
    let label_every = bins.div_ceil(8);
    for (index, &count) in counts.iter().enumerate() {
        let x = left + bar_width * index as f64;
        let bar_height = plot_height * count as f64 / most;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar_height:.1}\" fill=\"{color}\">\
             <title>{}–{}: {count}</title></rect>",
            x + 1.0,
            top + plot_height - bar_height,
            (bar_width - 2.0).max(1.0),
            escape(&label(2f64.powi(low + index as i32))),
            escape(&label(2f64.powi(low + index as i32 + 1))),
        );
        if index.is_multiple_of(label_every) {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                top + plot_height + 16.0,
                escape(&label(2f64.powi(low + index as i32)))
            );
        }
    }
    if bins.is_multiple_of(label_every) {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            width - right,
            top + plot_height + 16.0,
            escape(&label(2f64.powi(high)))
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#6b7280\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">actions per range (lower bound shown)</text></svg></div>",
        width - right,
        left + plot_width / 2.0,
        height - 6.0,
        y = top + plot_height,
    );
    svg
}

const STALL_COLORS: [(&str, &str); 3] =
    [("CPU", "#2563eb"), ("memory", "#f59e0b"), ("IO", "#10b981")];

fn stall_chart(page: &mut String, groups: &[GroupStats]) {
    let _ = write!(
        page,
        "<h2>Pressure stalls per program</h2><p class=\"note\">Share of wall time in which some \
         process of the action was stalled (PSI <i>some</i> ÷ wall): high CPU means CPU-bound at \
         this concurrency, memory means reclaim, IO means disk.</p>"
    );
    let measured: Vec<&GroupStats> = groups
        .iter()
        .filter(|g| g.stall_share.is_some())
        .take(15)
        .collect();
    if measured.is_empty() {
        let _ = write!(
            page,
            "<p class=\"note\">No cgroup measurements (no PSI figures).</p>"
        );
        return;
    }
    let row_height = 30.0;
    let (left, top) = (200.0, 26.0);
    let height = top + row_height * measured.len() as f64 + 28.0;
    let plot_width = FULL_WIDTH - left - 30.0;
    let largest = measured
        .iter()
        .filter_map(|g| g.stall_share)
        .flat_map(|s| [s.cpu, s.memory, s.io])
        .fold(0.05f64, f64::max);
    let scale = ((largest * 20.0) - 1e-9).ceil() / 20.0;
    let mut svg = format!("<div class=\"panel\"><svg width=\"{FULL_WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"stall shares\">");
    for (index, (name, color)) in STALL_COLORS.iter().enumerate() {
        let x = left + 110.0 * index as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"6\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"16\">{name}</text>",
            x + 16.0
        );
    }
    for step in 0..=5 {
        let share = scale * f64::from(step) / 5.0;
        let x = left + plot_width * f64::from(step) / 5.0;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            height - 24.0,
            height - 8.0,
            escape(&percent(share))
        );
    }
    for (row, group) in measured.iter().enumerate() {
        let Some(share) = group.stall_share else {
            continue;
        };
        let y = top + row_height * row as f64;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} ({})</text>",
            left - 8.0,
            y + 18.0,
            escape(&shorten(&group.program, 24)),
            group.count
        );
        for (index, value) in [share.cpu, share.memory, share.io].iter().enumerate() {
            let bar = plot_width * (value / scale).min(1.0);
            let _ = write!(
                svg,
                "<rect x=\"{left}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"7\" fill=\"{}\">\
                 <title>{}: {}</title></rect>",
                y + 4.0 + 8.0 * index as f64,
                STALL_COLORS[index].1,
                STALL_COLORS[index].0,
                escape(&percent(*value))
            );
        }
    }
    svg.push_str("</svg></div>");
    page.push_str(&svg);
}

fn verdict_color(verdict: OomVerdict) -> &'static str {
    match verdict {
        OomVerdict::OwnLimit => "#dc2626",
        OomVerdict::SharedLimit => "#f59e0b",
        OomVerdict::NotOwnLimit => "#7c3aed",
        OomVerdict::None => "#6b7280",
    }
}

/// Concurrent memory of one runner over time, its budget, and its OOM
/// kills marked by verdict.
fn timeline(page: &mut String, runner: &RunnerSizing) {
    let (width, height) = (FULL_WIDTH, 240.0);
    let (left, right, top, bottom) = (80.0, 16.0, 30.0, 34.0);
    let (Some(first), Some(last)) = (runner.timeline.first(), runner.timeline.last()) else {
        return;
    };
    let (start, end) = (first.0, last.0.max(first.0 + 1e-3));
    let ceiling = (runner
        .peak_concurrent_memory_bytes
        .max(runner.memory_budget_bytes) as f64
        * 1.1)
        .max(1.0);
    let plot_width = width - left - right;
    let plot_height = height - top - bottom;
    let x_of = |time: f64| left + plot_width * (time - start) / (end - start);
    let y_of = |value: f64| top + plot_height - plot_height * value / ceiling;
    let budget = match runner.memory_budget_bytes {
        0 => "no budget recorded".to_string(),
        budget => format!("budget {}", bytes(budget)),
    };
    let mut svg = format!(
        "<div class=\"panel\" style=\"margin-bottom:12px\"><svg width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-label=\"concurrent memory\"><text x=\"4\" y=\"16\" style=\"font-size:13px;font-weight:600\">\
         Runner {} {} — summed memory peaks of running actions (upper bound), {}</text>",
        escape(&runner.instance),
        escape(&runner.name),
        escape(&budget)
    );
    for step in 0..=4 {
        let value = ceiling * f64::from(step) / 4.0;
        let y = y_of(value);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            width - right,
            left - 6.0,
            y + 4.0,
            escape(&bytes(value as i64))
        );
    }
    for step in 0..=5 {
        let time = start + (end - start) * f64::from(step) / 5.0;
        let anchor = match step {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            x_of(time),
            height - 12.0,
            escape(&clock(time, step == 0))
        );
    }
    let mut path = format!("M{:.1},{:.1}", x_of(start), y_of(0.0));
    for (time, value) in &runner.timeline {
        let _ = write!(path, "H{:.1}V{:.1}", x_of(*time), y_of(*value as f64));
    }
    let _ = write!(
        svg,
        "<path d=\"{path}V{:.1}Z\" fill=\"#2563eb22\" stroke=\"#2563eb\" stroke-width=\"1.2\"/>",
        y_of(0.0)
    );
    if runner.memory_budget_bytes > 0 {
        let y = y_of(runner.memory_budget_bytes as f64);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#dc2626\" \
             stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/><text x=\"{:.1}\" y=\"{:.1}\" \
             text-anchor=\"end\" style=\"fill:#dc2626\">budget</text>",
            width - right,
            width - right - 4.0,
            y - 4.0
        );
    }
    for (time, value, verdict) in &runner.oom_kills {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{}\" stroke=\"#fff\">\
             <title>OOM kill, {}</title></circle>",
            x_of(*time),
            y_of(*value as f64),
            verdict_color(*verdict),
            verdict.as_str()
        );
    }
    let mut legend_x = width - right - 380.0;
    for verdict in [
        OomVerdict::OwnLimit,
        OomVerdict::SharedLimit,
        OomVerdict::NotOwnLimit,
    ] {
        let _ = write!(
            svg,
            "<circle cx=\"{legend_x}\" cy=\"{}\" r=\"5\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">OOM {}</text>",
            top - 4.0,
            verdict_color(verdict),
            legend_x + 8.0,
            top,
            verdict.as_str()
        );
        legend_x += 125.0;
    }
    svg.push_str("</svg></div>");
    page.push_str(&svg);
}

/// A time on the timeline's axis: the date and time to the second at the
/// start, the time of day elsewhere.
fn clock(time: f64, with_date: bool) -> String {
    let text = rfc3339(time.round());
    let (date, rest) = text.split_once('T').unwrap_or((&text, ""));
    let time_of_day = rest.trim_end_matches('Z');
    if with_date {
        format!("{date} {time_of_day} UTC")
    } else {
        time_of_day.to_string()
    }
}

fn sizing_table(page: &mut String, report: &Report) {
    let sizing = &report.sizing;
    let optional = |value: Option<i64>| value.map_or("–".into(), bytes);
    let _ = write!(
        page,
        "<h2>Sizing</h2><table><tr><th>question</th><th>answer</th></tr>\
         <tr><td>per-action memoryMax holding 99 % of actions</td><td>{}</td></tr>\
         <tr><td>per-action memoryMax holding 100 % of actions</td><td>{}</td></tr>\
         <tr><td>peak concurrent memory (sum of overlapping peaks, an upper bound)</td><td>{}</td></tr>\
         <tr><td>pod memory with {} headroom</td><td>{}</td></tr>\
         <tr><td>peak concurrent CPU</td><td>{}</td></tr>\
         <tr><td>CPU-pressure knee (median CPU stall ≥ 2× that of actions running alone)</td><td>{}</td></tr>\
         </table>",
        optional(sizing.memory_max_p99_bytes),
        optional(sizing.memory_max_p100_bytes),
        optional(sizing.peak_concurrent_memory_bytes),
        percent(sizing.headroom),
        optional(sizing.pod_memory_bytes),
        sizing
            .peak_concurrent_cpu_cores
            .map_or("–".into(), |cores| format!("{cores:.2} cores")),
        sizing
            .cpu_pressure_knee
            .map_or("not reached".into(), |knee| format!("{knee} actions at once")),
    );
    let _ = write!(
        page,
        "<h2>Per runner</h2><table><tr><th>runner</th><th>most actions at once</th>\
         <th>concurrent memory</th><th>pod memory</th><th>budget recorded</th><th>CPU cores</th></tr>"
    );
    for runner in &report.runners {
        let _ = write!(
            page,
            "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
            escape(&runner.instance),
            escape(&runner.name),
            runner.peak_concurrency,
            bytes(runner.peak_concurrent_memory_bytes),
            bytes(runner.pod_memory_bytes),
            match runner.memory_budget_bytes {
                0 => "none".into(),
                budget => bytes(budget),
            },
            runner.peak_concurrent_cpu_cores
        );
    }
    page.push_str("</table>");
}

fn groups_table(page: &mut String, groups: &[GroupStats]) {
    let _ = write!(
        page,
        "<h2>Per program</h2><table><tr><th>program</th><th>count</th><th>wall p50</th>\
         <th>p95</th><th>max</th><th>memory p50</th><th>p95</th><th>p99</th><th>max</th>\
         <th>CPU</th><th>stall CPU</th><th>memory</th><th>IO</th></tr>"
    );
    for group in groups {
        let memory = match group.memory_bytes {
            Some(values) => values
                .iter()
                .map(|&b| format!("<td>{}</td>", bytes(b)))
                .collect::<String>(),
            None => "<td>–</td>".repeat(4),
        };
        let stall = match group.stall_share {
            Some(share) => [share.cpu, share.memory, share.io]
                .iter()
                .map(|&s| format!("<td>{}</td>", percent(s)))
                .collect::<String>(),
            None => "<td>–</td>".repeat(3),
        };
        let mark = if group.memory_from_rss { " *" } else { "" };
        let _ = write!(
            page,
            "<tr><td>{}{mark}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{memory}<td>{}</td>{stall}</tr>",
            escape(&group.program),
            group.count,
            seconds(group.wall_seconds[0]),
            seconds(group.wall_seconds[1]),
            seconds(group.wall_seconds[2]),
            seconds(group.cpu_seconds),
        );
    }
    page.push_str(
        "</table><p class=\"note\">* memory is the POSIX maximum RSS of the largest process \
         (no cgroup measurement); percentiles are nearest-rank.</p>",
    );
}

fn top_table(page: &mut String, title: &str, actions: &[TopAction]) {
    let _ = write!(
        page,
        "<h2>{}</h2><table><tr><th>action</th><th style=\"text-align:left\">program</th><th>memory</th>\
         <th>wall</th><th style=\"text-align:left\">argv</th></tr>",
        escape(title)
    );
    for action in actions {
        let memory = action.memory_bytes.map_or("–".into(), |b| {
            format!(
                "{}{}",
                bytes(b),
                if action.memory_from_rss { " *" } else { "" }
            )
        });
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"text\">{}</td><td>{}</td><td>{}</td><td class=\"argv\">{}</td></tr>",
            escape(&action.action_id),
            escape(&action.program),
            memory,
            seconds(action.wall_seconds),
            escape(&shorten(&action.arguments.join(" "), 300))
        );
    }
    page.push_str("</table>");
}

fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}
