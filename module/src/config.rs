//! The three extensions' JSON configs (each arrives as the raw bytes of a
//! `google.protobuf.StringValue`). Parsing is strict: unknown fields, wrong types, missing or
//! empty required fields and out-of-range numbers are refused with a message that names the
//! problem, and Envoy refuses the config.

use serde::Deserialize;
use wscap_core::MAX_LIMIT;
use wscap_global::GlobalConfig;

/// `retry-after` when the filter config does not say.
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 5;
/// How often the bootstrap extension refreshes the gauges when its config does not say.
pub const DEFAULT_STATS_INTERVAL_MS: u64 = 250;
/// The largest `retry_after_seconds` accepted (one day).
pub const MAX_RETRY_AFTER_SECONDS: i64 = 86_400;

/// The HTTP filter's config: `{"cluster":"NAME","max_connections_per_host":N,"retry_after_seconds":S}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSettings {
    /// The one backend cluster whose hosts are capped; `None`: every routed cluster that has
    /// the wscap LB policy.
    pub cluster: Option<String>,
    /// Default per-host limit (a host's `filter_metadata.wscap.max_connections` overrides it).
    pub max_connections_per_host: u32,
    /// Value of the `retry-after` header on refusals.
    pub retry_after_seconds: u32,
    /// The wait queue (`"queue": {"max_waiting": N, "timeout_ms": T}`); `None`: refuse at once.
    pub queue: Option<crate::queue::QueueSettings>,
    /// How refusals are answered (`"refuse_with"`: `"503"`, the default, or `"close_1013"`).
    pub refuse_with: crate::refuse::RefuseWith,
    /// `"max_new_per_second_per_host"` and `"warmup_seconds"` (off by default).
    pub rate: crate::admission::RateSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    cluster: Option<String>,
    max_connections_per_host: i64,
    retry_after_seconds: Option<i64>,
    /// Read by [`crate::close::parse_policy`].
    #[allow(dead_code)]
    rebalance: Option<serde::de::IgnoredAny>,
    /// Read by [`crate::close::parse_policy`].
    #[allow(dead_code)]
    drain_removed_seconds: Option<serde::de::IgnoredAny>,
    queue: Option<crate::queue::QueueSettings>,
    refuse_with: Option<String>,
    max_new_per_second_per_host: Option<i64>,
    warmup_seconds: Option<i64>,
}

/// A route's (or virtual host's) settings over the filter's, from
/// `DynamicModuleFilterPerRoute`: `{"max_connections_per_host":N}`, `{"retry_after_seconds":S}`,
/// `{"disabled":true}`, or several of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteSettings {
    /// The per-host limit for WebSockets on this route, over the filter's default (a host's
    /// endpoint metadata still wins).
    pub max_connections_per_host: Option<u32>,
    /// `retry-after` on this route's refusals.
    pub retry_after_seconds: Option<u32>,
    /// This route's WebSockets pass uncounted and unsteered.
    pub disabled: bool,
    /// This route's wait queue, over the filter's: `None` (no `"queue"`): the filter's;
    /// `Some(None)` (`"queue": null` or `"queue": "off"`): none on this route (refused at
    /// once); `Some(Some(q))`: the route's own.
    pub queue: Option<Option<crate::queue::QueueSettings>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    max_connections_per_host: Option<i64>,
    retry_after_seconds: Option<i64>,
    disabled: Option<bool>,
    /// `Some(Value::Null)` for an explicit `null` (absent: `None`).
    #[serde(default, deserialize_with = "present")]
    queue: Option<serde_json::Value>,
}

/// Deserializes a field that is present (even as `null`) into `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A route's `"queue"`: `null` or `"off"` (none on this route), or
/// `{"max_waiting": N, "timeout_ms": T}`.
fn route_queue(v: serde_json::Value) -> Result<Option<crate::queue::QueueSettings>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s == "off" => Ok(None),
        v @ serde_json::Value::Object(_) => serde_json::from_value::<crate::queue::QueueSettings>(v)
            .map_err(|e| format!("invalid \"queue\": {e}"))?
            .validate()
            .map(Some),
        other => Err(format!(
            "\"queue\" must be {{\"max_waiting\": N, \"timeout_ms\": T}}, null or \"off\" (got {other})"
        )),
    }
}

/// The LB policy's config. Every field is optional: `{}` (or an empty value) works.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {}

/// The bootstrap extension's config. Every field is optional: `{}` (or an empty value) works
/// (local mode). With `redis_url` the module runs global mode; the other global-mode fields
/// (`instance_id`, `lease_ttl_ms`, `refresh_ms`, `fail_mode`, `local_limit`, `headroom`,
/// `restart_grace_ms`, `key_prefix`) are those of [`GlobalConfig`] and need `redis_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// Period of the gauge refresh timer, in milliseconds (10..=60000).
    pub stats_interval_ms: u64,
    /// Global mode's settings, validated; `None` in local mode.
    pub global: Option<GlobalConfig>,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        BootstrapSettings {
            stats_interval_ms: DEFAULT_STATS_INTERVAL_MS,
            global: None,
        }
    }
}

