//! `rbe-runner report`: worker sizing for capacity analysts, from event
//! journals.
//!
//! - [`parse`]: journal lines → typed records, streaming; bad lines are
//!   counted, never fatal.
//! - [`stats`]: tallies, per-program distributions, concurrency sums and
//!   the CPU-pressure knee.
//! - [`text`], [`json`], [`html`]: the three ways of showing them.

pub mod html;
pub mod json;
pub mod parse;
pub mod stats;
pub mod text;

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use parse::{read_journal, Record, Skipped};
use stats::{Analysis, GroupBy, Report};

/// The headroom on top of the peak concurrent memory for the suggested
/// pod memory, unless `--headroom` says otherwise.
pub const DEFAULT_HEADROOM: f64 = 0.25;

/// The usage of `report`, for the binary's help.
pub const USAGE: &str = "\
  rbe-runner report [--json] [--html OUT.html] [--group-by program|none]
                    [--since DURATION] [--headroom PERCENT] JOURNAL...
                                    sizing figures from event journals
                                    (JOURNAL.1 is read too when it exists)";

/// What `report` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Print JSON instead of tables.
    pub json: bool,
    /// Also write the HTML page here.
    pub html: Option<PathBuf>,
    /// How actions are grouped.
    pub group_by: GroupBy,
    /// Only actions that finished within this many seconds of the latest
    /// event.
    pub since_seconds: Option<f64>,
    /// Headroom for the pod memory (0.25: 25 %).
    pub headroom: f64,
    /// The journals, in the order given.
    pub journals: Vec<PathBuf>,
}

/// Errors of `report`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A bad command line.
    #[error("report: {0}")]
    Usage(String),
    /// A journal that cannot be read.
    #[error("report: cannot read {path}: {source}")]
    Read {
        /// The journal.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The HTML page cannot be written.
    #[error("report: cannot write {path}: {source}")]
    Write {
        /// The page.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Parses the arguments after `report`.
pub fn parse_args(args: &[String]) -> Result<ReportOptions, ReportError> {
    let mut options = ReportOptions {
        json: false,
        html: None,
        group_by: GroupBy::Program,
        since_seconds: None,
        headroom: DEFAULT_HEADROOM,
        journals: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| ReportError::Usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--json" => options.json = true,
            "--html" => options.html = Some(PathBuf::from(value("--html")?)),
            "--group-by" => {
                options.group_by = match value("--group-by")?.as_str() {
                    "program" => GroupBy::Program,
                    "none" => GroupBy::None,
                    other => {
                        return Err(ReportError::Usage(format!(
                            "--group-by takes program or none, not {other:?}"
                        )))
                    }
                }
            }
            "--since" => options.since_seconds = Some(parse_since(value("--since")?)?),
            "--headroom" => {
                let text = value("--headroom")?;
                let percent: f64 = text
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|p: &f64| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| {
                        ReportError::Usage(format!(
                            "--headroom takes a percentage such as 25, not {text:?}"
                        ))
                    })?;
                options.headroom = percent / 100.0;
            }
            "--" => options.journals.extend(args.by_ref().map(PathBuf::from)),
            flag if flag.starts_with("--") => {
                return Err(ReportError::Usage(format!("unknown option {flag:?}")))
            }
            journal => options.journals.push(PathBuf::from(journal)),
        }
    }
    if options.journals.is_empty() {
        return Err(ReportError::Usage("name at least one JOURNAL".into()));
    }
    Ok(options)
}

/// `--since`: a number with `s`, `m`, `h` or `d` (`90m`, `2h`, `7d`), or
/// a protobuf-JSON duration (`"0.5s"`).
pub fn parse_since(text: &str) -> Result<f64, ReportError> {
    let error = || {
        ReportError::Usage(format!(
            "--since takes a duration such as 30m, 2h, 7d or 90s, not {text:?}"
        ))
    };
    let unit = match text.chars().last() {
        Some('m') => 60.0,
        Some('h') => 3600.0,
        Some('d') => 86400.0,
        Some('s') => {
            return crate::config::parse_duration(text)
                .map(|duration| duration.as_secs_f64())
                .map_err(|_| error())
        }
        _ => return Err(error()),
    };
    let number: f64 = text[..text.len() - 1].parse().map_err(|_| error())?;
    if !number.is_finite() || number < 0.0 {
        return Err(error());
    }
    Ok(number * unit)
}

