//! The Redis side: one atomic script per pod, loaded by SHA, and strict parsing of its replies.

use std::time::Duration;

use redis::{Client, Connection, Script, Value};

use crate::GlobalConfig;

/// Why a ledger call failed. The caller's state is unchanged; the fail mode decides what next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Redis could not be reached, timed out, or answered with an error.
    #[error("redis: {0}")]
    Redis(String),
    /// Redis answered something the protocol does not allow.
    #[error("unexpected reply from redis: {0}")]
    BadReply(String),
}

/// One instance's part of a pod, as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstancePart {
    /// The instance id.
    pub instance: String,
    /// The process that holds this part: a token each coordinator draws at random when it
    /// starts. Two live processes with one instance id (an Envoy hot restart, one templated
    /// config) are two parts, never one entry they overwrite in turn. Empty for an entry
    /// written without one.
    pub process: String,
    /// Share of the pod's limit it holds.
    pub share: u32,
    /// Live connections it last reported.
    pub live: u32,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The share this instance now holds.
    pub granted: u32,
    /// Redis server time, milliseconds.
    pub server_ms: u64,
    /// The pod's entry is new on this Redis and still in its restart grace.
    pub in_grace: bool,
    /// Some instance recently asked for more than it got: keep no spare share.
    pub in_demand: bool,
    /// The ledger's epoch on this Redis (server ms it was created): changes when Redis lost
    /// its data and the ledger was created again.
    pub epoch: u64,
    /// Every live instance's part of the pod, this one included, sorted by instance id and
    /// process.
    pub parts: Vec<InstancePart>,
}

/// A connection to the ledger for one instance. Not thread-safe: one coordinator thread owns it.
pub struct Ledger {
    client: Client,
    conn: Option<Connection>,
    claim: Script,
    prefix: String,
    instance: String,
    process: String,
    /// `<instance>#<process>`: this process's name in the ledger's fields.
    ledger_id: String,
    io_timeout: Duration,
    ttl_ms: u64,
    grace_ms: u64,
    demand_window_ms: u64,
    /// A ledger created by an instance that saw none is in grace this long (see claim.lua).
    fresh_ms: u64,
    /// The epoch of the ledger this instance last saw (0: none yet).
    seen_epoch: u64,
    fleet_key: String,
    commands: u64,
    /// Kept to take the URL's secrets out of error messages.
    config: GlobalConfig,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("instance", &self.instance)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// A `rediss://` client over the CA and client certificate files (checked by
/// [`GlobalConfig::validate`] already, so a bad file refuses the config, not the first claim).
fn tls_client(config: &GlobalConfig) -> Result<Client, LedgerError> {
    // rustls needs a process-wide crypto provider; install ring's unless the process (an
    // embedding application) already chose one.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // Checked again here: the files may have changed since the config was validated.
    let read =
        |field: &str, path: &str| crate::config::check_pem(field, path).map_err(LedgerError::Redis);
    let root_cert = match &config.tls_ca_file {
        Some(p) => Some(read("tls_ca_file", p)?),
        None => None,
    };
    let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("tls_cert_file", cert)?,
            client_key: read("tls_key_file", key)?,
        }),
        _ => None,
    };
    Client::build_with_tls(
        config.redis_url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| LedgerError::Redis(format!("redis_url / TLS files: {e}")))
}

