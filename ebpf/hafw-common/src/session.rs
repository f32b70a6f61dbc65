//! Sessions: keys, values and their states, the keys' words as the session tables store them
//! (their layout is in [`crate::table`]), and session events (ring buffer `SESSION_EVENTS`).
//!
//! # Two tables
//! A [`SessionKey`] holds either family (40 octets); the IPv4 table is keyed by its 16-octet
//! [`SessionKeyV4`] instead, as Cilium keeps `ct4` and `ct6` apart: a lookup hashes and compares
//! the whole key, 2 words instead of 5, and an IPv4 bucket of keys is 128 octets instead of 320.
//! Everything outside the tables (events, HA2 records, userspace) speaks `SessionKey`.
//!
//! # Key normalization
//! Both directions of a flow find the same entry: the key stores the two endpoints ordered, the
//! numerically lower `(address, port)` first ("lo"), and the value remembers which endpoint
//! initiated ([`SESSION_F_INITIATOR_IS_HI`]). IPv4 addresses occupy word 0 of the address arrays,
//! words 1..=3 are zero. Addresses and ports are stored in network byte order, exactly as they sit
//! in the packet, so the fast path never swaps bytes. ICMP echo uses the identifier as both ports.

use crate::impl_pod;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Normalized 5-tuple (40 bytes, no implicit padding). 8-aligned, so that its memory is its
/// [`KeyWords`] as the IPv6 session table reads them.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub addr_lo: [u32; 4],
    pub addr_hi: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
impl_pod!(SessionKey);

impl SessionKey {
    /// Builds the normalized key of a packet going `src -> dst`; the flag says whether `src` was
    /// stored as the "hi" endpoint (`true`) or the "lo" one.
    #[inline(always)]
    pub fn normalized(
        family: u8,
        proto: u8,
        src: [u32; 4],
        sport: u16,
        dst: [u32; 4],
        dport: u16,
    ) -> (SessionKey, bool) {
        let src_is_hi = endpoint_greater(&src, sport, &dst, dport);
        let key = if src_is_hi {
            SessionKey {
                addr_lo: dst,
                addr_hi: src,
                port_lo: dport,
                port_hi: sport,
                proto,
                family,
                _pad: [0; 2],
            }
        } else {
            SessionKey {
                addr_lo: src,
                addr_hi: dst,
                port_lo: sport,
                port_hi: dport,
                proto,
                family,
                _pad: [0; 2],
            }
        };
        (key, src_is_hi)
    }
}

/// The key of the IPv4 session table (16 octets, no implicit padding): a [`SessionKey`] of
/// family [`FAMILY_IPV4`] without its zero address words and its family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionKeyV4 {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
impl_pod!(SessionKeyV4);

impl SessionKey {
    /// The IPv4 table's key of this key (meaningful for [`FAMILY_IPV4`] only), as the
    /// programs build it ([`SessionKey::v4_words`]).
    #[inline(always)]
    pub fn v4(&self) -> SessionKeyV4 {
        *self.v4_words().v4()
    }
}

/// A session table key as 8-octet words in memory order: how the tables store, hash and compare
/// keys ([`crate::table`]). Built whole for the programs' lookups: a load that spans several
/// narrower stores (a key built field by field) cannot be forwarded from them, a stall of a dozen
/// cycles or more per word. `N`: 2 for [`SessionKeyV4`], 5 for [`SessionKey`]. The last word's
/// top octet is a pad octet of both keys, which the tables use for the slot state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyWords<const N: usize>(pub [u64; N]);

impl KeyWords<2> {
    /// The key, seen through its words.
    pub fn v4(&self) -> &SessionKeyV4 {
        // SAFETY: same size (asserted below) and a stricter alignment; SessionKeyV4 is plain
        // integers, valid for any octets.
        unsafe { &*(self as *const Self).cast::<SessionKeyV4>() }
    }
}

impl SessionKey {
    /// This key's memory as its [`KeyWords`] (the same octets as [`SessionKey::words`], without a
    /// copy).
    #[inline(always)]
    pub fn as_words(&self) -> &KeyWords<5> {
        // SAFETY: same size and alignment (asserted below); integers only, no padding.
        unsafe { &*(self as *const Self).cast::<KeyWords<5>>() }
    }
}
const _: () = assert!(align_of::<SessionKey>() == align_of::<KeyWords<5>>());