/// The fields of [`GlobalConfig`], which the bootstrap config carries beside its own.
const GLOBAL_FIELDS: &[&str] = &[
    "redis_url",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "instance_id",
    "lease_ttl_ms",
    "refresh_ms",
    "fail_mode",
    "local_limit",
    "headroom",
    "restart_grace_ms",
    "key_prefix",
];

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("config is not UTF-8: {e}"))
}

/// Parses the HTTP filter config.
///
/// ```
/// let s = wscap::config::parse_filter(br#"{"cluster":"pods","max_connections_per_host":3}"#).unwrap();
/// assert_eq!((s.cluster.as_deref(), s.max_connections_per_host, s.retry_after_seconds), (Some("pods"), 3, 5));
/// let all = wscap::config::parse_filter(br#"{"max_connections_per_host":3}"#).unwrap();
/// assert_eq!(all.cluster, None);
/// assert!(wscap::config::parse_filter(br#"{"cluster":"","max_connections_per_host":3}"#).is_err());
/// ```
pub fn parse_filter(bytes: &[u8]) -> Result<FilterSettings, String> {
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Err(
            "config is empty: expected {\"max_connections_per_host\":N} (and optionally \"cluster\":\"NAME\")"
                .to_owned(),
        );
    }
    let raw: RawFilter = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(cluster) = &raw.cluster {
        if cluster.trim().is_empty() {
            return Err(
                "\"cluster\" must not be empty (leave it out to govern every cluster with the wscap LB policy)"
                    .to_owned(),
            );
        }
        if cluster.trim() != cluster {
            return Err(format!(
                "\"cluster\" {cluster:?} has leading or trailing whitespace"
            ));
        }
    }
    Ok(FilterSettings {
        cluster: raw.cluster,
        max_connections_per_host: limit_field(raw.max_connections_per_host)?,
        retry_after_seconds: retry_field(
            raw.retry_after_seconds
                .unwrap_or(i64::from(DEFAULT_RETRY_AFTER_SECONDS)),
        )?,
        queue: raw
            .queue
            .map(crate::queue::QueueSettings::validate)
            .transpose()?,
        refuse_with: raw
            .refuse_with
            .as_deref()
            .map(crate::refuse::RefuseWith::parse)
            .transpose()?
            .unwrap_or_default(),
        rate: crate::admission::RateSettings::new(
            raw.max_new_per_second_per_host,
            raw.warmup_seconds,
        )?,
    })
}

fn limit_field(limit: i64) -> Result<u32, String> {
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
    Ok(limit as u32)
}

fn retry_field(retry: i64) -> Result<u32, String> {
    if !(0..=MAX_RETRY_AFTER_SECONDS).contains(&retry) {
        return Err(format!(
            "\"retry_after_seconds\" must be between 0 and {MAX_RETRY_AFTER_SECONDS} (got {retry})"
        ));
    }
    Ok(retry as u32)
}

