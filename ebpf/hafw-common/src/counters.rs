//! Global packet counters (map `COUNTERS`, per-CPU array of one). Userspace sums across CPUs.
//!
//! Every packet the data-port program sees increments `rx_packets` and exactly one verdict counter:
//! `forwarded`, one of the `pass_*` counters, or one of the `drop_*` counters. The other fields
//! count events (sessions created, policy results) and do not add up to `rx_packets`.

use crate::impl_pod;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,

    // Verdicts: redirected out of another data port by the fast path.
    pub forwarded: u64,
    // Verdicts: handed to the kernel.
    /// ARP, ND and other non-IP frames.
    pub pass_non_ip: u64,
    /// Destined to this host (FIB says local) or not forwardable by the fast path.
    pub pass_host: u64,
    /// Allowed, but the next hop's MAC is not resolved yet: the kernel forwards it and resolves.
    pub pass_no_neigh: u64,
    /// Allowed 802.1Q-tagged traffic: the kernel's VLAN devices forward it.
    pub pass_vlan: u64,
    /// TTL or hop limit would expire: the kernel sends the ICMP error.
    pub pass_ttl: u64,
    // Verdicts: dropped.
    /// A security rule (or the inter-zone default) denied the new flow.
    pub drop_policy: u64,
    /// Strict TCP: a non-SYN segment without a session.
    pub drop_tcp_no_session: u64,
    /// Strict TCP: a segment that does not fit the session's state (e.g. SYN-ACK from the initiator).
    pub drop_tcp_invalid: u64,
    /// Truncated or malformed headers.
    pub drop_malformed: u64,
    /// IP fragments (not reassembled by the fast path).
    pub drop_fragment: u64,
    /// This node is passive (or its active lease lapsed): data traffic is not ours to forward.
    pub drop_not_active: u64,
    /// HA1/HA2 frames arriving on a data port.
    pub drop_ha_frame: u64,
    /// The session table refused an insert.
    pub drop_session_table_full: u64,
    /// No route for the destination.
    pub drop_no_route: u64,
    /// Ingress interface not configured as a data port.
    pub drop_unknown_iface: u64,
    /// A second VLAN tag behind the first (802.1Q, 802.1ad or 0x9100), or an outer 0x9100 tag:
    /// the fast path checks one tag only.
    pub drop_vlan_stacked: u64,
    /// An ICMP error whose destination is not the source of the packet it quotes.
    pub drop_icmp_error_mismatch: u64,

    // Events.
    pub session_hit: u64,
    pub session_created: u64,
    pub session_established: u64,
    pub session_closed: u64,
    pub policy_allow: u64,
    pub policy_deny: u64,
    pub ipv6_packets: u64,
    pub vlan_packets: u64,
    /// Session events lost because the ring buffer was full.
    pub event_ringbuf_full: u64,
    /// Frames the host itself sent on a data port, dropped (tc egress) because this node's active
    /// lease lapsed: they would carry the virtual MAC the peer now owns.
    pub drop_host_tx_not_active: u64,
    /// Packets forwarded by the next hop cached in their session (no FIB lookup).
    pub route_cached: u64,
}
impl_pod!(Counters);

/// Every field of [`Counters`], in order: the one list that summing and printing share.
macro_rules! for_each_counter {
    ($m:ident) => {
        $m!(
            rx_packets,
            rx_bytes,
            forwarded,
            pass_non_ip,
            pass_host,
            pass_no_neigh,
            pass_vlan,
            pass_ttl,
            drop_policy,
            drop_tcp_no_session,
            drop_tcp_invalid,
            drop_malformed,
            drop_fragment,
            drop_not_active,
            drop_ha_frame,
            drop_session_table_full,
            drop_no_route,
            drop_unknown_iface,
            drop_vlan_stacked,
            drop_icmp_error_mismatch,
            session_hit,
            session_created,
            session_established,
            session_closed,
            policy_allow,
            policy_deny,
            ipv6_packets,
            vlan_packets,
            event_ringbuf_full,
            drop_host_tx_not_active,
            route_cached
        )
    };
}

/// Number of fields in [`Counters`].
pub const COUNTER_FIELDS: usize = core::mem::size_of::<Counters>() / 8;

impl Counters {
    /// Adds `other` into `self`, field by field (summing per-CPU values).
    pub fn accumulate(&mut self, other: &Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f = self.$f.wrapping_add(other.$f); )* };
        }
        for_each_counter!(add);
    }

    /// `(name, value)` of every field, in struct order.
    pub fn fields(&self) -> [(&'static str, u64); COUNTER_FIELDS] {
        macro_rules! list {
            ($($f:ident),*) => { [ $( (stringify!($f), self.$f) ),* ] };
        }
        for_each_counter!(list)
    }
}
