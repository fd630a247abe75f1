//! Finding the directory of the runner's own cgroup v2.
//!
//! `/proc/self/cgroup` names the cgroup as a path inside the unified
//! hierarchy, relative to our cgroup namespace. That hierarchy may be mounted
//! anywhere (`/sys/fs/cgroup` on a plain v2 host, `/sys/fs/cgroup/unified`
//! on a hybrid one), and a mount may expose only a subtree of it (its root in
//! `/proc/self/mountinfo` is then not `/`). The directory is the mount point
//! of the cgroup2 mount whose root contains the cgroup, plus the rest of the
//! cgroup's path below that root.
//!
//! [`locate_cgroup`] does this over the two texts; [`locate_own_cgroup`]
//! reads them from paths the caller passes (normally the `DEFAULT_`
//! constants below).

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// Where the kernel lists the calling process's cgroups.
pub const DEFAULT_PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
/// Where the kernel lists the mounts visible to the calling process.
pub const DEFAULT_PROC_SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Suffix the kernel appends to a cgroup v2 path in `/proc/<pid>/cgroup`
/// when that cgroup has been removed (seen for zombies whose cgroup was
/// deleted before they were reaped).
const REMOVED_SUFFIX: &str = " (deleted)";

/// Why the runner's cgroup v2 directory could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "/proc/self/cgroup has no `0::` line, so this host does not use the cgroup v2 unified \
         hierarchy (cgroup v1 hosts are not supported)"
    )]
    NoUnifiedHierarchy,
    #[error("line {line_number} of /proc/self/cgroup is malformed: {line:?}")]
    MalformedProcCgroup { line_number: usize, line: String },
    #[error("the cgroup {cgroup_path:?} has been removed")]
    CgroupRemoved { cgroup_path: String },
    #[error(
        "the cgroup {cgroup_path:?} lies outside this process's cgroup namespace, so no mount \
         can show it"
    )]
    OutsideCgroupNamespace { cgroup_path: String },
    #[error("line {line_number} of /proc/self/mountinfo is malformed: {line:?}")]
    MalformedMountinfo { line_number: usize, line: String },
    #[error("no cgroup2 file system is mounted (mount one, e.g. at /sys/fs/cgroup)")]
    NoCgroup2Mount,
    #[error(
        "the cgroup {cgroup_path:?} is not inside any visible cgroup2 mount (mounted roots: \
         {mounted_roots:?})"
    )]
    NotUnderAnyMount {
        cgroup_path: String,
        mounted_roots: Vec<PathBuf>,
    },
}

/// One cgroup2 entry of `/proc/self/mountinfo`, escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cgroup2Mount {
    /// The directory of the hierarchy that appears at the mount point.
    root: PathBuf,
    /// Where it appears.
    mount_point: PathBuf,
}

/// Finds the directory of the cgroup v2 named in `proc_self_cgroup` (the text
/// of `/proc/self/cgroup`) among the mounts in `mountinfo` (the text of
/// `/proc/self/mountinfo`).
///
/// Among cgroup2 mounts, the one whose root is the longest path-component
/// prefix of the cgroup's path wins; when several have equally long roots,
/// the first listed does. The result is a snapshot: if the process is later
/// moved to another cgroup, it goes stale.
pub fn locate_cgroup(proc_self_cgroup: &str, mountinfo: &str) -> Result<PathBuf, LocateError> {
    let cgroup_path = unified_cgroup_path(proc_self_cgroup)?;
    let cgroup = Path::new(cgroup_path);
    if cgroup
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Err(LocateError::OutsideCgroupNamespace {
            cgroup_path: cgroup_path.to_owned(),
        });
    }

    let mounts = cgroup2_mounts(mountinfo)?;
    if mounts.is_empty() {
        return Err(LocateError::NoCgroup2Mount);
    }
    let mut best: Option<(&Cgroup2Mount, &Path, usize)> = None;
    for mount in &mounts {
        // Path::strip_prefix compares whole components: "/build" is not a
        // prefix of "/buildfarm".
        let Ok(below_root) = cgroup.strip_prefix(&mount.root) else {
            continue;
        };
        let depth = mount.root.components().count();
        if best.is_none_or(|(_, _, best_depth)| depth > best_depth) {
            best = Some((mount, below_root, depth));
        }
    }
    let Some((mount, below_root, _)) = best else {
        return Err(LocateError::NotUnderAnyMount {
            cgroup_path: cgroup_path.to_owned(),
            mounted_roots: mounts.into_iter().map(|mount| mount.root).collect(),
        });
    };
    if below_root.as_os_str().is_empty() {
        // join("") would add a trailing slash.
        Ok(mount.mount_point.clone())
    } else {
        Ok(mount.mount_point.join(below_root))
    }
}

