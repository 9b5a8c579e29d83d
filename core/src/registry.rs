//! Registry → clusters → hosts. Reads (admission, release, reporting) take no lock; membership
//! changes serialise on a per-cluster mutex and publish a new copy-on-write host set.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::shared::{SharedCounter, SharedCounts};
use crate::slot::{Refusal, SlotState};
use crate::snapshot::{ClusterSnapshot, HostSnapshot, HostState, RejectedCounts, Snapshot};
use crate::{ConfigError, HostAddr, Permit, Rejected, MAX_LIMIT};

/// Clusters of at most this many hosts are scanned whole; larger ones sample
/// [`SAMPLED_CHOICES`] hosts first (power of k choices) and scan only when none has room.
pub const FULL_SCAN_MAX_HOSTS: usize = 16;
/// How many random hosts a large cluster samples before falling back to a full scan.
pub const SAMPLED_CHOICES: usize = 4;

/// A host the caller wants in a cluster, with an optional limit over the cluster default.
///
/// ```
/// use wscap_core::HostSpec;
/// let h = HostSpec::parse("10.0.0.1:8080").unwrap().with_limit(50);
/// assert_eq!(h.limit, Some(50));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The host's address.
    pub addr: HostAddr,
    /// Its own limit; `None` follows the cluster default.
    pub limit: Option<u32>,
    /// Preference: admissions go to the lowest tier that has a host with room (0 first);
    /// [`STANDBY`] hosts are members that take no new admissions (see [`HostSpec::with_tier`]).
    pub tier: u8,
}

/// The tier of a member that takes no new admissions but is not leaving (e.g. a host of a
/// lower Envoy priority while a higher one has healthy hosts). Unlike a draining host it is
/// reported `active`, and it returns to service by being listed with another tier.
pub const STANDBY: u8 = u8::MAX;

impl HostSpec {
    /// A host that follows the cluster default limit.
    ///
    /// ```
    /// let h = wscap_core::HostSpec::new("127.0.0.1:80".parse().unwrap());
    /// assert_eq!(h.limit, None);
    /// ```
    pub fn new(addr: HostAddr) -> Self {
        HostSpec {
            addr,
            limit: None,
            tier: 0,
        }
    }

    /// Parses `ip:port`.
    ///
    /// ```
    /// assert!(wscap_core::HostSpec::parse("[::1]:443").is_ok());
    /// assert!(wscap_core::HostSpec::parse("nope").is_err());
    /// ```
    pub fn parse(addr: &str) -> Result<Self, ConfigError> {
        Ok(HostSpec::new(addr.parse()?))
    }

    /// Sets the host's own limit.
    ///
    /// ```
    /// let h = wscap_core::HostSpec::parse("127.0.0.1:80").unwrap().with_limit(3);
    /// assert_eq!(h.limit, Some(3));
    /// ```
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Sets the host's tier: an admission takes the least-loaded host of the lowest tier that
    /// has room, so a tier-1 host (e.g. a degraded one) is used only when no tier-0 host has
    /// room; a [`STANDBY`] host is never chosen.
    ///
    /// ```
    /// use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 1).unwrap();
    /// c.set_hosts(&[
    ///     HostSpec::parse("10.0.0.2:80").unwrap().with_tier(1),
    ///     HostSpec::parse("10.0.0.1:80").unwrap(),
    /// ]);
    /// let a = c.acquire().unwrap();
    /// assert_eq!(a.host().as_str(), "10.0.0.1:80");
    /// let b = c.acquire().unwrap();
    /// assert_eq!(b.host().as_str(), "10.0.0.2:80");
    /// ```
    pub fn with_tier(mut self, tier: u8) -> Self {
        self.tier = tier;
        self
    }
}

/// What a [`Cluster::set_hosts`] call changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Hosts new to the cluster.
    pub added: usize,
    /// Hosts that left and still hold connections: draining now.
    pub drained: usize,
    /// Draining hosts taken back into service with their counts intact.
    pub revived: usize,
    /// Hosts dropped because they left with no connection open.
    pub removed: usize,
}

/// One host's slot: count, state, limit and counters. Shared by the cluster's host set and by
/// every [`Permit`] on it.
pub(crate) struct HostSlot {
    hot: CachePadded<Hot>,
    /// The host's word shared with other processes, if the registry has [`SharedCounts`].
    shared: Option<SharedCounter>,
    rejected: CachePadded<AtomicU64>,
    addr: HostAddr,
    cluster_name: Arc<str>,
    cluster: Weak<ClusterShared>,
}

/// Everything an admission touches, on one cache line of its own.
struct Hot {
    state: SlotState,
    peak: std::sync::atomic::AtomicU32,
    /// [`HostSpec::tier`], updated by every membership change that lists the host.
    tier: std::sync::atomic::AtomicU8,
    /// Global mode's ranking hint ([`Cluster::set_host_elsewhere`]): the connections other
    /// instances hold on the host (high half) and the host's full limit (low half); 0: none.
    elsewhere: std::sync::atomic::AtomicU64,
}

