//! The README's runnable examples: which blocks run, what each command is
//! expected to do, and the output a block promises.
//!
//! A fenced block whose info string is `sh runnable` is run; `sh runnable
//! with-server` is run while the Quick start's server runs, as the reader
//! who followed it has it running in another terminal. Each command (lines
//! joined at a trailing `\`) may end with one annotation comment:
//!
//! - `# exit: N`: the command is expected to exit with status N (else 0);
//! - `# server`: a server, started in the background until it logs its
//!   `serving` line, stopped with SIGTERM at the end of the block, where it
//!   must exit 0. It must be one simple command, so that the signal reaches
//!   the program and not a shell around it;
//! - `# root`: runs only as root (elsewhere it is recorded as skipped);
//!   `# server root`: a server that runs only as root. A block with a
//!   skipped command is not compared with its output.
//!
//! The next fenced block whose info string has `output` is what the
//! runnable block before it prints (its commands' stdout and stderr
//! together), compared line by line as a pattern (see `pattern.rs`).

use crate::markdown::{Fence, Piece};

/// What a command is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Run to completion with this exit status.
    Exit(i32),
    /// Serve until SIGTERM at the end of its block, then exit 0.
    Server,
}

/// One command of a runnable block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// 1-based line in the README where the command starts.
    pub line: usize,
    /// The shell text, as the reader would paste it (annotation included).
    pub text: String,
    pub expect: Expect,
    pub root_only: bool,
}

/// A runnable block and what it promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub line: usize,
    pub commands: Vec<Command>,
    pub with_server: bool,
    /// The output block that follows it, if any.
    pub output: Option<Fence>,
}

/// The runnable examples of a document, in order.
pub fn examples(pieces: &[Piece]) -> Result<Vec<Example>, String> {
    let mut examples: Vec<Example> = Vec::new();
    for piece in pieces {
        let Piece::Fence(fence) = piece else { continue };
        if fence.has("output") {
            let Some(example) = examples
                .last_mut()
                .filter(|example| example.output.is_none())
            else {
                return Err(format!(
                    "line {}: an output block must follow a runnable block that has none yet",
                    fence.line
                ));
            };
            example.output = Some(fence.clone());
        } else if fence.has("runnable") {
            if fence.info.first().map(String::as_str) != Some("sh") {
                return Err(format!(
                    "line {}: only `sh` blocks can be runnable",
                    fence.line
                ));
            }
            examples.push(Example {
                line: fence.line,
                commands: commands(fence)?,
                with_server: fence.has("with-server"),
                output: None,
            });
        }
    }
    Ok(examples)
}

/// The commands of a runnable block, with their annotations.
fn commands(fence: &Fence) -> Result<Vec<Command>, String> {
    let mut commands = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in fence.body.iter().enumerate() {
        let number = fence.line + 1 + index;
        let (start, text) = match pending.take() {
            Some((start, text)) => (start, text + "\n" + line),
            None if line.trim().is_empty() || line.trim_start().starts_with('#') => continue,
            None => (number, line.clone()),
        };
        if line.ends_with('\\') {
            pending = Some((start, text));
            continue;
        }
        commands.push(command(start, text)?);
    }
    if let Some((start, _)) = pending {
        return Err(format!(
            "line {start}: the command's last line ends with `\\`"
        ));
    }
    if commands.is_empty() {
        return Err(format!(
            "line {}: a runnable block without a command",
            fence.line
        ));
    }
    Ok(commands)
}

/// One command and its trailing annotation.
fn command(line: usize, text: String) -> Result<Command, String> {
    let annotation = text
        .rsplit_once(" # ")
        .map(|(_, comment)| comment.trim())
        .unwrap_or_default();
    let word = annotation.split_whitespace().next().unwrap_or_default();
    let (expect, root_only) = match word {
        "exit:" => {
            let status = annotation
                .split_whitespace()
                .nth(1)
                .and_then(|status| status.parse().ok())
                .ok_or_else(|| format!("line {line}: `# exit:` needs a number"))?;
            (Expect::Exit(status), false)
        }
        "server" | "server:" => {
            let program = text
                .rsplit_once(" # ")
                .map(|(program, _)| program)
                .unwrap_or_default();
            if program.contains(['&', ';', '|', '\n']) {
                return Err(format!(
                    "line {line}: a `# server` must be one simple command, so that SIGTERM reaches it"
                ));
            }
            let root_only = annotation.split_whitespace().nth(1) == Some("root");
            (Expect::Server, root_only)
        }
        "root" | "root:" => (Expect::Exit(0), true),
        _ => (Expect::Exit(0), false),
    };
    Ok(Command {
        line,
        text,
        expect,
        root_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markdown::pieces;

    fn parse(text: &str) -> Result<Vec<Example>, String> {
        examples(&pieces(text).unwrap())
    }

    /// Why it matters: each annotation changes what counts as success.
    #[test]
    fn annotations_set_what_each_command_must_do() {
        let text = "```sh runnable\n# a comment\nmkdir -p run\nprog serve   # server: Ctrl-C stops it\nfalse   # exit: 1\nid -u  # root\nprog isolated   # server root\n```\n";
        let example = &parse(text).unwrap()[0];
        let expects: Vec<_> = example
            .commands
            .iter()
            .map(|c| (c.line, c.expect, c.root_only))
            .collect();
        assert_eq!(
            expects,
            vec![
                (3, Expect::Exit(0), false),
                (4, Expect::Server, false),
                (5, Expect::Exit(1), false),
                (6, Expect::Exit(0), true),
                (7, Expect::Server, true),
            ]
        );
    }

    /// Why it matters: a command continued with `\` is one command.
    #[test]
    fn continued_lines_make_one_command() {
        let example = &parse("```sh runnable\necho a \\\n  b   # exit: 0\n```\n").unwrap()[0];
        assert_eq!(example.commands.len(), 1);
        assert_eq!(example.commands[0].text, "echo a \\\n  b   # exit: 0");
    }

    /// Why it matters: the output shown belongs to the block just before it.
    #[test]
    fn an_output_block_belongs_to_the_runnable_block_before_it() {
        let text = "```sh runnable with-server\necho hi\n```\nprints:\n```text output\nhi\n```\n```sh\nnot run\n```\n";
        let examples = parse(text).unwrap();
        assert_eq!(examples.len(), 1);
        assert!(examples[0].with_server);
        assert_eq!(
            examples[0].output.as_ref().unwrap().body,
            vec!["hi".to_string()]
        );
        assert!(parse("```text output\nx\n```\n")
            .unwrap_err()
            .contains("line 1"));
    }

    /// Why it matters: SIGTERM to a shell would not reach the server.
    #[test]
    fn a_server_must_be_a_simple_command() {
        let error = parse("```sh runnable\nmkdir x && serve   # server\n```\n").unwrap_err();
        assert!(error.contains("simple command"), "{error}");
    }
}
