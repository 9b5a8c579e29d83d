//! Several real processes on one table: the limit holds across them, and the slots of a process
//! killed with SIGKILL (no teardown) come back once a survivor reaps its column.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use wscap_core::{HostAddr, SharedCounts};
use wscap_shm::ShmTable;

/// A `wscap-shm hold` child, killed by PID when dropped.
struct Holder(Child);

impl Holder {
    fn start(path: &std::path::Path, limit: u32, n: u32) -> (Holder, u32) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wscap-shm"))
            .args(["hold", path.to_str().unwrap(), "pods", "10.0.0.1:80"])
            .arg(limit.to_string())
            .arg(n.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn wscap-shm hold");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let got = line
            .trim()
            .strip_prefix("held ")
            .unwrap_or_else(|| panic!("holder said {line:?}"))
            .parse()
            .unwrap();
        (Holder(child), got)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_limit_holds_across_processes_and_a_killed_one_is_reaped() {
    let path = std::env::temp_dir().join(format!("wscap-shm-procs-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let me = ShmTable::open(&path).unwrap();
    let host: HostAddr = "10.0.0.1:80".parse().unwrap();
    let mine = me.counter("pods", &host).unwrap();

    // Two other processes ask for 3 each under a limit of 5: 5 in all, whatever the order.
    let (a, got_a) = Holder::start(&path, 5, 3);
    let (b, got_b) = Holder::start(&path, 5, 3);
    assert_eq!((got_a, got_b), (3, 2));
    assert_eq!(mine.total(), 5);
    assert!(!mine.try_add(5), "full across three processes");
    assert_eq!(me.processes(), 3);

    // SIGKILL: no teardown runs; its 3 stay counted until a reap.
    drop(a);
    assert_eq!(mine.total(), 5);
    assert_eq!(me.reap(), 1);
    assert_eq!(mine.total(), 2);
    assert!(mine.try_add(5) && mine.try_add(5) && mine.try_add(5));
    assert!(!mine.try_add(5));
    drop(b);
    me.reap();
    assert_eq!(mine.total(), 3, "only this process's own 3 remain");
    let _ = std::fs::remove_file(&path);
}
