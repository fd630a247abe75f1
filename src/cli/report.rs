//! `rbe-runner report`: the command line over [`crate::report`], which
//! reads the journals and computes the figures; this file parses the
//! options and prints the text, JSON or HTML.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::report::stats::GroupBy;
use crate::report::{analyse, json, text, write_html, ReportError, ReportOptions};

/// The headroom on top of the peak concurrent memory for the suggested
/// pod memory, unless `--headroom` says otherwise.
pub const DEFAULT_HEADROOM: f64 = 0.25;

/// The usage of `report`, printed with its command-line errors.
pub const USAGE: &str = "\
  rbe-runner report [--json] [--html OUT.html] [--group-by program|none]
                    [--since DURATION] [--headroom PERCENT] JOURNAL...
                                    sizing figures from event journals
                                    (JOURNAL.1 is read too when it exists)";

/// A bad command line.
#[derive(Debug, thiserror::Error)]
#[error("report: {0}")]
pub struct UsageError(String);

/// Parses the arguments after `report`.
pub fn parse_args(args: &[String]) -> Result<ReportOptions, UsageError> {
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
                .ok_or_else(|| UsageError(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--json" => options.json = true,
            "--html" => options.html = Some(PathBuf::from(value("--html")?)),
            "--group-by" => {
                options.group_by = match value("--group-by")?.as_str() {
                    "program" => GroupBy::Program,
                    "none" => GroupBy::None,
                    other => {
                        return Err(UsageError(format!(
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
                        UsageError(format!(
                            "--headroom takes a percentage such as 25, not {text:?}"
                        ))
                    })?;
                options.headroom = percent / 100.0;
            }
            "--" => options.journals.extend(args.by_ref().map(PathBuf::from)),
            flag if flag.starts_with("--") => {
                return Err(UsageError(format!("unknown option {flag:?}")))
            }
            journal => options.journals.push(PathBuf::from(journal)),
        }
    }
    if options.journals.is_empty() {
        return Err(UsageError("name at least one JOURNAL".into()));
    }
    Ok(options)
}

/// `--since`: a number with `s`, `m`, `h` or `d` (`90m`, `2h`, `7d`), or
/// a protobuf-JSON duration (`"0.5s"`).
pub fn parse_since(text: &str) -> Result<f64, UsageError> {
    let error = || {
        UsageError(format!(
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
        json::render(&report)
    } else {
        text::render(&report)
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = io::stdout().lock().write_all(output.as_bytes());
    Ok(())
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
