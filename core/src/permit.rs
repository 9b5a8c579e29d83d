//! The RAII permit: one admitted connection.

use std::fmt;
use std::sync::Arc;

use crate::registry::HostSlot;
use crate::HostAddr;

/// One admitted connection on one host. Dropping it releases the slot, exactly once.
///
/// A permit owns an `Arc` to its host's slot, so it stays valid after the host leaves the
/// registry: the host drains and is dropped only when its last permit is. It is `Send` and
/// `Sync`, so it can live in a per-stream filter and be dropped on any thread.
///
/// To hand a permit to C, box it (`Box::into_raw(Box::new(permit))`); `wscap-ffi` does.
///
/// ```
/// use wscap_core::{Registry, HostSpec};
/// let reg = Registry::new();
/// let c = reg.set_default_limit("pods", 1).unwrap();
/// c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
/// let mut slot: Option<wscap_core::Permit> = Some(c.acquire().unwrap());
/// assert_eq!(c.active(), 1);
/// drop(slot.take()); // release on the first close path...
/// drop(slot.take()); // ...and the second one finds nothing to release
/// assert_eq!(c.active(), 0);
/// ```
#[must_use = "dropping a Permit releases its slot at once"]
#[clippy::has_significant_drop]
pub struct Permit {
    slot: Arc<HostSlot>,
}

impl Permit {
    #[inline]
    pub(crate) fn new(slot: Arc<HostSlot>) -> Self {
        Permit { slot }
    }

    /// The host this connection was admitted to.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// # let reg = Registry::new();
    /// # let c = reg.set_default_limit("pods", 1).unwrap();
    /// # c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let p = c.acquire().unwrap();
    /// assert_eq!(p.host().as_str(), "10.0.0.1:80");
    /// ```
    pub fn host(&self) -> &HostAddr {
        self.slot.addr()
    }

    /// The cluster this connection was admitted to.
    ///
    /// ```
    /// # use wscap_core::{Registry, HostSpec};
    /// # let reg = Registry::new();
    /// # let c = reg.set_default_limit("pods", 1).unwrap();
    /// # c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
    /// let p = c.acquire().unwrap();
    /// assert_eq!(p.cluster(), "pods");
    /// ```
    pub fn cluster(&self) -> &str {
        self.slot.cluster_name()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.slot.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("cluster", &self.cluster())
            .field("host", self.host())
            .finish()
    }
}
