//! `wscap-shm`: look into a wscap shared-count table, or hold slots in it.
//!
//! ```text
//! wscap-shm show PATH                       processes, and every host's count per column
//! wscap-shm hold PATH CLUSTER HOST LIMIT N  take N slots (under LIMIT) and wait; prints how
//!                                           many it got, then sleeps until killed
//! ```
//! `hold` takes a column like any user of the table: it is how the multi-process tests play a
//! second process, and a way to see a table's limits at work by hand.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use wscap_core::{HostAddr, SharedCounts};
use wscap_shm::ShmTable;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["show", path] => show(path),
        ["hold", path, cluster, host, limit, n] => hold(path, cluster, host, limit, n),
        _ => {
            Err("usage: wscap-shm show PATH | wscap-shm hold PATH CLUSTER HOST LIMIT N".to_owned())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wscap-shm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn show(path: &str) -> Result<(), String> {
    let t = ShmTable::open(path.as_ref()).map_err(|e| e.to_string())?;
    t.reap();
    println!(
        "{}: {} live processes (this one is column {})",
        t.path().display(),
        t.processes(),
        t.column()
    );
    for (cluster, host, word) in t.entries() {
        let w = word.load(Ordering::Acquire);
        let cols: Vec<String> = (0..4)
            .map(|c| ((w >> (16 * c)) & 0xffff).to_string())
            .collect();
        println!("{cluster}\t{host}\t{}", cols.join(" "));
    }
    Ok(())
}

fn hold(path: &str, cluster: &str, host: &str, limit: &str, n: &str) -> Result<(), String> {
    let t = ShmTable::open(path.as_ref()).map_err(|e| e.to_string())?;
    let host: HostAddr = host.parse().map_err(|e| format!("{e}"))?;
    let limit: u32 = limit.parse().map_err(|e| format!("LIMIT: {e}"))?;
    let n: u32 = n.parse().map_err(|e| format!("N: {e}"))?;
    let c = t
        .counter(cluster, &host)
        .ok_or("no entry for that host (key too long or table full)")?;
    let got = (0..n).filter(|_| c.try_add(limit)).count();
    println!("held {got}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
