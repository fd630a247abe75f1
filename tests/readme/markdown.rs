//! Just enough Markdown for checking our own documents: fenced blocks with
//! their info strings, inline code spans, links and table rows. Not a
//! general parser: it reads what README.md and docs/ are written in.

/// A fenced code block: ```` ```INFO ```` … ```` ``` ````.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// 1-based line of the opening fence, for messages.
    pub line: usize,
    /// The words of the info string (`sh runnable` → `["sh", "runnable"]`).
    pub info: Vec<String>,
    /// The lines between the fences.
    pub body: Vec<String>,
}

impl Fence {
    /// Whether the info string has `word` (after the language).
    pub fn has(&self, word: &str) -> bool {
        self.info.iter().skip(1).any(|w| w == word)
    }
}

/// A piece of a document: prose lines or a fenced block, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Prose { line: usize, text: String },
    Fence(Fence),
}

/// Splits `text` into prose lines and fenced blocks. An unclosed fence is
/// an error naming its line.
pub fn pieces(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut open: Option<Fence> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        match open.as_mut() {
            Some(fence) if line.trim_end() == "```" => {
                pieces.push(Piece::Fence(fence.clone()));
                open = None;
            }
            Some(fence) => fence.body.push(line.to_string()),
            None => match line.strip_prefix("```") {
                Some(info) => {
                    open = Some(Fence {
                        line: number,
                        info: info.split_whitespace().map(str::to_string).collect(),
                        body: Vec::new(),
                    })
                }
                None => pieces.push(Piece::Prose {
                    line: number,
                    text: line.to_string(),
                }),
            },
        }
    }
    match open {
        Some(fence) => Err(format!(
            "the fence opened at line {} is never closed",
            fence.line
        )),
        None => Ok(pieces),
    }
}

/// The prose of `text`, with fenced blocks left out.
pub fn prose(text: &str) -> Result<String, String> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Prose { text, .. } => Some(text + "\n"),
            Piece::Fence(_) => None,
        })
        .collect())
}

/// The inline code spans (`` `…` ``) of prose.
pub fn code_spans(prose: &str) -> Vec<String> {
    prose
        .lines()
        .flat_map(|line| {
            line.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every link target `](target)` of prose.
pub fn link_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// The anchor GitHub gives a heading: lower case, spaces to `-`, and
/// everything but letters, digits, `-` and `_` dropped.
pub fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading of `text` (outside fences).
pub fn anchors(text: &str) -> Result<Vec<String>, String> {
    Ok(prose(text)?
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect())
}

/// The cells of every table row of prose (`| a | b |`), separator rows
/// left out.
pub fn table_rows(prose: &str) -> Vec<Vec<String>> {
    prose
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|') && line.ends_with('|') && line.len() > 1)
        .map(|line| {
            line[1..line.len() - 1]
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| {
            !cells
                .iter()
                .all(|cell| cell.chars().all(|c| c == '-' || c == ':'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the checker must see exactly the blocks a reader sees.
    #[test]
    fn fences_are_split_from_prose_with_their_info_words() {
        let text = "intro\n```sh runnable\necho hi\n```\nafter\n";
        let pieces = pieces(text).unwrap();
        assert_eq!(pieces.len(), 3);
        let Piece::Fence(fence) = &pieces[1] else {
            panic!("a fence")
        };
        assert_eq!(fence.line, 2);
        assert!(fence.has("runnable"));
        assert_eq!(fence.body, vec!["echo hi".to_string()]);
    }

    /// Why it matters: an unclosed fence would hide the rest of a document.
    #[test]
    fn an_unclosed_fence_is_an_error_naming_its_line() {
        assert!(pieces("a\n```sh\nx\n").unwrap_err().contains("line 2"));
    }

    /// Why it matters: links into docs/ must use the anchors GitHub makes.
    #[test]
    fn anchors_follow_githubs_rule() {
        assert_eq!(
            anchor(" Metrics and health (`global.diagnosticsHttpServer`)"),
            "metrics-and-health-globaldiagnosticshttpserver"
        );
        assert_eq!(
            anchor("Action events (`events`, `rbe-runner watch`)"),
            "action-events-events-rbe-runner-watch"
        );
    }

    /// Why it matters: the reference checks read table rows and code spans.
    #[test]
    fn table_rows_and_code_spans_are_read() {
        let prose = "| a | b |\n|---|---|\n| `x` | y |\ntext `z` and `w`\n";
        assert_eq!(table_rows(prose), vec![vec!["a", "b"], vec!["`x`", "y"]]);
        assert_eq!(code_spans(prose), vec!["x", "z", "w"]);
        assert_eq!(
            link_targets("see [a](docs/a.md#b) and [c](#d)"),
            vec!["docs/a.md#b", "#d"]
        );
    }
}
