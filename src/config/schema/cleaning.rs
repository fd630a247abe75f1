//! Restoring the host between actions: `cleanTemporaryDirectories`,
//! `cleanProcessTable`, `symlinkTemporaryDirectories` and
//! `runCommandCleaner`.

use std::fmt;
use std::path::PathBuf;

use crate::config::protojson::{optional, Decoded, Field, Message};

/// `runCommandCleaner`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCleaner {
    /// argv of the cleaner; the first element is the program.
    pub arguments: Vec<String>,
}

/// The cleaning fields of the top-level message.
/// Each field is the [`Config`](crate::config::Config) field of the same name.
pub(super) struct Cleaning {
    pub(super) clean_temporary_directories: Vec<PathBuf>,
    pub(super) clean_process_table: bool,
    pub(super) symlink_temporary_directories: Vec<PathBuf>,
    pub(super) run_command_cleaner: Option<CommandCleaner>,
}

/// Takes the cleaning fields from the top-level `message`.
pub(super) fn decode(message: &mut Message) -> Decoded<Cleaning> {
    let clean_temporary_directories =
        optional(message.take("clean_temporary_directories")?, Field::paths)?;
    let clean_process_table = optional(message.take("clean_process_table")?, Field::bool)?;
    let symlink_temporary_directories =
        optional(message.take("symlink_temporary_directories")?, Field::paths)?;
    let run_command_cleaner = message
        .take("run_command_cleaner")?
        .map(decode_run_command_cleaner)
        .transpose()?
        .flatten();
    Ok(Cleaning {
        clean_temporary_directories,
        clean_process_table,
        symlink_temporary_directories,
        run_command_cleaner,
    })
}

/// An argv; an empty list means no cleaner.
fn decode_run_command_cleaner(field: Field) -> Decoded<Option<CommandCleaner>> {
    let elements = field.list()?;
    let mut arguments = Vec::with_capacity(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        // The program must be named; later arguments may be empty.
        arguments.push(if index == 0 {
            element.non_empty_string()?
        } else {
            element.string()?
        });
    }
    Ok((!arguments.is_empty()).then_some(CommandCleaner { arguments }))
}

/// `runCommandCleaner` as `check-config` prints it.
pub(super) fn write_run_command_cleaner(
    f: &mut fmt::Formatter<'_>,
    cleaner: &Option<CommandCleaner>,
) -> fmt::Result {
    match cleaner {
        Some(cleaner) => {
            let arguments: Vec<String> = cleaner
                .arguments
                .iter()
                .map(|argument| format!("{argument:?}"))
                .collect();
            writeln!(f, "runCommandCleaner: [{}]", arguments.join(", "))?;
        }
        None => writeln!(f, "runCommandCleaner: not set")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{assert_invalid_fields, load_with};

    /// Leaving a field out must mean protobuf's default, as upstream does.
    #[test]
    fn missing_fields_take_protobuf_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert!(config.clean_temporary_directories.is_empty());
        assert!(!config.clean_process_table);
        assert!(config.symlink_temporary_directories.is_empty());
        assert_eq!(config.run_command_cleaner, None);
    }

    /// Wrong types name the field they are in.
    #[test]
    fn bad_values_name_their_path() {
        assert_invalid_fields(&[
            (
                "cleanProcessTable: 'yes'",
                "cleanProcessTable",
                "expected true or false",
            ),
            (
                "cleanTemporaryDirectories: '/tmp'",
                "cleanTemporaryDirectories",
                "expected a list",
            ),
            (
                "cleanTemporaryDirectories: ['/tmp', 3]",
                "cleanTemporaryDirectories[1]",
                "expected a string",
            ),
            (
                "cleanTemporaryDirectories: ['']",
                "cleanTemporaryDirectories[0]",
                "must not be empty",
            ),
            (
                "runCommandCleaner: ['']",
                "runCommandCleaner[0]",
                "must not be empty",
            ),
            (
                "runCommandCleaner: 'cleanup'",
                "runCommandCleaner",
                "expected a list",
            ),
        ]);
    }

    #[test]
    fn an_empty_cleaner_list_means_no_cleaner() {
        let config = load_with("runCommandCleaner: []").expect("decodes");
        assert_eq!(config.run_command_cleaner, None);
    }
}
