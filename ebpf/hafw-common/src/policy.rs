//! The compiled security policy, as the data-port program classifies new flows.
//!
//! # Classification by field (bit vectors)
//! A linear scan of 1,000 rules costs microseconds per new flow. Instead every field lookup returns
//! a bitmap of the rules that field matches (bit *i* = rule *i* in policy order), and the program
//! ANDs the bitmaps; the lowest set bit is the first matching rule:
//!
//! | field | map | key |
//! |---|---|---|
//! | from/to zone | `ZONE_PAIRS` (array) | [`zone_pair_index`] |
//! | source address | `SRC_ADDRS` (LPM trie) | [`PolicyAddrKey`] |
//! | destination address | `DST_ADDRS` (LPM trie) | [`PolicyAddrKey`] |
//! | protocol + destination port | `PORT_CLASSES` (array) -> `SERVICE_BITMAPS` (array) | [`port_class_index`], [`service_bitmap_index`] |
//!
//! The compiler folds the bits of every covering shorter prefix into each LPM entry, so the
//! longest-prefix match alone yields every rule that matches the address. Port ranges are cut into
//! elementary intervals ("service classes"); every port maps to its class id, and each class has
//! one bitmap. The two implicit defaults (intra-zone, inter-zone) are the last two rules.
//!
//! # Atomic commits (double buffering)
//! Every key carries a policy slot (0 or 1). The controller writes a whole new policy into the
//! idle slot, then flips `DataplaneConfig::policy_slot`. The program reads the slot once per
//! packet, so a packet sees the old policy or the new one, never a mix.

use crate::impl_pod;

/// Policy halves: the live one and the one being written.
pub const POLICY_SLOTS: u32 = 2;
/// Rules per policy, including the two implicit defaults.
pub const MAX_RULES: u32 = 2048;
/// 64-bit words in a [`RuleBitmap`].
pub const RULE_WORDS: usize = (MAX_RULES / 64) as usize;
/// Zone ids are 0..MAX_ZONES.
pub const MAX_ZONES: u32 = 32;
/// Service classes (elementary port intervals over all protocols) per policy.
pub const MAX_SERVICE_CLASSES: u32 = 4096;
/// LPM entries per address map (both slots together).
pub const MAX_POLICY_PREFIXES: u32 = 32768;

/// Protocol classes of `PORT_CLASSES`.
pub const PROTO_CLASS_TCP: u32 = 0;
pub const PROTO_CLASS_UDP: u32 = 1;
/// ICMP and ICMPv6; the "port" is the ICMP type.
pub const PROTO_CLASS_ICMP: u32 = 2;
/// Every other protocol; the "port" is 0.
pub const PROTO_CLASS_OTHER: u32 = 3;
pub const PROTO_CLASSES: u32 = 4;
pub const PORTS: u32 = 65536;

/// Rule id of the implicit intra-zone default rule.
pub const RULE_ID_INTRAZONE_DEFAULT: u32 = 0xffff_fffe;
/// Rule id of the implicit inter-zone default rule.
pub const RULE_ID_INTERZONE_DEFAULT: u32 = 0xffff_ffff;

pub const ACTION_DENY: u8 = 0;
pub const ACTION_ALLOW: u8 = 1;

/// One bit per rule, bit `i % 64` of word `i / 64` for rule index `i`, and a summary of the words
/// (264 bytes).
///
/// The summary makes these aggregated bit vectors (Baboescu and Varghese, "Scalable Packet
/// Classification", SIGCOMM 2001): bit `w` is set when word `w` has a rule, so the program ANDs the
/// four fields' summaries first and reads only the words where every field has a rule. A
/// selective field (a service, an address) leaves one word or two, however many rules there are.
/// Written only through [`RuleBitmap::set`], which keeps the two in step.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleBitmap {
    /// Bit `w` set iff `words[w] != 0`.
    pub summary: u64,
    pub words: [u64; RULE_WORDS],
}
impl_pod!(RuleBitmap);

impl Default for RuleBitmap {
    fn default() -> Self {
        RuleBitmap {
            summary: 0,
            words: [0; RULE_WORDS],
        }
    }
}

impl RuleBitmap {
    pub fn set(&mut self, rule_index: usize) {
        self.words[rule_index / 64] |= 1u64 << (rule_index % 64);
        self.summary |= 1u64 << (rule_index / 64);
    }

