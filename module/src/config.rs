//! The three extensions' JSON configs (each arrives as the raw bytes of a
//! `google.protobuf.StringValue`). Parsing is strict: unknown fields, wrong types, missing or
//! empty required fields and out-of-range numbers are refused with a message that names the
//! problem, and Envoy refuses the config.

use serde::Deserialize;
use wscap_core::MAX_LIMIT;

/// `retry-after` when the filter config does not say.
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 5;
/// How often the bootstrap extension refreshes the gauges when its config does not say.
pub const DEFAULT_STATS_INTERVAL_MS: u64 = 250;
/// The largest `retry_after_seconds` accepted (one day).
pub const MAX_RETRY_AFTER_SECONDS: i64 = 86_400;

/// The HTTP filter's config: `{"cluster":"NAME","max_connections_per_host":N,"retry_after_seconds":S}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSettings {
    /// The backend cluster whose hosts are capped.
    pub cluster: String,
    /// Default per-host limit (a host's `filter_metadata.wscap.max_connections` overrides it).
    pub max_connections_per_host: u32,
    /// Value of the `retry-after` header on refusals.
    pub retry_after_seconds: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    cluster: String,
    max_connections_per_host: i64,
    retry_after_seconds: Option<i64>,
}

/// The LB policy's config. Every field is optional: `{}` (or an empty value) works.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {}

/// The bootstrap extension's config. Every field is optional: `{}` (or an empty value) works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// Period of the gauge refresh timer, in milliseconds (10..=60000).
    pub stats_interval_ms: u64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        BootstrapSettings {
            stats_interval_ms: DEFAULT_STATS_INTERVAL_MS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootstrap {
    stats_interval_ms: Option<i64>,
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("config is not UTF-8: {e}"))
}

/// Parses the HTTP filter config.
///
/// ```
/// let s = wscap::config::parse_filter(br#"{"cluster":"pods","max_connections_per_host":3}"#).unwrap();
/// assert_eq!((s.cluster.as_str(), s.max_connections_per_host, s.retry_after_seconds), ("pods", 3, 5));
/// assert!(wscap::config::parse_filter(br#"{"cluster":"","max_connections_per_host":3}"#).is_err());
/// ```
pub fn parse_filter(bytes: &[u8]) -> Result<FilterSettings, String> {
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Err(
            "config is empty: expected {\"cluster\":\"NAME\",\"max_connections_per_host\":N}"
                .to_owned(),
        );
    }
    let raw: RawFilter = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let cluster = raw.cluster.trim();
    if cluster.is_empty() {
        return Err("\"cluster\" must not be empty".to_owned());
    }
    if cluster != raw.cluster {
        return Err(format!(
            "\"cluster\" {:?} has leading or trailing whitespace",
            raw.cluster
        ));
    }
    let limit = raw.max_connections_per_host;
    if limit < 0 {
        return Err(format!(
            "\"max_connections_per_host\" must not be negative (got {limit})"
        ));
    }
    if limit > i64::from(MAX_LIMIT) {
        return Err(format!(
            "\"max_connections_per_host\" {limit} is larger than the maximum {MAX_LIMIT}"
        ));
    }
    let retry = raw
        .retry_after_seconds
        .unwrap_or(i64::from(DEFAULT_RETRY_AFTER_SECONDS));
    if !(0..=MAX_RETRY_AFTER_SECONDS).contains(&retry) {
        return Err(format!(
            "\"retry_after_seconds\" must be between 0 and {MAX_RETRY_AFTER_SECONDS} (got {retry})"
        ));
    }
    Ok(FilterSettings {
        cluster: raw.cluster,
        max_connections_per_host: limit as u32,
        retry_after_seconds: retry as u32,
    })
}

