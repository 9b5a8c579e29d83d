//! A simulated fleet: four pods behind wscap, clients that connect and disconnect at random from
//! several threads, a pod that leaves (drains) and comes back. Prints a per-pod table each tick.
//!
//! `cargo run -p wscap-core --example fleet`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use wscap_core::{HostSpec, Registry};

fn main() {
    let registry = Registry::new();
    let pods = registry
        .set_default_limit("websocket-pods", 25)
        .expect("valid limit");
    let members: Vec<HostSpec> = (1..=4)
        .map(|i| HostSpec::parse(&format!("10.0.0.{i}:8080")).expect("valid address"))
        .collect();
    let mut with_big = members.clone();
    with_big[3] = with_big[3].clone().with_limit(40);
    pods.set_hosts(&with_big);

    let stop = AtomicBool::new(false);
    let refused = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (pods, stop, refused) = (pods.clone(), &stop, &refused);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let mut open = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if rng.u8(..100) < 55 {
                        match pods.acquire() {
                            Ok(p) => open.push(p),
                            Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else if !open.is_empty() {
                        drop(open.swap_remove(rng.usize(..open.len())));
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
        for tick in 1..=6 {
            std::thread::sleep(Duration::from_millis(300));
            match tick {
                2 => {
                    println!("-- pod 10.0.0.2:8080 leaves the cluster (drains) --");
                    pods.set_hosts(&[
                        with_big[0].clone(),
                        with_big[2].clone(),
                        with_big[3].clone(),
                    ]);
                }
                4 => {
                    println!("-- pod 10.0.0.2:8080 comes back with its live count --");
                    pods.set_hosts(&with_big);
                }
                _ => {}
            }
            print_table(&registry, refused.load(Ordering::Relaxed));
        }
        stop.store(true, Ordering::Relaxed);
    });
    println!("all clients gone:");
    print_table(&registry, refused.load(Ordering::Relaxed));
}

fn print_table(registry: &Registry, refused: u64) {
    for cluster in registry.snapshot().clusters {
        println!(
            "{:<18} {:>6} {:>6} {:>9} {:>9}",
            cluster.name, "active", "limit", "state", "admitted"
        );
        for h in cluster.hosts {
            println!(
                "  {:<16} {:>6} {:>6} {:>9} {:>9}",
                h.address,
                h.active,
                h.limit,
                h.state.as_str(),
                h.admitted
            );
        }
        println!("  refused so far: {refused}\n");
    }
}