impl HostSlot {
    #[inline]
    fn note_admission(&self, now: u32) {
        if now > self.hot.peak.load(Ordering::Relaxed) {
            self.hot.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Called by [`Permit`]'s drop: gives the slot back exactly once per permit.
    #[inline]
    pub(crate) fn release(&self) {
        if let Some(shared) = &self.shared {
            shared.sub();
        }
        if self.hot.state.release() {
            self.vacated();
        }
    }

    /// Takes a slot under `default` (see [`SlotState::try_acquire_for`]) and, in shared mode,
    /// on the shared word too.
    #[inline]
    fn try_acquire(&self, default: Option<u32>) -> Result<u32, Refusal> {
        match &self.shared {
            None => self.hot.state.try_acquire_for(default),
            Some(shared) => self
                .hot
                .state
                .try_acquire_then(default, |limit| shared.try_add(limit)),
        }
    }

    /// The last connection of a draining host is gone: drop the host from its cluster.
    #[cold]
    fn vacated(&self) {
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.prune();
        }
    }

    pub(crate) fn addr(&self) -> &HostAddr {
        &self.addr
    }

    #[inline]
    fn tier(&self) -> u8 {
        self.hot.tier.load(Ordering::Relaxed)
    }

    pub(crate) fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    fn snapshot(&self, config: &ClusterConfig) -> HostSnapshot {
        let (active, draining) = self.hot.state.load();
        HostSnapshot {
            address: self.addr.as_str().to_owned(),
            active,
            limit: config.configured(&self.addr),
            cap: config.cap(&self.addr),
            held: config.held.contains(&self.addr),
            state: if draining {
                HostState::Draining
            } else {
                HostState::Active
            },
            admitted: self.hot.state.admitted(),
            rejected: self.rejected.load(Ordering::Relaxed),
            peak: self.hot.peak.load(Ordering::Relaxed),
        }
    }
}

/// A resolved host: admission on it costs no lookup.
///
/// ```
/// use wscap_core::{Registry, HostSpec};
/// let reg = Registry::new();
/// let c = reg.set_default_limit("pods", 1).unwrap();
/// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
/// let host = c.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
/// let p = host.try_acquire().unwrap();
/// assert!(host.try_acquire().is_err());
/// drop(p);
/// assert_eq!(host.active(), 0);
/// ```
#[derive(Clone)]
pub struct Host(Arc<HostSlot>);

impl Host {
    /// The host's address.
    ///
    /// ```
    /// # let reg = wscap_core::Registry::new();
    /// # let c = reg.set_default_limit("c", 1).unwrap();
    /// # c.set_hosts(&[wscap_core::HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let host = c.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    /// assert_eq!(host.addr().as_str(), "10.0.0.1:80");
    /// ```
    pub fn addr(&self) -> &HostAddr {
        &self.0.addr
    }

    /// Takes a slot on this host if it is live and below its limit. Lock-free, allocation-free.
    ///
    /// ```
    /// # let reg = wscap_core::Registry::new();
    /// # let c = reg.set_default_limit("c", 0).unwrap();
    /// # c.set_hosts(&[wscap_core::HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let host = c.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    /// assert_eq!(host.try_acquire().unwrap_err(), wscap_core::Rejected::NoCapacity);
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        match self.0.try_acquire(None) {
            Ok(now) => {
                self.0.note_admission(now);
                Ok(Permit::new(Arc::clone(&self.0)))
            }
            Err(refusal) => {
                self.0.rejected.fetch_add(1, Ordering::Relaxed);
                Err(match refusal {
                    Refusal::Full => Rejected::NoCapacity,
                    Refusal::Vacated => {
                        self.0.vacated();
                        Rejected::NoCapacity
                    }
                    Refusal::Draining => Rejected::Draining,
                    Refusal::Removed => Rejected::UnknownHost,
                })
            }
        }
    }

    /// Live connections on the host.
    ///
    /// ```
    /// # let reg = wscap_core::Registry::new();
    /// # let c = reg.set_default_limit("c", 2).unwrap();
    /// # c.set_hosts(&[wscap_core::HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// # let host = c.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    /// let _p = host.try_acquire().unwrap();
    /// assert_eq!(host.active(), 1);
    /// ```
    pub fn active(&self) -> u32 {
        self.0.hot.state.active()
    }

    /// The host's limit now.
    ///
    /// ```
    /// # let reg = wscap_core::Registry::new();
    /// # let c = reg.set_default_limit("c", 2).unwrap();
    /// # c.set_hosts(&[wscap_core::HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// # let host = c.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    /// assert_eq!(host.limit(), 2);
    /// ```
    pub fn limit(&self) -> u32 {
        self.0.hot.state.limit()
    }

    /// True while the host takes no new connections.
    ///
    /// ```
    /// # let reg = wscap_core::Registry::new();
    /// # let c = reg.set_default_limit("c", 2).unwrap();
    /// # c.set_hosts(&[wscap_core::HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// # let host = c.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    /// assert!(!host.is_draining());
    /// ```
    pub fn is_draining(&self) -> bool {
        self.0.hot.state.is_draining()
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("addr", &self.0.addr)
            .field("active", &self.active())
            .field("limit", &self.limit())
            .finish()
    }
}

/// The published, immutable host set of a cluster.
#[derive(Default)]
struct HostSet {
    list: Vec<Arc<HostSlot>>,
    /// Keyed by socket address, so a lookup needs no canonical text (no allocation).
    index: HashMap<SocketAddr, usize>,
}

impl HostSet {
    fn new(list: Vec<Arc<HostSlot>>) -> Self {
        let index = list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr.socket_addr(), i))
            .collect();
        HostSet { list, index }
    }

    fn get(&self, addr: SocketAddr) -> Option<&Arc<HostSlot>> {
        self.index.get(&addr).map(|&i| &self.list[i])
    }
}

struct ClusterShared {
    name: Arc<str>,
    shared: Option<Arc<dyn SharedCounts>>,
    hosts: ArcSwap<HostSet>,
    config: Mutex<ClusterConfig>,
    rejected_no_capacity: CachePadded<AtomicU64>,
    rejected_no_hosts: AtomicU64,
}

struct ClusterConfig {
    default_limit: u32,
    /// Per-host limits over the default, for the hosts that have one.
    overrides: HashMap<HostAddr, u32>,
    /// Caps under the configured limit (global mode: this instance's share of the host).
    caps: HashMap<HostAddr, u32>,
    /// The cap of hosts without one of their own (global mode: 0, nothing before a grant).
    default_cap: Option<u32>,
    /// Hosts held at 0 whatever their cap ([`Cluster::set_host_held`]: a drain).
    held: std::collections::HashSet<HostAddr>,
}

