//! # wscap-shm: per-host counts in named shared memory
//!
//! A file-backed table (usually under `/dev/shm`) of one 64-bit word per `(cluster, host)`,
//! mapped by every process that opens the same path. Each process takes one of the word's
//! [`SHARED_COLUMNS`] 16-bit fields (a *column*) and counts its connections there; an admission
//! is one CAS that succeeds only while the sum over all columns is below the host's limit
//! ([`wscap_core::SharedCounter`]). So a per-host limit holds across processes: Envoy's old and
//! new process during a hot restart, or the workers of a multi-process proxy embedding the C ABI.
//!
//! A process that dies runs no teardown, so its column would count its (now closed)
//! connections forever. Every column therefore has an owner (pid and process start time, so a
//! recycled pid is not mistaken for its predecessor); [`ShmTable::reap`], which every live
//! process calls periodically, clears the column of an owner that is gone and frees it. Between
//! a death and the next reap the dead process's connections still count: the error is on the
//! safe side (fewer admissions, never more).
//!
//! Layout (little-endian, version [`LAYOUT_VERSION`]): a 4 KiB header (magic, version,
//! capacity, 4 owner words), then `capacity` entries of 128 bytes: a tag (0 empty, `u64::MAX`
//! being written, else a hash of the key), the shared word, the key length and the key
//! (`cluster` + `\n` + `ip:port`, at most [`MAX_KEY_BYTES`]). Entries are found by linear
//! probing and never removed; when a process opens a table that no live process uses, it starts
//! it afresh. Hosts that do not fit (key too long, table full) are counted per process only,
//! and the caller is told (`None`).
//!
//! This crate is the only place where the mapping is turned into references to atomics; the
//! rest of wscap sees `&'static AtomicU64`.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wscap_core::{clear_shared_column, HostAddr, SharedCounter, SharedCounts, SHARED_COLUMNS};

/// The table layout this build reads and writes.
pub const LAYOUT_VERSION: u64 = 1;
/// Entries of a table created by [`ShmTable::open`] with no capacity of its own.
pub const DEFAULT_CAPACITY: u32 = 16_384;
/// The longest `cluster` + `\n` + `host` key that fits in an entry.
pub const MAX_KEY_BYTES: usize = KEY_WORDS * 8;

const MAGIC: u64 = u64::from_le_bytes(*b"wscapshm");
const HEADER_BYTES: usize = 4096;
const KEY_WORDS: usize = 13;
const EMPTY: u64 = 0;
const BUSY: u64 = u64::MAX;
/// Marks an owner word whose column is being cleared by the process it names.
const REAPING: u64 = 1 << 63;
/// How long a lookup waits for another process to finish writing an entry it claimed.
const BUSY_WAIT: Duration = Duration::from_secs(1);

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU64,
    capacity: AtomicU64,
    owners: [AtomicU64; SHARED_COLUMNS as usize],
}

#[repr(C)]
struct Entry {
    tag: AtomicU64,
    word: AtomicU64,
    len: AtomicU64,
    key: [AtomicU64; KEY_WORDS],
}

const _: () = assert!(std::mem::size_of::<Entry>() == 128);
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);

/// Why a table could not be opened.
#[derive(Debug)]
pub enum ShmError {
    /// Opening, sizing, locking or mapping the file failed.
    Io(std::io::Error),
    /// The file holds another layout (another wscap version, or not a wscap table).
    Layout(String),
    /// Every column is owned by a live process.
    Full,
}

impl std::fmt::Display for ShmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShmError::Io(e) => write!(f, "shared memory: {e}"),
            ShmError::Layout(why) => write!(f, "shared memory: {why}"),
            ShmError::Full => write!(
                f,
                "shared memory: {SHARED_COLUMNS} live processes already share this table"
            ),
        }
    }
}

impl std::error::Error for ShmError {}

impl From<std::io::Error> for ShmError {
    fn from(e: std::io::Error) -> Self {
        ShmError::Io(e)
    }
}

/// One process's handle on a shared table (see the crate docs).
pub struct ShmTable {
    header: &'static Header,
    entries: &'static [Entry],
    column: u32,
    me: u64,
    path: PathBuf,
}

impl std::fmt::Debug for ShmTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTable")
            .field("path", &self.path)
            .field("column", &self.column)
            .field("capacity", &self.entries.len())
            .finish()
    }
}

