//! The dataplane's global configuration: one entry of the `CONFIG` array map, written by the
//! controller, read once per packet by the data-port program.

use crate::impl_pod;

/// HA role as the data-port program sees it.
///
/// `Standalone` forwards (HA disabled). `Active` forwards while its lease is fresh. `Passive` drops
/// data traffic (passive link state `auto`), except ARP/ND and traffic for the host itself.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standalone = 0,
    Active = 1,
    Passive = 2,
}

impl Role {
    pub const fn from_u32(v: u32) -> Role {
        match v {
            1 => Role::Active,
            2 => Role::Passive,
            _ => Role::Standalone,
        }
    }
}

/// Index of the single entry in the `CONFIG` array.
pub const CONFIG_INDEX: u32 = 0;

/// `DataplaneConfig::flags`: drop packets of new flows that match no session while passive is not
/// enough; this flag makes the program emit session events to the ring buffer (HA2 sync needs them).
pub const CONFIG_F_SESSION_EVENTS: u32 = 1 << 0;

/// Global dataplane configuration (map `CONFIG`, array of one).
///
/// Fields are independent of each other, so a reader racing a userspace update sees each field
/// either old or new, and any mix is a valid configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Which half of the double-buffered policy maps is live (0 or 1). Flipping it is the commit.
    pub policy_slot: u32,
    /// [`Role`] as u32.
    pub role: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    pub _pad0: u32,
    /// When non-zero, the program's clock reads this value (ns) instead of `bpf_ktime_get_ns`:
    /// tests use it to control session ages. Production leaves it 0.
    pub clock_override_ns: u64,
    /// When non-zero and the program's clock has passed it, an `Active` node stops forwarding:
    /// the controller refreshes this lease, so a dead controller cannot leave a forwarding dataplane
    /// behind once the peer may have taken over.
    pub active_lease_expires_ns: u64,
}
impl_pod!(DataplaneConfig);

/// How far ahead of the session clock (CLOCK_MONOTONIC_COARSE) a lease must end for the fast
/// path to take it as running without reading the exact clock. The coarse clock lags the exact one
/// by up to two ticks while the timekeeper runs on time (3.3-7.4 ms measured at HZ=250), more when
/// the timekeeping CPU stalls (the kernel hands the duty to another CPU after a few ticks): a
/// quarter of a second is beyond any lag of a running system, and leaves the exact read to leases
/// shorter than that (the fast profile's 10 ms, short advanced timers), which read it per packet.
pub const LEASE_COARSE_SLACK_NS: u64 = 250_000_000;