impl ClusterConfig {
    /// The limit a host is configured with: its own, else the default.
    fn configured(&self, addr: &HostAddr) -> u32 {
        self.overrides
            .get(addr)
            .copied()
            .unwrap_or(self.default_limit)
    }

    /// The cap a host is held under, if any.
    fn cap(&self, addr: &HostAddr) -> Option<u32> {
        if self.held.contains(addr) {
            return Some(0);
        }
        self.caps.get(addr).copied().or(self.default_cap)
    }

    /// The limit admissions obey: the configured one, under the cap if any.
    fn effective(&self, addr: &HostAddr) -> u32 {
        let configured = self.configured(addr);
        self.cap(addr).map_or(configured, |cap| cap.min(configured))
    }

    /// Publishes a host's limit, and what it is made of, to its slot. Returns the live count
    /// read after the limit took effect ([`SlotState::set_limits`]).
    fn apply(&self, slot: &HostSlot) -> u32 {
        let addr = &slot.addr;
        slot.hot.state.set_limits(
            self.effective(addr),
            self.overrides.get(addr).copied(),
            self.cap(addr),
        )
    }
}

impl ClusterShared {
    /// Drops draining hosts whose last connection has closed. Idempotent.
    fn prune(&self) {
        let _config = self.config.lock();
        let hosts = self.hosts.load_full();
        if !hosts
            .list
            .iter()
            .any(|s| s.hot.state.is_draining() && s.hot.state.active() == 0)
        {
            return;
        }
        let kept: Vec<_> = hosts
            .list
            .iter()
            .filter(|s| !(s.hot.state.is_draining() && s.hot.state.try_remove()))
            .cloned()
            .collect();
        self.hosts.store(Arc::new(HostSet::new(kept)));
    }
}

/// A cluster handle: cheap to clone, lock-free to admit on. Obtain one from
/// [`Registry::cluster`] or [`Registry::set_default_limit`] and keep it: this is the hot path.
///
/// ```
/// use wscap_core::{Registry, HostSpec, Rejected};
/// let reg = Registry::new();
/// let pods = reg.set_default_limit("pods", 1).unwrap();
/// pods.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap(), HostSpec::parse("10.0.0.2:80").unwrap()]);
/// let a = pods.acquire().unwrap();
/// let b = pods.acquire().unwrap();
/// assert_ne!(a.host(), b.host(), "the least-loaded host is chosen");
/// assert_eq!(pods.acquire().unwrap_err(), Rejected::NoCapacity);
/// ```
#[derive(Clone)]
pub struct Cluster(Arc<ClusterShared>);

impl Cluster {
    fn new(
        name: &str,
        default_limit: u32,
        default_cap: Option<u32>,
        shared: Option<Arc<dyn SharedCounts>>,
    ) -> Self {
        Cluster(Arc::new(ClusterShared {
            name: Arc::from(name),
            shared,
            hosts: ArcSwap::from_pointee(HostSet::default()),
            config: Mutex::new(ClusterConfig {
                default_limit,
                overrides: HashMap::new(),
                caps: HashMap::new(),
                default_cap,
                held: std::collections::HashSet::new(),
            }),
            rejected_no_capacity: CachePadded::new(AtomicU64::new(0)),
            rejected_no_hosts: AtomicU64::new(0),
        }))
    }

    /// The cluster's name.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// assert_eq!(reg.set_default_limit("pods", 1).unwrap().name(), "pods");
    /// ```
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Takes a slot on the eligible host with the most room relative to its limit. Ties are
    /// broken at random, so a burst spreads over equally loaded hosts. When a race takes the
    /// slot it aimed for, it looks again and tries the other hosts before refusing.
    ///
    /// Clusters larger than [`FULL_SCAN_MAX_HOSTS`] sample [`SAMPLED_CHOICES`] hosts and take
    /// the best of them (power of k choices); only when none of them has room do they scan
    /// every host, so the last free slot is always found.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 2).unwrap();
    /// assert_eq!(c.acquire().unwrap_err(), Rejected::NoHosts);
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let p = c.acquire().unwrap();
    /// assert_eq!(p.host().as_str(), "10.0.0.1:80");
    /// ```
    pub fn acquire(&self) -> Result<Permit, Rejected> {
        self.acquire_for(None)
    }

    /// [`Cluster::acquire`] as if the cluster's default limit were `default`: hosts with a
    /// limit of their own keep it, every cap still applies, and the host limits reported stay
    /// those of the real default. The Envoy module uses it for per-route limits.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 5).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let _a = c.acquire_with_default(1).unwrap();
    /// assert_eq!(c.acquire_with_default(1).unwrap_err(), Rejected::NoCapacity);
    /// let _b = c.acquire().unwrap(); // the default, 5, still holds for other admissions
    /// ```
    pub fn acquire_with_default(&self, default: u32) -> Result<Permit, Rejected> {
        self.acquire_for(Some(default))
    }