/// The files to read for the journals named: each rotated `.1` file that
/// exists and was not named itself, before its journal (it is older).
pub fn journal_files(journals: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for journal in journals {
        let mut rotated = journal.clone().into_os_string();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        if rotated.is_file() && !journals.contains(&rotated) && !files.contains(&rotated) {
            files.push(rotated);
        }
        if !files.contains(journal) {
            files.push(journal.clone());
        }
    }
    files
}

/// Reads every file, handing each record to `record`.
fn read_all(
    files: &[PathBuf],
    skipped: &mut Skipped,
    mut record: impl FnMut(Record),
) -> Result<(), ReportError> {
    for path in files {
        let read_error = |source| ReportError::Read {
            path: path.clone(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        read_journal(
            BufReader::with_capacity(1 << 16, file),
            skipped,
            &mut record,
        )
        .map_err(read_error)?;
    }
    Ok(())
}

/// The report of the journals, as `options` ask.
pub fn analyse(options: &ReportOptions) -> Result<Report, ReportError> {
    let files = journal_files(&options.journals);
    // `--since` counts back from the latest event, which is only known at
    // the end: a first pass finds it rather than keeping every action's
    // argv until then.
    let cutoff = match options.since_seconds {
        None => None,
        Some(since) => {
            let mut latest = f64::NEG_INFINITY;
            read_all(&files, &mut Skipped::default(), |record| {
                if let Some(time) = record_time(&record) {
                    latest = latest.max(time);
                }
            })?;
            Some(latest - since)
        }
    };
    let mut analysis = Analysis::new(options.group_by, cutoff);
    let mut skipped = Skipped::default();
    read_all(&files, &mut skipped, |record| analysis.add(record))?;
    analysis.skipped = skipped;
    Ok(analysis.finish(options.headroom))
}

fn record_time(record: &Record) -> Option<f64> {
    match record {
        Record::Started(started) => Some(started.time),
        Record::Finished(finished) => Some(finished.time),
        Record::CleanupFailed { time } => Some(*time),
        Record::RunnerState(state) => Some(state.time),
        Record::Terminating => None,
    }
}

/// `rbe-runner report ARGS`: prints the report; exit 2 on a bad command
/// line, 1 when a journal cannot be read or the page written.
pub fn main(args: &[String]) -> ExitCode {
    let options = match parse_args(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("{err}\nusage:\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &ReportOptions) -> Result<(), ReportError> {
    let report = analyse(options)?;
    if let Some(path) = &options.html {
        write_html(path, &report)?;
    }
    let output = if options.json {
        format!("{:#}\n", json::report_json(&report))
    } else {
        text::render(&report)
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = io::stdout().lock().write_all(output.as_bytes());
    Ok(())
}

fn write_html(path: &Path, report: &Report) -> Result<(), ReportError> {
    std::fs::write(path, html::render(report)).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_minutes_hours_days_and_seconds() {
        assert_eq!(parse_since("30m").unwrap(), 1800.0);
        assert_eq!(parse_since("2h").unwrap(), 7200.0);
        assert_eq!(parse_since("1.5d").unwrap(), 129_600.0);
        assert_eq!(parse_since("0.5s").unwrap(), 0.5);
        for bad in ["", "2", "-1h", "h", "2w", "nanm"] {
            assert!(parse_since(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_rotated_journal_is_read_first_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("events.jsonl");
        let rotated = dir.path().join("events.jsonl.1");
        std::fs::write(&journal, "").unwrap();
        let alone = journal_files(std::slice::from_ref(&journal));
        assert_eq!(alone, std::slice::from_ref(&journal));
        std::fs::write(&rotated, "").unwrap();
        assert_eq!(
            journal_files(std::slice::from_ref(&journal)),
            [rotated.clone(), journal.clone()]
        );
        assert_eq!(
            journal_files(&[journal.clone(), rotated.clone()]),
            [journal, rotated]
        );
    }

    #[test]
    fn the_command_line_is_parsed_and_bad_options_named() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let options = parse_args(&args(&[
            "--json",
            "--group-by",
            "none",
            "--since",
            "1h",
            "--headroom",
            "10",
            "a",
            "b",
        ]))
        .unwrap();
        assert!(options.json);
        assert_eq!(options.group_by, GroupBy::None);
        assert_eq!(options.since_seconds, Some(3600.0));
        assert_eq!(options.headroom, 0.1);
        assert_eq!(options.journals, [PathBuf::from("a"), PathBuf::from("b")]);
        let error = parse_args(&args(&["--colour", "a"])).unwrap_err();
        assert!(error.to_string().contains("--colour"));
        assert!(parse_args(&args(&["--json"])).is_err(), "no journal");
        assert!(parse_args(&args(&["a", "--html"])).is_err(), "no value");
    }
}