impl Ledger {
    /// A ledger client for `config` (no connection is made until the first call). For
    /// `rediss://`, the TLS files are read and checked here.
    pub fn new(config: &GlobalConfig) -> Result<Self, LedgerError> {
        let client = if config.redis_url.starts_with("rediss://") {
            tls_client(config)
        } else {
            Client::open(config.redis_url.as_str())
                .map_err(|e| LedgerError::Redis(format!("bad redis_url: {e}")))
        }
        .map_err(|e| redact(config, e))?;
        let io_timeout =
            (config.refresh() / 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let instance = config.instance_id();
        let process = format!("{:016x}", process_token());
        Ok(Ledger {
            client,
            conn: None,
            claim: Script::new(include_str!("claim.lua")),
            prefix: config.key_prefix.clone(),
            ledger_id: format!("{instance}#{process}"),
            instance,
            process,
            io_timeout,
            ttl_ms: config.lease_ttl_ms,
            grace_ms: config.restart_grace().as_millis() as u64,
            demand_window_ms: 3 * config.refresh_ms,
            // An instance that holds connections retries every refresh, and a claim waits at
            // most `io_timeout`: it reaches a Redis that is back within this window.
            fresh_ms: config.refresh_ms + io_timeout.as_millis() as u64,
            seen_epoch: 0,
            fleet_key: format!("{}:fleet", config.key_prefix),
            commands: 0,
            config: config.clone(),
        })
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// This process's token (see [`InstancePart::process`]).
    pub fn process(&self) -> &str {
        &self.process
    }

    /// Whether `part` is this process's own.
    pub fn is_mine(&self, part: &InstancePart) -> bool {
        part.instance == self.instance && part.process == self.process
    }

    /// Redis commands sent so far (script loads included).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// The key of one pod: `<prefix>:{<cluster>/<ip:port>}`. The braces make the whole key its
    /// own Redis Cluster hash tag; braces and `%` in names are percent-encoded.
    ///
    /// ```
    /// let l = wscap_global::Ledger::new(&wscap_global::GlobalConfig::new("redis://127.0.0.1:1")).unwrap();
    /// assert_eq!(l.pod_key("pods", "10.0.0.1:80"), "wscap:{pods/10.0.0.1:80}");
    /// assert_eq!(l.pod_key("a{b}", "[::1]:80"), "wscap:{a%7Bb%7D/[::1]:80}");
    /// ```
    pub fn pod_key(&self, cluster: &str, addr: &str) -> String {
        let enc = |s: &str| {
            s.replace('%', "%25")
                .replace('{', "%7B")
                .replace('}', "%7D")
        };
        format!("{}:{{{}/{}}}", self.prefix, enc(cluster), enc(addr))
    }

    /// The open connection, connecting first if needed.
    fn connect<'a>(
        slot: &'a mut Option<Connection>,
        client: &Client,
        timeout: Duration,
    ) -> Result<&'a mut Connection, LedgerError> {
        if slot.is_none() {
            let conn = client
                .get_connection_with_timeout(timeout)
                .map_err(|e| LedgerError::Redis(e.to_string()))?;
            conn.set_read_timeout(Some(timeout))
                .and_then(|()| conn.set_write_timeout(Some(timeout)))
                .map_err(|e| LedgerError::Redis(e.to_string()))?;
            *slot = Some(conn);
        }
        slot.as_mut()
            .ok_or_else(|| LedgerError::Redis("no connection".to_owned()))
    }

    /// Claims `want` slots of a pod for this instance (shrinking when `want` is below the share
    /// held), reports `live`, and refreshes the lease. One round trip (two after Redis lost its
    /// script cache).
    pub fn claim(
        &mut self,
        cluster: &str,
        addr: &str,
        want: u32,
        live: u32,
        limit: u32,
    ) -> Result<Claim, LedgerError> {
        let key = self.pod_key(cluster, addr);
        let (instance, ttl, grace, window) = (
            self.ledger_id.clone(),
            self.ttl_ms,
            self.grace_ms,
            self.demand_window_ms,
        );
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(key)
            .key(&self.fleet_key)
            .arg(instance)
            .arg(want)
            .arg(live)
            .arg(limit)
            .arg(ttl)
            .arg(grace)
            .arg(window)
            .arg(self.seen_epoch)
            .arg(self.fresh_ms)
            // An ended lease is held for one more ttl (claim.lua): a holder that stalled, or
            // could not reach a frozen Redis, for less than that loses nothing.
            .arg(ttl);
        let reply =
            match Self::connect(&mut self.conn, &self.client, self.io_timeout).and_then(|conn| {
                invocation
                    .invoke::<Value>(conn)
                    .map_err(|e| LedgerError::Redis(e.to_string()))
            }) {
                Ok(v) => v,
                Err(e) => {
                    // Reconnect next time: the connection may be half-broken (timeout mid-reply).
                    self.conn = None;
                    return Err(redact(&self.config, e));
                }
            };
        self.commands += 1;
        let claim = parse_claim(&reply)?;
        self.seen_epoch = claim.epoch;
        Ok(claim)
    }
}

