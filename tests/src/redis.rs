//! A real `redis-server` for global-mode tests: the shared guard from `wscap-testkit` (a free
//! loopback port, no persistence, killed by PID when dropped, and kill -9, restart empty,
//! SIGSTOP / SIGCONT on demand).

pub use wscap_testkit::RedisServer;
