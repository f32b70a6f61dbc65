//! The data-port program: parse, session lookup, policy for new flows, forwarding.
//!
//! Every packet increments `rx_packets` and exactly one verdict counter (see `Counters`).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use hafw_common::{
    config::{DataplaneConfig, LEASE_COARSE_SLACK_NS, Role},
    counters::Counters,
    ha,
    policy::ACTION_ALLOW,
    session::{DIR_ORIG, DIR_REPLY, FAMILY_IPV6, PROTO_TCP, PROTO_UDP, SessionKey},
};

use crate::{
    counters::{Clock, now_ns, this_cpu},
    forward::{self, Route},
    maps::{CONFIG, DEVMAP, FIB_GENERATION},
    parse::{self, IcmpKind, NotIp, Packet, ParseError, Parsed, TCP_ACK, TCP_RST, TCP_SYN},
    policy::{self, Flow},
    session::{self, Created, TcpVerdict},
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(c) = this_cpu() else { return PASS };
    let Some(cfg) = CONFIG.get(0) else {
        return PASS;
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    c.rx_packets += 1;
    c.rx_bytes += bytes;
    let now = now_ns(cfg, Clock::Tick);
    if orphaned(cfg, now) {
        // The controller of this active node stopped refreshing its lease (it died or hangs) and
        // the peer is taking over the virtual MACs and IPs. Even ARP or traffic for the host must
        // not be answered from here: a reply from the virtual MAC would pull the switches' MAC
        // tables back to a node that no longer forwards.
        c.drop_not_active += 1;
        return DROP;
    }
    let mut pkt = Packet::empty();
    match parse::parse(ctx, &mut pkt) {
        Ok(Parsed::Ip) => ip_packet(ctx, cfg, c, &pkt, bytes, now),
        Ok(Parsed::NotIp(NotIp::Other)) => {
            c.pass_non_ip += 1;
            PASS
        }
        Ok(Parsed::NotIp(NotIp::HaFrame)) => {
            c.drop_ha_frame += 1;
            DROP
        }
        Ok(Parsed::NotIp(NotIp::StackedVlan)) => {
            c.drop_vlan_stacked += 1;
            DROP
        }
        Err(ParseError::Malformed) => {
            c.drop_malformed += 1;
            DROP
        }
        Err(ParseError::Fragment) => {
            c.drop_fragment += 1;
            DROP
        }
    }
}

/// An active node whose lease lapsed. `now_tick`: the session clock ([`Clock::Tick`]).
///
/// Exact, yet the exact clock is read only near the lease's end: a lease that ends more than
/// [`LEASE_COARSE_SLACK_NS`] after the coarse clock's reading has certainly not ended. (The exact
/// read costs 40 to 100 ns in this VM. Leases of the recommended and aggressive profiles are
/// refreshed seconds before their end and never need it; the fast profile's 10 ms lease always
/// does.)
#[inline(always)]
pub fn orphaned(cfg: &DataplaneConfig, now_tick: u64) -> bool {
    if Role::from_u32(cfg.role) != Role::Active || cfg.active_lease_expires_ns == 0 {
        return false;
    }
    if now_tick.saturating_add(LEASE_COARSE_SLACK_NS) < cfg.active_lease_expires_ns {
        return false;
    }
    now_ns(cfg, Clock::Exact) >= cfg.active_lease_expires_ns
}

/// Whether this node may forward data traffic: not while passive. (An active node whose lease
/// lapsed never gets here: `run` drops everything first.)
#[inline(always)]
fn forwarding_allowed(cfg: &DataplaneConfig) -> bool {
    Role::from_u32(cfg.role) != Role::Passive
}

#[inline(always)]
fn ip_packet(
    ctx: &XdpContext,
    cfg: &DataplaneConfig,
    c: &mut Counters,
    pkt: &Packet,
    bytes: u64,
    now: u64,
) -> u32 {
    if pkt.family == FAMILY_IPV6 {
        c.ipv6_packets += 1;
    }
    if pkt.vlan {
        c.vlan_packets += 1;
    }
    if pkt.proto == ha::HA2_IP_PROTO {
        c.drop_ha_frame += 1;
        return DROP;
    }
    if pkt.icmp == IcmpKind::NeighbourDiscovery {
        c.pass_host += 1;
        return PASS;
    }

    // ICMP errors belong to the session of the packet they quote.
    let related = pkt.icmp == IcmpKind::Error;
    if related && !same_addr(&pkt.dst, &pkt.inner.src) {
        // An error is about a packet its destination sent (RFC 792, RFC 4443): addressed to
        // anybody else it is forged, and forwarded by its session it would reach any host behind
        // us (Linux conntrack drops it too). Path MTU errors go to the sender and pass.
        c.drop_icmp_error_mismatch += 1;
        return DROP;
    }
    // Field by field, not a `Tuple` of the packet's own: building one copied 40 octets per packet.
    let (proto, src, sport, dst, dport) = if related {
        let t = &pkt.inner;
        (t.proto, &t.src, t.sport, &t.dst, t.dport)
    } else {
        (pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport)
    };
    let (key, src_is_hi) = SessionKey::normalized(pkt.family, proto, *src, sport, *dst, dport);
    // A pure SYN opens a connection: it meets the policy before the session table, so a flood of
    // SYNs the policy denies never touches the table (a lookup that misses reads a cold bucket
    // of a large table: 250-350 ns of a denied SYN's 750-900 here). One the policy allows is
    // inserted only if no session holds its tuple; if one does, that session decides
    // (`session::syn_on_existing`).
    let syn_first = !related
        && pkt.proto == PROTO_TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    let hit = if syn_first {
        None
    } else {
        session::lookup(&key, src_is_hi)
    };
    // One route per packet, shared by every path below (each inlined copy of the FIB lookup
    // would cost its own 64-byte parameter block on the 512-byte stack): the one cached in the
    // session for this direction, or a FIB lookup, cached for the next packet. ICMP errors are
    // routed to the quoting packet's source, not along their session, so never cached.
    let generation = FIB_GENERATION.get(0).copied().unwrap_or(0);
    let cache = match &hit {
        Some(h) if !related => Some((
            h.value,
            if h.from_initiator {
                DIR_ORIG
            } else {
                DIR_REPLY
            },
        )),
        _ => None,
    };
    let route = match cache.and_then(|(value, dir)| forward::cached(value, dir, pkt, generation)) {
        Some(route) => {
            c.route_cached += 1;
            route
        }
        None => {
            let route = forward::lookup(ctx, pkt);
            if let Some((value, dir)) = cache {
                forward::remember(value, dir, pkt, &route, generation);
            }
            route
        }
    };
    if let Route::Host = route {
        return host_bound(c, pkt);
    }
    if !forwarding_allowed(cfg) {
        c.drop_not_active += 1;
        return DROP;
    }

    if let Some(hit) = hit {
        c.session_hit += 1;
        if related {
            // Related ICMP error: forwarded, the session itself is not touched.
            return forward(ctx, c, pkt, route);
        }
        let flags = if pkt.proto == PROTO_TCP {
            pkt.tcp_flags
        } else {
            0
        };
        match session::update(cfg, c, &key, &hit, flags, bytes, now) {
            TcpVerdict::Accept => return forward(ctx, c, pkt, route),
            TcpVerdict::Invalid => {
                c.drop_tcp_invalid += 1;
                return DROP;
            }
            // A new connection on a closed tuple: a new flow below. (Only a pure SYN reopens,
            // and pure SYNs look their session up after the policy, in `syn_on_existing`.)
            TcpVerdict::Reopen => {}
        }
    }

    // No session: a new flow for the policy.
    let egress_ifindex = match route {
        Route::Forward { ifindex, .. } | Route::NoNeigh { ifindex } | Route::Kernel { ifindex } => {
            ifindex
        }
        Route::Host | Route::Unroutable => {
            c.drop_no_route += 1;
            return DROP;
        }
    };
    if related {
        // An ICMP error quoting a packet of no session: nothing of ours, never a new flow.
        c.drop_policy += 1;
        return DROP;
    }
    if pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        // Strict TCP: only a SYN opens a session.
        c.drop_tcp_no_session += 1;
        return DROP;
    }
    let slot = cfg.policy_slot & 1;
    // SAFETY: ingress_ifindex read from the XDP metadata.
    let ingress_ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let (Some(from), Some(to)) = (
        policy::iface(slot, ingress_ifindex),
        policy::iface(slot, egress_ifindex),
    ) else {
        c.drop_unknown_iface += 1;
        return DROP;
    };
    let (from_zone, to_zone) = (from.zone, to.zone);
    let dport = if pkt.icmp != IcmpKind::None {
        pkt.icmp_type as u16
    } else {
        u16::from_be(pkt.dport)
    };
    let flow = Flow {
        family: pkt.family,
        proto: pkt.proto,
        src: &pkt.src,
        dst: &pkt.dst,
        dport,
    };
    let Some(rule) = policy::classify(slot, from_zone, to_zone, &flow) else {
        // An empty slot (no policy committed yet) denies.
        c.policy_deny += 1;
        c.drop_policy += 1;
        return DROP;
    };
    if rule.action != ACTION_ALLOW {
        c.policy_deny += 1;
        c.drop_policy += 1;
        return DROP;
    }
    c.policy_allow += 1;
    // Only flows that can have replies get a session: TCP, UDP, ICMP echo. Other ICMP and other
    // protocols are allowed per packet.
    let stateful = matches!(pkt.proto, PROTO_TCP | PROTO_UDP) || pkt.icmp == IcmpKind::EchoRequest;
    if stateful {
        let created = session::create(
            cfg,
            c,
            &key,
            src_is_hi,
            rule.rule_id,
            from_zone as u8,
            to_zone as u8,
            bytes,
            now,
            syn_first,
        );
        let forwarded = match created {
            Created::Yes => true,
            Created::Failed => false,
            Created::Exists => {
                session::syn_on_existing(cfg, c, &key, src_is_hi, pkt.tcp_flags, bytes, now)
            }
        };
        if !forwarded {
            return DROP;
        }
    }
    forward(ctx, c, pkt, route)
}

