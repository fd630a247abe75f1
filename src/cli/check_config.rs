//! `rbe-runner check-config CONFIG`: evaluates and validates CONFIG and
//! prints what was understood, without touching the paths it names.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;

use super::{status, USAGE};
use crate::config;

/// `check-config CONFIG`: exit 0, or 1 with the error on stderr.
pub fn main(args: &[String]) -> ExitCode {
    status(check_config_file(args))
}

fn check_config_file(args: &[String]) -> anyhow::Result<()> {
    let [file] = args else {
        bail!("check-config takes exactly one argument, the configuration file\n{USAGE}");
    };
    let config = config::load(Path::new(file))?;
    println!("{config}");
    Ok(())
}
