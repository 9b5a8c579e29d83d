//! The LB policy `wscap`: feeds the cluster's live membership into core and balances the
//! traffic Envoy asks it to place.
//!
//! Envoy runs one LB instance per thread (main + each worker) and calls the membership hook on
//! each of them, so the feed is set-based and idempotent: every call hands core the whole
//! current healthy host set ([`wscap_core::Cluster::set_hosts`]); hosts that left or turned
//! unhealthy drain in core.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};

use wscap_core::{Cluster, HostSpec, Registry, MAX_LIMIT, STANDBY};

use crate::Level;

/// The endpoint metadata namespace read for per-host limits.
pub const METADATA_NAMESPACE: &str = "wscap";
/// The endpoint metadata key read for per-host limits.
pub const METADATA_KEY: &str = "max_connections";

/// Clusters for which Envoy created a `wscap` LB instance. Read for every governed WebSocket
/// by a filter without `"cluster"` (a shared read lock), written when a cluster gets or loses
/// the policy.
static WITH_POLICY: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(Default::default);

/// Has Envoy created a `wscap` LB instance for `cluster`? Without one the module never learns
/// the cluster's hosts: a filter naming the cluster refuses every WebSocket on it with
/// `no_hosts`, and a filter without `"cluster"` does not govern it.
pub fn has_policy(cluster: &str) -> bool {
    WITH_POLICY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(cluster)
}

/// Every cluster that has (had) the wscap LB policy in this process and was not removed.
pub fn policy_clusters() -> Vec<String> {
    WITH_POLICY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

/// Records that `cluster` has the policy.
pub fn mark_policy(cluster: &str) {
    if has_policy(cluster) {
        return;
    }
    WITH_POLICY
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(cluster.to_owned());
}

/// Forgets `cluster` (CDS removed it).
pub fn unmark_policy(cluster: &str) {
    WITH_POLICY
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(cluster);
}

/// What the LB policy reads from Envoy's view of the cluster.
pub trait ClusterView {
    /// The cluster's name.
    fn cluster_name(&self) -> String;
    /// Number of priorities.
    fn priorities(&self) -> usize;
    /// All hosts of a priority.
    fn hosts_count(&self, priority: u32) -> usize;
    /// Address of the `index`-th host (all hosts) of a priority.
    fn host_address(&self, priority: u32, index: usize) -> Option<&str>;
    /// Healthy hosts of a priority.
    fn healthy_count(&self, priority: u32) -> usize;
    /// Address of the `index`-th healthy host of a priority.
    fn healthy_address(&self, priority: u32, index: usize) -> Option<&str>;
    /// A number from the host's (all-hosts index) `filter_metadata[ns][key]`.
    fn host_metadata_number(&self, priority: u32, index: usize, ns: &str, key: &str)
        -> Option<f64>;
    /// The coarse health of the `index`-th host (all hosts) of a priority.
    fn host_health(&self, priority: u32, index: usize) -> Health;
}

/// A host's coarse health as Envoy reports it (`Host::coarseHealth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Failed health checks (or EDS `UNHEALTHY`, `DRAINING`, ...).
    Unhealthy,
    /// EDS `DEGRADED` (or an active health check's degraded answer).
    Degraded,
    /// Healthy.
    Healthy,
}

/// What the LB policy reads from one host-selection request.
pub trait RequestView {
    /// The override host a filter set (`ip:port`, strict?).
    fn override_host(&self) -> Option<(&str, bool)>;
}

/// One LB instance (one per thread).
#[derive(Debug)]
pub struct Lb {
    cluster: Option<Cluster>,
    next: AtomicUsize,
}

/// Converts a metadata number into a limit; `None` (with a reason) when it is not one.
pub fn metadata_limit(value: f64) -> Result<u32, String> {
    if !value.is_finite() || value < 0.0 || value.fract() != 0.0 {
        return Err(format!("{value} is not a non-negative integer"));
    }
    if value > f64::from(MAX_LIMIT) {
        return Err(format!("{value} is larger than the maximum {MAX_LIMIT}"));
    }
    Ok(value as u32)
}

