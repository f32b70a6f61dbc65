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

/// The one clock of the program: `bpf_ktime_get_ns` (CLOCK_MONOTONIC), unless a test pinned it
/// through `DataplaneConfig::clock_override_ns`.
#[inline(always)]
pub fn now_ns(cfg: &DataplaneConfig) -> u64 {
    if cfg.clock_override_ns != 0 {
        cfg.clock_override_ns
    } else {
        // SAFETY: helper without arguments.
        unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
    }
}
