//! Reading the order of events from Envoy's debug log.
//!
//! All of one stream's filter hooks and its upstream connection run on one worker thread, and
//! Envoy writes each log line synchronously on the thread that logs it, so on one thread the
//! order of the lines is the order of the events. Needs Envoy started with
//! `--component-log-level connection:debug,dynamic_modules:debug`.

use std::collections::{BTreeMap, BTreeSet};

/// One line of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An upstream (client) connection was opened: `[C<n>] connecting to <addr>`.
    Connect(u64),
    /// A connection's socket was closed, downstream or upstream: `closing socket`.
    Close(u64),
    /// A line containing the caller's release marker.
    Release,
}

/// `(thread id, event)` for each line of interest, in log order. A line is a release when it
/// contains `release_marker`.
pub fn events(log: &str, release_marker: &str) -> Vec<(String, Event)> {
    let conn_id = |line: &str| -> Option<u64> {
        let (_, rest) = line.split_once("\"ConnectionId\":\"")?;
        rest.split('"').next()?.parse().ok()
    };
    log.lines()
        .filter_map(|line| {
            // [date time][thread][level][component] ...
            let thread = line.split(']').nth(1)?.trim_start_matches('[').to_owned();
            let ev = if line.contains(release_marker) {
                Event::Release
            } else if line.contains("] connecting to ") {
                Event::Connect(conn_id(line)?)
            } else if line.contains("] closing socket:") {
                Event::Close(conn_id(line)?)
            } else {
                return None;
            };
            Some((thread, ev))
        })
        .collect()
}

/// Checks that on every thread each release comes after the close of every upstream connection
/// that thread had opened. Returns how many releases were checked, or the first violation.
pub fn check_release_after_upstream_close(
    log: &str,
    release_marker: &str,
) -> Result<usize, String> {
    let mut open: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut releases = 0;
    for (thread, ev) in events(log, release_marker) {
        let open = open.entry(thread.clone()).or_default();
        match ev {
            Event::Connect(c) => {
                open.insert(c);
            }
            Event::Close(c) => {
                open.remove(&c);
            }
            Event::Release => {
                releases += 1;
                if !open.is_empty() {
                    return Err(format!(
                        "thread {thread}: release #{releases} while upstream connection(s) \
                         {open:?} it opened were still open"
                    ));
                }
            }
        }
    }
    Ok(releases)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: &str = "wscap: cluster pods: released";

    fn line(thread: u32, text: &str) -> String {
        format!("[2026-11-27 07:06:56.718][{thread}][debug][x] [src:1] {text}\n")
    }

    #[test]
    fn release_after_close_passes_and_before_close_fails() {
        let c = |n: u32, what: &str| format!("[Tags: \"ConnectionId\":\"{n}\"] {what}");
        let good = line(7, &c(4, "connecting to 127.0.0.1:80"))
            + &line(8, "wscap: cluster pods: released 1.2.3.4:80 (was Upgraded)")
            + &line(7, &c(4, "closing socket: 1"))
            + &line(7, "wscap: cluster pods: released 1.2.3.4:80 (was Upgraded)");
        assert_eq!(check_release_after_upstream_close(&good, MARK), Ok(2));
        let bad = line(7, &c(4, "connecting to 127.0.0.1:80"))
            + &line(7, "wscap: cluster pods: released 1.2.3.4:80 (was Upgraded)")
            + &line(7, &c(4, "closing socket: 1"));
        let err = check_release_after_upstream_close(&bad, MARK).unwrap_err();
        assert!(err.contains("thread 7: release #1"), "{err}");
    }
}