/// The member set core gets, with per-host limits from metadata and a tier per host, so that
/// WebSockets are steered the way Envoy's own load balancers pick hosts:
///
/// - tier 0: the healthy hosts of the highest priority (lowest number) that has healthy hosts;
/// - tier 1: the degraded hosts of the highest priority that has degraded hosts, used only when
///   no tier-0 host has room;
/// - [`STANDBY`]: every other healthy or degraded host (lower priorities): counted and reported
///   `active`, but given no new WebSocket until its priority is the one in use;
/// - unhealthy hosts are left out, so they drain (still counted until their last connection
///   closes) and take no new WebSocket.
///
/// Envoy's panic mode (fewer healthy hosts than `healthy_panic_threshold`, 50 % by default)
/// sends plain requests to every host of the priority, unhealthy ones too; wscap never steers a
/// WebSocket to an unhealthy host, so it does not follow panic mode: with no healthy or
/// degraded host left, WebSockets are refused with `503 no_hosts`.
pub fn healthy_specs(view: &impl ClusterView) -> Vec<HostSpec> {
    let mut found: Vec<(u32, usize, &str, Health)> = Vec::new();
    for p in 0..view.priorities() {
        let Ok(p) = u32::try_from(p) else { break };
        let healthy: HashSet<&str> = (0..view.healthy_count(p))
            .filter_map(|i| view.healthy_address(p, i))
            .collect();
        for i in 0..view.hosts_count(p) {
            let Some(addr) = view.host_address(p, i) else {
                continue;
            };
            // Envoy's healthy list is the authority for "healthy"; the per-host health tells a
            // degraded host from an unhealthy one.
            let health = if healthy.contains(addr) {
                Health::Healthy
            } else {
                match view.host_health(p, i) {
                    Health::Degraded => Health::Degraded,
                    _ => continue,
                }
            };
            found.push((p, i, addr, health));
        }
    }
    let first = |h: Health| found.iter().find(|f| f.3 == h).map(|f| f.0);
    let (in_use, degraded_in_use) = (first(Health::Healthy), first(Health::Degraded));
    let mut specs = Vec::with_capacity(found.len());
    for (p, i, addr, health) in found {
        let mut spec = match HostSpec::parse(addr) {
            Ok(s) => s,
            Err(e) => {
                crate::log(Level::Warn, &format!("wscap lb: skipping host: {e}"));
                continue;
            }
        };
        let tier = match health {
            Health::Healthy if Some(p) == in_use => 0,
            Health::Degraded if Some(p) == degraded_in_use => 1,
            _ => STANDBY,
        };
        spec = spec.with_tier(tier);
        if let Some(v) = view.host_metadata_number(p, i, METADATA_NAMESPACE, METADATA_KEY) {
            match metadata_limit(v) {
                Ok(limit) => spec = spec.with_limit(limit),
                Err(e) => crate::log(
                    Level::Warn,
                    &format!(
                        "wscap lb: host {addr}: filter_metadata.{METADATA_NAMESPACE}.{METADATA_KEY} {e}; using the cluster default"
                    ),
                ),
            }
        }
        specs.push(spec);
    }
    specs
}

impl Lb {
    /// A new LB instance; reads the membership at once, unless the view holds no host at all.
    ///
    /// Observed on Envoy 1.40: the LB instances of worker threads are created before their
    /// thread-local priority set is filled (zero hosts), and the membership hook follows at
    /// once with the real set. Feeding that empty view to core would drain (or drop) every
    /// host of the cluster for a moment and refuse WebSockets meanwhile, so an empty view at
    /// creation is ignored; an empty set delivered by the membership hook is honoured.
    pub fn new(registry: &Registry, view: &impl ClusterView) -> Self {
        let name = view.cluster_name();
        mark_policy(&name);
        let cluster = match registry.cluster_or_create(&name) {
            Ok(c) => {
                // A filter config without "cluster" governs it from now on.
                crate::filter::apply_default(registry, &name);
                Some(c)
            }
            Err(e) => {
                crate::log(Level::Error, &format!("wscap lb: cluster {name:?}: {e}"));
                None
            }
        };
        let lb = Lb {
            cluster,
            next: AtomicUsize::new(0),
        };
        let any_host = (0..view.priorities())
            .filter_map(|p| u32::try_from(p).ok())
            .any(|p| view.hosts_count(p) > 0);
        if any_host {
            lb.sync(view);
        }
        lb
    }

