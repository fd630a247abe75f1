//! A FUSE filesystem whose reads are slow, as bb_worker's virtual build
//! directory is when it loads a file from the CAS on its first read: one
//! executable file, `slow`, a shell script whose every read is answered
//! only after a delay, or ([`SlowFuse::mount_hung`]) only once the test
//! releases it, as a hung mount's.
//!
//! A small server over `/dev/fuse`, mounted with mount(2) (root only), so
//! that no library or package is needed: it answers the handful of
//! requests that executing a file sends (INIT, LOOKUP, GETATTR, OPEN,
//! READ, FLUSH, RELEASE), those that creating and writing a file sends
//! (CREATE, WRITE, SETATTR; such files live in memory and are read at
//! once), so that an action's input root and outputs can live on it too,
//! and ENOSYS to anything else.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The script that lives on the filesystem: it runs its arguments, if
/// any (`slow sleep 30`), and exits 0 without.
pub const SCRIPT: &[u8] = b"#!/bin/sh\nexec \"$@\"\n";

/// The node of the script (the root is 1).
const FILE_NODE: u64 = 2;

const LOOKUP: u32 = 1;
const SETATTR: u32 = 4;
const WRITE: u32 = 16;
const CREATE: u32 = 35;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const STATFS: u32 = 17;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