    /// [`Cluster::acquire_with_default`] among the hosts `allow` accepts only (the Envoy module's
    /// per-host admission rate): the best host with room that `allow` accepts. `allow` is called
    /// only for hosts with room. A refusal because `allow` refused every host with room is
    /// [`Rejected::NoCapacity`].
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 5).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap(), HostSpec::parse("10.0.0.2:80").unwrap()]);
    /// let p = c.acquire_where(5, |h| h.as_str() == "10.0.0.2:80").unwrap();
    /// assert_eq!(p.host().as_str(), "10.0.0.2:80");
    /// assert_eq!(c.acquire_where(5, |_| false).unwrap_err(), Rejected::NoCapacity);
    /// ```
    pub fn acquire_where(
        &self,
        default: u32,
        mut allow: impl FnMut(&HostAddr) -> bool,
    ) -> Result<Permit, Rejected> {
        let hosts = self.0.hosts.load();
        let list = &hosts.list;
        let default = Some(default);
        loop {
            let mut best: Option<Candidate<'_>> = None;
            for slot in list.iter() {
                let mut one = None;
                consider(slot, default, &mut one);
                if one.is_some() && allow(&slot.addr) {
                    consider(slot, default, &mut best);
                }
            }
            let Some((slot, _, _)) = best else {
                return Err(self.refuse(list));
            };
            match slot.try_acquire(default) {
                Ok(now) => {
                    slot.note_admission(now);
                    return Ok(Permit::new(Arc::clone(slot)));
                }
                Err(Refusal::Vacated) => slot.vacated(),
                Err(_) => {}
            }
        }
    }

    #[inline]
    fn acquire_for(&self, default: Option<u32>) -> Result<Permit, Rejected> {
        let hosts = self.0.hosts.load();
        let list = &hosts.list;
        loop {
            let pick = if list.len() > FULL_SCAN_MAX_HOSTS {
                best_of_sample(list, default).or_else(|| best_of_all(list, default))
            } else {
                best_of_all(list, default)
            };
            let Some(slot) = pick else {
                return Err(self.refuse(list));
            };
            match slot.try_acquire(default) {
                Ok(now) => {
                    slot.note_admission(now);
                    return Ok(Permit::new(Arc::clone(slot)));
                }
                Err(Refusal::Vacated) => slot.vacated(),
                // Lost a race for that slot: look again.
                Err(_) => {}
            }
        }
    }

    #[cold]
    fn refuse(&self, list: &[Arc<HostSlot>]) -> Rejected {
        if list
            .iter()
            .all(|s| s.hot.state.is_draining() || s.tier() == STANDBY)
        {
            self.0.rejected_no_hosts.fetch_add(1, Ordering::Relaxed);
            Rejected::NoHosts
        } else {
            self.0.rejected_no_capacity.fetch_add(1, Ordering::Relaxed);
            Rejected::NoCapacity
        }
    }

    /// Takes a slot on one named host (a [`HostAddr`] or a plain [`SocketAddr`], which costs no
    /// allocation).
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 1).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let addr = "10.0.0.1:80".parse().unwrap();
    /// let _p = c.acquire_host(&addr).unwrap();
    /// assert_eq!(c.acquire_host(&addr).unwrap_err(), Rejected::NoCapacity);
    /// assert_eq!(c.acquire_host(&"10.9.9.9:80".parse().unwrap()).unwrap_err(), Rejected::UnknownHost);
    /// ```
    pub fn acquire_host(&self, addr: impl Into<SocketAddr>) -> Result<Permit, Rejected> {
        match self.host(addr) {
            Some(h) => h.try_acquire(),
            None => Err(Rejected::UnknownHost),
        }
    }

    /// Counts a connection that already exists on `addr` (for instance one the proxy routed
    /// elsewhere than asked), whatever the limit and even while the host drains. The count
    /// stays exact; the limit may be passed by such connections, never by admissions.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 0).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let p = c.track_host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    /// assert_eq!(c.host(p.host()).unwrap().active(), 1);
    /// ```
    pub fn track_host(&self, addr: impl Into<SocketAddr>) -> Result<Permit, Rejected> {
        let addr = addr.into();
        loop {
            let Some(slot) = self.0.hosts.load().get(addr).cloned() else {
                return Err(Rejected::UnknownHost);
            };
            match slot.hot.state.force_acquire() {
                Ok(now) => {
                    if let Some(shared) = &slot.shared {
                        if !shared.force_add() {
                            // The shared field is full: count it locally only (released the
                            // same way); never refuse a connection that already exists.
                            slot.hot.state.release();
                            return Err(Rejected::NoCapacity);
                        }
                    }
                    slot.note_admission(now);
                    return Ok(Permit::new(slot));
                }
                // Pruned under us: the next load no longer holds it.
                Err(Refusal::Removed) => continue,
                Err(_) => return Err(Rejected::NoCapacity),
            }
        }
    }

    /// A handle on one host, if it is a member (active or draining).
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 1).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// assert!(c.host(&"10.0.0.1:80".parse().unwrap()).is_some());
    /// assert!(c.host(&"10.0.0.2:80".parse().unwrap()).is_none());
    /// ```
    pub fn host(&self, addr: impl Into<SocketAddr>) -> Option<Host> {
        self.0
            .hosts
            .load()
            .get(addr.into())
            .map(|s| Host(Arc::clone(s)))
    }

    /// Makes `hosts` the cluster's membership. Idempotent: the same call twice changes nothing.
    ///
    /// - hosts new to the cluster are added, empty;
    /// - members missing from `hosts` drain: no new admissions, still counted and reported until
    ///   their last permit drops, then removed (at once when they hold none);
    /// - a draining member that is listed again is revived with its live count intact;
    /// - limits follow `hosts` (a host's own limit, else the default). Lowering a limit below the
    ///   live count evicts nobody.
    ///
    /// A host listed twice counts once; its last entry wins.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 5).unwrap();
    /// let a = HostSpec::parse("10.0.0.1:80").unwrap();
    /// let change = c.set_hosts(&[a.clone()]);
    /// assert_eq!(change.added, 1);
    /// let p = c.acquire().unwrap();
    /// assert_eq!(c.set_hosts(&[]).drained, 1);   // still counted while p lives
    /// assert!(c.acquire().is_err());
    /// assert_eq!(c.set_hosts(&[a]).revived, 1);  // back, with its count
    /// assert_eq!(c.host(p.host()).unwrap().active(), 1);
    /// ```
    pub fn set_hosts(&self, hosts: &[HostSpec]) -> MembershipChange {
        let mut config = self.0.config.lock();
        let mut wanted: HashMap<&HostAddr, (Option<u32>, u8)> = HashMap::with_capacity(hosts.len());
        for h in hosts {
            wanted.insert(&h.addr, (h.limit.map(|l| l.min(MAX_LIMIT)), h.tier));
        }
        // Listed hosts take their limits from `hosts`; draining ones keep the limit they had.
        let mut overrides: HashMap<HostAddr, u32> = wanted
            .iter()
            .filter_map(|(a, (l, _))| l.map(|l| (HostAddr::clone(a), l)))
            .collect();
        let current = self.0.hosts.load_full();
        let mut change = MembershipChange::default();
        let mut list = Vec::with_capacity(wanted.len().max(current.list.len()));
        let mut revive = Vec::new();
        for slot in &current.list {
            let state = &slot.hot.state;
            if let Some((_, tier)) = wanted.remove(&slot.addr) {
                slot.hot.tier.store(tier, Ordering::Relaxed);
                if state.is_draining() {
                    revive.push(Arc::clone(slot));
                }
                list.push(Arc::clone(slot));
            } else {
                let was_draining = state.is_draining();
                state.drain();
                if state.try_remove() {
                    change.removed += 1;
                } else {
                    change.drained += usize::from(!was_draining);
                    if let Some(&l) = config.overrides.get(&slot.addr) {
                        overrides.insert(slot.addr.clone(), l);
                    }
                    list.push(Arc::clone(slot));
                }
            }
        }
        config.overrides = overrides;
        // Limits first, then revivals: a revived host never admits under its old limit.
        for slot in &list {
            config.apply(slot);
        }
        for slot in revive {
            // Never removed while listed: prune runs under this same lock.
            slot.hot.state.revive();
            change.revived += 1;
        }
        // What is left of `wanted` is new, in the caller's order.
        for h in hosts {
            if wanted.remove(&h.addr).is_some() {
                // A host new to the membership (first seen, or back after it was removed) starts
                // under the default cap: a cap set for an earlier incarnation of the address
                // (global mode: a share this instance may no longer hold) never carries over.
                config.caps.remove(&h.addr);
                config.held.remove(&h.addr);
                let state = SlotState::new(config.effective(&h.addr));
                state.set_limits(
                    config.effective(&h.addr),
                    config.overrides.get(&h.addr).copied(),
                    config.cap(&h.addr),
                );
                let shared = self
                    .0
                    .shared
                    .as_ref()
                    .and_then(|s| s.counter(&self.0.name, &h.addr));
                list.push(Arc::new(HostSlot {
                    hot: CachePadded::new(Hot {
                        state,
                        peak: std::sync::atomic::AtomicU32::new(0),
                        tier: std::sync::atomic::AtomicU8::new(h.tier),
                        elsewhere: std::sync::atomic::AtomicU64::new(0),
                    }),
                    shared,
                    rejected: CachePadded::new(AtomicU64::new(0)),
                    addr: h.addr.clone(),
                    cluster_name: Arc::clone(&self.0.name),
                    cluster: Arc::downgrade(&self.0),
                }));
                change.added += 1;
            }
        }
        self.0.hosts.store(Arc::new(HostSet::new(list)));
        change
    }

    /// Sets the limit for hosts without one of their own, at once for every current member.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 1).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// c.set_default_limit(3).unwrap();
    /// assert_eq!(c.host(&"10.0.0.1:80".parse().unwrap()).unwrap().limit(), 3);
    /// ```
    pub fn set_default_limit(&self, limit: u32) -> Result<(), ConfigError> {
        check_limit(limit)?;
        let mut config = self.0.config.lock();
        config.default_limit = limit;
        for slot in &self.0.hosts.load().list {
            config.apply(slot);
        }
        Ok(())
    }

    /// Caps a host's limit under its configured one, or lifts the cap (`None`). Global mode uses
    /// it to hold admissions on a host to this instance's share of it.
    ///
    /// Returns the host's live count read after the cap took effect: from then on no admission
    /// succeeds unless it fits under the cap, so the live count stays at or below
    /// `max(returned, cap)` until the cap is raised. The cap outlives a host's draining and
    /// revival, but not its removal: a host added again starts under the default cap.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 10).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let addr = "10.0.0.1:80".parse().unwrap();
    /// let _p = c.acquire().unwrap();
    /// assert_eq!(c.set_host_cap(&addr, Some(1)), Some(1));
    /// assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    /// assert_eq!(c.host(&addr).unwrap().limit(), 1);
    /// c.set_host_cap(&addr, None);
    /// assert_eq!(c.host(&addr).unwrap().limit(), 10);
    /// ```
    pub fn set_host_cap(&self, addr: &HostAddr, cap: Option<u32>) -> Option<u32> {
        let mut config = self.0.config.lock();
        match cap {
            Some(cap) => config.caps.insert(addr.clone(), cap.min(MAX_LIMIT)),
            None => config.caps.remove(addr),
        };
        let hosts = self.0.hosts.load();
        let slot = hosts.get(addr.socket_addr())?;
        Some(config.apply(slot))
    }

    /// Global mode's ranking hint for one host: `Some((elsewhere, limit))` says that other
    /// instances hold `elsewhere` connections on it and that its full limit is `limit`, so that
    /// admissions rank it by `(active + elsewhere) / limit`, its fill across the fleet, instead
    /// of by its fill within this instance's cap. Admission itself still obeys the cap. `None`
    /// (or a `limit` of 0) removes the hint. Returns whether the host is a member.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 10).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap(), HostSpec::parse("10.0.0.2:80").unwrap()]);
    /// // Other instances hold 9 of 10 on the first host: this instance's admissions go to the
    /// // second, which has room across the fleet.
    /// assert!(c.set_host_elsewhere(&"10.0.0.1:80".parse().unwrap(), Some((9, 10))));
    /// for _ in 0..3 {
    ///     assert_eq!(c.acquire().unwrap().host().as_str(), "10.0.0.2:80");
    /// }
    /// ```
    pub fn set_host_elsewhere(&self, addr: &HostAddr, hint: Option<(u32, u32)>) -> bool {
        let word = match hint {
            Some((elsewhere, limit)) if limit > 0 => {
                (u64::from(elsewhere) << 32) | u64::from(limit)
            }
            _ => 0,
        };
        let hosts = self.0.hosts.load();
        let Some(slot) = hosts.get(addr.socket_addr()) else {
            return false;
        };
        slot.hot.elsewhere.store(word, Ordering::Relaxed);
        true
    }

    /// Holds a host at 0 new admissions (`true`) whatever its cap, or lets it go (`false`): an
    /// operator's drain. Unlike a cap, which global mode's coordinator rewrites every round, a
    /// hold stays until it is let go or the host leaves the cluster (a host added again starts
    /// free). Snapshots report it (`held`). Returns the live count after the hold took effect,
    /// or `None` when the host is not a member.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 10).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let addr = "10.0.0.1:80".parse().unwrap();
    /// let _p = c.acquire().unwrap();
    /// assert_eq!(c.set_host_held(&addr, true), Some(1));
    /// c.set_host_cap(&addr, Some(5)); // a coordinator's grant does not lift the hold
    /// assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    /// assert!(reg.snapshot().clusters[0].hosts[0].held);
    /// c.set_host_held(&addr, false);
    /// assert!(c.acquire().is_ok());
    /// ```
    pub fn set_host_held(&self, addr: &HostAddr, held: bool) -> Option<u32> {
        let mut config = self.0.config.lock();
        if held {
            config.held.insert(addr.clone());
        } else {
            config.held.remove(addr);
        }
        let hosts = self.0.hosts.load();
        let slot = hosts.get(addr.socket_addr())?;
        Some(config.apply(slot))
    }

    /// Whether `addr` is held ([`Cluster::set_host_held`]).
    pub fn is_host_held(&self, addr: &HostAddr) -> bool {
        self.0.config.lock().held.contains(addr)
    }

    /// Sets the cap of hosts without a cap of their own (see [`Cluster::set_host_cap`]), or lifts
    /// it. Global mode sets 0, so that no host admits before the ledger grants it a share.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 10).unwrap();
    /// c.set_default_cap(Some(0));
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    /// c.set_host_cap(&"10.0.0.1:80".parse().unwrap(), Some(1));
    /// assert!(c.acquire().is_ok());
    /// ```
    pub fn set_default_cap(&self, cap: Option<u32>) {
        let mut config = self.0.config.lock();
        config.default_cap = cap.map(|c| c.min(MAX_LIMIT));
        for slot in &self.0.hosts.load().list {
            config.apply(slot);
        }
    }

    /// The limit for hosts without one of their own.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// assert_eq!(reg.set_default_limit("c", 7).unwrap().default_limit(), 7);
    /// ```
    pub fn default_limit(&self) -> u32 {
        self.0.config.lock().default_limit
    }

    /// Live connections summed over the cluster's members.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 4).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let _p = c.acquire().unwrap();
    /// assert_eq!(c.active(), 1);
    /// ```
    pub fn active(&self) -> u64 {
        self.0
            .hosts
            .load()
            .list
            .iter()
            .map(|s| u64::from(s.hot.state.active()))
            .sum()
    }

    /// A consistent-enough copy of the cluster's state for reporting (each host read atomically,
    /// hosts sorted by address).
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let c = reg.set_default_limit("c", 4).unwrap();
    /// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// assert_eq!(c.snapshot().hosts[0].limit, 4);
    /// ```
    pub fn snapshot(&self) -> ClusterSnapshot {
        let config = self.0.config.lock();
        let default_limit = config.default_limit;
        let mut hosts: Vec<HostSnapshot> = self
            .0
            .hosts
            .load()
            .list
            .iter()
            .map(|s| s.snapshot(&config))
            .filter(|h| !(h.state == HostState::Draining && h.active == 0))
            .collect();
        hosts.sort_by(|a, b| a.address.cmp(&b.address));
        ClusterSnapshot {
            name: self.name().to_owned(),
            default_limit,
            rejected: RejectedCounts {
                no_capacity: self.0.rejected_no_capacity.load(Ordering::Relaxed),
                no_hosts: self.0.rejected_no_hosts.load(Ordering::Relaxed),
            },
            hosts,
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name())
            .field("hosts", &self.0.hosts.load().list.len())
            .finish()
    }
}

