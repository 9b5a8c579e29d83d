//! Point-in-time copies of the registry and their two exporters: Prometheus text exposition
//! (format 0.0.4) and the admin JSON.

use std::fmt::{self, Write};

use serde::Serialize;

/// Every cluster, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The clusters.
    pub clusters: Vec<ClusterSnapshot>,
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSnapshot {
    /// Cluster name.
    pub name: String,
    /// Limit for hosts without their own.
    pub default_limit: u32,
    /// Cluster-wide refusals of [`crate::Cluster::acquire`], by reason.
    pub rejected: RejectedCounts,
    /// Members (active and draining; a draining host is listed until its last connection closes),
    /// sorted by address.
    pub hosts: Vec<HostSnapshot>,
}

/// Refusals of least-loaded admission, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RejectedCounts {
    /// Every eligible host was full.
    pub no_capacity: u64,
    /// No host could take connections.
    pub no_hosts: u64,
}

/// A host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Takes new connections.
    Active,
    /// Left the cluster or became unusable: takes none, still counts its live ones.
    Draining,
}

impl HostState {
    /// `"active"` or `"draining"`.
    ///
    /// ```
    /// assert_eq!(wscap_core::HostState::Draining.as_str(), "draining");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            HostState::Active => "active",
            HostState::Draining => "draining",
        }
    }
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSnapshot {
    /// `ip:port`.
    pub address: String,
    /// Live connections.
    pub active: u32,
    /// The host's configured limit.
    pub limit: u32,
    /// A cap under the limit (global mode: this instance's share), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<u32>,
    /// Held at 0 new admissions by an operator's drain ([`crate::Cluster::set_host_held`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Active or draining.
    pub state: HostState,
    /// Connections admitted since the host joined.
    pub admitted: u64,
    /// Admissions to this host refused (fixed-host admission).
    pub rejected: u64,
    /// The highest live count seen.
    pub peak: u32,
}

impl Snapshot {
    /// The admin JSON: `{"clusters":[{"name":..,"hosts":[{"address":..,"active":n,"limit":n,
    /// "state":"active|draining","admitted":n,"rejected":n,..}]}]}`.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// reg.set_default_limit("pods", 2).unwrap();
    /// assert!(reg.snapshot().to_json().starts_with(r#"{"clusters":[{"name":"pods""#));
    /// ```
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"clusters\":[]}"))
    }

    /// Prometheus text exposition (format 0.0.4) with HELP and TYPE lines.
    ///
    /// ```
    /// use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// reg.set_default_limit("pods", 2).unwrap();
    /// reg.set_hosts("pods", &[HostSpec::parse("10.0.0.1:80").unwrap()]).unwrap();
    /// let _p = reg.acquire("pods").unwrap();
    /// let text = reg.snapshot().to_prometheus();
    /// assert!(text.contains("wscap_active_connections{cluster=\"pods\",host=\"10.0.0.1:80\"} 1\n"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(256 + 256 * self.host_count());
        // Writing to a String cannot fail.
        let _ = self.write_prometheus(&mut out);
        out
    }

    fn host_count(&self) -> usize {
        self.clusters.iter().map(|c| c.hosts.len()).sum()
    }

    /// Writes the Prometheus text exposition into `out`.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// let mut s = String::new();
    /// reg.snapshot().write_prometheus(&mut s).unwrap();
    /// assert!(s.contains("# TYPE wscap_active_connections gauge"));
    /// ```
    pub fn write_prometheus(&self, out: &mut impl Write) -> fmt::Result {
        type HostValue = fn(&HostSnapshot) -> u64;
        let per_host: [(&str, &str, &str, HostValue); 4] = [
            (
                "wscap_active_connections",
                "gauge",
                "Live WebSocket connections on the host.",
                |h| u64::from(h.active),
            ),
            (
                "wscap_connection_limit",
                "gauge",
                "Concurrent WebSocket connection limit of the host.",
                |h| u64::from(h.limit),
            ),
            (
                "wscap_admitted",
                "counter",
                "WebSocket connections admitted to the host.",
                |h| h.admitted,
            ),
            (
                "wscap_peak_connections",
                "gauge",
                "Highest live WebSocket count seen on the host.",
                |h| u64::from(h.peak),
            ),
        ];
        for (name, kind, help, value) in per_host {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} {kind}")?;
            for c in &self.clusters {
                for h in &c.hosts {
                    writeln!(
                        out,
                        "{name}{{cluster=\"{}\",host=\"{}\"}} {}",
                        Escaped(&c.name),
                        Escaped(&h.address),
                        value(h)
                    )?;
                }
            }
        }
        writeln!(
            out,
            "# HELP wscap_host_draining 1 while the host drains (takes no new connections)."
        )?;
        writeln!(out, "# TYPE wscap_host_draining gauge")?;
        for c in &self.clusters {
            for h in &c.hosts {
                writeln!(
                    out,
                    "wscap_host_draining{{cluster=\"{}\",host=\"{}\"}} {}",
                    Escaped(&c.name),
                    Escaped(&h.address),
                    u8::from(h.state == HostState::Draining)
                )?;
            }
        }
        writeln!(
            out,
            "# HELP wscap_rejected WebSocket connections refused, by reason."
        )?;
        writeln!(out, "# TYPE wscap_rejected counter")?;
        for c in &self.clusters {
            for (reason, n) in [
                ("no_capacity", c.rejected.no_capacity),
                ("no_hosts", c.rejected.no_hosts),
            ] {
                writeln!(
                    out,
                    "wscap_rejected{{cluster=\"{}\",reason=\"{reason}\"}} {n}",
                    Escaped(&c.name)
                )?;
            }
        }
        Ok(())
    }
}

/// A label value escaped for the text exposition: `\` → `\\`, `"` → `\"`, newline → `\n`.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            match ch {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Escaped("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