    pub fn contains(&self, rule_index: usize) -> bool {
        self.words[rule_index / 64] & (1u64 << (rule_index % 64)) != 0
    }
}

/// Index of the lowest set bit of a non-zero word, without a branch: the isolated lowest bit times
/// a de Bruijn sequence leaves a pattern in the top six bits that is unique to its position, and a
/// table maps the pattern back. BPF has no count-trailing-zeros instruction, and the verifier
/// walks every branch of a loop body once per iteration: a loop that looks for the lowest bit by
/// halving would multiply its paths by 64 per iteration.
#[inline(always)]
pub fn lowest_bit(w: u64) -> u32 {
    DE_BRUIJN_POSITIONS[((w & w.wrapping_neg()).wrapping_mul(DE_BRUIJN) >> 58) as usize] as u32
}

/// A de Bruijn sequence B(2, 6): each of its 64 six-bit windows is distinct.
const DE_BRUIJN: u64 = 0x03f7_9d71_b4cb_0a89;

/// Bit position by the top six bits of `(1 << position) * DE_BRUIJN`.
static DE_BRUIJN_POSITIONS: [u8; 64] = {
    let mut table = [0u8; 64];
    let mut position = 0;
    while position < 64 {
        table[((1u64 << position).wrapping_mul(DE_BRUIJN) >> 58) as usize] = position as u8;
        position += 1;
    }
    table
};

/// Bits of [`PolicyAddrKey`] in front of the address; an LPM entry for an address prefix of
/// length `p` has `prefix_len = POLICY_ADDR_HEADER_BITS + p`.
pub const POLICY_ADDR_HEADER_BITS: u32 = 32;

/// LPM trie data for `SRC_ADDRS`/`DST_ADDRS`: slot and family lead, so the prefix always covers
/// them and IPv4 and IPv6 entries of both slots live in one trie. IPv4 uses `addr[0..4]`.
/// `_tail` lies past the longest prefix (160 bits) and pads the key to a multiple of the value's
/// 8-byte alignment, which the kernel's LPM trie needs to place values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyAddrKey {
    pub slot: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
    pub _tail: [u8; 4],
}
impl_pod!(PolicyAddrKey);

/// Action of rule `i` of a slot (map `RULES`, index [`rule_index`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleAction {
    pub rule_id: u32,
    /// `ACTION_*`.
    pub action: u8,
    pub _pad: [u8; 3],
}
impl_pod!(RuleAction);

/// Key of `IFACES`: which zone an interface belongs to in a policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceKey {
    pub ifindex: u32,
    pub slot: u32,
}
impl_pod!(IfaceKey);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    pub zone: u32,
    pub flags: u32,
}
impl_pod!(IfaceInfo);

#[inline(always)]
pub const fn zone_pair_index(slot: u32, from: u32, to: u32) -> u32 {
    slot * MAX_ZONES * MAX_ZONES + from * MAX_ZONES + to
}

#[inline(always)]
pub const fn port_class_index(slot: u32, proto_class: u32, port: u32) -> u32 {
    slot * PROTO_CLASSES * PORTS + proto_class * PORTS + port
}

#[inline(always)]
pub const fn service_bitmap_index(slot: u32, class: u32) -> u32 {
    slot * MAX_SERVICE_CLASSES + class
}

#[inline(always)]
pub const fn rule_index(slot: u32, rule: u32) -> u32 {
    slot * MAX_RULES + rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_marks_exactly_the_words_with_rules() {
        let mut b = RuleBitmap::default();
        for rule in [0, 63, 999, 1000, 2047] {
            b.set(rule);
        }
        for (w, word) in b.words.iter().enumerate() {
            assert_eq!(b.summary & (1 << w) != 0, *word != 0, "word {w}");
        }
        assert_eq!(b.summary, 1 | 1 << 15 | 1 << 31);
    }

    #[test]
    fn lowest_bit_is_trailing_zeros() {
        for position in 0..64 {
            let bit = 1u64 << position;
            for w in [
                bit,
                bit | 1u64 << 63,
                bit.wrapping_neg(),
                bit | 0x5555_0000_0000_0000,
            ] {
                assert_eq!(lowest_bit(w), w.trailing_zeros(), "{w:#x}");
            }
        }
    }
}
