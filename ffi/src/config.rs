//! The optional JSON configuration of `wscap_registry_new` / `wscap_registry_apply_config`.
//!
//! ```json
//! {"clusters": [
//!   {"name": "pods", "max_connections_per_host": 20,
//!    "hosts": [{"address": "10.0.0.1:80", "max_connections": 5}, {"address": "10.0.0.2:80"}]}
//! ]}
//! ```
//!
//! - Top level: `clusters` (optional, default none). `{}` is a valid, empty configuration.
//! - Cluster: `name` (required, non-empty, unique), `max_connections_per_host` (required: the
//!   default limit of its hosts; 0 admits nothing), `hosts` (optional, default none).
//! - Host: `address` (required, `ip:port`, IPv6 as `[::1]:80`, unique in its cluster),
//!   `max_connections` (optional: the host's own limit over the cluster default).
//! - Limits are at most `WSCAP_MAX_LIMIT`. Unknown fields are refused.
//!
//! The whole document is checked before anything is applied: a refused configuration changes
//! nothing. Applying one sets, for each listed cluster, its default limit and then its hosts
//! (set semantics: unlisted hosts drain). Clusters not listed are left as they are.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use wscap_core::{HostAddr, HostSpec, Registry, MAX_LIMIT};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDoc {
    #[serde(default)]
    clusters: Vec<ClusterDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterDoc {
    name: String,
    max_connections_per_host: u32,
    #[serde(default)]
    hosts: Vec<HostDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostDoc {
    address: String,
    #[serde(default)]
    max_connections: Option<u32>,
}

/// A checked configuration, ready to apply.
#[derive(Debug, Default)]
pub(crate) struct Config {
    clusters: Vec<ClusterPlan>,
}

#[derive(Debug)]
struct ClusterPlan {
    name: String,
    default_limit: u32,
    hosts: Vec<HostSpec>,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigRefused(String);

impl fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(msg: impl Into<String>) -> ConfigRefused {
    ConfigRefused(msg.into())
}

fn check_limit(what: &str, limit: u32) -> Result<u32, ConfigRefused> {
    if limit > MAX_LIMIT {
        Err(refuse(format!(
            "{what}: limit {limit} is larger than the maximum {MAX_LIMIT}"
        )))
    } else {
        Ok(limit)
    }
}

impl Config {
    /// Parses and checks `bytes` (the C string's bytes, not yet known to be UTF-8).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Config, ConfigRefused> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            refuse(format!(
                "config is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        // serde accepts a struct written as an array of its fields; a config is an object.
        if !text.trim_start().starts_with('{') {
            return Err(refuse(
                "config: expected a JSON object, e.g. {\"clusters\":[...]}",
            ));
        }
        let doc: ConfigDoc =
            serde_json::from_str(text).map_err(|e| refuse(format!("config: {e}")))?;
        let mut names = HashSet::new();
        let mut clusters = Vec::with_capacity(doc.clusters.len());
        for (i, c) in doc.clusters.into_iter().enumerate() {
            let at = format!("clusters[{i}]");
            if c.name.is_empty() {
                return Err(refuse(format!("{at}.name: must not be empty")));
            }
            if c.name.contains('\0') {
                return Err(refuse(format!("{at}.name: must not contain NUL")));
            }
            if !names.insert(c.name.clone()) {
                return Err(refuse(format!(
                    "{at}.name: cluster {:?} is listed twice",
                    c.name
                )));
            }
            let default_limit = check_limit(
                &format!("{at}.max_connections_per_host"),
                c.max_connections_per_host,
            )?;
            let mut seen = HashSet::new();
            let mut hosts = Vec::with_capacity(c.hosts.len());
            for (j, h) in c.hosts.into_iter().enumerate() {
                let at = format!("{at}.hosts[{j}]");
                let addr: HostAddr = h
                    .address
                    .parse()
                    .map_err(|e| refuse(format!("{at}.address: {e}")))?;
                if !seen.insert(addr.clone()) {
                    return Err(refuse(format!(
                        "{at}.address: host {addr} is listed twice in cluster {:?}",
                        c.name
                    )));
                }
                let mut spec = HostSpec::new(addr);
                if let Some(l) = h.max_connections {
                    spec = spec.with_limit(check_limit(&format!("{at}.max_connections"), l)?);
                }
                hosts.push(spec);
            }
            clusters.push(ClusterPlan {
                name: c.name,
                default_limit,
                hosts,
            });
        }
        Ok(Config { clusters })
    }

    /// Applies a checked configuration. Cannot fail: everything core could refuse was checked
    /// by [`Config::parse`]; a refusal here would be a bug, reported as one.
    pub(crate) fn apply(&self, registry: &Registry) -> Result<(), wscap_core::ConfigError> {
        for c in &self.clusters {
            registry.set_default_limit(&c.name, c.default_limit)?;
            registry.set_hosts(&c.name, &c.hosts)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        Config::parse(json.as_bytes()).unwrap_err().0
    }

    #[test]
    fn the_documented_example_applies() {
        let cfg = Config::parse(
            br#"{"clusters":[{"name":"pods","max_connections_per_host":20,
                "hosts":[{"address":"10.0.0.1:80","max_connections":5},{"address":"10.0.0.2:80"}]}]}"#,
        )
        .unwrap();
        let reg = Registry::new();
        cfg.apply(&reg).unwrap();
        let snap = reg.snapshot();
        let limits: Vec<_> = snap.clusters[0].hosts.iter().map(|h| h.limit).collect();
        assert_eq!(limits, [5, 20]);
        // Idempotent.
        cfg.apply(&reg).unwrap();
        assert_eq!(reg.snapshot(), snap);
    }

    #[test]
    fn empty_documents_are_fine() {
        assert!(Config::parse(b"{}").unwrap().clusters.is_empty());
        assert!(Config::parse(br#"{"clusters":[]}"#)
            .unwrap()
            .clusters
            .is_empty());
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert!(refused("").contains("expected a JSON object"));
        assert!(refused("[]").contains("expected a JSON object"));
        assert!(refused("{").contains("EOF while parsing"));
        assert!(refused(r#"{"cluster":[]}"#).contains("unknown field `cluster`"));
        assert!(refused(r#"{"clusters":[{"name":"a"}]}"#)
            .contains("missing field `max_connections_per_host`"));
        assert!(
            refused(r#"{"clusters":[{"name":"","max_connections_per_host":1}]}"#)
                .contains("clusters[0].name: must not be empty")
        );
        assert!(refused(
            r#"{"clusters":[{"name":"a","max_connections_per_host":1},{"name":"a","max_connections_per_host":2}]}"#
        )
        .contains("clusters[1].name: cluster \"a\" is listed twice"));
        assert!(refused(
            r#"{"clusters":[{"name":"a","max_connections_per_host":1,"hosts":[{"address":"pod:80"}]}]}"#
        )
        .contains("clusters[0].hosts[0].address: invalid host address \"pod:80\""));
        assert!(refused(
            r#"{"clusters":[{"name":"a","max_connections_per_host":1,"hosts":[{"address":"10.0.0.1:80"},{"address":" 10.0.0.1:80"}]}]}"#
        )
        .contains("hosts[1].address: host 10.0.0.1:80 is listed twice"));
        assert!(
            refused(r#"{"clusters":[{"name":"a","max_connections_per_host":4294967295}]}"#)
                .contains("max_connections_per_host: limit 4294967295 is larger")
        );
        assert!(refused(
            r#"{"clusters":[{"name":"a","max_connections_per_host":1,"hosts":[{"address":"10.0.0.1:80","max_connections":-1}]}]}"#
        )
        .contains("invalid value"));
        assert!(
            refused(r#"{"clusters":[{"name":"a\u0000","max_connections_per_host":1}]}"#)
                .contains("NUL")
        );
        assert!(Config::parse(b"{\"clusters\":[{\"name\":\"\xff\"}]}")
            .unwrap_err()
            .0
            .contains("not valid UTF-8 (at byte 22)"));
    }

    #[test]
    fn a_refused_document_changes_nothing() {
        let reg = Registry::new();
        assert!(Config::parse(
            br#"{"clusters":[{"name":"a","max_connections_per_host":1},{"name":"b","max_connections_per_host":1,"hosts":[{"address":"x"}]}]}"#
        )
        .is_err());
        // Nothing was parsed into a plan, so nothing reached the registry.
        assert!(reg.snapshot().clusters.is_empty());
    }
}
