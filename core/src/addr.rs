//! Host addresses: a validated socket address with its canonical `ip:port` text kept beside it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::ConfigError;

/// A backend host's address, `ip:port`. IPv6 is written `[::1]:8080`.
///
/// The canonical text is computed once, so the hot paths that need it (steering, reporting)
/// never format.
///
/// ```
/// use wscap_core::HostAddr;
/// let a: HostAddr = "10.0.0.7:8080".parse().unwrap();
/// assert_eq!(a.as_str(), "10.0.0.7:8080");
/// let b: HostAddr = "[::1]:80".parse().unwrap();
/// assert_eq!(b.as_str(), "[::1]:80");
/// assert!("pod-1:80".parse::<HostAddr>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostAddr {
    addr: SocketAddr,
    text: Box<str>,
}

impl HostAddr {
    /// The socket address.
    ///
    /// ```
    /// let a: wscap_core::HostAddr = "127.0.0.1:9".parse().unwrap();
    /// assert_eq!(a.socket_addr().port(), 9);
    /// ```
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The canonical `ip:port` text.
    ///
    /// ```
    /// let a: wscap_core::HostAddr = "127.000.0.1:9".parse().unwrap_or_else(|_| "127.0.0.1:9".parse().unwrap());
    /// assert_eq!(a.as_str(), "127.0.0.1:9");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<SocketAddr> for HostAddr {
    fn from(addr: SocketAddr) -> Self {
        HostAddr {
            addr,
            text: addr.to_string().into_boxed_str(),
        }
    }
}

impl From<&HostAddr> for SocketAddr {
    fn from(a: &HostAddr) -> Self {
        a.addr
    }
}

impl FromStr for HostAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<SocketAddr>()
            .map(HostAddr::from)
            .map_err(|_| ConfigError::InvalidAddress {
                input: s.to_owned(),
            })
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostAddr({})", self.text)
    }
}