/// Room score: is `(a_active, a_limit)` strictly less loaded than `(b_active, b_limit)`?
#[inline]
fn less_loaded(a: (u32, u32), b: (u32, u32)) -> bool {
    u64::from(a.0) * u64::from(b.1) < u64::from(b.0) * u64::from(a.1)
}

/// The live host with room and the lowest active/limit, scanning from a random start so that
/// ties spread.
#[inline]
fn best_of_all(list: &[Arc<HostSlot>], default: Option<u32>) -> Option<&Arc<HostSlot>> {
    if list.is_empty() {
        return None;
    }
    let start = fastrand::usize(..list.len());
    let (tail, head) = list.split_at(start);
    let mut best: Option<Candidate<'_>> = None;
    for slot in head.iter().chain(tail) {
        consider(slot, default, &mut best);
    }
    best.map(|(s, _, _)| s)
}

/// A host with room: the slot, its tier and `(active, limit)`.
type Candidate<'a> = (&'a Arc<HostSlot>, u8, (u32, u32));

/// The best of [`SAMPLED_CHOICES`] random hosts, if any of them has room and is of tier 0
/// (a sample cannot tell that no tier-0 host has room; the full scan can).
#[inline]
fn best_of_sample(list: &[Arc<HostSlot>], default: Option<u32>) -> Option<&Arc<HostSlot>> {
    let mut best = None;
    for _ in 0..SAMPLED_CHOICES {
        consider(&list[fastrand::usize(..list.len())], default, &mut best);
    }
    best.filter(|&(_, tier, _)| tier == 0).map(|(s, _, _)| s)
}

