//! Security policy for new flows: bit-vector classification (see `hafw_common::policy`).
//!
//! Five lookups (zone pair, source LPM, destination LPM, port class, service bitmap), then an AND
//! over the bitmap words in use and the lowest set bit: the cost grows with rules / 64, not rules.

use aya_ebpf::maps::lpm_trie::Key;
use hafw_common::{
    policy::{
        IfaceInfo, IfaceKey, MAX_SERVICE_CLASSES, MAX_ZONES, POLICY_ADDR_HEADER_BITS,
        PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_TCP, PROTO_CLASS_UDP, PolicyAddrKey,
        RULE_WORDS, RuleAction, port_class_index, rule_index, service_bitmap_index,
        zone_pair_index,
    },
    session::{FAMILY_IPV4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

use crate::maps::{
    DST_ADDRS, IFACES, POLICY_INFO, PORT_CLASSES, RULES, SERVICE_BITMAPS, SRC_ADDRS, ZONE_PAIRS,
};

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
    let words = POLICY_INFO.get(slot)?.rule_words as usize;
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
    // Bounded by RULE_WORDS (32) and cut short at the words in use: the verifier sees a constant
    // trip count, the CPU does rules / 64 iterations.
    for i in 0..RULE_WORDS {
        if i >= words {
            break;
        }
        let w = zones.words[i] & src.words[i] & dst.words[i] & services.words[i];
        if w != 0 {
            let rule = (i as u32) * 64 + lowest_bit(w);
            return RULES.get(rule_index(slot, rule));
        }
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

/// Index of the lowest set bit of a non-zero word. BPF has no count-trailing-zeros instruction;
/// six branch-free halvings keep this constant time without a lookup table.
#[inline(always)]
fn lowest_bit(w: u64) -> u32 {
    let mut x = w & w.wrapping_neg();
    let mut n = 0u32;
    if x & 0xffff_ffff == 0 {
        n += 32;
        x >>= 32;
    }
    if x & 0xffff == 0 {
        n += 16;
        x >>= 16;
    }
    if x & 0xff == 0 {
        n += 8;
        x >>= 8;
    }
    if x & 0xf == 0 {
        n += 4;
        x >>= 4;
    }
    if x & 0x3 == 0 {
        n += 2;
        x >>= 2;
    }
    if x & 0x1 == 0 {
        n += 1;
    }
    n
}
