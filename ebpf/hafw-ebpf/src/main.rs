//! hafw XDP programs.
//!
//! - `hafw_fw`: the stateful firewall fast path on data ports (see [`fastpath`]).
//! - `hafw_ha2`: on the HA2 interface, writes the peer's session sync into the session map (see
//!   [`ha2`]).
//! - `hafw_egress`: tc egress on data ports; silences the host when this active node's lease
//!   lapsed (see [`egress`]).
//! - `hafw_pass`: passes everything; attached to the far end of a veth that `hafw_fw` redirects
//!   into, because XDP_REDIRECT into a veth delivers nothing unless its peer runs XDP.
//! - `hafw_bench_tx` and `hafw_sink`: the forwarding benchmark's sender and receiver;
//!   `hafw_bench_new_flows`: the fast path on a new flow at every run, for the new-flow benchmark;
//!   `hafw_bench_lookup`: one session lookup, the benchmark's calibration; `hafw_bench_insert`:
//!   one session insert, the sync benchmark's calibration.
//!
//! One file per concern, as Cilium's bpf/lib and Katran's balancer split theirs: [`parse`],
//! [`session`], [`policy`], [`forward`], [`counters`] (and the clock), [`maps`].
#![no_std]
#![feature(asm_experimental_arch)]
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
mod table;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use hafw_common::session::SessionKey;

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

/// The frame `hafw_bench_tx` sends (60 bytes, as 4-byte words in memory order), set by the
/// benchmark when it loads the object; zero otherwise.
#[unsafe(no_mangle)]
static BENCH_FRAME: [u32; 15] = [0; 15];

/// The forwarding benchmark's sender. Run through BPF_PROG_TEST_RUN in live-frames mode, where
/// XDP_TX transmits the frame out of the context's ingress interface (into the firewall's ring,
/// as a NIC would hand it over). It writes the whole frame on every run: live-frame pages come
/// back to the sender's pool from whoever received them, with whatever the receiver wrote (the
/// firewall rewrites MACs and TTL in place), and the kernel fills a page only when it is new.
#[xdp]
pub fn hafw_bench_tx(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + size_of::<[u32; 15]>() > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a read of a static the loader may have overwritten (volatile: the compiler must
    // not fold the zero initialiser), and writes inside the 60 bytes checked above.
    unsafe {
        let frame = core::ptr::read_volatile(&raw const BENCH_FRAME);
        for (i, word) in frame.iter().enumerate() {
            ((start + i * 4) as *mut u32).write_unaligned(*word);
        }
    }
    xdp_action::XDP_TX
}

/// Returns a bench program's run counter and counts this run: volatile, one load and one store
/// per run (the benchmark makes one test run at a time).
///
/// # Safety
/// `counter` is the calling program's own global.
#[inline(always)]
unsafe fn next_run(counter: *mut u32) -> u32 {
    // SAFETY: as the caller promises.
    unsafe {
        let run = core::ptr::read_volatile(counter);
        core::ptr::write_volatile(counter, run.wrapping_add(1));
        run
    }
}

/// How many runs `hafw_bench_new_flows` has made: zero at load.
static mut BENCH_RUNS: u32 = 0;

/// The fast path with every run a new flow: BPF_PROG_TEST_RUN with repeat replays one frame, new
/// only on its first run, so the benchmark of new flows runs this instead. It writes the run's
/// number into the frame's source, then runs the fast path unchanged: the low 16 bits as the TCP
/// or UDP source port, the next 7 as the last octet of the IPv4 source, in the upper half of its
/// /24 (an untagged IPv4 frame without options; 8M flows before they repeat). Written, not added:
/// the frame stays as the previous run left it until the next BPF_PROG_TEST_RUN call copies it in
/// afresh. The checksums are left as they are: the fast path never checks them.
#[xdp]
pub fn hafw_bench_new_flows(ctx: XdpContext) -> u32 {
    const SRC_LAST_OCTET: usize = 14 + 15;
    const SRC_PORT: usize = 14 + 20;
    let start = ctx.data();
    if start + SRC_PORT + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the counter is this program's own global; the frame writes lie inside the octets
    // checked above.
    unsafe {
        let run = next_run(&raw mut BENCH_RUNS);
        *((start + SRC_LAST_OCTET) as *mut u8) = 0x80 | (run >> 16) as u8;
        *((start + SRC_PORT) as *mut [u8; 2]) = (run as u16).to_be_bytes();
    }
    fastpath::run(&ctx)
}

/// One session lookup and nothing else, the benchmark's calibration of the session table's part
/// of an established packet: the frame is a session key (40 octets), copied to the stack and
/// looked up in the table of its family.
/// Drops when the session is present, passes when not.
#[xdp]
pub fn hafw_bench_lookup(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + size_of::<SessionKey>() > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: inside the frame, checked above; XDP frames start 8-aligned (after the 256-octet
    // headroom), as the key's alignment needs.
    let key = unsafe { core::ptr::read(start as *const SessionKey) };
    match session::get(&key) {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_PASS,
    }
}

/// How many runs `hafw_bench_insert` has made: zero at load.
static mut INSERT_RUNS: u32 = 0;

/// One session insert, as the HA2 ingest makes it (the table's only writer), and nothing else, the
/// sync benchmark's calibration of the session table's part of a new HA2 record: the frame is a
/// session key (40 octets), and every run inserts it with the run's number as its ports, so each
/// run is a new session (4G before they repeat), with this CPU's scratch value
/// (`maps::NEW_SESSION`, whatever it holds) as the value.
/// Drops when the session was inserted, passes when not (present, or the table is full).
#[xdp]
pub fn hafw_bench_insert(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + size_of::<SessionKey>() > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(value) = maps::NEW_SESSION.get_ptr(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the frame holds a key (checked above; 8-aligned, see `hafw_bench_lookup`); the
    // counter is this program's own global; the value is this CPU's scratch entry, unused by
    // anything else while the program runs.
    let (key, value) = unsafe {
        let run = next_run(&raw mut INSERT_RUNS);
        let mut key = core::ptr::read(start as *const SessionKey);
        key.port_lo = run as u16;
        key.port_hi = (run >> 16) as u16;
        (key, &*value)
    };
    match session::insert(&key, value, table::Writers::One) {
        0 => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Drops every frame but ARP: the forwarding benchmark's receiver. The veth still counts each
/// frame it receives, and the receiving host spends nothing more on it, so the benchmark's
/// receiver costs the same whichever path forwarded the frame.
#[xdp]
pub fn hafw_sink(ctx: XdpContext) -> u32 {
    const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bytes 12..14 lie inside the frame, checked above.
    let ethertype = unsafe { *((start + 12) as *const [u8; 2]) };
    if ethertype == ETHERTYPE_ARP {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
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