/// Keeps `slot` if it has room and beats `best`: a lower tier first, then less loaded.
#[inline]
fn consider<'a>(slot: &'a Arc<HostSlot>, default: Option<u32>, best: &mut Option<Candidate<'a>>) {
    let (mut active, draining) = slot.hot.state.load();
    // In shared mode the other processes' connections count too: a host full across them is
    // no candidate (else an admission that the shared word refuses would be retried forever).
    if let Some(shared) = &slot.shared {
        active = active.max(shared.total());
    }
    let tier = slot.tier();
    let limit = slot.hot.state.limit_for(default);
    if draining || tier == STANDBY || active >= limit {
        return;
    }
    // Global mode ranks by the pod's fill across the fleet (the hint), so that a connection goes
    // where the fleet has the most room; the cap (this instance's share) still decides admission.
    let hint = slot.hot.elsewhere.load(Ordering::Relaxed);
    #[allow(clippy::cast_possible_truncation)]
    let load = if hint == 0 {
        (active, limit)
    } else {
        (active.saturating_add((hint >> 32) as u32), hint as u32)
    };
    if best.is_none_or(|(_, bt, b)| tier < bt || (tier == bt && less_loaded(load, b))) {
        *best = Some((slot, tier, load));
    }
}

fn check_limit(limit: u32) -> Result<(), ConfigError> {
    if limit > MAX_LIMIT {
        Err(ConfigError::LimitTooLarge {
            limit: u64::from(limit),
        })
    } else {
        Ok(())
    }
}

