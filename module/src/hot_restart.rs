//! Envoy hot restart in local mode: the old and the new Envoy process both hold WebSockets
//! while the old one drains, so each pod's limit must hold across both. When hot restart is on
//! (Envoy's command line has no `--disable-hot-restart`), the registry counts every host in a
//! word shared with the other processes of the same hot-restart family too
//! ([`wscap_shm::ShmTable`] at `/dev/shm/wscap.<uid>.<base-id>`): an admission needs room in
//! this process's view *and* in the shared word. Envoy gives each family its own `--base-id`,
//! so unrelated Envoys never share a table.
//!
//! The old process runs no teardown when it exits (neither on SIGTERM nor when the new one
//! ends it after `--parent-shutdown-time-s`), so its column keeps counting its last connections
//! until the survivor reaps it: [`reap`] runs on the bootstrap extension's timer, and the error
//! until then is on the safe side (fewer admissions, never more).
//!
//! `WSCAP_SHARED_COUNTS=off` in Envoy's environment turns it off; `--use-dynamic-base-id`
//! leaves it off (the module cannot learn the id), with a warning.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wscap_core::Registry;
use wscap_shm::ShmTable;

use crate::Level;

/// The table, once opened (`None`: counts are per process).
static TABLE: OnceLock<Option<Arc<ShmTable>>> = OnceLock::new();

/// What Envoy's command line says about hot restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotRestart {
    /// `--disable-hot-restart`.
    Disabled,
    /// Hot restart on, with this base id and restart epoch.
    Enabled {
        /// `--base-id` (default 0).
        base_id: u64,
        /// `--restart-epoch` (default 0).
        epoch: u64,
    },
    /// `--use-dynamic-base-id`: on, but the id is not on the command line.
    DynamicBaseId,
}

/// Reads hot-restart settings from Envoy's arguments (`argv[1..]`).
///
/// ```
/// use wscap::hot_restart::{parse_args, HotRestart};
/// let a = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
/// assert_eq!(parse_args(&a("-c x.yaml --disable-hot-restart")), HotRestart::Disabled);
/// assert_eq!(parse_args(&a("-c x.yaml")), HotRestart::Enabled { base_id: 0, epoch: 0 });
/// assert_eq!(
///     parse_args(&a("--base-id 7 --restart-epoch=2")),
///     HotRestart::Enabled { base_id: 7, epoch: 2 }
/// );
/// assert_eq!(parse_args(&a("--use-dynamic-base-id")), HotRestart::DynamicBaseId);
/// ```
pub fn parse_args(args: &[String]) -> HotRestart {
    let mut base_id = 0;
    let mut epoch = 0;
    let mut dynamic = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match flag {
            "--disable-hot-restart" => return HotRestart::Disabled,
            "--use-dynamic-base-id" => dynamic = true,
            "--base-id" => base_id = value().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--restart-epoch" => epoch = value().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    if dynamic {
        HotRestart::DynamicBaseId
    } else {
        HotRestart::Enabled { base_id, epoch }
    }
}

/// The table's path for `base_id` ([`wscap_shm::envoy_table_path`]).
pub fn table_path(base_id: u64) -> PathBuf {
    wscap_shm::envoy_table_path(base_id)
}

/// The process-wide registry: shared counts when hot restart is on (see the module docs).
pub fn registry() -> Registry {
    match table() {
        Some(t) => Registry::with_shared_counts(t),
        None => Registry::new(),
    }
}

fn table() -> Option<Arc<ShmTable>> {
    TABLE.get_or_init(open).clone()
}

fn open() -> Option<Arc<ShmTable>> {
    if cfg!(test) || std::env::var("WSCAP_SHARED_COUNTS").is_ok_and(|v| v == "off") {
        return None;
    }
    let args: Vec<String> = std::fs::read("/proc/self/cmdline")
        .map(|raw| {
            raw.split(|&b| b == 0)
                .skip(1)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let (base_id, epoch) = match parse_args(&args) {
        HotRestart::Disabled => return None,
        HotRestart::DynamicBaseId => {
            crate::log(
                Level::Warn,
                "wscap: --use-dynamic-base-id: per-host counts are not shared across a hot restart \
                 (give Envoy --base-id to share them)",
            );
            return None;
        }
        HotRestart::Enabled { base_id, epoch } => (base_id, epoch),
    };
    let path = table_path(base_id);
    match ShmTable::open(&path) {
        Ok(t) => {
            crate::log(
                Level::Info,
                &format!(
                    "wscap: hot restart epoch {epoch}: per-host counts shared through {} (column {}, {} processes)",
                    path.display(),
                    t.column(),
                    t.processes()
                ),
            );
            Some(Arc::new(t))
        }
        Err(e) => {
            crate::log(
                Level::Error,
                &format!(
                    "wscap: hot restart: {e}; per-host counts stay per process, so during a hot restart a pod may take up to twice its limit"
                ),
            );
            None
        }
    }
}

/// Frees the columns of processes of the family that are gone (at most once a second).
pub fn reap() {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let Some(Some(t)) = TABLE.get() else {
        return;
    };
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_some_and(|l| l.elapsed() < Duration::from_secs(1)) {
        return;
    }
    *last = Some(Instant::now());
    let n = t.reap();
    if n > 0 {
        crate::log(
            Level::Info,
            &format!(
                "wscap: hot restart: freed the counts of {n} exited Envoy process(es); {} left",
                t.processes()
            ),
        );
    }
}