/// Parses a per-route config (`DynamicModuleFilterPerRoute`'s `filter_config`): at least one of
/// `max_connections_per_host`, `retry_after_seconds`, `disabled`, `queue` (an object, or `null`
/// / `"off"` for no queue on this route).
///
/// ```
/// use wscap::config::parse_route;
/// assert_eq!(parse_route(br#"{"max_connections_per_host":2}"#).unwrap().max_connections_per_host, Some(2));
/// assert!(parse_route(br#"{"disabled":true}"#).unwrap().disabled);
/// assert!(parse_route(br#"{"max_connections":2}"#).unwrap_err().contains("max_connections"));
/// assert!(parse_route(b"{}").unwrap_err().contains("empty"));
/// let q = parse_route(br#"{"queue":{"max_waiting":4,"timeout_ms":800}}"#).unwrap().queue;
/// assert_eq!(q.flatten().map(|q| q.timeout_ms), Some(800));
/// assert_eq!(parse_route(br#"{"queue":null}"#).unwrap().queue, Some(None));
/// ```
pub fn parse_route(bytes: &[u8]) -> Result<RouteSettings, String> {
    let text = utf8(bytes)?;
    const EXPECTED: &str = "expected one or more of \"max_connections_per_host\", \"retry_after_seconds\", \"disabled\", \"queue\"";
    if text.trim().is_empty() {
        return Err(format!("per-route config is empty: {EXPECTED}"));
    }
    let raw: RawRoute = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if raw.max_connections_per_host.is_none()
        && raw.retry_after_seconds.is_none()
        && raw.disabled.is_none()
        && raw.queue.is_none()
    {
        return Err(format!("per-route config is empty: {EXPECTED}"));
    }
    Ok(RouteSettings {
        max_connections_per_host: raw.max_connections_per_host.map(limit_field).transpose()?,
        retry_after_seconds: raw.retry_after_seconds.map(retry_field).transpose()?,
        disabled: raw.disabled.unwrap_or(false),
        queue: raw.queue.map(route_queue).transpose()?,
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

/// Parses the bootstrap extension config (`{}` or empty; optional `stats_interval_ms`; global
/// mode with `redis_url` and the other [`GlobalConfig`] fields, validated with
/// [`GlobalConfig::validate`]).
///
/// ```
/// use wscap::config::parse_bootstrap;
/// assert_eq!(parse_bootstrap(b"{}").unwrap().stats_interval_ms, 250);
/// assert!(parse_bootstrap(b"{}").unwrap().global.is_none());
/// assert_eq!(parse_bootstrap(br#"{"stats_interval_ms":1000}"#).unwrap().stats_interval_ms, 1000);
/// assert!(parse_bootstrap(br#"{"stats_interval_ms":0}"#).is_err());
/// let g = parse_bootstrap(br#"{"redis_url":"redis://127.0.0.1:6379","lease_ttl_ms":1500,"refresh_ms":200}"#)
///     .unwrap().global.unwrap();
/// assert_eq!((g.lease_ttl_ms, g.refresh_ms), (1500, 200));
/// assert!(parse_bootstrap(br#"{"lease_ttl_ms":1500}"#).unwrap_err().contains("redis_url"));
/// ```
pub fn parse_bootstrap(bytes: &[u8]) -> Result<BootstrapSettings, String> {
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Ok(BootstrapSettings::default());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(format!(
            "invalid JSON: expected an object, got {}",
            json_kind(&value)
        ));
    };
    let ms = match map.remove("stats_interval_ms") {
        None => DEFAULT_STATS_INTERVAL_MS as i64,
        Some(v) => v.as_i64().ok_or_else(|| {
            format!("invalid JSON: invalid type: \"stats_interval_ms\" must be an integer, got {v}")
        })?,
    };
    if !(10..=60_000).contains(&ms) {
        return Err(format!(
            "\"stats_interval_ms\" must be between 10 and 60000 (got {ms})"
        ));
    }
    if let Some(unknown) = map.keys().find(|k| !GLOBAL_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "invalid JSON: unknown field `{unknown}`, expected `stats_interval_ms` or one of the global-mode fields {GLOBAL_FIELDS:?}"
        ));
    }
    let global = if map.is_empty() {
        None
    } else if !map.contains_key("redis_url") {
        let fields: Vec<&String> = map.keys().collect();
        return Err(format!(
            "global-mode fields {fields:?} need \"redis_url\" (without it the module runs local mode)"
        ));
    } else {
        let global: GlobalConfig = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| format!("invalid global-mode settings: {e}"))?;
        global.validate().map_err(|e| e.to_string())?;
        Some(global)
    };
    Ok(BootstrapSettings {
        stats_interval_ms: ms as u64,
        global,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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
                cluster: Some("pods".into()),
                max_connections_per_host: 20,
                retry_after_seconds: 9,
                queue: None,
                refuse_with: Default::default(),
                rate: Default::default()
            }
        );
    }

    #[test]
    fn filter_errors_name_the_problem() {
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("{").contains("invalid JSON"));
        assert!(err("[]").contains("invalid JSON"));
        assert_eq!(
            parse_filter(br#"{"max_connections_per_host":1}"#)
                .unwrap()
                .cluster,
            None
        );
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
    fn route_settings_are_strict() {
        let r = |j: &str| parse_route(j.as_bytes());
        assert_eq!(
            r(r#"{"max_connections_per_host":4,"retry_after_seconds":2,"disabled":false}"#)
                .unwrap(),
            RouteSettings {
                max_connections_per_host: Some(4),
                retry_after_seconds: Some(2),
                disabled: false,
                queue: None
            }
        );
        assert!(r("").unwrap_err().contains("empty"));
        assert!(r("{}").unwrap_err().contains("empty"));
        assert!(r("[]").unwrap_err().contains("invalid JSON"));
        assert!(r(r#"{"disabled":"yes"}"#)
            .unwrap_err()
            .contains("invalid type"));
        assert!(r(r#"{"max_connections_per_host":-1}"#)
            .unwrap_err()
            .contains("max_connections_per_host"));
        assert!(r(r#"{"retry_after_seconds":100000}"#)
            .unwrap_err()
            .contains("retry_after_seconds"));
        assert!(r(r#"{"cluster":"x"}"#)
            .unwrap_err()
            .contains("unknown field `cluster`"));
    }

    #[test]
    fn route_queue_on_off_and_inherited() {
        use crate::queue::QueueSettings;
        let r = |j: &str| parse_route(j.as_bytes());
        assert_eq!(
            r(r#"{"queue":{"max_waiting":3,"timeout_ms":700}}"#)
                .unwrap()
                .queue,
            Some(Some(QueueSettings {
                max_waiting: 3,
                timeout_ms: 700
            }))
        );
        assert_eq!(r(r#"{"queue":null}"#).unwrap().queue, Some(None));
        assert_eq!(r(r#"{"queue":"off"}"#).unwrap().queue, Some(None));
        assert_eq!(r(r#"{"retry_after_seconds":1}"#).unwrap().queue, None);
        for (bad, says) in [
            (r#"{"queue":"on"}"#, "null or \"off\""),
            (r#"{"queue":false}"#, "null or \"off\""),
            (r#"{"queue":7}"#, "null or \"off\""),
            (
                r#"{"queue":{"max_waiting":0,"timeout_ms":5}}"#,
                "max_waiting",
            ),
            (r#"{"queue":{"max_waiting":1}}"#, "timeout_ms"),
            (
                r#"{"queue":{"max_waiting":1,"timeout_ms":5,"x":1}}"#,
                "unknown field `x`",
            ),
        ] {
            let e = r(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
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
        assert!(parse_bootstrap(b"[]").unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn bootstrap_global_mode_is_validated() {
        let ok = |j: &str| parse_bootstrap(j.as_bytes()).unwrap();
        let err = |j: &str| parse_bootstrap(j.as_bytes()).unwrap_err();
        let s = ok(
            r#"{"stats_interval_ms":100,"redis_url":"redis://127.0.0.1:1","instance_id":"a",
            "lease_ttl_ms":1500,"refresh_ms":200,"fail_mode":"reject","headroom":1,
            "restart_grace_ms":400,"key_prefix":"t"}"#,
        );
        assert_eq!(s.stats_interval_ms, 100);
        let g = s.global.unwrap();
        assert_eq!(g.fail_mode, wscap_global::FailMode::Reject);
        assert_eq!(g.restart_grace_ms, Some(400));
        assert!(ok(r#"{"redis_url":"redis://h:1"}"#).global.is_some());
        assert!(err(r#"{"refresh_ms":100}"#).contains("redis_url"));
        assert!(err(r#"{"redis_url":"http://h"}"#).contains("redis_url must start"));
        assert!(
            err(r#"{"redis_url":"redis://h","lease_ttl_ms":1000,"refresh_ms":900}"#)
                .contains("refresh_ms")
        );
        assert!(
            err(r#"{"redis_url":"redis://h","fail_mode":"local_limit"}"#)
                .contains("needs local_limit")
        );
        assert!(err(r#"{"redis_url":"redis://h","fail_mode":"panic"}"#).contains("unknown variant"));
        assert!(err(r#"{"redis_url":"redis://h","bogus":1}"#).contains("unknown field `bogus`"));
        assert!(err(r#"{"redis_url":7}"#).contains("invalid type"));
    }

    /// Break #9: no refusal of a global-mode config ever shows the password in `redis_url`.
    #[test]
    fn bootstrap_refusals_never_show_the_redis_password() {
        for json in [
            r#"{"redis_url":"http://app:hunter2-pw@10.0.0.1:6379"}"#,
            r#"{"redis_url":"redis:/:hunter2-pw@10.0.0.1:6379"}"#,
            r#"{"redis_url":":hunter2-pw@10.0.0.1:6379"}"#,
            r#"{"redis_url":"redis://:hunter2-pw@h","refresh_ms":9000}"#,
            r#"{"redis_url":"redis://:hunter2-pw@h","fail_mode":"local_limit"}"#,
            r#"{"redis_url":"redis://:hunter2-pw@h","tls_ca_file":"/etc/hostname"}"#,
            r#"{"redis_url":"rediss://:hunter2-pw@h","tls_ca_file":"/nonexistent.pem"}"#,
            r#"{"redis_url":"redis://:hunter2-pw@h","lease_ttl_ms":"x"}"#,
            r#"{"redis_url":"redis://:hunter2-pw@h","bogus":1}"#,
        ] {
            let e = parse_bootstrap(json.as_bytes()).unwrap_err();
            assert!(!e.contains("hunter2"), "{json}: {e}");
        }
        let e =
            parse_bootstrap(br#"{"redis_url":"http://app:hunter2-pw@10.0.0.1:6379"}"#).unwrap_err();
        assert!(e.contains("http://***@10.0.0.1:6379"), "{e}");
    }
}