/// The process-wide registry: cluster name → [`Cluster`].
///
/// ```
/// use wscap_core::{Registry, HostSpec};
/// let reg = Registry::new();
/// reg.set_default_limit("pods", 20).unwrap();
/// reg.set_hosts("pods", &[HostSpec::parse("10.0.0.1:8080").unwrap()]).unwrap();
/// let permit = reg.acquire("pods").unwrap();
/// assert_eq!(permit.host().as_str(), "10.0.0.1:8080");
/// let json = reg.snapshot().to_json();
/// assert!(json.contains(r#""active":1"#));
/// drop(permit);
/// assert_eq!(reg.snapshot().clusters[0].hosts[0].active, 0);
/// ```
pub struct Registry {
    clusters: ArcSwap<HashMap<Arc<str>, Cluster>>,
    shared: Option<Arc<dyn SharedCounts>>,
    /// Serialises cluster creation; holds the default cap of clusters to come.
    write: Mutex<Option<u32>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("clusters", &self.clusters.load().len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    ///
    /// ```
    /// assert!(wscap_core::Registry::new().snapshot().clusters.is_empty());
    /// ```
    pub fn new() -> Self {
        Registry {
            clusters: ArcSwap::from_pointee(HashMap::new()),
            shared: None,
            write: Mutex::new(None),
        }
    }

    /// A registry whose hosts also count in words shared with other processes (see
    /// [`SharedCounts`]): an admission needs room in this process's view *and* in the shared
    /// word, so a host's limit holds across every process that shares it. Each process still
    /// reports its own connections as `active`.
    ///
    /// ```
    /// use std::sync::{atomic::AtomicU64, Arc};
    /// use wscap_core::{HostAddr, HostSpec, Registry, SharedCounter, SharedCounts};
    /// struct OneWord(&'static AtomicU64, u32);
    /// impl SharedCounts for OneWord {
    ///     fn counter(&self, _: &str, _: &HostAddr) -> Option<SharedCounter> {
    ///         SharedCounter::new(self.0, self.1)
    ///     }
    /// }
    /// let word: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    /// let (old, new) = (
    ///     Registry::with_shared_counts(Arc::new(OneWord(word, 0))),
    ///     Registry::with_shared_counts(Arc::new(OneWord(word, 1))),
    /// );
    /// for r in [&old, &new] {
    ///     r.set_default_limit("pods", 2).unwrap();
    ///     r.set_hosts("pods", &[HostSpec::parse("10.0.0.1:80").unwrap()]).unwrap();
    /// }
    /// let a = old.acquire("pods").unwrap();
    /// let b = new.acquire("pods").unwrap();
    /// assert!(new.acquire("pods").is_err(), "2 across both");
    /// drop(a);
    /// let _c = new.acquire("pods").unwrap();
    /// ```
    pub fn with_shared_counts(shared: Arc<dyn SharedCounts>) -> Self {
        Registry {
            shared: Some(shared),
            ..Registry::new()
        }
    }

    /// The cluster named `name`, if known. Keep the handle: admission through it is the hot path.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// assert!(reg.cluster("pods").is_none());
    /// reg.set_default_limit("pods", 1).unwrap();
    /// assert!(reg.cluster("pods").is_some());
    /// ```
    pub fn cluster(&self, name: &str) -> Option<Cluster> {
        self.clusters.load().get(name).cloned()
    }

    /// The cluster named `name`, created if missing. A new cluster's default limit is 0 (it
    /// admits nothing until a limit is set: a cluster nobody configured fails closed).
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// let c = reg.cluster_or_create("pods").unwrap();
    /// assert_eq!(c.default_limit(), 0);
    /// assert!(reg.cluster_or_create("").is_err());
    /// ```
    pub fn cluster_or_create(&self, name: &str) -> Result<Cluster, ConfigError> {
        if let Some(c) = self.cluster(name) {
            return Ok(c);
        }
        if name.is_empty() {
            return Err(ConfigError::EmptyClusterName);
        }
        let default_cap = self.write.lock();
        let current = self.clusters.load_full();
        if let Some(c) = current.get(name) {
            return Ok(c.clone());
        }
        let cluster = Cluster::new(name, 0, *default_cap, self.shared.clone());
        let mut next = HashMap::clone(&current);
        next.insert(Arc::from(name), cluster.clone());
        self.clusters.store(Arc::new(next));
        Ok(cluster)
    }

    /// Retires a cluster its proxy no longer has (e.g. CDS removed it): every host drains
    /// (no new admission; live connections stay counted until they close), and once none is
    /// left the cluster is dropped from the registry. Returns true once it is gone (at once
    /// when it held no connection); call again later otherwise. Idempotent.
    ///
    /// A cluster that comes back under the same name before it is gone keeps its hosts' live
    /// counts (the next [`Cluster::set_hosts`] revives them); after it is gone it starts afresh.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// reg.set_default_limit("c", 5).unwrap();
    /// reg.set_hosts("c", &[HostSpec::parse("10.0.0.1:80").unwrap()]).unwrap();
    /// let p = reg.acquire("c").unwrap();
    /// assert!(!reg.retire("c"), "a connection is still open");
    /// assert!(reg.acquire("c").is_err());
    /// drop(p);
    /// assert!(reg.retire("c"));
    /// assert!(reg.cluster("c").is_none());
    /// ```
    pub fn retire(&self, name: &str) -> bool {
        let Some(cluster) = self.cluster(name) else {
            return true;
        };
        cluster.set_hosts(&[]);
        let _guard = self.write.lock();
        // Under the cluster's own lock: no membership change can slip in between the check and
        // the removal.
        let _config = cluster.0.config.lock();
        if !cluster.0.hosts.load().list.is_empty() {
            return false;
        }
        let current = self.clusters.load_full();
        if current
            .get(name)
            .is_some_and(|c| Arc::ptr_eq(&c.0, &cluster.0))
        {
            let mut next = HashMap::clone(&current);
            next.remove(name);
            self.clusters.store(Arc::new(next));
        }
        true
    }

    /// Sets the default cap ([`Cluster::set_default_cap`]) of every cluster, present and to come.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec, Rejected};
    /// let reg = Registry::new();
    /// reg.set_default_cap(Some(0));
    /// reg.set_default_limit("c", 5).unwrap();
    /// reg.set_hosts("c", &[HostSpec::parse("10.0.0.1:80").unwrap()]).unwrap();
    /// assert_eq!(reg.acquire("c").unwrap_err(), Rejected::NoCapacity);
    /// ```
    pub fn set_default_cap(&self, cap: Option<u32>) {
        let mut default_cap = self.write.lock();
        *default_cap = cap;
        for c in self.clusters.load().values() {
            c.set_default_cap(cap);
        }
    }

    /// Sets a cluster's default per-host limit, creating the cluster if needed.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// let c = reg.set_default_limit("pods", 20).unwrap();
    /// assert_eq!(c.default_limit(), 20);
    /// assert!(reg.set_default_limit("pods", u32::MAX).is_err());
    /// ```
    pub fn set_default_limit(&self, cluster: &str, limit: u32) -> Result<Cluster, ConfigError> {
        check_limit(limit)?;
        let c = self.cluster_or_create(cluster)?;
        c.set_default_limit(limit)?;
        Ok(c)
    }

    /// Sets a cluster's membership (see [`Cluster::set_hosts`]), creating the cluster if needed.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// let change = reg.set_hosts("pods", &[HostSpec::parse("10.0.0.1:80").unwrap()]).unwrap();
    /// assert_eq!(change.added, 1);
    /// ```
    pub fn set_hosts(
        &self,
        cluster: &str,
        hosts: &[HostSpec],
    ) -> Result<MembershipChange, ConfigError> {
        if let Some(l) = hosts
            .iter()
            .filter_map(|h| h.limit)
            .find(|&l| l > MAX_LIMIT)
        {
            return Err(ConfigError::LimitTooLarge {
                limit: u64::from(l),
            });
        }
        Ok(self.cluster_or_create(cluster)?.set_hosts(hosts))
    }

    /// Admits one connection to the least-loaded host of `cluster` (see [`Cluster::acquire`]).
    ///
    /// ```
    /// # use wscap_core::{Registry, Rejected};
    /// let reg = Registry::new();
    /// assert_eq!(reg.acquire("nope").unwrap_err(), Rejected::UnknownCluster);
    /// ```
    pub fn acquire(&self, cluster: &str) -> Result<Permit, Rejected> {
        match self.clusters.load().get(cluster) {
            Some(c) => c.acquire(),
            None => Err(Rejected::UnknownCluster),
        }
    }

    /// Admits one connection to a named host of `cluster`.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// let reg = Registry::new();
    /// reg.set_default_limit("c", 1).unwrap();
    /// reg.set_hosts("c", &[HostSpec::parse("10.0.0.1:80").unwrap()]).unwrap();
    /// assert!(reg.acquire_host("c", &"10.0.0.1:80".parse().unwrap()).is_ok());
    /// ```
    pub fn acquire_host(
        &self,
        cluster: &str,
        addr: impl Into<SocketAddr>,
    ) -> Result<Permit, Rejected> {
        match self.clusters.load().get(cluster) {
            Some(c) => c.acquire_host(addr),
            None => Err(Rejected::UnknownCluster),
        }
    }

    /// A copy of every cluster's state, clusters sorted by name.
    ///
    /// ```
    /// let reg = wscap_core::Registry::new();
    /// reg.set_default_limit("b", 1).unwrap();
    /// reg.set_default_limit("a", 1).unwrap();
    /// let names: Vec<_> = reg.snapshot().clusters.into_iter().map(|c| c.name).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        let mut clusters: Vec<ClusterSnapshot> = self
            .clusters
            .load()
            .values()
            .map(Cluster::snapshot)
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot { clusters }
    }
}
