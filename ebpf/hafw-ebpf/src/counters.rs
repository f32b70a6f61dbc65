//! Counter access and the program's clock.

use hafw_common::{config::DataplaneConfig, counters::Counters};

use crate::maps::{COUNTERS, TICK_CLOCK};

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
    /// Session times (creation, last seen): CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`),
    /// read once per tick and CPU (see [`TickClock`]). The same timeline as CLOCK_MONOTONIC, up
    /// to three ticks (12 ms at HZ=250) behind it while the timekeeper runs on time, and read
    /// without touching the clock source: `bpf_ktime_get_ns` costs 40 to 100 ns here (a TSC
    /// read in a VM), as much as a third of an established packet. Session timeouts are seconds.
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
    match clock {
        Clock::Tick => tick_ns(),
        // SAFETY: helper without arguments.
        Clock::Exact => unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
    }
}

/// This CPU's reading of the coarse clock, taken again only when `jiffies` moved.
///
/// The coarse clock moves only when the timekeeper updates it, on the tick that also advances
/// `jiffies`, so one reading per jiffy loses nothing but the moment between the two updates
/// (the tick advances `jiffies` first): a CPU that reads in that moment keeps the previous
/// tick's time for this tick, one tick more of lag. `bpf_jiffies64` is a load the verifier
/// inlines on 64-bit JITs, where the coarse helper is three calls (about 10 ns of an
/// established packet's 150 here, its returns slowed by the SRSO mitigation).
#[repr(C)]
pub struct TickClock {
    pub jiffies: u64,
    pub ns: u64,
}

#[inline(always)]
fn tick_ns() -> u64 {
    // SAFETY: helpers without arguments.
    let coarse = || unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    // SAFETY: as above.
    let jiffies = unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() };
    let Some(cached) = TICK_CLOCK.get_ptr_mut(0) else {
        return coarse();
    };
    // SAFETY: per-CPU array entry; XDP runs with preemption disabled, so no other writer exists.
    let cached = unsafe { &mut *cached };
    // (`jiffies_64` starts at INITIAL_JIFFIES, never 0: an entry never written is stale.)
    if cached.jiffies != jiffies {
        cached.ns = coarse();
        cached.jiffies = jiffies;
    }
    cached.ns
}