impl KeyWords<5> {
    /// The key, seen through its words.
    pub fn key(&self) -> &SessionKey {
        // SAFETY: as in `v4`.
        unsafe { &*(self as *const Self).cast::<SessionKey>() }
    }
}
const _: () = assert!(size_of::<KeyWords<2>>() == size_of::<SessionKeyV4>());
const _: () = assert!(size_of::<KeyWords<5>>() == size_of::<SessionKey>());

/// Two 4-octet fields as the 8-octet word they share in memory: `first` at the lower address.
#[inline(always)]
const fn pair(first: u32, second: u32) -> u64 {
    if cfg!(target_endian = "little") {
        first as u64 | (second as u64) << 32
    } else {
        (first as u64) << 32 | second as u64
    }
}

impl SessionKey {
    /// [`SessionKey::v4`] as [`KeyWords`].
    #[inline(always)]
    pub fn v4_words(&self) -> KeyWords<2> {
        KeyWords([
            pair(self.addr_lo[0], self.addr_hi[0]),
            pair(self.ports_word(), u32::from(self.proto)),
        ])
    }

    /// This key as [`KeyWords`].
    #[inline(always)]
    pub fn words(&self) -> KeyWords<5> {
        let (lo, hi) = (&self.addr_lo, &self.addr_hi);
        let proto_family = if cfg!(target_endian = "little") {
            u32::from(self.proto) | u32::from(self.family) << 8
        } else {
            u32::from(self.proto) << 24 | u32::from(self.family) << 16
        };
        KeyWords([
            pair(lo[0], lo[1]),
            pair(lo[2], lo[3]),
            pair(hi[0], hi[1]),
            pair(hi[2], hi[3]),
            pair(self.ports_word(), proto_family),
        ])
    }

    /// `port_lo` and `port_hi` as the 4-octet word they make in memory.
    #[inline(always)]
    const fn ports_word(&self) -> u32 {
        if cfg!(target_endian = "little") {
            self.port_lo as u32 | (self.port_hi as u32) << 16
        } else {
            (self.port_lo as u32) << 16 | self.port_hi as u32
        }
    }
}

impl From<SessionKeyV4> for SessionKey {
    fn from(k: SessionKeyV4) -> SessionKey {
        SessionKey {
            addr_lo: [k.addr_lo, 0, 0, 0],
            addr_hi: [k.addr_hi, 0, 0, 0],
            port_lo: k.port_lo,
            port_hi: k.port_hi,
            proto: k.proto,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        }
    }
}

/// Orders endpoints by raw (network order) words: any total order works as long as both
/// directions compute the same one.
#[inline(always)]
fn endpoint_greater(a: &[u32; 4], ap: u16, b: &[u32; 4], bp: u16) -> bool {
    // Unrolled: the verifier and the optimizer both prefer straight-line code here.
    if a[0] != b[0] {
        return a[0] > b[0];
    }
    if a[1] != b[1] {
        return a[1] > b[1];
    }
    if a[2] != b[2] {
        return a[2] > b[2];
    }
    if a[3] != b[3] {
        return a[3] > b[3];
    }
    ap > bp
}

/// Session state. TCP uses all of them; UDP and ICMP use `New` (one direction seen) and
/// `Established` (a reply seen).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// TCP: SYN seen from the initiator. UDP/ICMP: only the initiator has sent.
    New = 0,
    /// TCP: SYN-ACK seen from the responder.
    SynRecv = 1,
    /// TCP: the initiator's ACK completed the handshake. UDP/ICMP: a reply was seen.
    Established = 2,
    /// TCP: one side sent FIN.
    FinWait = 3,
    /// TCP: both sides sent FIN.
    TimeWait = 4,
    /// TCP: RST seen.
    Closed = 5,
}

impl SessionState {
    pub const fn from_u8(v: u8) -> SessionState {
        match v {
            1 => SessionState::SynRecv,
            2 => SessionState::Established,
            3 => SessionState::FinWait,
            4 => SessionState::TimeWait,
            5 => SessionState::Closed,
            _ => SessionState::New,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            SessionState::New => "new",
            SessionState::SynRecv => "syn-recv",
            SessionState::Established => "established",
            SessionState::FinWait => "fin-wait",
            SessionState::TimeWait => "time-wait",
            SessionState::Closed => "closed",
        }
    }
}

