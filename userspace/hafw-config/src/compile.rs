//! The policy compiler: ordered rules -> per-field rule bitmaps (see `hafw_common::policy`).
//!
//! - Zone pairs: one bitmap per (from, to).
//! - Addresses: every distinct prefix used by any rule becomes an LPM entry whose bitmap holds
//!   every rule with a covering-or-equal prefix. Since every rule prefix is itself an entry, the
//!   longest match for an address carries exactly the rules that match the address.
//! - Services: per protocol class, port ranges are cut into elementary intervals; intervals with
//!   identical bitmaps share one service class.
//!
//! The two implicit defaults (intra-zone, inter-zone) are the last two rules and match any
//! address and service.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use hafw_common::policy::{
    ACTION_ALLOW, ACTION_DENY, MAX_SERVICE_CLASSES, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER,
    PROTO_CLASS_TCP, PROTO_CLASS_UDP, PROTO_CLASSES, RULE_ID_INTERZONE_DEFAULT,
    RULE_ID_INTRAZONE_DEFAULT, RuleAction, RuleBitmap,
};
use ipnet::IpNet;

use crate::model::{Action, AddrMatch, Config, ConfigError, ErrorKind};

/// One LPM trie entry: a prefix (address bits only) and the rules it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LpmEntry {
    /// 4 or 6.
    pub family: u8,
    /// IPv4 in `addr[0..4]`.
    pub addr: [u8; 16],
    pub prefix_len: u8,
    pub rules: RuleBitmap,
}

/// Everything the dataplane's policy maps hold for one slot.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// Zone names; index = zone id.
    pub zones: Vec<String>,
    /// Data ports and their zone ids.
    pub interfaces: Vec<(String, u32)>,
    /// Rule actions in order (user rules, then the two defaults).
    pub rules: Vec<RuleAction>,
    pub rule_count: u32,
    pub rule_words: u32,
    pub zone_pairs: Vec<((u32, u32), RuleBitmap)>,
    pub src_prefixes: Vec<LpmEntry>,
    pub dst_prefixes: Vec<LpmEntry>,
    /// Per protocol class: `(first port, last port, service class)` covering 0..=65535.
    pub port_classes: [Vec<(u16, u16, u32)>; PROTO_CLASSES as usize],
    /// Bitmap per service class id.
    pub service_bitmaps: Vec<RuleBitmap>,
}

pub(crate) fn proto_class(proto: u8) -> u32 {
    match proto {
        6 => PROTO_CLASS_TCP,
        17 => PROTO_CLASS_UDP,
        1 | 58 => PROTO_CLASS_ICMP,
        _ => PROTO_CLASS_OTHER,
    }
}

fn action_code(a: Action) -> u8 {
    match a {
        Action::Allow => ACTION_ALLOW,
        Action::Deny => ACTION_DENY,
    }
}

/// Compiles a validated config.
pub fn compile(config: &Config) -> Result<CompiledPolicy, ConfigError> {
    let zones = config.zones();
    let zone_id = |name: &str| zones.iter().position(|z| z == name).map(|i| i as u32);
    let interfaces = config
        .interfaces
        .iter()
        .map(|i| {
            (
                i.name.get_ref().clone(),
                zone_id(i.zone.get_ref()).expect("zone collected from interfaces"),
            )
        })
        .collect();
    let n_user = config.rules.len();
    let intra = n_user;
    let inter = n_user + 1;
    let rule_count = n_user + 2;

    let mut rules: Vec<RuleAction> = config
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| RuleAction {
            rule_id: i as u32 + 1,
            action: action_code(r.action),
            _pad: [0; 3],
        })
        .collect();
    rules.push(RuleAction {
        rule_id: RULE_ID_INTRAZONE_DEFAULT,
        action: action_code(config.policy.intrazone_default),
        _pad: [0; 3],
    });
    rules.push(RuleAction {
        rule_id: RULE_ID_INTERZONE_DEFAULT,
        action: action_code(config.policy.interzone_default),
        _pad: [0; 3],
    });

    // Zone pairs.
    let mut zone_pairs = Vec::new();
    for (f, from) in zones.iter().enumerate() {
        for (t, to) in zones.iter().enumerate() {
            let mut b = RuleBitmap::default();
            for (i, r) in config.rules.iter().enumerate() {
                let has = |l: &Vec<String>, z: &str| l.iter().any(|x| x == "any" || x == z);
                if has(r.from.get_ref(), from) && has(r.to.get_ref(), to) {
                    b.set(i);
                }
            }
            b.set(if f == t { intra } else { inter });
            zone_pairs.push(((f as u32, t as u32), b));
        }
    }

    // Addresses.
    let resolve = |l: &Vec<String>| config.resolve_addresses(l).expect("validated");
    let src_lists: Vec<Vec<AddrMatch>> = config
        .rules
        .iter()
        .map(|r| resolve(r.source.get_ref()))
        .collect();
    let dst_lists: Vec<Vec<AddrMatch>> = config
        .rules
        .iter()
        .map(|r| resolve(r.destination.get_ref()))
        .collect();
    let src_prefixes = lpm_entries(&src_lists, intra, inter);
    let dst_prefixes = lpm_entries(&dst_lists, intra, inter);

    // Services.
    let mut per_class: Vec<Vec<(usize, u16, u16)>> = vec![Vec::new(); PROTO_CLASSES as usize];
    for (i, r) in config.rules.iter().enumerate() {
        for s in r.service.get_ref() {
            if s == "any" {
                for c in per_class.iter_mut() {
                    c.push((i, 0, u16::MAX));
                }
                continue;
            }
            let svc = config
                .services
                .iter()
                .find(|o| o.name.get_ref() == s)
                .expect("validated");
            for (class, lo, hi) in svc.ranges().expect("validated") {
                per_class[class as usize].push((i, lo, hi));
            }
        }
    }
    let mut class_of: BTreeMap<Vec<u64>, u32> = BTreeMap::new();
    let mut service_bitmaps = Vec::new();
    let mut port_classes: [Vec<(u16, u16, u32)>; PROTO_CLASSES as usize] = Default::default();
    for (c, items) in per_class.iter().enumerate() {
        // Elementary interval starts.
        let mut starts: BTreeSet<u32> = BTreeSet::from([0]);
        for &(_, lo, hi) in items {
            starts.insert(u32::from(lo));
            starts.insert(u32::from(hi) + 1);
        }
        let starts: Vec<u32> = starts.into_iter().filter(|&s| s <= 65535).collect();
        for (k, &first) in starts.iter().enumerate() {
            let last = starts.get(k + 1).map(|n| n - 1).unwrap_or(65535);
            let mut b = RuleBitmap::default();
            for &(i, lo, hi) in items {
                if u32::from(lo) <= first && last <= u32::from(hi) {
                    b.set(i);
                }
            }
            b.set(intra);
            b.set(inter);
            let next = service_bitmaps.len() as u32;
            let id = *class_of.entry(b.words.to_vec()).or_insert_with(|| {
                service_bitmaps.push(b);
                next
            });
            port_classes[c].push((first as u16, last as u16, id));
        }
    }
    if service_bitmaps.len() > MAX_SERVICE_CLASSES as usize {
        return Err(ConfigError {
            file: String::new(),
            line: 0,
            kind: ErrorKind::TooMany {
                what: "service classes",
                count: service_bitmaps.len(),
                max: MAX_SERVICE_CLASSES as usize,
            },
        });
    }

    Ok(CompiledPolicy {
        zones,
        interfaces,
        rules,
        rule_count: rule_count as u32,
        rule_words: rule_count.div_ceil(64) as u32,
        zone_pairs,
        src_prefixes,
        dst_prefixes,
        port_classes,
        service_bitmaps,
    })
}

fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

fn lpm_entries(lists: &[Vec<AddrMatch>], intra: usize, inter: usize) -> Vec<LpmEntry> {
    let any_v4: IpNet = "0.0.0.0/0".parse().expect("literal");
    let any_v6: IpNet = "::/0".parse().expect("literal");
    // Every prefix any rule uses, plus /0 of both families so a lookup always finds an entry.
    let mut nets: BTreeSet<IpNet> = BTreeSet::from([any_v4, any_v6]);
    for l in lists {
        for m in l {
            if let AddrMatch::Net(n) = m {
                nets.insert(*n);
            }
        }
    }
    nets.into_iter()
        .map(|net| {
            let mut rules = RuleBitmap::default();
            for (i, l) in lists.iter().enumerate() {
                let hit = l.iter().any(|m| match m {
                    AddrMatch::Any => true,
                    AddrMatch::Net(q) => covers(q, &net),
                });
                if hit {
                    rules.set(i);
                }
            }
            rules.set(intra);
            rules.set(inter);
            let mut addr = [0u8; 16];
            let family = match net.network() {
                IpAddr::V4(a) => {
                    addr[..4].copy_from_slice(&a.octets());
                    4
                }
                IpAddr::V6(a) => {
                    addr.copy_from_slice(&a.octets());
                    6
                }
            };
            LpmEntry {
                family,
                addr,
                prefix_len: net.prefix_len(),
                rules,
            }
        })
        .collect()
}

impl CompiledPolicy {
    /// Classifies a flow exactly as the XDP program does (longest prefix match by hand, AND of
    /// the bitmaps, lowest set bit). Returns the rule index and its action.
    pub fn classify(
        &self,
        from_zone: u32,
        to_zone: u32,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dport: u16,
    ) -> (usize, RuleAction) {
        let zones = &self
            .zone_pairs
            .iter()
            .find(|((f, t), _)| *f == from_zone && *t == to_zone)
            .expect("zone pair exists")
            .1;
        let s = longest_match(&self.src_prefixes, src);
        let d = longest_match(&self.dst_prefixes, dst);
        let class = proto_class(proto);
        let port = if class == PROTO_CLASS_OTHER { 0 } else { dport };
        let svc_class = self.port_classes[class as usize]
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&port))
            .expect("port classes cover every port")
            .2;
        let svc = &self.service_bitmaps[svc_class as usize];
        for w in 0..self.rule_words as usize {
            let bits = zones.words[w] & s.words[w] & d.words[w] & svc.words[w];
            if bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                return (i, self.rules[i]);
            }
        }
        unreachable!("the implicit defaults match every flow")
    }
}

fn longest_match(entries: &[LpmEntry], a: IpAddr) -> RuleBitmap {
    entries
        .iter()
        .filter(|e| {
            let net = match (e.family, a) {
                (4, IpAddr::V4(_)) => IpNet::new(
                    IpAddr::from(<[u8; 4]>::try_from(&e.addr[..4]).expect("4 bytes")),
                    e.prefix_len,
                ),
                (6, IpAddr::V6(_)) => IpNet::new(IpAddr::from(e.addr), e.prefix_len),
                _ => return false,
            };
            net.map(|n| n.contains(&a)).unwrap_or(false)
        })
        .max_by_key(|e| e.prefix_len)
        .expect("/0 entries exist for both families")
        .rules
}
