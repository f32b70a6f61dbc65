//! `hafw_egress`, on tc egress of every data port: what the host itself sends there.
//!
//! When the controller of an active node dies, the kernel keeps the virtual MACs and floating
//! addresses it was given, and goes on sending from them now and then (IPv6 multicast listener
//! reports, neighbour solicitations). One such frame after the peer's gratuitous ARPs pulls the
//! switches' MAC tables back to the dead node, whose fast path drops everything: a loss window
//! of hundreds of milliseconds, until the peer announces again. So once the lease lapses
//! (`fastpath::orphaned`), nothing the host sends leaves a data port. Frames the fast path
//! redirects do not pass here (XDP transmits them directly); it stops those itself.

use crate::{
    counters::{Clock, now_ns, this_cpu},
    fastpath::orphaned,
    maps::CONFIG,
};

/// `TC_ACT_OK` and `TC_ACT_SHOT` (linux/pkt_cls.h); the bindings' integer type differs between
/// targets, the program returns an `i32`.
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

#[inline(always)]
pub fn run() -> i32 {
    match CONFIG.get(0) {
        Some(cfg) if orphaned(cfg, now_ns(cfg, Clock::Tick)) => {
            if let Some(c) = this_cpu() {
                c.drop_host_tx_not_active += 1;
            }
            TC_ACT_SHOT
        }
        _ => TC_ACT_OK,
    }
}
