//! hafw XDP programs.
//!
//! - `hafw_fw`: the stateful firewall fast path on data ports (see [`fastpath`]).
//! - `hafw_ha2`: on the HA2 interface, writes the peer's session sync into the session map (see
//!   [`ha2`]).
//! - `hafw_egress`: tc egress on data ports; silences the host when this active node's lease
//!   lapsed (see [`egress`]).
//! - `hafw_pass`: passes everything; attached to the far end of a veth that `hafw_fw` redirects
//!   into, because XDP_REDIRECT into a veth delivers nothing unless its peer runs XDP.
//!
//! One file per concern, as Cilium's bpf/lib and Katran's balancer split theirs: [`parse`],
//! [`session`], [`policy`], [`forward`], [`counters`] (and the clock), [`maps`].
#![no_std]
#![no_main]

mod counters;
mod egress;
mod fastpath;
mod forward;
mod ha2;
mod maps;
mod parse;
mod policy;
mod session;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn hafw_fw(ctx: XdpContext) -> u32 {
    fastpath::run(&ctx)
}

#[xdp]
pub fn hafw_ha2(ctx: XdpContext) -> u32 {
    ha2::run(&ctx)
}

#[classifier]
pub fn hafw_egress(_ctx: TcContext) -> i32 {
    egress::run()
}

#[xdp]
pub fn hafw_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: every index is bounded and no code path unwraps.
    loop {}
}

/// GPL-compatible, so GPL-only helpers stay available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
