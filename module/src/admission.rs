//! Storm-safe admission, off by default: `"max_new_per_second_per_host": R` (no pod gets more
//! than R new WebSockets in any one-second window, counted by this Envoy) and
//! `"warmup_seconds": W` (a slow start: a pod's allowance of new connections per second ramps
//! from 1 up to R, or up to its connection limit without R, over its first W seconds).
//!
//! A pod's age counts from the first time this Envoy process considered it for an admission (a
//! pod added by EDS starts its warmup with the first WebSocket that could go there; pods present
//! when Envoy starts warm up too).
//!
//! The pod is chosen by core ([`wscap_core::Cluster::acquire_where`]) among the pods with room
//! whose allowance is not used up: the storm spreads over the other pods with room instead. When
//! no pod with room has allowance left, the refusal is `no_capacity`; with the queue on, the
//! stream waits instead (the queue's thread retries the head every [`crate::queue::RETRY_TICK_MS`]
//! ms while such a setting is live).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use wscap_core::{Cluster, HostAddr, Permit, Rejected};

/// The largest accepted `max_new_per_second_per_host`.
pub const MAX_RATE: u32 = 1_000_000;
/// The largest accepted `warmup_seconds` (one day).
pub const MAX_WARMUP_SECONDS: u32 = 86_400;

/// `max_new_per_second_per_host` and `warmup_seconds`; both `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSettings {
    /// New WebSockets per second per pod at most.
    pub per_second: Option<u32>,
    /// Slow start of a new pod, in seconds.
    pub warmup_seconds: Option<u32>,
}

impl RateSettings {
    /// Checks the raw JSON values: R 1..=1000000, W 1..=86400.
    pub fn new(per_second: Option<i64>, warmup: Option<i64>) -> Result<Self, String> {
        let per_second = per_second
            .map(|r| {
                u32::try_from(r)
                    .ok()
                    .filter(|r| (1..=MAX_RATE).contains(r))
                    .ok_or(format!(
                        "\"max_new_per_second_per_host\" must be between 1 and {MAX_RATE} (got {r})"
                    ))
            })
            .transpose()?;
        let warmup_seconds = warmup
            .map(|w| {
                u32::try_from(w)
                    .ok()
                    .filter(|w| (1..=MAX_WARMUP_SECONDS).contains(w))
                    .ok_or(format!(
                        "\"warmup_seconds\" must be between 1 and {MAX_WARMUP_SECONDS} (got {w})"
                    ))
            })
            .transpose()?;
        Ok(RateSettings {
            per_second,
            warmup_seconds,
        })
    }

    /// Is either setting on?
    pub fn is_on(self) -> bool {
        self.per_second.is_some() || self.warmup_seconds.is_some()
    }

    /// The allowance per second of a pod `age` old whose connection limit is `limit`; `None`:
    /// unlimited.
    pub fn allowance(self, age: Duration, limit: u32) -> Option<u32> {
        let full = self.per_second;
        match self.warmup_seconds {
            Some(w) if age < Duration::from_secs(u64::from(w)) => {
                let target = f64::from(full.unwrap_or(limit).max(1));
                let ramp = age.as_secs_f64() / f64::from(w);
                Some(((target * ramp) as u32).max(1))
            }
            _ => full,
        }
    }
}

struct HostRate {
    first_seen: Instant,
    /// Admission times within the last second.
    opens: VecDeque<Instant>,
}

/// cluster → host → recent admissions.
static STATE: Mutex<Option<HashMap<String, HashMap<HostAddr, HostRate>>>> = Mutex::new(None);

const WINDOW: Duration = Duration::from_secs(1);

/// Acquires on `cluster` among the pods whose allowance is not used up, and counts the
/// admission against its pod.
pub fn acquire(
    cluster: &Cluster,
    default: u32,
    settings: RateSettings,
) -> Result<Permit, Rejected> {
    let now = Instant::now();
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let hosts = guard
        .get_or_insert_with(HashMap::new)
        .entry(cluster.name().to_owned())
        .or_default();
    let permit = cluster.acquire_where(default, |h| {
        let r = hosts.entry(h.clone()).or_insert_with(|| HostRate {
            first_seen: now,
            opens: VecDeque::new(),
        });
        while r
            .opens
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            r.opens.pop_front();
        }
        let limit = cluster.host(h.socket_addr()).map_or(default, |x| x.limit());
        settings
            .allowance(now.duration_since(r.first_seen), limit)
            .is_none_or(|a| r.opens.len() < a as usize)
    })?;
    if let Some(r) = hosts.get_mut(permit.host()) {
        r.opens.push_back(now);
    }
    Ok(permit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_ramps_over_warmup_then_holds() {
        let s = RateSettings::new(Some(20), Some(10)).unwrap();
        assert_eq!(s.allowance(Duration::ZERO, 100), Some(1));
        assert_eq!(s.allowance(Duration::from_secs(5), 100), Some(10));
        assert_eq!(s.allowance(Duration::from_secs(30), 100), Some(20));
        let w = RateSettings::new(None, Some(10)).unwrap();
        assert_eq!(w.allowance(Duration::from_secs(5), 100), Some(50));
        assert_eq!(w.allowance(Duration::from_secs(11), 100), None);
        assert!(RateSettings::new(Some(0), None).is_err());
        assert!(RateSettings::new(None, Some(-1)).is_err());
        assert!(!RateSettings::default().is_on());
    }

    #[test]
    fn no_pod_gets_more_than_r_per_second() {
        let reg = Box::leak(Box::new(wscap_core::Registry::new()));
        let c = reg.set_default_limit("c", 100).unwrap();
        c.set_hosts(&[
            wscap_core::HostSpec::parse("10.0.0.1:80").unwrap(),
            wscap_core::HostSpec::parse("10.0.0.2:80").unwrap(),
        ]);
        let s = RateSettings::new(Some(3), None).unwrap();
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(acquire(&c, 100, s).unwrap());
        }
        assert_eq!(acquire(&c, 100, s).unwrap_err(), Rejected::NoCapacity);
        let on_1 = held
            .iter()
            .filter(|p| p.host().as_str() == "10.0.0.1:80")
            .count();
        assert_eq!(on_1, 3);
    }
}
