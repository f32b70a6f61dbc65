//! The configuration model and its validation.

use std::{collections::BTreeSet, ops::Range, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A full example: the lab's policy, documented in CONFIG.md.
pub const EXAMPLE: &str = include_str!("../example.toml");

/// The lab pair's HA settings for fw1 and fw2, appended to [`EXAMPLE`] by [`Config::ha_example`].
pub const HA_EXAMPLES: [&str; 2] = [
    include_str!("../ha-fw1.toml"),
    include_str!("../ha-fw2.toml"),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names the pin directory `/sys/fs/bpf/hafw/<instance>/` and the control socket. Per device.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Sessions each of the two tables (IPv4, IPv6) holds; a full table refuses new sessions.
    #[serde(default = "default_session_table_size")]
    pub session_table_size: u32,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<Interface>,
    #[serde(default, rename = "address")]
    pub addresses: Vec<Address>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub policy: PolicyDefaults,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// HA settings (per device; never synced). See [`crate::HaSettings`].
    #[serde(default)]
    pub high_availability: Option<crate::HaSettings>,
}

fn default_instance() -> String {
    "hafw".into()
}

/// The largest `session_table_size`: 2^26 sessions per family, tables of 2^24 buckets (17 GB
/// for IPv4 alone), whose slot numbers stay far inside the 32 bits the programs give them.
pub const MAX_SESSION_TABLE_SIZE: u32 = 1 << 26;

fn default_session_table_size() -> u32 {
    262_144
}

/// A data port and the zone it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: Spanned<String>,
    pub zone: Spanned<String>,
    /// The port's addresses with prefix length. In an HA pair they float: the active node owns
    /// them.
    #[serde(default)]
    pub addresses: Option<Spanned<Vec<String>>>,
    /// Overrides the derived virtual MAC (see [`crate::virtual_mac`]).
    #[serde(default)]
    pub virtual_mac: Option<Spanned<String>>,
}

impl Interface {
    /// The port's addresses (validated at parse time).
    pub fn addresses(&self) -> Vec<IpNet> {
        self.addresses
            .as_ref()
            .map(|a| a.get_ref().iter().filter_map(|s| s.parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// A named list of prefixes (IPv4 and/or IPv6).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub name: Spanned<String>,
    pub prefixes: Spanned<Vec<String>>,
}

/// A protocol with optional destination port ranges (ICMP: type numbers).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Spanned<String>,
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub ports: Option<Spanned<Vec<String>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// An ordered security rule; the first match wins.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: Spanned<String>,
    pub from: Spanned<Vec<String>>,
    pub to: Spanned<Vec<String>>,
    pub source: Spanned<Vec<String>>,
    pub destination: Spanned<Vec<String>>,
    pub service: Spanned<Vec<String>>,
    pub action: Action,
}

/// What happens to flows no rule matches.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDefaults {
    #[serde(default = "allow")]
    pub intrazone_default: Action,
    #[serde(default = "deny")]
    pub interzone_default: Action,
}

fn allow() -> Action {
    Action::Allow
}

fn deny() -> Action {
    Action::Deny
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        PolicyDefaults {
            intrazone_default: Action::Allow,
            interzone_default: Action::Deny,
        }
    }
}

/// Session idle timeouts in seconds (PAN-OS defaults).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_init: u64,
    pub tcp: u64,
    pub tcp_half_closed: u64,
    pub tcp_time_wait: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_init: 5,
            tcp: 3600,
            tcp_half_closed: 120,
            tcp_time_wait: 15,
            udp: 30,
            icmp: 6,
        }
    }
}

impl Timeouts {
    pub fn tcp_init(&self) -> Duration {
        Duration::from_secs(self.tcp_init)
    }
    pub fn tcp(&self) -> Duration {
        Duration::from_secs(self.tcp)
    }
    pub fn tcp_half_closed(&self) -> Duration {
        Duration::from_secs(self.tcp_half_closed)
    }
    pub fn tcp_time_wait(&self) -> Duration {
        Duration::from_secs(self.tcp_time_wait)
    }
    pub fn udp(&self) -> Duration {
        Duration::from_secs(self.udp)
    }
    pub fn icmp(&self) -> Duration {
        Duration::from_secs(self.icmp)
    }
}

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {kind}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based line of the offending value (0 when the whole file is at fault).
    pub line: usize,
    pub kind: ErrorKind,
}