/// Parses the LB policy config (`{}` or empty).
///
/// ```
/// assert!(wscap::config::parse_lb(b"").is_ok());
/// assert!(wscap::config::parse_lb(b"{}").is_ok());
/// assert!(wscap::config::parse_lb(br#"{"x":1}"#).is_err());
/// ```
pub fn parse_lb(bytes: &[u8]) -> Result<LbSettings, String> {
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Ok(LbSettings::default());
    }
    serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
}

/// Parses the bootstrap extension config (`{}` or empty; optional `stats_interval_ms`).
///
/// ```
/// assert_eq!(wscap::config::parse_bootstrap(b"{}").unwrap().stats_interval_ms, 250);
/// assert_eq!(wscap::config::parse_bootstrap(br#"{"stats_interval_ms":1000}"#).unwrap().stats_interval_ms, 1000);
/// assert!(wscap::config::parse_bootstrap(br#"{"stats_interval_ms":0}"#).is_err());
/// ```
pub fn parse_bootstrap(bytes: &[u8]) -> Result<BootstrapSettings, String> {
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Ok(BootstrapSettings::default());
    }
    let raw: RawBootstrap = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let ms = raw
        .stats_interval_ms
        .unwrap_or(DEFAULT_STATS_INTERVAL_MS as i64);
    if !(10..=60_000).contains(&ms) {
        return Err(format!(
            "\"stats_interval_ms\" must be between 10 and 60000 (got {ms})"
        ));
    }
    Ok(BootstrapSettings {
        stats_interval_ms: ms as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse_filter(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn filter_ok_with_and_without_retry_after() {
        let s = parse_filter(br#"{"cluster":"pods","max_connections_per_host":0}"#).unwrap();
        assert_eq!(s.max_connections_per_host, 0);
        assert_eq!(s.retry_after_seconds, DEFAULT_RETRY_AFTER_SECONDS);
        let s = parse_filter(
            br#"{"cluster":"pods","max_connections_per_host":20,"retry_after_seconds":9}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            FilterSettings {
                cluster: "pods".into(),
                max_connections_per_host: 20,
                retry_after_seconds: 9
            }
        );
    }

    #[test]
    fn filter_errors_name_the_problem() {
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("{").contains("invalid JSON"));
        assert!(err("[]").contains("invalid JSON"));
        assert!(err(r#"{"max_connections_per_host":1}"#).contains("missing field `cluster`"));
        assert!(err(r#"{"cluster":"a"}"#).contains("missing field `max_connections_per_host`"));
        assert!(err(r#"{"cluster":"","max_connections_per_host":1}"#).contains("\"cluster\""));
        assert!(err(r#"{"cluster":" a","max_connections_per_host":1}"#).contains("whitespace"));
        assert!(err(r#"{"cluster":"a","max_connections_per_host":-1}"#).contains("negative"));
        assert!(
            err(r#"{"cluster":"a","max_connections_per_host":2000000000}"#).contains("maximum")
        );
        assert!(err(r#"{"cluster":"a","max_connections_per_host":"3"}"#).contains("invalid type"));
        assert!(err(r#"{"cluster":"a","max_connections_per_host":1.5}"#).contains("invalid type"));
        assert!(err(r#"{"cluster":7,"max_connections_per_host":1}"#).contains("invalid type"));
        assert!(
            err(r#"{"cluster":"a","max_connections_per_host":1,"limit":2}"#)
                .contains("unknown field `limit`")
        );
        assert!(
            err(r#"{"cluster":"a","max_connections_per_host":1,"retry_after_seconds":-2}"#)
                .contains("retry_after_seconds")
        );
        assert!(parse_filter(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn lb_and_bootstrap_refuse_unknown_fields_and_bad_json() {
        assert!(parse_lb(b"{").unwrap_err().contains("invalid JSON"));
        assert!(parse_lb(br#"{"cluster":"x"}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse_bootstrap(b"  ").is_ok());
        assert!(parse_bootstrap(br#"{"nope":true}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse_bootstrap(br#"{"stats_interval_ms":"1"}"#)
            .unwrap_err()
            .contains("invalid type"));
    }
}
