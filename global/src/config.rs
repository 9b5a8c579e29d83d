//! Global-mode settings, as they arrive in the bootstrap extension's JSON config.

use std::time::Duration;

use serde::Deserialize;

/// What an instance does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Admit within the share already held, until that share's lease would have expired on the
    /// server (`lease_ttl_ms` after the last successful refresh, timed from before it was sent);
    /// then admit nothing new until Redis answers again. Exact: never over the fleet limit.
    #[default]
    KeepShare,
    /// Admit nothing new while Redis cannot be reached. Exact.
    Reject,
    /// Admit up to `local_limit` connections per pod on this instance alone. Not exact: each
    /// instance may hold the larger of `local_limit` and what it held when Redis went away.
    LocalLimit,
}

/// Settings of global mode.
///
/// ```
/// let c = wscap_global::GlobalConfig::from_json(r#"{"redis_url":"redis://127.0.0.1:6379"}"#).unwrap();
/// assert_eq!(c.lease_ttl_ms, 10_000);
/// assert!(wscap_global::GlobalConfig::from_json(r#"{"redis_url":"redis://x","bogus":1}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// `redis://[user:password@]host:port[/db]`; `rediss://` for TLS. AUTH (a password, or an
    /// ACL user and password) goes in the URL.
    pub redis_url: String,
    /// `rediss://` only: PEM file of the CA certificate(s) the Redis server's certificate must
    /// chain to. Default: the system's trust store.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// `rediss://` only: PEM client certificate for mutual TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// `rediss://` only: PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// This instance's id in the ledger (and the fleet view); default: hostname and process
    /// id. The ledger tells processes apart by a random token besides it, so two processes
    /// with one id (a hot restart, one templated config) are still two holders.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long a lease lives on the server without a refresh.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How often leases and counts are refreshed.
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// What to do while Redis cannot be reached.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// The per-pod limit of this instance alone under [`FailMode::LocalLimit`].
    #[serde(default)]
    pub local_limit: Option<u32>,
    /// Spare share an instance keeps above its live count per pod, so that most admissions need
    /// no round trip.
    #[serde(default = "default_headroom")]
    pub headroom: u32,
    /// After the ledger shows a possible loss (Redis came back empty: an instance that saw the
    /// old ledger finds it gone), how long instances may only reclaim what they hold. Default:
    /// `lease_ttl_ms`. A ledger nobody saw before is in grace for at most one refresh plus one
    /// claim timeout; a pod new to an existing ledger not at all (docs/GLOBAL.md).
    #[serde(default)]
    pub restart_grace_ms: Option<u64>,
    /// Prefix of every key.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

/// Reads a TLS file and checks it holds what `field` needs: at least one PEM certificate (and
/// nothing malformed) for `tls_ca_file` / `tls_cert_file`, a PEM private key for `tls_key_file`.
pub(crate) fn check_pem(field: &str, path: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // A regular file of bounded size: `/dev/zero` or a directory must not hang or exhaust the
    // proxy at config load.
    const MAX_PEM: u64 = 1 << 20;
    let meta = std::fs::metadata(path).map_err(|e| format!("{field} {path:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{field} {path:?}: not a regular file"));
    }
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_PEM + 1), &mut pem)
        })
        .map_err(|e| format!("{field} {path:?}: {e}"))?;
    if pem.len() as u64 > MAX_PEM {
        return Err(format!("{field} {path:?}: larger than {MAX_PEM} bytes"));
    }
    if field == "tls_key_file" {
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{field} {path:?}: no PEM private key ({e})"))?;
    } else {
        let n = CertificateDer::pem_slice_iter(&pem)
            .try_fold(0usize, |n, c| c.map(|_| n + 1))
            .map_err(|e| format!("{field} {path:?}: {e}"))?;
        if n == 0 {
            return Err(format!("{field} {path:?}: no PEM certificate in it"));
        }
    }
    Ok(pem)
}

/// The user info of a URL-like string: `(user, password)`, split at the first `:`; `None`
/// without an `@`. Anything before the last `@` after the scheme counts (a password may hold
/// `/`, `:` or `#`), and a string without `://` is searched from its start, so a mistyped scheme
/// still has its password found.
fn userinfo(url: &str) -> Option<(&str, &str)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (info, _) = rest.rsplit_once('@')?;
    Some(info.split_once(':').unwrap_or(("", info)))
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (&url[..s.len() + 3], r),
        None => ("", url),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => url.to_owned(),
    }
}

fn default_lease_ttl_ms() -> u64 {
    10_000
}
fn default_refresh_ms() -> u64 {
    1_000
}
fn default_headroom() -> u32 {
    2
}
fn default_prefix() -> String {
    "wscap".to_owned()
}

/// Why a global-mode config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON of the expected shape.
    #[error("invalid global config: {0}")]
    Json(String),
    /// A value out of range or inconsistent with another.
    #[error("invalid global config: {0}")]
    Invalid(String),
}