/// The initiator is the key's "hi" endpoint.
pub const SESSION_F_INITIATOR_IS_HI: u8 = 1 << 0;
/// The initiator sent FIN.
pub const SESSION_F_FIN_ORIG: u8 = 1 << 1;
/// The responder sent FIN.
pub const SESSION_F_FIN_REPLY: u8 = 1 << 2;
/// Written by HA2 state sync from the peer (not created by this node's fast path).
pub const SESSION_F_SYNCED: u8 = 1 << 3;
/// Written by HA2 state sync, and no packet through this node has been accepted in it since: its
/// state is the peer's as last synced, which may lag the peer's own by the sync delay. Cleared by
/// the first packet the fast path accepts in the session (see `hafw_ebpf::session::tcp_track`).
pub const SESSION_F_UNCONFIRMED: u8 = 1 << 4;

/// A forwarding decision cached in a session for one direction, so an established packet skips
/// the FIB lookup (the costliest helper of the fast path). Valid while `generation` equals the
/// dataplane's FIB generation (`FIB_GENERATION`, bumped by the controller on every route,
/// neighbour or link change; 0 there turns the cache off), and only for packets whose IP length
/// is at most `max_ip_len` (the largest one the FIB lookup passed on the egress MTU). Never
/// synced: interface indexes and MACs are each host's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// FIB generation of the lookup; 0: empty.
    pub generation: u32,
    /// The frame's new Ethernet addresses (see [`EthAddrs`]).
    pub eth_addrs: EthAddrs,
    pub max_ip_len: u16,
    pub _pad: [u8; 2],
}

impl NextHop {
    pub fn dmac(&self) -> [u8; 6] {
        let octets = self.eth_addrs.octets();
        core::array::from_fn(|i| octets[i])
    }

    pub fn smac(&self) -> [u8; 6] {
        let octets = self.eth_addrs.octets();
        core::array::from_fn(|i| octets[6 + i])
    }
}

/// The first 12 octets of an Ethernet header, destination then source MAC, held as 16-bit words
/// in memory order: the fast path rewrites a frame's addresses with six word stores (as 6-octet
/// arrays, the BPF backend copies octet by octet, a load, shifts and a store per octet). Words of
/// 16 bits, not 32: a frame's Ethernet header is only sure to be 2-aligned (generic XDP on
/// architectures with NET_IP_ALIGN 2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthAddrs(pub [u16; 6]);

impl EthAddrs {
    #[inline(always)]
    pub fn new(dmac: &[u8; 6], smac: &[u8; 6]) -> EthAddrs {
        let word = |m: &[u8; 6], i: usize| u16::from_ne_bytes([m[2 * i], m[2 * i + 1]]);
        EthAddrs([
            word(dmac, 0),
            word(dmac, 1),
            word(dmac, 2),
            word(smac, 0),
            word(smac, 1),
            word(smac, 2),
        ])
    }

    pub fn octets(&self) -> [u8; 12] {
        let mut out = [0; 12];
        for (i, w) in self.0.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// Index into [`SessionValue::next_hop`] of each direction.
pub const DIR_ORIG: usize = 0;
pub const DIR_REPLY: usize = 1;

/// Session table value (112 bytes). "orig" is the initiator-to-responder direction.
///
/// Times are this host's `CLOCK_MONOTONIC` in ns (what `bpf_ktime_get_ns` returns); they never
/// leave the host as absolute values (HA2 sends ages).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionValue {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets_orig: u64,
    pub packets_reply: u64,
    pub bytes_orig: u64,
    pub bytes_reply: u64,
    /// Id of the security rule that allowed the flow (`RULE_ID_*` for the implicit defaults).
    pub rule_id: u32,
    /// [`SessionState`] as u8.
    pub state: u8,
    /// `SESSION_F_*` bits.
    pub flags: u8,
    pub ingress_zone: u8,
    pub egress_zone: u8,
    /// Policy slot that allowed the flow (diagnostics).
    pub policy_slot: u8,
    pub _pad: u8,
    /// On a passive node, the HA2 message that last wrote this session: the low 16 bits of its
    /// sender epoch and its sequence number. A retransmitted older message of the same epoch
    /// never overwrites what a newer one wrote (`hafw_ebpf::ha2`). 0 for this node's own
    /// sessions.
    pub sync_epoch: u16,
    pub sync_sequence: u32,
    /// Cached forwarding per direction ([`DIR_ORIG`], [`DIR_REPLY`]).
    pub next_hop: [NextHop; 2],
}
impl_pod!(SessionValue);

/// Kinds of [`SessionEvent`].
pub const EVENT_CREATED: u32 = 1;
pub const EVENT_STATE_CHANGED: u32 = 2;
pub const EVENT_CLOSED: u32 = 3;

/// Octets of [`SessionValue`] before its next-hop cache: the part a session event carries (the
/// cache is this host's own, never synced).
pub const SESSION_EVENT_VALUE_LEN: usize = 64;
const _: () = assert!(core::mem::offset_of!(SessionValue, next_hop) == SESSION_EVENT_VALUE_LEN);

/// A session event sent to userspace through the `SESSION_EVENTS` ring buffer (for HA2 sync).
/// 112 octets: without the value's next-hop cache, 40% more events fit the ring (140,000 in its
/// 16 MiB instead of 100,000), so a controller that falls behind loses fewer to a full ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionEvent {
    pub kind: u32,
    pub _pad: u32,
    pub key: SessionKey,
    /// The session's value up to its next-hop cache, as octets in memory order (read it with
    /// [`SessionEvent::value`]).
    pub value_head: [u64; SESSION_EVENT_VALUE_LEN / 8],
}
impl_pod!(SessionEvent);