/// Word by word: no `bcmp` call for the BPF target to resolve.
#[inline(always)]
fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// Traffic for this host. HA1 ports on a data port are never the control plane's.
#[inline(always)]
fn host_bound(c: &mut Counters, pkt: &Packet) -> u32 {
    let dport = u16::from_be(pkt.dport);
    let ha_port = (pkt.proto == PROTO_TCP && dport == ha::HA1_TCP_PORT)
        || (pkt.proto == PROTO_UDP
            && (dport == ha::HA2_UDP_PORT || dport == ha::HA1_HEARTBEAT_UDP_PORT));
    if ha_port {
        c.drop_ha_frame += 1;
        return DROP;
    }
    c.pass_host += 1;
    PASS
}

#[inline(always)]
fn forward(ctx: &XdpContext, c: &mut Counters, pkt: &Packet, route: Route) -> u32 {
    match route {
        Route::Forward { ifindex, eth_addrs } => {
            if pkt.ttl <= 1 {
                c.pass_ttl += 1;
                return PASS;
            }
            if pkt.vlan {
                // The kernel's VLAN devices own tagging on egress.
                c.pass_vlan += 1;
                return PASS;
            }
            if forward::rewrite(ctx, pkt, eth_addrs).is_err() {
                c.drop_malformed += 1;
                return DROP;
            }
            match DEVMAP.redirect(ifindex, 0) {
                Ok(action) => {
                    c.forwarded += 1;
                    action
                }
                Err(_) => {
                    // Egress is not a data port in the devmap: let the kernel forward.
                    c.pass_host += 1;
                    PASS
                }
            }
        }
        Route::NoNeigh { .. } => {
            c.pass_no_neigh += 1;
            PASS
        }
        // Allowed transit the kernel forwards (fragmenting) or answers with an ICMP error.
        Route::Host | Route::Kernel { .. } => {
            c.pass_host += 1;
            PASS
        }
        Route::Unroutable => {
            c.drop_no_route += 1;
            DROP
        }
    }
}