impl GlobalConfig {
    /// Parses and validates the JSON form.
    ///
    /// ```
    /// use wscap_global::GlobalConfig;
    /// let err = GlobalConfig::from_json(r#"{"redis_url":"redis://h","refresh_ms":9000,"lease_ttl_ms":10000}"#).unwrap_err();
    /// assert!(err.to_string().contains("refresh_ms"));
    /// ```
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let c: GlobalConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges and consistency.
    ///
    /// ```
    /// # use wscap_global::GlobalConfig;
    /// let mut c = GlobalConfig::new("redis://127.0.0.1:1");
    /// c.fail_mode = wscap_global::FailMode::LocalLimit;
    /// assert!(c.validate().is_err(), "local_limit mode needs local_limit");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://")) {
            return bad(format!(
                "redis_url must start with redis:// or rediss://, got {:?}",
                self.redacted_url()
            ));
        }
        let tls_files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (field, path) in tls_files {
            let Some(path) = path else { continue };
            if !self.redis_url.starts_with("rediss://") {
                return bad(format!("{field} needs a rediss:// redis_url (TLS)"));
            }
            check_pem(field, path).map_err(ConfigError::Invalid)?;
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad("tls_cert_file and tls_key_file go together (mutual TLS)".to_owned());
        }
        if self.lease_ttl_ms < 100 || self.lease_ttl_ms > 3_600_000 {
            return bad(format!(
                "lease_ttl_ms must be within 100..=3600000, got {}",
                self.lease_ttl_ms
            ));
        }
        if self.refresh_ms < 10 || self.refresh_ms * 3 > self.lease_ttl_ms {
            return bad(format!(
                "refresh_ms must be at least 10 and at most a third of lease_ttl_ms ({}), got {}",
                self.lease_ttl_ms, self.refresh_ms
            ));
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty()
                || id.len() > 128
                || id.contains(['{', '}'])
                || id.contains(char::is_control)
            {
                return bad(format!(
                    "instance_id must be 1..=128 printable characters without braces, got {id:?}"
                ));
            }
        }
        match (self.fail_mode, self.local_limit) {
            (FailMode::LocalLimit, None) => {
                return bad("fail_mode local_limit needs local_limit".to_owned())
            }
            (FailMode::KeepShare | FailMode::Reject, Some(_)) => {
                return bad("local_limit is only used with fail_mode local_limit".to_owned())
            }
            _ => {}
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return bad(format!(
                "key_prefix must be non-empty without braces, got {:?}",
                self.key_prefix
            ));
        }
        if self.restart_grace() > Duration::from_secs(3600) {
            return bad("restart_grace_ms must be at most 3600000".to_owned());
        }
        Ok(())
    }

    /// Defaults around a Redis URL.
    ///
    /// ```
    /// let c = wscap_global::GlobalConfig::new("redis://127.0.0.1:6379");
    /// assert!(c.validate().is_ok());
    /// ```
    pub fn new(redis_url: &str) -> Self {
        GlobalConfig {
            redis_url: redis_url.to_owned(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            instance_id: None,
            lease_ttl_ms: default_lease_ttl_ms(),
            refresh_ms: default_refresh_ms(),
            fail_mode: FailMode::default(),
            local_limit: None,
            headroom: default_headroom(),
            restart_grace_ms: None,
            key_prefix: default_prefix(),
        }
    }

    /// `redis_url` fit for a log: the user info (`user:password`, everything before the last
    /// `@`) replaced by `***`, whatever the scheme. Every message of this crate that could
    /// contain the URL shows this form.
    ///
    /// ```
    /// let c = wscap_global::GlobalConfig::new("redis://app:s3cret@10.0.0.1:6379/0");
    /// assert_eq!(c.redacted_url(), "redis://***@10.0.0.1:6379/0");
    /// assert_eq!(wscap_global::GlobalConfig::new("http://:pw@h").redacted_url(), "http://***@h");
    /// assert_eq!(wscap_global::GlobalConfig::new("redis://h:1").redacted_url(), "redis://h:1");
    /// ```
    pub fn redacted_url(&self) -> String {
        redact_url(&self.redis_url)
    }

    /// `message` with the URL's secrets taken out: the URL itself in its [redacted
    /// form](Self::redacted_url), and the password or user info wherever else it occurs.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.replace(&self.redis_url, &self.redacted_url());
        if let Some((user, password)) = userinfo(&self.redis_url) {
            for secret in [password, user] {
                // Short secrets (or none) are not searched for: "a" would mangle every message.
                if secret.len() >= 3 {
                    out = out.replace(secret, "***");
                }
            }
        }
        out
    }

    /// The lease time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The refresh interval.
    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms)
    }

    /// The restart grace.
    pub fn restart_grace(&self) -> Duration {
        Duration::from_millis(self.restart_grace_ms.unwrap_or(self.lease_ttl_ms))
    }

    /// The instance id, or a default made of the host name and process id.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_password_in_any_config_error() {
        for url in [
            "http://app:s3cret-pw@10.0.0.1:6379",
            "redis:/app:s3cret-pw@10.0.0.1:6379",
            "app:s3cret-pw@10.0.0.1:6379",
            "REDIS://:s3cret-pw@h:1",
            "redis//:s3cret-pw@h",
            "tcp://:s3cr/et-pw@h",
        ] {
            let mut c = GlobalConfig::new(url);
            c.refresh_ms = 5;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("redis_url must start with"), "{url}: {e}");
            assert!(
                !e.contains("s3cret") && !e.contains("s3cr/et"),
                "{url}: {e}"
            );
            assert!(e.contains("***"), "{url}: {e}");
        }
    }

    #[test]
    fn redact_takes_the_secrets_out_of_any_message() {
        let c = GlobalConfig::new("redis://alice:pa:ss/w@rd@10.0.0.1:6379/2");
        assert_eq!(c.redacted_url(), "redis://***@10.0.0.1:6379/2");
        let m =
            c.redact("cannot parse redis://alice:pa:ss/w@rd@10.0.0.1:6379/2 (pa:ss/w@rd, alice)");
        assert_eq!(
            m, "cannot parse redis://***@10.0.0.1:6379/2 (***, ***)",
            "{m}"
        );
        let plain = GlobalConfig::new("redis://127.0.0.1:6379");
        assert_eq!(
            plain.redact("x redis://127.0.0.1:6379"),
            "x redis://127.0.0.1:6379"
        );
    }
}