/// Reads `/proc/self/cgroup` and `/proc/self/mountinfo` (or stand-ins) and
/// locates the runner's cgroup v2 directory with [`locate_cgroup`].
pub fn locate_own_cgroup(
    proc_self_cgroup_path: &Path,
    mountinfo_path: &Path,
) -> Result<PathBuf, LocateError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| LocateError::Io {
            path: path.to_owned(),
            source,
        })
    };
    locate_cgroup(&read(proc_self_cgroup_path)?, &read(mountinfo_path)?)
}

/// Returns the path of the `0::<path>` line, the unified hierarchy's entry;
/// cgroup v1 lines (`4:memory:/foo`, `1:name=systemd:/`) are skipped.
fn unified_cgroup_path(proc_self_cgroup: &str) -> Result<&str, LocateError> {
    for (index, line) in proc_self_cgroup.lines().enumerate() {
        // The path itself may contain ':', so split off only two fields.
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(LocateError::MalformedProcCgroup {
                line_number: index + 1,
                line: line.to_owned(),
            });
        };
        if hierarchy_id != "0" || !controllers.is_empty() {
            continue;
        }
        if let Some(removed) = path.strip_suffix(REMOVED_SUFFIX) {
            return Err(LocateError::CgroupRemoved {
                cgroup_path: removed.to_owned(),
            });
        }
        if !path.starts_with('/') {
            return Err(LocateError::MalformedProcCgroup {
                line_number: index + 1,
                line: line.to_owned(),
            });
        }
        return Ok(path);
    }
    Err(LocateError::NoUnifiedHierarchy)
}

/// Lists the cgroup2 mounts in a mountinfo text, in order.
///
/// A line reads `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] -
/// FSTYPE SOURCE SUPER_OPTIONS`; the optional fields (`shared:4`, ...) vary
/// in number, so the file system type is the field after the lone `-`.
fn cgroup2_mounts(mountinfo: &str) -> Result<Vec<Cgroup2Mount>, LocateError> {
    let mut mounts = Vec::new();
    for (index, line) in mountinfo.lines().enumerate() {
        let malformed = || LocateError::MalformedMountinfo {
            line_number: index + 1,
            line: line.to_owned(),
        };
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let separator = fields
            .iter()
            .skip(6)
            .position(|field| *field == "-")
            .map(|position| position + 6)
            .ok_or_else(malformed)?;
        let filesystem_type = fields.get(separator + 1).ok_or_else(malformed)?;
        if *filesystem_type != "cgroup2" {
            continue;
        }
        mounts.push(Cgroup2Mount {
            root: decode_octal_escapes(fields[3]),
            mount_point: decode_octal_escapes(fields[4]),
        });
    }
    Ok(mounts)
}

