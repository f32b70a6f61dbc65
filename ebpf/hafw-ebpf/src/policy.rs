//! Security policy for new flows: bit-vector classification (see `hafw_common::policy`).
//!
//! Five lookups (zone pair, source LPM, destination LPM, port class, service bitmap), then an AND
//! of the four bitmaps, only over the words their summaries have in common, and the lowest set
//! bit: the cost grows with the words where every field has a rule, at most rules / 64.

use aya_ebpf::maps::lpm_trie::Key;
use hafw_common::{
    policy::{
        IfaceInfo, IfaceKey, MAX_SERVICE_CLASSES, MAX_ZONES, POLICY_ADDR_HEADER_BITS,
        PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_TCP, PROTO_CLASS_UDP, PolicyAddrKey,
        RULE_WORDS, RuleAction, lowest_bit, port_class_index, rule_index, service_bitmap_index,
        zone_pair_index,
    },
    session::{FAMILY_IPV4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

use crate::maps::{DST_ADDRS, IFACES, PORT_CLASSES, RULES, SERVICE_BITMAPS, SRC_ADDRS, ZONE_PAIRS};

/// What the policy needs to know about a new flow.
pub struct Flow<'a> {
    pub family: u8,
    pub proto: u8,
    pub src: &'a [u32; 4],
    pub dst: &'a [u32; 4],
    /// Destination port in host order (ICMP: the type).
    pub dport: u16,
}

/// Zone of a data port in a policy slot.
#[inline(always)]
pub fn iface(slot: u32, ifindex: u32) -> Option<&'static IfaceInfo> {
    // SAFETY: read-only use of a map value.
    unsafe { IFACES.get(IfaceKey { ifindex, slot }) }
}

/// First matching rule (including the implicit defaults), or `None` if the slot is empty.
#[inline(always)]
pub fn classify(
    slot: u32,
    from_zone: u32,
    to_zone: u32,
    flow: &Flow,
) -> Option<&'static RuleAction> {
    let slot = slot & 1;
    let zones = ZONE_PAIRS.get(zone_pair_index(
        slot,
        from_zone % MAX_ZONES,
        to_zone % MAX_ZONES,
    ))?;
    let src = addr_lookup(true, slot, flow.family, flow.src)?;
    let dst = addr_lookup(false, slot, flow.family, flow.dst)?;
    let proto_class = match flow.proto {
        PROTO_TCP => PROTO_CLASS_TCP,
        PROTO_UDP => PROTO_CLASS_UDP,
        PROTO_ICMP | PROTO_ICMPV6 => PROTO_CLASS_ICMP,
        _ => PROTO_CLASS_OTHER,
    };
    let port = if proto_class == PROTO_CLASS_OTHER {
        0
    } else {
        flow.dport as u32
    };
    let class = *PORT_CLASSES.get(port_class_index(slot, proto_class, port))?;
    let services = SERVICE_BITMAPS.get(service_bitmap_index(slot, class % MAX_SERVICE_CLASSES))?;
    // The words where all four fields have rules, lowest first. Bounded by RULE_WORDS (32): the
    // verifier sees a constant trip count, the CPU visits the candidate words only.
    let mut candidates = zones.summary & src.summary & dst.summary & services.summary;
    for _ in 0..RULE_WORDS {
        if candidates == 0 {
            break;
        }
        // Masked so the verifier sees the index in bounds (RULE_WORDS is a power of two).
        let i = lowest_bit(candidates) as usize & (RULE_WORDS - 1);
        let w = zones.words[i] & src.words[i] & dst.words[i] & services.words[i];
        if w != 0 {
            let rule = (i as u32) * 64 + lowest_bit(w);
            return RULES.get(rule_index(slot, rule));
        }
        candidates &= candidates - 1;
    }
    None
}

#[inline(always)]
fn addr_lookup(
    source: bool,
    slot: u32,
    family: u8,
    addr: &[u32; 4],
) -> Option<&'static hafw_common::policy::RuleBitmap> {
    let mut bytes = [0u8; 16];
    let bits = if family == FAMILY_IPV4 {
        bytes[0..4].copy_from_slice(&addr[0].to_ne_bytes());
        32
    } else {
        bytes[0..4].copy_from_slice(&addr[0].to_ne_bytes());
        bytes[4..8].copy_from_slice(&addr[1].to_ne_bytes());
        bytes[8..12].copy_from_slice(&addr[2].to_ne_bytes());
        bytes[12..16].copy_from_slice(&addr[3].to_ne_bytes());
        128
    };
    let key = Key::new(
        POLICY_ADDR_HEADER_BITS + bits,
        PolicyAddrKey {
            slot: slot as u8,
            family,
            _pad: [0; 2],
            addr: bytes,
            _tail: [0; 4],
        },
    );
    if source {
        SRC_ADDRS.get(&key)
    } else {
        DST_ADDRS.get(&key)
    }
}
