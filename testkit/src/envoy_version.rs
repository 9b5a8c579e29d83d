//! Which Envoy a test runs: the version the binary reports, checked against
//! `WSCAP_EXPECT_ENVOY_VERSION` when set (`scripts/test-matrix` sets it for each Envoy it runs),
//! so a wrong binary cannot pass silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// `x.y.z` from `envoy --version` (`envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`).
pub fn parse(version_output: &str) -> Option<String> {
    let (_, after) = version_output.split_once("version:")?;
    after.split('/').find_map(|part| {
        let nums: Vec<&str> = part.trim().split('.').collect();
        (nums.len() == 3
            && nums
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        .then(|| part.trim().to_owned())
    })
}

/// The version `bin` reports (run once per binary and cached). Panics if it cannot be read,
/// or if it differs from `WSCAP_EXPECT_ENVOY_VERSION` when that is set.
pub fn of(bin: &Path) -> String {
    static SEEN: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashMap::new);
    if let Some(v) = seen.get(bin) {
        return v.clone();
    }
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let version =
        parse(&text).unwrap_or_else(|| panic!("{} --version: no x.y.z in {text:?}", bin.display()));
    if let Ok(expected) = std::env::var("WSCAP_EXPECT_ENVOY_VERSION") {
        assert_eq!(
            version,
            expected,
            "{} is Envoy {version}, but WSCAP_EXPECT_ENVOY_VERSION={expected}",
            bin.display()
        );
    }
    eprintln!("envoy: {version} at {}", bin.display());
    seen.insert(bin.to_path_buf(), version.clone());
    version
}

/// `(major, minor)` of an `x.y.z` version.
pub fn major_minor(version: &str) -> (u32, u32) {
    let mut it = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_line() {
        let line = "\n/v/3.11.7/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse(line).as_deref(), Some("1.40.0"));
        let line = "envoy  version: 0ebfcfe/1.38.3/Modified/RELEASE/BoringSSL";
        assert_eq!(parse(line).as_deref(), Some("1.38.3"));
        assert_eq!(parse("no version here"), None);
        assert_eq!(major_minor("1.39.3"), (1, 39));
    }
}
