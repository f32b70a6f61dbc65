//! Counter access and the program's clock.

use hafw_common::{config::DataplaneConfig, counters::Counters};

use crate::maps::COUNTERS;

/// This CPU's counters. `None` only if the map is missing an entry, which cannot happen for a
/// one-entry per-CPU array; the caller then passes the packet untouched.
#[inline(always)]
pub fn this_cpu() -> Option<&'static mut Counters> {
    // SAFETY: per-CPU array entry; XDP runs with preemption disabled, so no other writer exists.
    COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// What a reading of the clock is for.
#[derive(Clone, Copy)]
pub enum Clock {
    /// Session times (creation, last seen): `bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC_COARSE.
    /// The same timeline as CLOCK_MONOTONIC, up to two ticks (8 ms at HZ=250) behind it while the
    /// timekeeper runs on time, and read without touching the clock source: `bpf_ktime_get_ns`
    /// costs 40 to 100 ns here (a TSC read in a VM), as much as a third of an established
    /// packet. Session timeouts are seconds.
    Tick,
    /// The active node's lease and the bulk-sync stamps: `bpf_ktime_get_ns`, CLOCK_MONOTONIC.
    /// The lease runs out a third of the failure-detection time before the peer takes over (5 ms
    /// in the fast profile), a margin the coarse clock's lag would eat (see `fastpath::orphaned`).
    Exact,
}

/// The one clock of the program, unless a test pinned it through
/// `DataplaneConfig::clock_override_ns`.
#[inline(always)]
pub fn now_ns(cfg: &DataplaneConfig, clock: Clock) -> u64 {
    if cfg.clock_override_ns != 0 {
        return cfg.clock_override_ns;
    }
    // SAFETY: helpers without arguments.
    unsafe {
        match clock {
            Clock::Tick => aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns(),
            Clock::Exact => aya_ebpf::helpers::bpf_ktime_get_ns(),
        }
    }
}