    /// Hands core the whole current healthy set. Idempotent.
    pub fn sync(&self, view: &impl ClusterView) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let specs = healthy_specs(view);
        let change = cluster.set_hosts(&specs);
        if change != Default::default() {
            crate::log(
                Level::Info,
                &format!(
                    "wscap lb: cluster {}: {} hosts ({} added, {} draining, {} revived, {} removed)",
                    cluster.name(),
                    specs.len(),
                    change.added,
                    change.drained,
                    change.revived,
                    change.removed
                ),
            );
        }
    }

    /// Picks `(priority, index among that priority's healthy hosts)`.
    ///
    /// An override host (set by the filter for a WebSocket) is honoured when it is healthy; a
    /// strict override that is not healthy gets no host. Everything else goes round robin over
    /// the healthy hosts of the first priority that has any.
    pub fn choose(
        &self,
        view: &impl ClusterView,
        request: &impl RequestView,
    ) -> Option<(u32, u32)> {
        if let Some((host, strict)) = request.override_host() {
            if crate::log_enabled(Level::Debug) {
                crate::log(
                    Level::Debug,
                    &format!(
                        "wscap lb: choose_host called with override host {host} (strict={strict})"
                    ),
                );
            }
            for p in 0..view.priorities() {
                let p = u32::try_from(p).ok()?;
                for i in 0..view.healthy_count(p) {
                    if view.healthy_address(p, i) == Some(host) {
                        return Some((p, u32::try_from(i).ok()?));
                    }
                }
            }
            if strict {
                return None;
            }
        }
        for p in 0..view.priorities() {
            let p = u32::try_from(p).ok()?;
            let n = view.healthy_count(p);
            if n > 0 {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                return Some((p, u32::try_from(i).ok()?));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Clone)]
    struct Host {
        addr: String,
        healthy: bool,
        degraded: bool,
        limit: Option<f64>,
    }

    #[derive(Default)]
    struct View {
        name: String,
        prios: Vec<Vec<Host>>,
    }

    impl View {
        fn healthy(&self, p: u32) -> Vec<&Host> {
            self.prios[p as usize]
                .iter()
                .filter(|h| h.healthy)
                .collect()
        }
    }

    impl ClusterView for View {
        fn cluster_name(&self) -> String {
            self.name.clone()
        }
        fn priorities(&self) -> usize {
            self.prios.len()
        }
        fn hosts_count(&self, p: u32) -> usize {
            self.prios[p as usize].len()
        }
        fn host_address(&self, p: u32, i: usize) -> Option<&str> {
            self.prios[p as usize].get(i).map(|h| h.addr.as_str())
        }
        fn healthy_count(&self, p: u32) -> usize {
            self.healthy(p).len()
        }
        fn healthy_address(&self, p: u32, i: usize) -> Option<&str> {
            self.healthy(p).get(i).map(|h| h.addr.as_str())
        }
        fn host_metadata_number(&self, p: u32, i: usize, ns: &str, key: &str) -> Option<f64> {
            assert_eq!((ns, key), ("wscap", "max_connections"));
            self.prios[p as usize].get(i).and_then(|h| h.limit)
        }
        fn host_health(&self, p: u32, i: usize) -> Health {
            match self.prios[p as usize].get(i) {
                Some(h) if h.healthy => Health::Healthy,
                Some(h) if h.degraded => Health::Degraded,
                _ => Health::Unhealthy,
            }
        }
    }

    struct Req(Option<(String, bool)>);
    impl RequestView for Req {
        fn override_host(&self) -> Option<(&str, bool)> {
            self.0.as_ref().map(|(h, s)| (h.as_str(), *s))
        }
    }

    fn host(addr: &str, healthy: bool, limit: Option<f64>) -> Host {
        Host {
            addr: addr.into(),
            healthy,
            degraded: false,
            limit,
        }
    }

    fn view() -> View {
        View {
            name: "pods".into(),
            prios: vec![
                vec![
                    host("10.0.0.1:80", true, None),
                    host("10.0.0.2:80", false, Some(3.0)),
                    host("10.0.0.3:80", true, Some(7.0)),
                ],
                vec![host("10.0.1.1:80", true, Some(1.5))],
            ],
        }
    }

    #[test]
    fn metadata_limits() {
        assert_eq!(metadata_limit(0.0), Ok(0));
        assert_eq!(metadata_limit(20.0), Ok(20));
        assert!(metadata_limit(-1.0).is_err());
        assert!(metadata_limit(1.5).is_err());
        assert!(metadata_limit(f64::NAN).is_err());
        assert!(metadata_limit(1e12).is_err());
    }

    #[test]
    fn feeds_healthy_hosts_of_all_priorities_with_limits() {
        let specs = healthy_specs(&view());
        let got: Vec<_> = specs
            .iter()
            .map(|s| (s.addr.as_str(), s.limit, s.tier))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:80", None, 0),
                ("10.0.0.3:80", Some(7), 0),
                ("10.0.1.1:80", None, STANDBY) // 1.5 is refused: cluster default
            ]
        );
    }

    #[test]
    fn tiers_follow_priority_then_health() {
        let mut v = view();
        v.prios[0][1].degraded = true; // 10.0.0.2: degraded in priority 0
        let tiers = |v: &View| -> Vec<(String, u8)> {
            healthy_specs(v)
                .iter()
                .map(|s| (s.addr.as_str().to_owned(), s.tier))
                .collect()
        };
        assert_eq!(
            tiers(&v),
            [
                ("10.0.0.1:80".to_owned(), 0),
                ("10.0.0.2:80".to_owned(), 1),
                ("10.0.0.3:80".to_owned(), 0),
                ("10.0.1.1:80".to_owned(), STANDBY),
            ]
        );
        // Priority 0 loses its healthy hosts: priority 1 is in use; 0's degraded host stays
        // the degraded fallback; the unhealthy ones are left out (they drain).
        v.prios[0][0].healthy = false;
        v.prios[0][2].healthy = false;
        assert_eq!(
            tiers(&v),
            [("10.0.0.2:80".to_owned(), 1), ("10.0.1.1:80".to_owned(), 0),]
        );
    }

    #[test]
    fn sync_is_idempotent_and_unhealthy_hosts_drain() {
        let reg = Registry::new();
        reg.set_default_limit("pods", 2).unwrap();
        let mut v = view();
        let lb = Lb::new(&reg, &v);
        let lb2 = Lb::new(&reg, &v); // another thread's instance: same result
        lb.sync(&v);
        lb2.sync(&v);
        let c = reg.cluster("pods").unwrap();
        let snap = c.snapshot();
        assert_eq!(snap.hosts.len(), 3);
        let p = c.acquire_host(&"10.0.0.3:80".parse().unwrap()).unwrap();
        v.prios[0][2].healthy = false;
        lb.sync(&v);
        lb2.sync(&v);
        let h = c.host(&"10.0.0.3:80".parse().unwrap()).unwrap();
        assert!(h.is_draining());
        assert_eq!(h.active(), 1);
        drop(p);
        assert!(c.host(&"10.0.0.3:80".parse().unwrap()).is_none());
        assert_eq!(c.snapshot().hosts.len(), 2);
    }

    #[test]
    fn a_new_instance_with_an_empty_view_does_not_empty_the_cluster() {
        let reg = Registry::new();
        reg.set_default_limit("pods", 2).unwrap();
        let v = view();
        let main = Lb::new(&reg, &v);
        let c = reg.cluster("pods").unwrap();
        let _p = c.acquire().unwrap();
        let empty = View {
            name: "pods".into(),
            prios: vec![vec![]],
        };
        let worker = Lb::new(&reg, &empty);
        let snap = c.snapshot();
        assert_eq!(snap.hosts.len(), 3);
        assert!(snap
            .hosts
            .iter()
            .all(|h| h.state == wscap_core::HostState::Active));
        // The membership hook's empty set is the truth, though.
        worker.sync(&empty);
        assert!(c.acquire().is_err());
        main.sync(&v);
        assert!(c.acquire().is_ok());
    }

    #[test]
    fn choose_honours_override_and_round_robins() {
        let reg = Registry::new();
        let v = view();
        let lb = Lb::new(&reg, &v);
        // 10.0.0.3 is healthy index 1 in priority 0.
        assert_eq!(
            lb.choose(&v, &Req(Some(("10.0.0.3:80".into(), true)))),
            Some((0, 1))
        );
        assert_eq!(
            lb.choose(&v, &Req(Some(("10.0.1.1:80".into(), true)))),
            Some((1, 0))
        );
        assert_eq!(
            lb.choose(&v, &Req(Some(("10.0.0.2:80".into(), true)))),
            None,
            "unhealthy, strict"
        );
        assert!(lb
            .choose(&v, &Req(Some(("10.0.0.2:80".into(), false))))
            .is_some());
        let picks: Vec<_> = (0..4).map(|_| lb.choose(&v, &Req(None)).unwrap()).collect();
        assert!(picks.iter().all(|(p, _)| *p == 0));
        assert_ne!(picks[0], picks[1]);
        assert_eq!(picks[0], picks[2]);
        let empty = View {
            name: "e".into(),
            prios: vec![vec![host("10.0.0.1:80", false, None)]],
        };
        assert_eq!(Lb::new(&reg, &empty).choose(&empty, &Req(None)), None);
    }
}