/// Undoes the kernel's mountinfo escaping, which writes space, tab, newline
/// and backslash as a backslash and three octal digits (`\040`). Anything
/// else is kept as is. The result need not be UTF-8.
fn decode_octal_escapes(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' {
            if let Some(&[high, middle, low]) = bytes.get(index + 1..index + 4) {
                let is_octal = |digit: u8| (b'0'..=b'7').contains(&digit);
                if (b'0'..=b'3').contains(&high) && is_octal(middle) && is_octal(low) {
                    decoded.push((high - b'0') * 64 + (middle - b'0') * 8 + (low - b'0'));
                    index += 4;
                    continue;
                }
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    PathBuf::from(OsString::from_vec(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded on the development machine, a cgroup-hybrid host: v1
    /// controllers under /sys/fs/cgroup/<name>, the unified hierarchy at
    /// /sys/fs/cgroup/unified, and the process in its root.
    const HYBRID_HOST_CGROUP: &str = include_str!("testdata/hybrid_host.cgroup");
    const HYBRID_HOST_MOUNTINFO: &str = include_str!("testdata/hybrid_host.mountinfo");

    /// Shape of a systemd host booted with the unified hierarchy only.
    const SYSTEMD_V2_MOUNTINFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
25 24 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:3 - securityfs securityfs rw
26 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 24 0:24 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
";

    fn located(cgroup: &str, mountinfo: &str) -> PathBuf {
        match locate_cgroup(cgroup, mountinfo) {
            Ok(path) => path,
            Err(error) => panic!("locate_cgroup failed: {error}"),
        }
    }

    #[test]
    fn plain_v2_host_with_systemd() {
        let cgroup =
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/rbe-runner.service\n";
        assert_eq!(
            located(cgroup, SYSTEMD_V2_MOUNTINFO),
            Path::new(
                "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/rbe-runner.service"
            )
        );
    }

    #[test]
    fn container_with_a_cgroup_namespace() {
        // Inside the namespace the container's cgroup is "/", and the
        // cgroup2 mount made there has root "/" too.
        let cgroup = "0::/\n";
        let mountinfo = "\
1021 1003 0:52 / / rw,relatime master:312 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1022 1021 0:56 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1027 1021 0:57 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1028 1027 0:31 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(located(cgroup, mountinfo), Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn container_with_a_bind_mounted_subtree() {
        // Without a cgroup namespace the path is the host's, and the mount
        // shows only the container's subtree.
        let cgroup = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope/runner\n";
        let mountinfo = "\
1028 1027 0:31 /kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            located(cgroup, mountinfo),
            Path::new("/sys/fs/cgroup/runner")
        );
    }

    #[test]
    fn hybrid_host_recorded_on_the_development_machine() {
        // The v1 memory line names a different path; only `0::` counts.
        assert!(HYBRID_HOST_CGROUP.contains(":memory:/"));
        assert_eq!(
            located(HYBRID_HOST_CGROUP, HYBRID_HOST_MOUNTINFO),
            Path::new("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn escaped_root_and_mount_point_are_decoded() {
        let cgroup = "0::/build farm/runner\\x\n";
        let mountinfo = "\
40 31 0:38 /build\\040farm /mnt/cgroup\\040v2\\011tab rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            located(cgroup, mountinfo),
            Path::new("/mnt/cgroup v2\ttab/runner\\x")
        );
        assert_eq!(
            decode_octal_escapes("a\\134b\\012c\\9\\04"),
            Path::new("a\\b\nc\\9\\04")
        );
    }

    #[test]
    fn longest_root_prefix_wins_by_component() {
        let mountinfo = "\
26 24 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
50 22 0:23 /build /run/build-cgroup rw shared:7 - cgroup2 cgroup2 rw
51 22 0:23 /build/actions /run/actions rw - cgroup2 cgroup2 rw
52 22 0:23 /build /run/second-build-cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            located("0::/build/runner\n", mountinfo),
            Path::new("/run/build-cgroup/runner"),
            "the deeper root wins, and the first of equal roots"
        );
        assert_eq!(
            located("0::/build/actions/a1\n", mountinfo),
            Path::new("/run/actions/a1")
        );
        assert_eq!(
            located("0::/buildfarm/x\n", mountinfo),
            Path::new("/sys/fs/cgroup/buildfarm/x"),
            "\"/build\" is a string prefix of \"/buildfarm\" but not a component prefix"
        );
        assert_eq!(
            located("0::/build\n", mountinfo),
            Path::new("/run/build-cgroup")
        );
    }

    #[test]
    fn removed_cgroup_is_reported_not_located() {
        let cgroup = "0::/system.slice/gone.service (deleted)\n";
        match locate_cgroup(cgroup, SYSTEMD_V2_MOUNTINFO) {
            Err(LocateError::CgroupRemoved { cgroup_path }) => {
                assert_eq!(cgroup_path, "/system.slice/gone.service")
            }
            other => panic!("expected CgroupRemoved, got {other:?}"),
        }
    }

    #[test]
    fn cgroup_v1_only_host_is_an_error() {
        let cgroup = "4:memory:/foo\n1:name=systemd:/system.slice/x.service\n";
        let error = locate_cgroup(cgroup, SYSTEMD_V2_MOUNTINFO).unwrap_err();
        assert!(
            matches!(error, LocateError::NoUnifiedHierarchy),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .contains("cgroup v1 hosts are not supported"));
    }

    #[test]
    fn missing_cgroup2_mount_is_an_error() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
        let error = locate_cgroup("0::/\n", mountinfo).unwrap_err();
        assert!(matches!(error, LocateError::NoCgroup2Mount), "{error:?}");
    }

    #[test]
    fn cgroup_outside_every_mount_is_an_error() {
        let mountinfo = "\
28 27 0:31 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        match locate_cgroup("0::/system.slice/x.service\n", mountinfo) {
            Err(LocateError::NotUnderAnyMount {
                cgroup_path,
                mounted_roots,
            }) => {
                assert_eq!(cgroup_path, "/system.slice/x.service");
                assert_eq!(mounted_roots, vec![PathBuf::from("/kubepods/pod1")]);
            }
            other => panic!("expected NotUnderAnyMount, got {other:?}"),
        }
    }

    #[test]
    fn cgroup_outside_the_namespace_is_an_error() {
        // The kernel renders a cgroup above the namespace root with "..".
        let error = locate_cgroup("0::/../../other.slice\n", SYSTEMD_V2_MOUNTINFO).unwrap_err();
        assert!(
            matches!(error, LocateError::OutsideCgroupNamespace { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn malformed_inputs_name_the_line() {
        let error =
            locate_cgroup("0::/\n", "26 24 0:23 / /sys/fs/cgroup rw cgroup2\n").unwrap_err();
        assert!(
            matches!(
                error,
                LocateError::MalformedMountinfo { line_number: 1, .. }
            ),
            "{error:?}"
        );
        let error =
            locate_cgroup("4:memory:/\nnonsense\n0::/\n", SYSTEMD_V2_MOUNTINFO).unwrap_err();
        assert!(
            matches!(
                error,
                LocateError::MalformedProcCgroup { line_number: 2, .. }
            ),
            "{error:?}"
        );
        let error = locate_cgroup("0::relative\n", SYSTEMD_V2_MOUNTINFO).unwrap_err();
        assert!(
            matches!(
                error,
                LocateError::MalformedProcCgroup { line_number: 1, .. }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn reading_from_injected_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup_file = dir.path().join("cgroup");
        let mountinfo_file = dir.path().join("mountinfo");
        fs::write(&cgroup_file, "0::/system.slice/rbe-runner.service\n").unwrap();
        fs::write(&mountinfo_file, SYSTEMD_V2_MOUNTINFO).unwrap();
        assert_eq!(
            locate_own_cgroup(&cgroup_file, &mountinfo_file).unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/rbe-runner.service")
        );

        let missing = dir.path().join("missing");
        match locate_own_cgroup(&missing, &mountinfo_file) {
            Err(LocateError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected an I/O error naming the path, got {other:?}"),
        }
    }

    #[test]
    fn the_real_cgroup_of_this_test_process_is_a_cgroup_directory() {
        // Reads the live /proc files (read-only). Requires a cgroup v2 (or
        // hybrid) host, which the runner requires too.
        let directory = locate_own_cgroup(
            Path::new(DEFAULT_PROC_SELF_CGROUP),
            Path::new(DEFAULT_PROC_SELF_MOUNTINFO),
        )
        .expect("locating this process's cgroup v2 on the test host");
        assert!(
            directory.join("cgroup.procs").is_file(),
            "{} has no cgroup.procs",
            directory.display()
        );
    }
}
