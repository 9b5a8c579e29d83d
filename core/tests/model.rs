//! Random sequences of acquire / release / set_hosts / limit changes, checked after every step
//! against a simple sequential model of the registry.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wscap_core::{HostSpec, HostState, Permit, Registry, Rejected};

const POOL: [&str; 4] = ["10.0.0.1:80", "10.0.0.2:80", "[::1]:80", "10.0.0.4:81"];

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    AcquireHost(usize),
    Release(usize),
    SetHosts(Vec<(usize, Option<u32>)>),
    SetDefaultLimit(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        2 => (0..POOL.len()).prop_map(Op::AcquireHost),
        4 => any::<prop::sample::Index>().prop_map(|i| Op::Release(i.index(usize::MAX))),
        1 => prop::collection::vec((0..POOL.len(), prop::option::of(0u32..4)), 0..5).prop_map(Op::SetHosts),
        1 => (0u32..4).prop_map(Op::SetDefaultLimit),
    ]
}

#[derive(Debug, Default)]
struct Member {
    limit: Option<u32>,
    draining: bool,
}

#[derive(Default)]
struct Model {
    default_limit: u32,
    members: BTreeMap<&'static str, Member>,
    permits: Vec<(&'static str, Permit)>,
}

impl Model {
    fn count(&self, a: &str) -> u32 {
        self.permits.iter().filter(|(h, _)| *h == a).count() as u32
    }
    fn limit(&self, a: &str) -> u32 {
        self.members[a].limit.unwrap_or(self.default_limit)
    }
    fn has_room(&self, a: &str) -> bool {
        !self.members[a].draining && self.count(a) < self.limit(a)
    }
    fn prune(&mut self) {
        let empty: Vec<_> = self
            .members
            .iter()
            .filter(|(a, m)| m.draining && self.count(a) == 0)
            .map(|(a, _)| *a)
            .collect();
        for a in empty {
            self.members.remove(a);
        }
    }
}

fn canon(i: usize) -> &'static str {
    POOL[i]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn registry_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let reg = Registry::new();
        let c = reg.set_default_limit("pods", 2).unwrap();
        let mut m = Model { default_limit: 2, ..Model::default() };
        for op in ops {
            match op {
                Op::Acquire => {
                    let room: Vec<_> = m.members.keys().copied().filter(|a| m.has_room(a)).collect();
                    match c.acquire() {
                        Ok(p) => {
                            let got = POOL.iter().copied().find(|a| *a == p.host().as_str()).unwrap();
                            prop_assert!(room.contains(&got), "admitted to {got} without room");
                            // Least loaded relative to the limit: no host with room is strictly better.
                            let load = |a: &str| (m.count(a) as u64, m.limit(a) as u64);
                            let (ga, gl) = load(got);
                            for a in &room {
                                let (ca, cl) = load(a);
                                prop_assert!(ga * cl <= ca * gl, "{got} chosen over less loaded {a}");
                            }
                            m.permits.push((got, p));
                        }
                        Err(e) => {
                            prop_assert!(room.is_empty(), "refused ({e:?}) with room on {room:?}");
                            let live = m.members.values().any(|x| !x.draining);
                            prop_assert_eq!(e, if live { Rejected::NoCapacity } else { Rejected::NoHosts });
                        }
                    }
                }
                Op::AcquireHost(i) => {
                    let a = canon(i);
                    let expect = match m.members.get(a) {
                        None => Err(Rejected::UnknownHost),
                        Some(x) if x.draining => Err(Rejected::Draining),
                        Some(_) if m.count(a) >= m.limit(a) => Err(Rejected::NoCapacity),
                        Some(_) => Ok(()),
                    };
                    let got = c.acquire_host(&a.parse().unwrap());
                    prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), expect);
                    if let Ok(p) = got {
                        m.permits.push((a, p));
                    }
                }
                Op::Release(i) => {
                    if !m.permits.is_empty() {
                        let i = i % m.permits.len();
                        drop(m.permits.swap_remove(i));
                        m.prune();
                    }
                }
                Op::SetHosts(list) => {
                    let specs: Vec<_> = list.iter().map(|&(i, l)| {
                        let s = HostSpec::parse(canon(i)).unwrap();
                        match l { Some(l) => s.with_limit(l), None => s }
                    }).collect();
                    c.set_hosts(&specs);
                    let mut wanted: BTreeMap<&'static str, Option<u32>> = BTreeMap::new();
                    for (i, l) in list {
                        wanted.insert(canon(i), l);
                    }
                    for (a, member) in m.members.iter_mut() {
                        if !wanted.contains_key(a) {
                            member.draining = true;
                        }
                    }
                    for (a, l) in wanted {
                        let member = m.members.entry(a).or_default();
                        member.limit = l;
                        member.draining = false;
                    }
                    m.prune();
                }
                Op::SetDefaultLimit(l) => {
                    c.set_default_limit(l).unwrap();
                    m.default_limit = l;
                }
            }
            // The registry says exactly what the model says.
            let snap = c.snapshot();
            let got: Vec<_> = snap.hosts.iter().map(|h| (h.address.clone(), h.active, h.limit, h.state)).collect();
            let mut want: Vec<_> = m.members.iter().map(|(a, x)| {
                let state = if x.draining { HostState::Draining } else { HostState::Active };
                (a.to_string(), m.count(a), m.limit(a), state)
            }).collect();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(got, want);
            // Admissions never push a host above its limit... unless the limit was lowered later.
            for h in &snap.hosts {
                prop_assert!(h.peak >= h.active);
            }
        }
        drop(m.permits);
        prop_assert_eq!(c.active(), 0);
    }
}