/// A random token for this process's coordinator (std's per-map random keys, hashed once).
fn process_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// `e` with the URL's secrets taken out of its message ([`GlobalConfig::redact`]).
fn redact(config: &GlobalConfig, e: LedgerError) -> LedgerError {
    match e {
        LedgerError::Redis(m) => LedgerError::Redis(config.redact(&m)),
        LedgerError::BadReply(m) => LedgerError::BadReply(config.redact(&m)),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn u32_of(v: &Value, what: &str) -> Result<u32, LedgerError> {
    int(v)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| LedgerError::BadReply(format!("{what} is not a u32: {v:?}")))
}

/// Parses the claim script's reply, refusing anything out of protocol (negative numbers, a
/// ragged list, a flag that is not 0 or 1).
fn parse_claim(reply: &Value) -> Result<Claim, LedgerError> {
    let Value::Array(items) = reply else {
        return Err(LedgerError::BadReply(format!(
            "claim reply is not an array: {reply:?}"
        )));
    };
    if items.len() < 5 || (items.len() - 5) % 3 != 0 {
        return Err(LedgerError::BadReply(format!(
            "claim reply has {} items, expected 5 + 3n",
            items.len()
        )));
    }
    let granted = u32_of(&items[0], "granted")?;
    let server_ms = int(&items[1])
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| LedgerError::BadReply(format!("server time: {:?}", items[1])))?;
    let flag = |i: usize, what: &str| match int(&items[i]) {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        _ => Err(LedgerError::BadReply(format!(
            "{what} flag: {:?}",
            items[i]
        ))),
    };
    let in_grace = flag(2, "grace")?;
    let in_demand = flag(3, "demand")?;
    let epoch = int(&items[4])
        .and_then(|i| u64::try_from(i).ok())
        .filter(|&e| e > 0)
        .ok_or_else(|| LedgerError::BadReply(format!("epoch: {:?}", items[4])))?;
    let mut parts = Vec::with_capacity((items.len() - 5) / 3);
    for part in items[5..].chunks_exact(3) {
        let id = match &part[0] {
            Value::BulkString(b) => String::from_utf8(b.clone())
                .map_err(|_| LedgerError::BadReply("instance id is not UTF-8".to_owned()))?,
            other => return Err(LedgerError::BadReply(format!("instance id: {other:?}"))),
        };
        // `<instance>#<process>`; the token has no `#`, the instance id may.
        let (instance, process) = match id.rsplit_once('#') {
            Some((i, p)) => (i.to_owned(), p.to_owned()),
            None => (id, String::new()),
        };
        parts.push(InstancePart {
            instance,
            process,
            share: u32_of(&part[1], "share")?,
            live: u32_of(&part[2], "live")?,
        });
    }
    parts.sort_by(|a, b| (&a.instance, &a.process).cmp(&(&b.instance, &b.process)));
    Ok(Claim {
        granted,
        server_ms,
        in_grace,
        in_demand,
        epoch,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_well_formed_reply() {
        let v = Value::Array(vec![
            Value::Int(3),
            Value::Int(1_700_000_000_000),
            Value::Int(0),
            Value::Int(1),
            Value::Int(1_600_000_000_000),
            bulk("b"),
            Value::Int(2),
            Value::Int(1),
            bulk("a"),
            Value::Int(3),
            Value::Int(3),
        ]);
        let c = parse_claim(&v).unwrap();
        assert_eq!(c.granted, 3);
        assert!(!c.in_grace);
        assert!(c.in_demand);
        assert_eq!(c.epoch, 1_600_000_000_000);
        assert_eq!(c.parts[0].instance, "a");
        assert_eq!(c.parts[1].share, 2);
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![
                Value::Int(-1),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(7),
                Value::Int(0),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                bulk("a"),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                Value::Int(5),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                bulk("a"),
                bulk("x"),
                Value::Int(1),
            ]),
        ] {
            assert!(
                matches!(parse_claim(&bad), Err(LedgerError::BadReply(_))),
                "{bad:?}"
            );
        }
    }
}
