//! `inputRootMounts`: filesystems mounted inside the input root of a
//! chrooted action (the shape of bb-remote-execution's PR #116), and the
//! checks that tie them, `isolation.dev` and `isolation.pid` to
//! `chrootIntoInputRoot` (docs/isolation.md, "Chrooted actions").
//!
//! Each entry's `mountpoint` is relative to the input root; what lies at
//! it is only known per action, so its existence is checked when an
//! action is prepared, not here.

use std::fmt;

use crate::config::protojson::{Decoded, Field, FieldError, Message};

use super::isolation::{DevIsolation, IsolationConfig};

/// The `filesystemType` that asks for a recursive bind mount of `source`
/// (an extension of PR #116, where every type goes to mount(2)).
pub const BIND: &str = "bind";

/// One element of `inputRootMounts`, as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRootMount {
    /// `mountpoint`, relative to the input root, normalized: no empty or
    /// `.` components, never `..`, never absolute.
    pub mountpoint: String,
    /// `source`: mount(2)'s source, or with [`BIND`] the absolute host
    /// path to bind.
    pub source: String,
    /// `filesystemType`: mount(2)'s type, or [`BIND`].
    pub filesystem_type: String,
    /// `readOnly`: with [`BIND`] true unless set false; otherwise false
    /// unless set true.
    pub read_only: bool,
}

impl InputRootMount {
    /// Whether this entry binds a host path rather than mounting a
    /// filesystem.
    pub fn is_bind(&self) -> bool {
        self.filesystem_type == BIND
    }

    /// Whether this entry mounts a procfs on the root's `proc`, which is
    /// where `/dev/fd` and `/dev/stdin` point.
    pub fn is_proc_on_proc(&self) -> bool {
        self.filesystem_type == "proc" && self.mountpoint == "proc"
    }
}