/// A mounted slow filesystem; unmounted when dropped.
pub struct SlowFuse {
    mountpoint: PathBuf,
    reads: Arc<AtomicUsize>,
    /// Set once reads may be answered, for a hung filesystem.
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl SlowFuse {
    /// Mounts the filesystem at `mountpoint` (an empty directory), its
    /// reads answered after `delay`.
    pub fn mount(mountpoint: &Path, delay: Duration) -> SlowFuse {
        Self::mount_with(mountpoint, Some(delay))
    }

    /// Mounts the filesystem at `mountpoint`, its reads answered only
    /// once [`Self::release`] is called: a hung mount.
    pub fn mount_hung(mountpoint: &Path) -> SlowFuse {
        Self::mount_with(mountpoint, None)
    }

    /// Answers every read waiting on a hung filesystem, and every later
    /// one at once.
    pub fn release(&self) {
        let (released, changed) = &*self.released;
        *released.lock().unwrap() = true;
        changed.notify_all();
    }

    fn mount_with(mountpoint: &Path, delay: Option<Duration>) -> SlowFuse {
        let device = File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let options = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
            device.as_raw_fd()
        ))
        .unwrap();
        let target = CString::new(mountpoint.as_os_str().as_bytes()).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives
        // the call; the kernel only reads them.
        let mounted = unsafe {
            libc::mount(
                c"rbe-slow-fuse".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            mounted,
            0,
            "mount FUSE at {}: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        );
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let waited = released.clone();
        std::thread::spawn(move || serve(device, delay, &counted, &waited));
        SlowFuse {
            mountpoint: mountpoint.to_path_buf(),
            reads,
            released,
        }
    }

    /// The script's path.
    pub fn script(&self) -> PathBuf {
        self.mountpoint.join("slow")
    }

    /// How many reads reached the server so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// The file that aborts this filesystem's connection, as an operator
    /// ends a hung FUSE server (`/sys/fs/fuse/connections/N/abort`):
    /// every request waiting, and every later one, fails. Mounts the
    /// control filesystem there if it is not yet; `Err` says why there is
    /// none.
    pub fn abort_file(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::MetadataExt;
        let connections = Path::new("/sys/fs/fuse/connections");
        let device = std::fs::metadata(&self.mountpoint)
            .map_err(|error| format!("stat {}: {error}", self.mountpoint.display()))?
            .dev();
        let abort = connections
            .join(libc::minor(device).to_string())
            .join("abort");
        if !abort.exists() {
            // SAFETY: NUL-terminated strings that outlive the call.
            let mounted = unsafe {
                libc::mount(
                    c"fusectl".as_ptr(),
                    c"/sys/fs/fuse/connections".as_ptr(),
                    c"fusectl".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if mounted != 0 {
                return Err(format!(
                    "cannot mount fusectl at {}: {}",
                    connections.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        match abort.exists() {
            true => Ok(abort),
            false => Err(format!("{} does not exist", abort.display())),
        }
    }

    /// Waits (bounded) until a read has reached the server: whoever reads
    /// is now blocked for the delay.
    pub fn wait_for_a_read(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.reads.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no read reached the FUSE server");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for SlowFuse {
    fn drop(&mut self) {
        self.release();
        let target = CString::new(self.mountpoint.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Answers requests until the filesystem is unmounted; reads after
/// `delay`, or once released when there is none.
fn serve(
    device: File,
    delay: Option<Duration>,
    reads: &AtomicUsize,
    released: &Arc<(Mutex<bool>, Condvar)>,
) {
    let mut buffer = vec![0u8; 1 << 20 | 4096];
    let mut files: HashMap<u64, Written> = HashMap::new();
    let mut next_node = FILE_NODE + 1;
    loop {
        let length = match (&device).read(&mut buffer) {
            Ok(length) => length,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
            // ENODEV: unmounted.
            Err(_) => return,
        };
        let request = &buffer[..length];
        let opcode = u32_at(request, 4);
        let unique = u64_at(request, 8);
        let node = u64_at(request, 16);
        let body = &request[40..];
        let name = |at: usize| body[at..].split(|b| *b == 0).next().unwrap_or_default();
        let reply_to = match opcode {
            FORGET | BATCH_FORGET | INTERRUPT => continue,
            INIT => Ok(init_out()),
            LOOKUP if node == 1 && name(0) == b"slow" => Ok(entry_out(FILE_NODE, &files)),
            LOOKUP if node == 1 => match files.iter().find(|(_, file)| file.name == name(0)) {
                Some((&found, _)) => Ok(entry_out(found, &files)),
                None => Err(libc::ENOENT),
            },
            LOOKUP => Err(libc::ENOENT),
            GETATTR | SETATTR => Ok(attr_out(node, &files)),
            OPEN => Ok([0u8; 16].to_vec()),
            CREATE if node == 1 => {
                // fuse_create_in: flags, mode, umask, open_flags; the name.
                let created = next_node;
                next_node += 1;
                files.insert(
                    created,
                    Written {
                        name: name(16).to_vec(),
                        data: Vec::new(),
                    },
                );
                let mut out = entry_out(created, &files);
                out.extend(created.to_le_bytes()); // fh
                out.extend([0u8; 8]); // open_flags, padding
                Ok(out)
            }
            CREATE => Err(libc::EACCES),
            WRITE => match files.get_mut(&node) {
                // fuse_write_in: fh, offset, size, write_flags, lock_owner,
                // flags, padding; the data.
                Some(file) => {
                    let offset = u64_at(body, 8) as usize;
                    let size = u32_at(body, 16) as usize;
                    let data = &body[40..40 + size];
                    if file.data.len() < offset + size {
                        file.data.resize(offset + size, 0);
                    }
                    file.data[offset..offset + size].copy_from_slice(data);
                    let mut out = (size as u32).to_le_bytes().to_vec();
                    out.extend([0u8; 4]);
                    Ok(out)
                }
                None => Err(libc::EBADF),
            },
            READ if node != FILE_NODE => {
                let offset = u64_at(body, 8) as usize;
                let size = u32_at(body, 16) as usize;
                let data = files
                    .get(&node)
                    .map(|file| &file.data[..])
                    .unwrap_or_default();
                let start = offset.min(data.len());
                let end = (offset + size).min(data.len());
                Ok(data[start..end].to_vec())
            }
            READ => {
                // Answered on a thread of its own, as bb_worker's FUSE
                // server (and any NFS server) answers other requests while
                // one read waits for the CAS: a close (FLUSH) elsewhere on
                // the filesystem does not wait for it.
                reads.fetch_add(1, Ordering::SeqCst);
                let offset = u64_at(body, 8) as usize;
                let size = u32_at(body, 16) as usize;
                let start = offset.min(SCRIPT.len());
                let end = (offset + size).min(SCRIPT.len());
                let answer = device.try_clone().expect("duplicate /dev/fuse");
                let released = released.clone();
                std::thread::spawn(move || {
                    match delay {
                        Some(delay) => std::thread::sleep(delay),
                        None => {
                            let (done, changed) = &*released;
                            let _released = changed
                                .wait_while(done.lock().unwrap(), |done| !*done)
                                .unwrap();
                        }
                    }
                    reply(&answer, unique, Ok(SCRIPT[start..end].to_vec()));
                });
                continue;
            }
            FLUSH | RELEASE => Ok(Vec::new()),
            // `fuse_statfs_out` (`fuse_kstatfs`): room to spare, since the
            // runner refuses to create an action's stdout on a filesystem
            // that says it is full.
            STATFS => {
                let mut out = Vec::with_capacity(80);
                // blocks, bfree, bavail, files, ffree
                for count in [1u64 << 20; 5] {
                    out.extend_from_slice(&count.to_le_bytes());
                }
                // bsize, namelen, frsize, padding
                for value in [4096u32, 255, 4096, 0] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
                out.resize(80, 0); // spare[6]
                Ok(out)
            }
            _ => Err(libc::ENOSYS),
        };
        reply(&device, unique, reply_to);
    }
}

/// Writes the answer to request `unique`: its payload, or an errno.
fn reply(device: &File, unique: u64, answer: Result<Vec<u8>, i32>) {
    let (error, payload) = match answer {
        Ok(payload) => (0, payload),
        Err(errno) => (-errno, Vec::new()),
    };
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend(((16 + payload.len()) as u32).to_le_bytes());
    out.extend(error.to_le_bytes());
    out.extend(unique.to_le_bytes());
    out.extend(payload);
    // ENOENT: the request was interrupted meanwhile.
    let _ = (&*device).write(&out);
}

/// `fuse_init_out` of protocol 7.19 (the kernel accepts the shorter
/// reply of an older minor version).
fn init_out() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(7u32.to_le_bytes()); // major
    out.extend(19u32.to_le_bytes()); // minor
    out.extend(0u32.to_le_bytes()); // max_readahead
    out.extend(0u32.to_le_bytes()); // flags
    out.extend(1u16.to_le_bytes()); // max_background
    out.extend(1u16.to_le_bytes()); // congestion_threshold
    out.extend((1u32 << 20).to_le_bytes()); // max_write
    out
}

/// A file created on the filesystem, in memory.
struct Written {
    name: Vec<u8>,
    data: Vec<u8>,
}

/// `fuse_attr` of `node`.
fn attr(node: u64, files: &HashMap<u64, Written>) -> Vec<u8> {
    let (mode, size, links) = if node == FILE_NODE {
        (libc::S_IFREG | 0o755, SCRIPT.len() as u64, 1u32)
    } else if let Some(file) = files.get(&node) {
        (libc::S_IFREG | 0o644, file.data.len() as u64, 1u32)
    } else {
        (libc::S_IFDIR | 0o755, 0, 2)
    };
    let mut out = Vec::new();
    out.extend(node.to_le_bytes()); // ino
    out.extend(size.to_le_bytes());
    out.extend(1u64.to_le_bytes()); // blocks
    for _ in 0..3 {
        out.extend(0u64.to_le_bytes()); // atime, mtime, ctime
    }
    for _ in 0..3 {
        out.extend(0u32.to_le_bytes()); // their nanoseconds
    }
    out.extend(mode.to_le_bytes());
    out.extend(links.to_le_bytes());
    out.extend(0u32.to_le_bytes()); // uid
    out.extend(0u32.to_le_bytes()); // gid
    out.extend(0u32.to_le_bytes()); // rdev
    out.extend(4096u32.to_le_bytes()); // blksize
    out.extend(0u32.to_le_bytes()); // padding
    out
}

/// `fuse_entry_out` of `node`; the script's valid for a minute, written
/// files' not cached (their size changes).
fn entry_out(node: u64, files: &HashMap<u64, Written>) -> Vec<u8> {
    let valid = if node == FILE_NODE { 60u64 } else { 0 };
    let mut out = Vec::new();
    out.extend(node.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // generation
    out.extend(valid.to_le_bytes()); // entry_valid
    out.extend(valid.to_le_bytes()); // attr_valid
    out.extend(0u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(attr(node, files));
    out
}

/// `fuse_attr_out` of `node`, not cached.
fn attr_out(node: u64, files: &HashMap<u64, Written>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0u64.to_le_bytes()); // attr_valid
    out.extend(0u32.to_le_bytes());
    out.extend(0u32.to_le_bytes()); // dummy
    out.extend(attr(node, files));
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}