/// What is wrong. Each message names the object and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// TOML syntax, a wrong type, a missing or unknown field (as the TOML parser reports it).
    #[error("{0}")]
    Syntax(String),
    /// Two objects of one kind share a name.
    #[error("{kind} \"{name}\" is defined twice")]
    Duplicate { kind: &'static str, name: String },
    /// A rule or interface names an object that does not exist.
    #[error("{object} field `{field}`: unknown {kind} \"{name}\"")]
    UnknownReference {
        object: String,
        field: &'static str,
        kind: &'static str,
        name: String,
    },
    /// A prefix or address that does not parse.
    #[error("{object} field `{field}`: \"{value}\" is not an IP prefix or address")]
    BadPrefix {
        object: String,
        field: &'static str,
        value: String,
    },
    /// A port or port range that does not parse, is reversed, or exceeds 65535.
    #[error("{object} field `ports`: \"{value}\" is not a port or range (0-65535, first <= last)")]
    BadPort { object: String, value: String },
    /// A protocol hafw does not know.
    #[error("{object} field `protocol`: \"{value}\" is not one of tcp, udp, icmp, any")]
    BadProtocol { object: String, value: String },
    /// ICMP type numbers above 255.
    #[error("{object} field `ports`: ICMP types are 0-255, got \"{value}\"")]
    BadIcmpType { object: String, value: String },
    /// An empty list where one entry at least is needed.
    #[error("{object} field `{field}` is empty")]
    Empty { object: String, field: &'static str },
    /// More zones, rules or service classes than the dataplane holds.
    #[error("too many {what}: {count} (at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// A value out of its range.
    #[error("field `{field}`: {message}")]
    OutOfRange {
        field: &'static str,
        message: String,
    },
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// One entry of an address list, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddrMatch {
    Any,
    Net(IpNet),
}

impl Config {
    /// Parses and validates a config. `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| line_of(text, s)).unwrap_or(0),
            kind: ErrorKind::Syntax(e.message().trim().to_owned()),
        })?;
        config.validate().map_err(|(span, kind)| ConfigError {
            file: file.to_owned(),
            line: span.map(|s| line_of(text, s)).unwrap_or(0),
            kind,
        })?;
        Ok(config)
    }

    /// The full example config (see [`EXAMPLE`]).
    pub fn example() -> Config {
        Config::parse(EXAMPLE, "example.toml").expect("the shipped example is valid")
    }

    /// The text of the lab pair's config for node `node` (0 for fw1, 1 for fw2), with its
    /// `instance` set: the example policy plus that node's HA settings.
    pub fn ha_example_text(node: usize, instance: &str) -> String {
        let policy = EXAMPLE.replacen(
            "instance = \"hafwlab\"",
            &format!("instance = \"{instance}\""),
            1,
        );
        format!("{policy}\n{}", HA_EXAMPLES[node])
    }

    /// Zone names in first-use order; the index is the zone id.
    pub fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = Vec::new();
        for i in &self.interfaces {
            if !zones.contains(i.zone.get_ref()) {
                zones.push(i.zone.get_ref().clone());
            }
        }
        zones
    }

    fn validate(&self) -> Result<(), (Option<Range<usize>>, ErrorKind)> {
        if self.session_table_size < 1024 {
            return Err((
                None,
                ErrorKind::OutOfRange {
                    field: "session_table_size",
                    message: format!("{} is below the minimum of 1024", self.session_table_size),
                },
            ));
        }
        if self.session_table_size > MAX_SESSION_TABLE_SIZE {
            return Err((
                None,
                ErrorKind::OutOfRange {
                    field: "session_table_size",
                    message: format!(
                        "{} is above the maximum of {MAX_SESSION_TABLE_SIZE}",
                        self.session_table_size
                    ),
                },
            ));
        }
        let mut seen = BTreeSet::new();
        for i in &self.interfaces {
            if !seen.insert(i.name.get_ref().clone()) {
                return Err((
                    Some(i.name.span()),
                    ErrorKind::Duplicate {
                        kind: "interface",
                        name: i.name.get_ref().clone(),
                    },
                ));
            }
        }
        let zones = self.zones();
        if zones.len() > hafw_common::policy::MAX_ZONES as usize {
            return Err((
                None,
                ErrorKind::TooMany {
                    what: "zones",
                    count: zones.len(),
                    max: hafw_common::policy::MAX_ZONES as usize,
                },
            ));
        }
        let max_rules = hafw_common::policy::MAX_RULES as usize - 2;
        if self.rules.len() > max_rules {
            return Err((
                None,
                ErrorKind::TooMany {
                    what: "rules",
                    count: self.rules.len(),
                    max: max_rules,
                },
            ));
        }
        let mut names = BTreeSet::new();
        for a in &self.addresses {
            if !names.insert(a.name.get_ref().clone()) {
                return Err((
                    Some(a.name.span()),
                    ErrorKind::Duplicate {
                        kind: "address",
                        name: a.name.get_ref().clone(),
                    },
                ));
            }
            let object = format!("address \"{}\"", a.name.get_ref());
            if a.prefixes.get_ref().is_empty() {
                return Err((
                    Some(a.prefixes.span()),
                    ErrorKind::Empty {
                        object,
                        field: "prefixes",
                    },
                ));
            }
            for p in a.prefixes.get_ref() {
                if parse_net(p).is_none() {
                    return Err((
                        Some(a.prefixes.span()),
                        ErrorKind::BadPrefix {
                            object: object.clone(),
                            field: "prefixes",
                            value: p.clone(),
                        },
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        for s in &self.services {
            if !names.insert(s.name.get_ref().clone()) {
                return Err((
                    Some(s.name.span()),
                    ErrorKind::Duplicate {
                        kind: "service",
                        name: s.name.get_ref().clone(),
                    },
                ));
            }
            s.ranges().map_err(|k| {
                (
                    Some(
                        s.ports
                            .as_ref()
                            .map(|p| p.span())
                            .unwrap_or(s.protocol.span()),
                    ),
                    k,
                )
            })?;
        }
        let mut names = BTreeSet::new();
        for r in &self.rules {
            if !names.insert(r.name.get_ref().clone()) {
                return Err((
                    Some(r.name.span()),
                    ErrorKind::Duplicate {
                        kind: "rule",
                        name: r.name.get_ref().clone(),
                    },
                ));
            }
            let object = format!("rule \"{}\"", r.name.get_ref());
            for (field, list) in [("from", &r.from), ("to", &r.to)] {
                if list.get_ref().is_empty() {
                    return Err((Some(list.span()), ErrorKind::Empty { object, field }));
                }
                for z in list.get_ref() {
                    if z != "any" && !zones.contains(z) {
                        return Err((
                            Some(list.span()),
                            ErrorKind::UnknownReference {
                                object,
                                field,
                                kind: "zone",
                                name: z.clone(),
                            },
                        ));
                    }
                }
            }
            for (field, list) in [("source", &r.source), ("destination", &r.destination)] {
                self.resolve_addresses(list.get_ref()).map_err(|name| {
                    (
                        Some(list.span()),
                        ErrorKind::UnknownReference {
                            object: object.clone(),
                            field,
                            kind: "address object or prefix",
                            name,
                        },
                    )
                })?;
                if list.get_ref().is_empty() {
                    return Err((Some(list.span()), ErrorKind::Empty { object, field }));
                }
            }
            if r.service.get_ref().is_empty() {
                return Err((
                    Some(r.service.span()),
                    ErrorKind::Empty {
                        object,
                        field: "service",
                    },
                ));
            }
            for s in r.service.get_ref() {
                if s != "any" && !self.services.iter().any(|o| o.name.get_ref() == s) {
                    return Err((
                        Some(r.service.span()),
                        ErrorKind::UnknownReference {
                            object,
                            field: "service",
                            kind: "service",
                            name: s.clone(),
                        },
                    ));
                }
            }
        }
        for i in &self.interfaces {
            let object = format!("interface \"{}\"", i.name.get_ref());
            if let Some(list) = &i.addresses {
                for a in list.get_ref() {
                    if a.parse::<IpNet>().is_err() {
                        return Err((
                            Some(list.span()),
                            ErrorKind::BadPrefix {
                                object: object.clone(),
                                field: "addresses",
                                value: a.clone(),
                            },
                        ));
                    }
                }
            }
            if let Some(mac) = &i.virtual_mac
                && crate::ha::parse_mac(mac.get_ref()).is_none()
            {
                return Err((
                    Some(mac.span()),
                    ErrorKind::OutOfRange {
                        field: "virtual_mac",
                        message: format!(
                            "{object}: \"{}\" is not a unicast MAC (aa:bb:cc:dd:ee:ff)",
                            mac.get_ref()
                        ),
                    },
                ));
            }
        }
        if let Some(ha) = &self.high_availability {
            crate::ha::validate(ha, self)?;
        }
        Ok(())
    }

    /// The virtual MAC of data port `name`: its `virtual_mac` override, or the one derived from
    /// the HA group id and the port's position. `None` without HA or for an unknown port.
    pub fn virtual_mac_of(&self, name: &str) -> Option<[u8; 6]> {
        let ha = self.high_availability.as_ref()?;
        let (pos, iface) = self
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name.get_ref() == name)?;
        match &iface.virtual_mac {
            Some(mac) => crate::ha::parse_mac(mac.get_ref()),
            None => Some(crate::ha::virtual_mac(
                *ha.group_id.get_ref() as u8,
                pos as u16 + 1,
            )),
        }
    }

    /// Resolves a source/destination list: `any`, address object names, literal prefixes.
    /// `Err(name)` for the first entry that is none of those.
    pub(crate) fn resolve_addresses(&self, list: &[String]) -> Result<Vec<AddrMatch>, String> {
        let mut out = Vec::new();
        for entry in list {
            if entry == "any" {
                out.push(AddrMatch::Any);
            } else if let Some(obj) = self.addresses.iter().find(|a| a.name.get_ref() == entry) {
                out.extend(
                    obj.prefixes
                        .get_ref()
                        .iter()
                        .filter_map(|p| parse_net(p))
                        .map(AddrMatch::Net),
                );
            } else if let Some(net) = parse_net(entry) {
                out.push(AddrMatch::Net(net));
            } else {
                return Err(entry.clone());
            }
        }
        Ok(out)
    }

    /// The naive reference semantics: index of the first rule matching a flow, or the default
    /// (`None` = intra/inter-zone default). Used to check the compiled classifier.
    pub fn first_match(
        &self,
        from_zone: &str,
        to_zone: &str,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        proto: u8,
        dport: u16,
    ) -> Option<usize> {
        let class = crate::compile::proto_class(proto);
        let port = if class == hafw_common::policy::PROTO_CLASS_OTHER {
            0
        } else {
            dport
        };
        self.rules.iter().position(|r| {
            let zone_ok = |list: &Vec<String>, z: &str| list.iter().any(|x| x == "any" || x == z);
            let addr_ok = |list: &Vec<String>, a: std::net::IpAddr| {
                self.resolve_addresses(list)
                    .unwrap_or_default()
                    .iter()
                    .any(|m| match m {
                        AddrMatch::Any => true,
                        AddrMatch::Net(n) => n.contains(&a),
                    })
            };
            let service_ok = r.service.get_ref().iter().any(|s| {
                if s == "any" {
                    return true;
                }
                let svc = self
                    .services
                    .iter()
                    .find(|o| o.name.get_ref() == s)
                    .expect("validated");
                svc.ranges()
                    .unwrap_or_default()
                    .iter()
                    .any(|(c, lo, hi)| *c == class && (*lo..=*hi).contains(&port))
            });
            zone_ok(r.from.get_ref(), from_zone)
                && zone_ok(r.to.get_ref(), to_zone)
                && addr_ok(r.source.get_ref(), src)
                && addr_ok(r.destination.get_ref(), dst)
                && service_ok
        })
    }
}

impl Service {
    /// `(protocol class, first port, last port)` ranges this service matches.
    pub(crate) fn ranges(&self) -> Result<Vec<(u32, u16, u16)>, ErrorKind> {
        use hafw_common::policy::{
            PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_TCP, PROTO_CLASS_UDP,
        };
        let object = format!("service \"{}\"", self.name.get_ref());
        let classes: &[u32] = match self.protocol.get_ref().as_str() {
            "tcp" => &[PROTO_CLASS_TCP],
            "udp" => &[PROTO_CLASS_UDP],
            "icmp" => &[PROTO_CLASS_ICMP],
            "any" => &[
                PROTO_CLASS_TCP,
                PROTO_CLASS_UDP,
                PROTO_CLASS_ICMP,
                PROTO_CLASS_OTHER,
            ],
            other => {
                return Err(ErrorKind::BadProtocol {
                    object,
                    value: other.to_owned(),
                });
            }
        };
        let mut ranges = Vec::new();
        match &self.ports {
            None => ranges.push((0u16, u16::MAX)),
            Some(ports) => {
                if ports.get_ref().is_empty() {
                    return Err(ErrorKind::Empty {
                        object,
                        field: "ports",
                    });
                }
                for p in ports.get_ref() {
                    let bad = || ErrorKind::BadPort {
                        object: object.clone(),
                        value: p.clone(),
                    };
                    let (lo, hi) = match p.split_once('-') {
                        Some((a, b)) => (
                            a.trim().parse::<u16>().map_err(|_| bad())?,
                            b.trim().parse::<u16>().map_err(|_| bad())?,
                        ),
                        None => {
                            let v = p.trim().parse::<u16>().map_err(|_| bad())?;
                            (v, v)
                        }
                    };
                    if lo > hi {
                        return Err(bad());
                    }
                    if classes == [PROTO_CLASS_ICMP] && hi > 255 {
                        return Err(ErrorKind::BadIcmpType {
                            object: object.clone(),
                            value: p.clone(),
                        });
                    }
                    ranges.push((lo, hi));
                }
            }
        }
        let mut out = Vec::new();
        for &c in classes {
            for &(lo, hi) in &ranges {
                // "Other" protocols have no ports: any range that covers 0 matches them.
                if c == PROTO_CLASS_OTHER {
                    if lo == 0 {
                        out.push((c, 0, 0));
                    }
                } else {
                    out.push((c, lo, hi));
                }
            }
        }
        Ok(out)
    }
}

/// A prefix (`198.18.0.0/15`) or a bare address (a host prefix).
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