/// Holds `flock(LOCK_EX)` on a file until dropped.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(file: &'a File) -> std::io::Result<Self> {
        // SAFETY: flock(2) on a descriptor this process owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Locked(file))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl ShmTable {
    /// Opens (creating if needed, mode 0600) the table at `path` and takes a column for this
    /// process. Tables no live process uses are started afresh; dead owners are reaped first.
    pub fn open(path: &Path) -> Result<ShmTable, ShmError> {
        Self::open_as(path, DEFAULT_CAPACITY, process_identity()?)
    }

    /// [`ShmTable::open`] with an explicit capacity for a new table and an explicit owner
    /// identity (tests use it to play several processes, or a dead one).
    #[doc(hidden)]
    pub fn open_as(path: &Path, capacity: u32, me: u64) -> Result<ShmTable, ShmError> {
        if me == 0 || me & REAPING != 0 {
            return Err(ShmError::Layout(format!("invalid owner identity {me:#x}")));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let _lock = Locked::new(&file)?;
        let want = (HEADER_BYTES + capacity as usize * std::mem::size_of::<Entry>()) as u64;
        let len = file.metadata()?.len();
        if len == 0 {
            file.set_len(want)?;
        } else if len < HEADER_BYTES as u64 {
            return Err(ShmError::Layout(format!(
                "{} is {len} bytes: not a wscap table",
                path.display()
            )));
        }
        let len = file.metadata()?.len() as usize;
        let map = memmap2::MmapRaw::map_raw(&file)?;
        if map.len() < len {
            return Err(ShmError::Layout("short mapping".into()));
        }
        let base = map.as_mut_ptr();
        // The references handed out live for the whole process: the mapping is never unmapped.
        std::mem::forget(map);
        // SAFETY: `base` is the start of a live, page-aligned, shared, read-write mapping of at
        // least HEADER_BYTES bytes that is never unmapped (forgotten above), so it is valid for
        // 'static and aligned for `Header` (8). `Header` is only atomics, for which every bit
        // pattern is valid, and every access goes through them, so other processes writing the
        // same memory concurrently is sound.
        let header: &'static Header = unsafe { &*base.cast::<Header>() };
        let magic = header.magic.load(Ordering::Acquire);
        let capacity = if magic == 0 {
            if len != want as usize {
                return Err(ShmError::Layout(format!(
                    "{} has no header but is {len} bytes",
                    path.display()
                )));
            }
            header.version.store(LAYOUT_VERSION, Ordering::Relaxed);
            header
                .capacity
                .store(u64::from(capacity), Ordering::Relaxed);
            header.magic.store(MAGIC, Ordering::Release);
            capacity as usize
        } else if magic != MAGIC {
            return Err(ShmError::Layout(format!(
                "{} is not a wscap table",
                path.display()
            )));
        } else {
            let version = header.version.load(Ordering::Acquire);
            if version != LAYOUT_VERSION {
                return Err(ShmError::Layout(format!(
                    "{} has layout {version}, this build reads {LAYOUT_VERSION}",
                    path.display()
                )));
            }
            let cap = header.capacity.load(Ordering::Acquire) as usize;
            if HEADER_BYTES + cap * std::mem::size_of::<Entry>() != len {
                return Err(ShmError::Layout(format!(
                    "{} claims {cap} entries but is {len} bytes",
                    path.display()
                )));
            }
            cap
        };
        // SAFETY: the entries follow the header inside the same never-unmapped mapping, whose
        // length was checked to be exactly HEADER_BYTES + capacity entries; the offset keeps
        // 8-byte alignment; `Entry` is only atomics (see the header's SAFETY note).
        let entries: &'static [Entry] =
            unsafe { std::slice::from_raw_parts(base.add(HEADER_BYTES).cast::<Entry>(), capacity) };
        let mut table = ShmTable {
            header,
            entries,
            column: u32::MAX,
            me,
            path: path.to_path_buf(),
        };
        table.reap();
        let others_alive = header.owners.iter().any(|o| o.load(Ordering::Acquire) != 0);
        if !others_alive {
            // Nobody else uses it (we hold the lock, so nobody can join meanwhile): start afresh,
            // dropping entries of hosts long gone.
            for e in entries {
                e.tag.store(EMPTY, Ordering::Relaxed);
                e.word.store(0, Ordering::Relaxed);
            }
        }
        let column = header
            .owners
            .iter()
            .position(|o| {
                o.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or(ShmError::Full)?;
        table.column = column as u32;
        Ok(table)
    }

    /// The column this process counts in.
    pub fn column(&self) -> u32 {
        self.column
    }

    /// The table's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Live processes sharing the table (this one included).
    pub fn processes(&self) -> usize {
        self.header
            .owners
            .iter()
            .filter(|o| {
                let id = o.load(Ordering::Acquire);
                id != 0 && id & REAPING == 0
            })
            .count()
    }

    /// Clears and frees the columns of owners that are gone. Returns how many were reaped.
    pub fn reap(&self) -> usize {
        let mut reaped = 0;
        for (i, owner) in self.header.owners.iter().enumerate() {
            let id = owner.load(Ordering::Acquire);
            if id == 0 || id == self.me || alive(id & !REAPING) {
                continue;
            }
            // A dead owner, or a reaper that died mid-reap: take the reap over.
            if owner
                .compare_exchange(id, self.me | REAPING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            for e in self.entries {
                let tag = e.tag.load(Ordering::Acquire);
                if tag != EMPTY && tag != BUSY {
                    clear_shared_column(&e.word, i as u32);
                }
            }
            owner.store(0, Ordering::Release);
            reaped += 1;
        }
        reaped
    }

    /// The shared word of `(cluster, host)`, claiming an entry for it if it has none. `None`
    /// when the key is too long, the table is full, or another process left an entry half
    /// written (it died inside the few stores that write one).
    pub fn word(&self, cluster: &str, host: &str) -> Option<&'static AtomicU64> {
        let key = [cluster.as_bytes(), b"\n", host.as_bytes()].concat();
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
        let mut words = [0u64; KEY_WORDS];
        for (w, chunk) in words.iter_mut().zip(key.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(&key);
        // Never EMPTY nor BUSY.
        let tag = (hasher.finish() & !REAPING) | 1;
        let n = self.entries.len();
        let start = (tag as usize) % n;
        for step in 0..n {
            let e = &self.entries[(start + step) % n];
            let deadline = Instant::now() + BUSY_WAIT;
            loop {
                match e.tag.load(Ordering::Acquire) {
                    EMPTY => {
                        if e.tag
                            .compare_exchange(EMPTY, BUSY, Ordering::AcqRel, Ordering::Acquire)
                            .is_err()
                        {
                            continue;
                        }
                        e.word.store(0, Ordering::Relaxed);
                        e.len.store(key.len() as u64, Ordering::Relaxed);
                        for (slot, w) in e.key.iter().zip(words) {
                            slot.store(w, Ordering::Relaxed);
                        }
                        e.tag.store(tag, Ordering::Release);
                        return Some(&e.word);
                    }
                    BUSY => {
                        if Instant::now() > deadline {
                            return None;
                        }
                        std::thread::yield_now();
                    }
                    t if t == tag => {
                        let same = e.len.load(Ordering::Relaxed) == key.len() as u64
                            && e.key
                                .iter()
                                .zip(words)
                                .all(|(slot, w)| slot.load(Ordering::Relaxed) == w);
                        if same {
                            return Some(&e.word);
                        }
                        break;
                    }
                    _ => break,
                }
            }
        }
        None
    }
}

impl ShmTable {
    /// Every entry as `(cluster, host, word)` (for inspection).
    pub fn entries(&self) -> Vec<(String, String, &'static AtomicU64)> {
        self.entries
            .iter()
            .filter(|e| {
                let t = e.tag.load(Ordering::Acquire);
                t != EMPTY && t != BUSY
            })
            .filter_map(|e| {
                let len = (e.len.load(Ordering::Relaxed) as usize).min(MAX_KEY_BYTES);
                let bytes: Vec<u8> = e
                    .key
                    .iter()
                    .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
                    .take(len)
                    .collect();
                let key = String::from_utf8(bytes).ok()?;
                let (c, h) = key.split_once('\n')?;
                Some((c.to_owned(), h.to_owned(), &e.word))
            })
            .collect()
    }
}

impl SharedCounts for ShmTable {
    fn counter(&self, cluster: &str, host: &HostAddr) -> Option<SharedCounter> {
        SharedCounter::new(self.word(cluster, host.as_str())?, self.column)
    }
}

/// Where the Envoy module keeps the table of one hot-restart family (`--base-id`):
/// `/dev/shm/wscap.<uid>.<base-id>` (memory-backed), else the same name in the temp dir.
pub fn envoy_table_path(base_id: u64) -> PathBuf {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "0".to_owned());
    let dir = PathBuf::from("/dev/shm");
    let dir = if dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("wscap.{uid}.{base_id}"))
}

/// This process's owner identity: pid in the high half, start time (clock ticks since boot,
/// low 31 bits) in the low half.
pub fn process_identity() -> std::io::Result<u64> {
    let pid = std::process::id();
    let start = start_time(pid)?;
    Ok(identity(pid, start))
}

fn identity(pid: u32, start: u64) -> u64 {
    (u64::from(pid & 0x7fff_ffff) << 32) | (start & 0x7fff_ffff)
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields after it start after
    // the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("unreadable /proc stat"))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other("unreadable /proc stat start time"))
}

/// Is the process named by `id` (see [`process_identity`]) still running (and not a zombie)?
fn alive(id: u64) -> bool {
    let pid = (id >> 32) as u32;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("");
    let start = fields.nth(18).and_then(|f| f.parse::<u64>().ok());
    state != "Z" && state != "X" && start.is_some_and(|s| identity(pid, s) == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("wscap-shm-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn identity_of_this_process_is_alive_and_a_made_up_one_is_not() {
        let me = process_identity().unwrap();
        assert!(alive(me));
        assert!(!alive(me ^ 1), "same pid, other start time: a recycled pid");
        assert!(!alive(identity(0x7fff_fff0, 1)));
    }

    #[test]
    fn two_handles_share_words_and_a_dead_owner_is_reaped() {
        let p = path("share");
        let me = process_identity().unwrap();
        let a = ShmTable::open_as(&p, 64, me).unwrap();
        let b = ShmTable::open_as(&p, 64, me).unwrap();
        assert_ne!(a.column(), b.column());
        let host: HostAddr = "10.0.0.1:80".parse().unwrap();
        let (ca, cb) = (
            a.counter("pods", &host).unwrap(),
            b.counter("pods", &host).unwrap(),
        );
        assert!(ca.try_add(3) && ca.try_add(3) && cb.try_add(3));
        assert!(!cb.try_add(3), "3 across both handles");
        assert_eq!(a.counter("other", &host).unwrap().total(), 0);
        // A third "process" that died holding 2 on another host.
        let dead_id = identity(0x7fff_fff0, 7);
        let dead = ShmTable::open_as(&p, 64, dead_id).unwrap();
        let h2: HostAddr = "10.0.0.2:80".parse().unwrap();
        let cd = dead.counter("pods", &h2).unwrap();
        assert!(cd.try_add(2) && cd.try_add(2));
        assert!(!a.counter("pods", &h2).unwrap().try_add(2));
        assert_eq!(a.processes(), 3);
        assert_eq!(a.reap(), 1);
        assert_eq!(a.processes(), 2);
        assert!(
            a.counter("pods", &h2).unwrap().try_add(2),
            "the dead one's 2 are freed"
        );
        // Its column is free for a newcomer.
        let c = ShmTable::open_as(&p, 64, me).unwrap();
        assert_eq!(c.column(), dead.column());
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_table_nobody_uses_starts_afresh_and_limits_are_enforced() {
        let p = path("fresh");
        let dead_id = identity(0x7fff_fff1, 9);
        {
            let t = ShmTable::open_as(&p, 8, dead_id).unwrap();
            let w = t.word("c", "10.0.0.1:80").unwrap();
            w.store(5, Ordering::Relaxed);
        }
        let t = ShmTable::open_as(&p, 8, process_identity().unwrap()).unwrap();
        assert_eq!(
            t.word("c", "10.0.0.1:80").unwrap().load(Ordering::Relaxed),
            0
        );
        // Too long a key, and a full table: None.
        assert!(t.word(&"x".repeat(200), "10.0.0.1:80").is_none());
        for i in 0..7 {
            assert!(t.word("c", &format!("10.0.0.{}:80", i + 2)).is_some());
        }
        assert!(t.word("c", "10.9.9.9:80").is_none(), "8 entries, all taken");
        assert!(
            t.word("c", "10.0.0.1:80").is_some(),
            "existing keys are still found"
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn foreign_files_are_refused() {
        let p = path("foreign");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let e = ShmTable::open_as(&p, 8, process_identity().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a wscap table"), "{e}");
        let _ = std::fs::remove_file(&p);
    }
}