impl SessionEvent {
    /// The session's value, its next-hop cache empty.
    pub fn value(&self) -> SessionValue {
        let mut value = SessionValue::default();
        // SAFETY: SessionValue is #[repr(C)], integers only, and its first
        // SESSION_EVENT_VALUE_LEN octets are the fields before `next_hop` (asserted above).
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.value_head.as_ptr().cast::<u8>(),
                (&raw mut value).cast::<u8>(),
                SESSION_EVENT_VALUE_LEN,
            );
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_normalize_to_one_key() {
        let a = [0x0102_12c6, 0, 0, 0];
        let b = [0x0201_12c6, 0, 0, 0];
        let (k1, f1) = SessionKey::normalized(FAMILY_IPV4, PROTO_TCP, a, 1000, b, 80);
        let (k2, f2) = SessionKey::normalized(FAMILY_IPV4, PROTO_TCP, b, 80, a, 1000);
        assert_eq!(k1, k2);
        assert_ne!(f1, f2);
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = [7, 0, 0, 0];
        let (k, src_hi) = SessionKey::normalized(FAMILY_IPV4, PROTO_UDP, a, 9, a, 5);
        assert!(src_hi);
        assert_eq!((k.port_lo, k.port_hi), (5, 9));
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SessionKey>(), 40);
        assert_eq!(core::mem::size_of::<NextHop>(), 24);
        assert_eq!(core::mem::size_of::<SessionValue>(), 112);
        assert_eq!(core::mem::size_of::<SessionEvent>(), 112);
    }

    #[test]
    fn an_event_carries_the_value_but_its_next_hops() {
        let value = SessionValue {
            created_ns: 1,
            last_seen_ns: 2,
            packets_orig: 3,
            packets_reply: 4,
            bytes_orig: 5,
            bytes_reply: 6,
            rule_id: 7,
            state: 8,
            flags: 9,
            ingress_zone: 10,
            egress_zone: 11,
            policy_slot: 1,
            _pad: 0,
            sync_epoch: 13,
            sync_sequence: 14,
            next_hop: [NextHop {
                generation: 12,
                ..Default::default()
            }; 2],
        };
        let head: [u64; SESSION_EVENT_VALUE_LEN / 8] =
            // SAFETY: reading the value's first octets as words, as the program does.
            unsafe { core::ptr::read((&raw const value).cast()) };
        let event = SessionEvent {
            value_head: head,
            ..Default::default()
        };
        assert_eq!(
            event.value(),
            SessionValue {
                next_hop: Default::default(),
                ..value
            }
        );
    }

    #[test]
    fn keys_survive_their_words_and_the_ipv4_table() {
        assert_eq!(core::mem::size_of::<SessionKeyV4>(), 16);
        let endpoints = [
            (FAMILY_IPV4, [0x0102_12c6, 0, 0, 0], [0x0201_12c6, 0, 0, 0]),
            (FAMILY_IPV6, [0x0120_0120, 1, 2, 3], [0x0120_0120, 1, 2, 4]),
        ];
        for (family, a, b) in endpoints {
            let (key, _) = SessionKey::normalized(family, PROTO_UDP, a, 0x3500, b, 0x3412);
            assert_eq!(*key.words().key(), key);
            if family == FAMILY_IPV4 {
                assert_eq!(SessionKey::from(key.v4()), key);
                assert_eq!(*key.v4_words().v4(), key.v4());
            }
        }
    }
}