/// Decodes `inputRootMounts` (empty when unset).
pub(super) fn decode(field: Option<Field>) -> Decoded<Vec<InputRootMount>> {
    let Some(field) = field else {
        return Ok(Vec::new());
    };
    let mut mounts: Vec<InputRootMount> = Vec::new();
    for element in field.list()? {
        let path = element.path.clone();
        let mount = decode_one(element)?;
        if let Some((earlier, covering)) = mounts
            .iter()
            .enumerate()
            .find(|(_, earlier)| at_or_beneath(&mount.mountpoint, &earlier.mountpoint))
        {
            return Err(FieldError::invalid(
                &format!("{path}.mountpoint"),
                format!(
                    "{:?} lies at or beneath inputRootMounts[{earlier}].mountpoint {:?}, whose \
                     mount hides what the input root has there; nest nothing, mount each \
                     path once",
                    bounded(&mount.mountpoint),
                    bounded(&covering.mountpoint)
                ),
            ));
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

fn decode_one(field: Field) -> Decoded<InputRootMount> {
    let path = field.path.clone();
    let mut message: Message = field.message()?;
    let mountpoint = match message.take("mountpoint")? {
        Some(field) => decode_mountpoint(field)?,
        None => return Err(FieldError::missing(&path, "mountpoint is required")),
    };
    let source = required_string(&mut message, &path, "source")?;
    let filesystem_type = required_string(&mut message, &path, "filesystem_type")?;
    let read_only = message.take("read_only")?.map(Field::bool).transpose()?;
    message.finish()?;
    if filesystem_type == BIND && !source.starts_with('/') {
        return Err(FieldError::invalid(
            &format!("{path}.source"),
            format!(
                "{:?} is not an absolute path: a bind mount's source is a path on the host",
                bounded(&source)
            ),
        ));
    }
    Ok(InputRootMount {
        mountpoint,
        read_only: read_only.unwrap_or(filesystem_type == BIND),
        source,
        filesystem_type,
    })
}

/// A string field that must be present, non-empty and free of NUL.
fn required_string(message: &mut Message, path: &str, proto_name: &str) -> Decoded<String> {
    let Some(field) = message.take(proto_name)? else {
        let camel = crate::config::protojson::lower_camel_case(proto_name);
        return Err(FieldError::missing(path, format!("{camel} is required")));
    };
    let field_path = field.path.clone();
    let value = field.non_empty_string()?;
    if value.contains('\0') {
        return Err(FieldError::invalid(&field_path, "contains a NUL byte"));
    }
    Ok(value)
}

/// A path relative to the input root: not absolute, no `..`, not the
/// root itself; normalized (`./a//b/` is `a/b`).
fn decode_mountpoint(field: Field) -> Decoded<String> {
    let path = field.path.clone();
    let mountpoint = field.string()?;
    let refuse = |why: &str| {
        Err(FieldError::invalid(
            &path,
            format!("{:?} {why}", bounded(&mountpoint)),
        ))
    };
    if mountpoint.starts_with('/') {
        return refuse(
            "is absolute: a mountpoint is relative to the input root (write 'proc', not '/proc')",
        );
    }
    if mountpoint.contains('\0') {
        return refuse("contains a NUL byte");
    }
    let mut components = Vec::new();
    for component in mountpoint.split('/') {
        match component {
            "" | "." => {}
            ".." => return refuse("contains '..': a mountpoint must stay inside the input root"),
            component => components.push(component),
        }
    }
    if components.is_empty() {
        return refuse("names the input root itself, which is not a mountpoint");
    }
    Ok(components.join("/"))
}

/// Whether `path` is `ancestor` or lies beneath it (both normalized).
pub fn at_or_beneath(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// At most 80 characters of `text`, for messages.
fn bounded(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Refuses what needs `chrootIntoInputRoot` without it, `isolation.dev`
/// without a `/proc` in the root, and entries that `isolation.dev` or
/// `isolation.pid` would mount over, naming the fields.
pub(super) fn check_with_other_fields(
    mounts: &[InputRootMount],
    isolation: &IsolationConfig,
    chroot_into_input_root: bool,
) -> Decoded<()> {
    let dev = isolation.dev == DevIsolation::Minimal;
    if !chroot_into_input_root {
        if !mounts.is_empty() {
            return Err(FieldError::invalid(
                "inputRootMounts",
                "needs chrootIntoInputRoot: true (the mounts are made inside the input root, \
                 which only a chrooted action sees as its /)",
            ));
        }
        if dev {
            return Err(FieldError::invalid(
                "isolation.dev",
                "'minimal' needs chrootIntoInputRoot: true (it populates the input root's dev; \
                 an action that is not chrooted has the host's /dev)",
            ));
        }
        return Ok(());
    }
    if dev && !isolation.pid && !mounts.iter().any(InputRootMount::is_proc_on_proc) {
        return Err(FieldError::invalid(
            "isolation.dev",
            "'minimal' links dev/fd, dev/stdin, dev/stdout and dev/stderr into /proc/self, so \
             the input root needs a /proc: set isolation.pid: true, or add an inputRootMounts \
             entry { mountpoint: 'proc', source: 'proc', filesystemType: 'proc' }",
        ));
    }
    for (index, mount) in mounts.iter().enumerate() {
        let field = format!("inputRootMounts[{index}].mountpoint");
        if dev && at_or_beneath(&mount.mountpoint, "dev") {
            return Err(FieldError::invalid(
                &field,
                format!(
                    "{:?} lies in dev, which isolation.dev 'minimal' replaces with its own \
                     tmpfs; drop the entry or isolation.dev",
                    bounded(&mount.mountpoint)
                ),
            ));
        }
        if isolation.pid && at_or_beneath(&mount.mountpoint, "proc") && !mount.is_proc_on_proc() {
            return Err(FieldError::invalid(
                &field,
                format!(
                    "{:?} lies in proc, where isolation.pid mounts the action's own /proc in \
                     a chrooted action; drop the entry or isolation.pid",
                    bounded(&mount.mountpoint)
                ),
            ));
        }
    }
    Ok(())
}

/// `inputRootMounts` as `check-config` prints it.
pub(super) fn write(f: &mut fmt::Formatter<'_>, mounts: &[InputRootMount]) -> fmt::Result {
    if mounts.is_empty() {
        return writeln!(f, "inputRootMounts: none");
    }
    writeln!(f, "inputRootMounts:")?;
    for mount in mounts {
        writeln!(
            f,
            "  - mountpoint: {:?}, source: {:?}, filesystemType: {:?}, readOnly: {}",
            mount.mountpoint, mount.source, mount.filesystem_type, mount.read_only
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{assert_invalid_fields, load_with};

    const CHROOT: &str = "chrootIntoInputRoot: true";

    /// Why it matters: the example (PR #116's shape) is the
    /// documented spelling, and a bind is read-only unless said otherwise.
    #[test]
    fn the_documented_example_decodes() {
        let config = load_with(&format!(
            "{CHROOT}, isolation: {{ pid: true, dev: 'minimal' }}, inputRootMounts: [
               {{ mountpoint: 'proc', source: 'proc', filesystemType: 'proc' }},
               {{ mountpoint: './opt//toolchain/', source: '/opt/toolchain',
                  filesystemType: 'bind', readOnly: true }},
               {{ mountpoint: 'cache', source: '/var/cache', filesystemType: 'bind',
                  readOnly: false }},
               {{ mountpoint: 'scratch', source: 'scratch', filesystemType: 'tmpfs' }},
             ]"
        ))
        .expect("decodes");
        let summary: Vec<_> = config
            .input_root_mounts
            .iter()
            .map(|mount| (mount.mountpoint.as_str(), mount.is_bind(), mount.read_only))
            .collect();
        assert_eq!(
            summary,
            [
                ("proc", false, false),
                ("opt/toolchain", true, true),
                ("cache", true, false),
                ("scratch", false, false),
            ]
        );
        let config = load_with("").expect("decodes");
        assert!(config.input_root_mounts.is_empty());
    }

    /// Why it matters: a mount must never land outside the input root,
    /// and a bad entry must name itself.
    #[test]
    fn bad_entries_are_refused_naming_the_index_and_field() {
        let entry = |fields: &str| format!("{CHROOT}, inputRootMounts: [{fields}]");
        assert_invalid_fields(&[
            (
                &entry("{ mountpoint: '/proc', source: 'proc', filesystemType: 'proc' }"),
                "inputRootMounts[0].mountpoint",
                "absolute",
            ),
            (
                &entry(
                    "{ mountpoint: 'a', source: 'a', filesystemType: 'tmpfs' },
                     { mountpoint: 'b/../../etc', source: '/x', filesystemType: 'bind' }",
                ),
                "inputRootMounts[1].mountpoint",
                "'..'",
            ),
            (
                &entry("{ mountpoint: './', source: 't', filesystemType: 'tmpfs' }"),
                "inputRootMounts[0].mountpoint",
                "input root itself",
            ),
            (
                &entry("{ mountpoint: 'opt', source: 'opt', filesystemType: 'bind' }"),
                "inputRootMounts[0].source",
                "absolute",
            ),
            (
                &entry("{ mountpoint: 'opt', source: '', filesystemType: 'tmpfs' }"),
                "inputRootMounts[0].source",
                "empty",
            ),
            (
                &entry(
                    "{ mountpoint: 'opt', source: '/opt', filesystemType: 'bind' },
                     { mountpoint: 'opt/x', source: 't', filesystemType: 'tmpfs' }",
                ),
                "inputRootMounts[1].mountpoint",
                "inputRootMounts[0]",
            ),
            (
                &entry(
                    "{ mountpoint: 'opt', source: '/opt', filesystemType: 'bind', readOnly: 1 }",
                ),
                "inputRootMounts[0].readOnly",
                "",
            ),
            (&entry("'proc'"), "inputRootMounts[0]", ""),
        ]);
        let missing = load_with(&entry("{ mountpoint: 'opt', source: '/opt' }"))
            .expect_err("no filesystemType");
        crate::config::test_support::assert_mentions(
            &missing.to_string(),
            &["inputRootMounts[0]", "filesystemType"],
        );
        let unknown = load_with(&entry(
            "{ mountpoint: 'opt', source: '/opt', filesystemType: 'bind', readonly: true }",
        ))
        .expect_err("typo");
        crate::config::test_support::assert_mentions(
            &unknown.to_string(),
            &["inputRootMounts[0].readonly"],
        );
    }

    /// Why it matters: without a chroot the mounts and `dev` would go
    /// nowhere the action looks; `dev`'s links need a `/proc` in the root;
    /// and an entry the runner's own mounts would hide must not be
    /// silently lost.
    #[test]
    fn combinations_are_refused_naming_both_fields() {
        assert_invalid_fields(&[
            (
                "inputRootMounts: [{ mountpoint: 'p', source: 'proc', filesystemType: 'proc' }]",
                "inputRootMounts",
                "chrootIntoInputRoot",
            ),
            (
                "isolation: { pid: true, dev: 'minimal' }",
                "isolation.dev",
                "chrootIntoInputRoot",
            ),
            (
                &format!("{CHROOT}, isolation: {{ dev: 'minimal' }}"),
                "isolation.dev",
                "isolation.pid",
            ),
            (
                &format!(
                    "{CHROOT}, isolation: {{ dev: 'minimal' }}, inputRootMounts: [
                       {{ mountpoint: 'proc', source: 'proc', filesystemType: 'proc' }},
                       {{ mountpoint: 'dev/fuse', source: '/dev/fuse', filesystemType: 'bind' }}]"
                ),
                "inputRootMounts[1].mountpoint",
                "isolation.dev",
            ),
            (
                &format!(
                    "{CHROOT}, isolation: {{ pid: true }}, inputRootMounts: [
                       {{ mountpoint: 'proc', source: '/proc', filesystemType: 'bind' }}]"
                ),
                "inputRootMounts[0].mountpoint",
                "isolation.pid",
            ),
        ]);
        load_with(&format!(
            "{CHROOT}, isolation: {{ dev: 'minimal' }}, inputRootMounts: [
               {{ mountpoint: 'proc', source: 'proc', filesystemType: 'proc' }}]"
        ))
        .expect("a proc entry gives dev its /proc");
        load_with(&format!(
            "{CHROOT}, isolation: {{ pid: true, dev: 'minimal' }}"
        ))
        .expect("pid gives dev its /proc");
    }

    /// Why it matters: check-config shows what each action will get.
    #[test]
    fn check_config_prints_every_entry() {
        let config = load_with(&format!(
            "{CHROOT}, inputRootMounts: [
               {{ mountpoint: 'opt/tc', source: '/opt/tc', filesystemType: 'bind' }}]"
        ))
        .expect("decodes");
        let printed = config.to_string();
        assert!(
            printed.contains(
                "inputRootMounts:\n  - mountpoint: \"opt/tc\", source: \"/opt/tc\", \
                 filesystemType: \"bind\", readOnly: true\n"
            ),
            "{printed}"
        );
        assert!(load_with("")
            .unwrap()
            .to_string()
            .contains("inputRootMounts: none\n"));
    }
}
