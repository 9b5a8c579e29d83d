//! Process plumbing: CPU pinning, file-descriptor limit, and Envoy's memory and CPU time from /proc.

use std::time::Duration;

/// Pin every thread of process `pid` (0 = this process, the calling thread and those it starts
/// later) to CPU `cpu`. Returns how many threads were pinned.
pub fn pin(pid: u32, cpu: usize) -> Result<usize, String> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the set we own; `cpu` is below CPU_SETSIZE (checked).
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("cpu {cpu} out of range"));
        }
        libc::CPU_SET(cpu, &mut set);
    }
    let tids: Vec<i32> = if pid == 0 {
        vec![0]
    } else {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("/proc/{pid}/task: {e}"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    let mut n = 0;
    for tid in tids {
        // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel only reads it. A tid
        // that has exited makes the call fail with ESRCH, which we ignore.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
        if rc == 0 {
            n += 1;
        }
    }
    if n == 0 {
        return Err(format!("sched_setaffinity({pid}, cpu {cpu}) failed"));
    }
    Ok(n)
}

/// Raise RLIMIT_NOFILE (soft and, as root, hard) to at least `want`; returns the soft limit now.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur >= want {
        return r.rlim_cur;
    }
    let mut n = libc::rlimit {
        rlim_cur: want,
        rlim_max: r.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the rlimit we own. Raising the hard limit needs CAP_SYS_RESOURCE;
    // without it we fall back to the old hard limit below.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) } != 0 {
        n.rlim_cur = r.rlim_max;
        n.rlim_max = r.rlim_max;
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Time process `pid` has spent on a CPU, all threads (sum of /proc/PID/task/*/schedstat).
pub fn cpu_time(pid: u32) -> Duration {
    schedstat_sum(pid, 0)
}

/// Time the threads of process `pid` spent runnable but waiting for a CPU (the second field of
/// /proc/PID/task/*/schedstat): on a shared machine, a process that waits for the CPU is as busy
/// as one that runs.
#[allow(dead_code)] // used by wscap-global-scale, which includes this file by path
pub fn sched_wait(pid: u32) -> Duration {
    schedstat_sum(pid, 1)
}

/// Field `field` (nanoseconds) of /proc/PID/task/*/schedstat, summed over the threads.
fn schedstat_sum(pid: u32, field: usize) -> Duration {
    let mut ns: u64 = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .nth(field)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// Number of online CPUs (whatever this process is pinned to).
pub fn nproc() -> usize {
    // SAFETY: sysconf only reads system configuration.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The CPU model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Kernel release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
