//! Forwarding: `bpf_fib_lookup` on the kernel's routes and neighbours, MAC rewrite, TTL / hop limit
//! decrement with an incremental checksum update (RFC 1624), and a devmap redirect.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, bpf_fib_lookup as FibParams,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use hafw_common::session::{DIR_REPLY, EthAddrs, FAMILY_IPV4, SessionValue};

use crate::{
    maps::FIB_PARAMS,
    parse::{Packet, ParseError, ptr_at_mut},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPV6_HEADER_LEN: u16 = 40;

/// [`EthAddrs`] as two words while they travel in a [`Route`]: as six 16-bit fields the optimizer
/// kept each in a register of its own and spilled each to a stack slot of 8 octets, 48 octets of
/// the fast path's frame, which it shares with the session table's functions (see `table`).
#[derive(Clone, Copy)]
pub struct PackedEth {
    low: u64,
    high: u32,
}

impl PackedEth {
    #[inline(always)]
    pub fn pack(eth: &EthAddrs) -> PackedEth {
        let w = eth.0.map(u64::from);
        PackedEth {
            low: w[0] | w[1] << 16 | w[2] << 32 | w[3] << 48,
            high: (w[4] | w[5] << 16) as u32,
        }
    }

    #[inline(always)]
    pub fn unpack(self) -> EthAddrs {
        let (l, h) = (self.low, self.high);
        EthAddrs([
            l as u16,
            (l >> 16) as u16,
            (l >> 32) as u16,
            (l >> 48) as u16,
            h as u16,
            (h >> 16) as u16,
        ])
    }
}

/// The FIB's answer for a packet.
#[derive(Clone, Copy)]
pub enum Route {
    /// Forward out of `ifindex` with these MACs.
    Forward { ifindex: u32, eth_addrs: PackedEth },
    /// Routable out of `ifindex`, but the neighbour is not resolved: the kernel must forward.
    NoNeigh { ifindex: u32 },
    /// Transit, but the kernel must handle it: longer than the egress MTU (the kernel fragments
    /// it or answers frag-needed / packet-too-big), a lightweight-tunnel route, or a lookup the
    /// helper refused. Out of `ifindex`, 0 if the kernel did not say (then no new flow).
    Kernel { ifindex: u32 },
    /// Not a unicast forwarding route (NOT_FWDED: a local or broadcast destination, or no route,
    /// which the kernel answers with ICMP unreachable) or forwarding disabled on the ingress
    /// port: the kernel forwards none of these.
    Host,
    /// Blackhole, unreachable or prohibit route.
    Unroutable,
}

#[inline(always)]
pub fn lookup(ctx: &XdpContext, pkt: &Packet) -> Route {
    // In a per-CPU scratch entry, not on the stack: the fast path's frame and the session table
    // functions' it calls share 512 octets (see `table`).
    let Some(p) = FIB_PARAMS.get_ptr_mut(0) else {
        return Route::Kernel { ifindex: 0 };
    };
    // SAFETY: this CPU's entry; XDP runs with preemption disabled, so nothing else uses it until
    // the program returns. bpf_fib_lookup is plain data; zeroed is a valid initial state.
    let p = unsafe {
        p.write(core::mem::zeroed());
        &mut *p
    };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    // The kernel compares tot_len with the egress MTU as the length from the network header on,
    // for both families: `ip_len` is IPv6's payload length, so add its fixed header.
    p.__bindgen_anon_1.tot_len = if pkt.family == FAMILY_IPV4 {
        pkt.ip_len
    } else {
        pkt.ip_len.saturating_add(IPV6_HEADER_LEN)
    };
    // SAFETY: reading the ingress ifindex from the XDP metadata.
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if pkt.family == FAMILY_IPV4 {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = pkt.tos_or_flowinfo as u8;
        p.__bindgen_anon_3.ipv4_src = pkt.src[0];
        p.__bindgen_anon_4.ipv4_dst = pkt.dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_2.flowinfo = pkt.tos_or_flowinfo;
        p.__bindgen_anon_3.ipv6_src = pkt.src;
        p.__bindgen_anon_4.ipv6_dst = pkt.dst;
    }
    let mut rc = fib_lookup(ctx, p);
    let too_big = rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    if too_big {
        // The kernel stops at the MTU check before it names the egress interface, which the
        // policy needs: ask again without a length (0 is never over the MTU).
        p.__bindgen_anon_1.tot_len = 0;
        rc = fib_lookup(ctx, p);
    }
    if rc < 0 {
        return Route::Kernel { ifindex: 0 };
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH if too_big => {
            Route::Kernel { ifindex: p.ifindex }
        }
        BPF_FIB_LKUP_RET_SUCCESS => Route::Forward {
            ifindex: p.ifindex,
            eth_addrs: PackedEth::pack(&EthAddrs::new(&p.dmac, &p.smac)),
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeigh { ifindex: p.ifindex },
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Route::Unroutable
        }
        BPF_FIB_LKUP_RET_NOT_FWDED | BPF_FIB_LKUP_RET_FWD_DISABLED => Route::Host,
        // FRAG_NEEDED again, UNSUPP_LWT, or an answer this program does not know: the kernel
        // would forward it, out of an interface it did not name.
        _ => Route::Kernel { ifindex: 0 },
    }
}

#[inline(always)]
fn fib_lookup(ctx: &XdpContext, p: &mut FibParams) -> i64 {
    // SAFETY: params is a buffer of the size passed.
    unsafe { bpf_fib_lookup(ctx.as_ptr(), p, core::mem::size_of::<FibParams>() as i32, 0) }
}

/// The route cached in session `value` for direction `dir`, if still valid for this packet
/// (see `hafw_common::session::NextHop`). `max_ip_len` is in `Packet::ip_len`'s units, as
/// `remember` stores it (IPv6: payload length), so it is compared with `ip_len` unconverted.
#[inline(always)]
pub fn cached(
    value: *const SessionValue,
    dir: usize,
    pkt: &Packet,
    generation: u32,
) -> Option<Route> {
    if generation == 0 || dir > DIR_REPLY {
        return None;
    }
    // SAFETY: `value` is a session map element, valid for this program run.
    let nh = unsafe { &(*value).next_hop[dir] };
    if nh.generation != generation || pkt.ip_len > nh.max_ip_len {
        return None;
    }
    Some(Route::Forward {
        ifindex: nh.ifindex,
        eth_addrs: PackedEth::pack(&nh.eth_addrs),
    })
}

/// Caches a forwarding decision in session `value` for direction `dir`. The generation is
/// cleared first and written last, so a packet of the same direction on another CPU sees the
/// old entry, no entry, or the new one (the writes of two CPUs may still interleave; both
/// write the answer of the same FIB, and a wrong one lasts until the next generation).
#[inline(always)]
pub fn remember(
    value: *mut SessionValue,
    dir: usize,
    pkt: &Packet,
    route: &Route,
    generation: u32,
) {
    let Route::Forward { ifindex, eth_addrs } = *route else {
        return;
    };
    if generation == 0 || dir > DIR_REPLY {
        return;
    }
    // SAFETY: as in `cached`.
    let nh = unsafe { &mut (*value).next_hop[dir] };
    let same = nh.generation == generation && nh.ifindex == ifindex;
    let max_ip_len = if same && nh.max_ip_len > pkt.ip_len {
        nh.max_ip_len
    } else {
        pkt.ip_len
    };
    // SAFETY: in-bounds stores into the map element; volatile keeps their order.
    unsafe {
        core::ptr::write_volatile(&mut nh.generation, 0);
        nh.ifindex = ifindex;
        nh.eth_addrs = eth_addrs.unpack();
        nh.max_ip_len = max_ip_len;
        core::ptr::write_volatile(&mut nh.generation, generation);
    }
}

/// Rewrites the Ethernet addresses and decrements TTL / hop limit. The caller has checked that
/// the TTL is above 1.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, eth_addrs: PackedEth) -> Result<(), ParseError> {
    let eth = ptr_at_mut::<EthAddrs>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at_mut; the frame starts 2-aligned (see `EthAddrs`).
    unsafe { *eth = eth_addrs.unpack() };
    if pkt.family == FAMILY_IPV4 {
        // TTL is byte 8, the checksum bytes 10-11. Decrementing the TTL lowers the 16-bit word
        // (ttl << 8 | proto) by 0x0100, so the complemented sum rises by 0x0100 with end-around
        // carry (RFC 1624); written exactly as the kernel's ip_decrease_ttl so results match.
        let ttl = ptr_at_mut::<u8>(ctx, pkt.l3_off + 8)?;
        let csum = ptr_at_mut::<[u8; 2]>(ctx, pkt.l3_off + 10)?;
        // SAFETY: bounds checked by ptr_at_mut.
        unsafe {
            *ttl -= 1;
            let sum = u16::from_be_bytes(*csum) as u32 + 0x0100;
            let sum = sum + (sum >= 0xffff) as u32;
            *csum = (sum as u16).to_be_bytes();
        }
    } else {
        // IPv6 has no header checksum; hop limit is byte 7.
        let hl = ptr_at_mut::<u8>(ctx, pkt.l3_off + 7)?;
        // SAFETY: bounds checked by ptr_at_mut.
        unsafe { *hl -= 1 };
    }
    Ok(())
}
