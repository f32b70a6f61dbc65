//! The `[high_availability]` section: per-device HA settings (never synced to the peer), parsed
//! into typed values and validated with errors that name the line and field.
//!
//! See CONFIG.md for the reference. The election settings map onto [`hafw_ha::Config`]
//! ([`HaSettings::election_config`]); link addressing and role ownership are the shell's.

use std::{net::IpAddr, ops::Range, path::PathBuf, time::Duration};

use hafw_ha::{Ha2Transport, Mode, TimerProfile, Timers};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::model::{Config, ErrorKind};

type Invalid = (Option<Range<usize>>, ErrorKind);

/// `[high_availability]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// 1-63; must match the peer's; names the virtual MACs.
    pub group_id: Spanned<i64>,
    /// Election tie-breaker; default derived from the HA1 address.
    #[serde(default)]
    pub node_id: Option<u64>,
    #[serde(default = "active_passive")]
    pub mode: Mode,
    /// 0-255, lower wins.
    #[serde(default = "default_priority")]
    pub device_priority: Spanned<i64>,
    #[serde(default)]
    pub preemptive: bool,
    #[serde(default = "recommended")]
    pub timers: Spanned<TimerName>,
    #[serde(default)]
    pub advanced_timers: Option<Spanned<AdvancedTimers>>,
    #[serde(default)]
    pub passive_link_state: PassiveLinkState,
    pub ha1: Spanned<HaLink>,
    #[serde(default)]
    pub ha1_backup: Option<Spanned<HaLink>>,
    #[serde(default)]
    pub heartbeat_backup: Option<Spanned<HaLink>>,
    #[serde(default)]
    pub ha2: Option<Spanned<Ha2Link>>,
    #[serde(default)]
    pub ha2_backup: Option<Spanned<Ha2Link>>,
    #[serde(default)]
    pub encryption: Option<Encryption>,
}

fn yes() -> bool {
    true
}
fn active_passive() -> Mode {
    Mode::ActivePassive
}
fn default_priority() -> Spanned<i64> {
    Spanned::new(0..0, 100)
}
fn recommended() -> Spanned<TimerName> {
    Spanned::new(0..0, TimerName::Recommended)
}

/// `timers = "..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerName {
    Recommended,
    Aggressive,
    Fast,
    Advanced,
}

/// `passive_link_state`: what a node's data links do while it is not active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PassiveLinkState {
    /// Links stay up; the dataplane drops data traffic.
    #[default]
    Auto,
    /// Links are set down.
    Shutdown,
}

/// `[high_availability.advanced_timers]`: every timer in milliseconds; unset ones keep the
/// `recommended` value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvancedTimers {
    pub promotion_hold_ms: Option<u64>,
    pub hello_interval_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub heartbeat_loss_threshold: Option<u32>,
    pub preemption_hold_ms: Option<u64>,
    pub monitor_fail_hold_up_ms: Option<u64>,
    pub additional_master_hold_up_ms: Option<u64>,
    pub max_flaps: Option<u32>,
    pub initial_wait_ms: Option<u64>,
}

/// An HA1, HA1-backup or heartbeat-backup link.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaLink {
    pub interface: String,
    /// Local address with prefix length, e.g. `169.254.1.1/30`.
    pub address: String,
    /// The peer's address on this link.
    pub peer: String,
    /// Next hop towards the peer when it is on another subnet.
    #[serde(default)]
    pub gateway: Option<String>,
}

impl HaLink {
    /// The local address (validated at parse time).
    pub fn local(&self) -> IpNet {
        self.address.parse().expect("validated")
    }

    /// The peer address (validated at parse time).
    pub fn peer_addr(&self) -> IpAddr {
        self.peer.parse().expect("validated")
    }
}

/// An HA2 or HA2-backup link.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ha2Link {
    pub interface: String,
    /// Session synchronization over this link (PAN-OS "Enable Session Synchronization"). Off,
    /// a failover keeps the pair working but established sessions do not survive it.
    #[serde(default = "yes")]
    pub session_sync: bool,
    #[serde(default = "ethernet")]
    pub transport: Ha2Transport,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default = "keepalive_interval")]
    pub keepalive_interval_ms: u64,
    #[serde(default = "keepalive_threshold")]
    pub keepalive_threshold_ms: u64,
    #[serde(default = "log_action")]
    pub keepalive_action: KeepaliveAction,
}

fn ethernet() -> Ha2Transport {
    Ha2Transport::Ethernet
}
fn keepalive_interval() -> u64 {
    1000
}
fn keepalive_threshold() -> u64 {
    10_000
}
fn log_action() -> KeepaliveAction {
    KeepaliveAction::Log
}

/// What a missed HA2 keep-alive threshold does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepaliveAction {
    /// Log only.
    Log,
}

/// `[high_availability.encryption]`: HA1 encryption with mutual authentication.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// This node's private key (`hafw ha keygen`).
    pub key_file: PathBuf,
    /// The peer's exported public key.
    pub peer_key_file: PathBuf,
}

impl HaSettings {
    /// The node id: explicit, or derived from the HA1 address (IPv4 as a number, IPv6 its low 64
    /// bits), which differs between the peers by construction.
    pub fn node_id(&self) -> u64 {
        self.node_id
            .unwrap_or_else(|| match self.ha1.get_ref().local().addr() {
                IpAddr::V4(a) => u64::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a) as u64,
            })
    }

    /// The timers the profile (or the advanced values) stand for.
    pub fn timer_profile(&self) -> TimerProfile {
        match self.timers.get_ref() {
            TimerName::Recommended => TimerProfile::Recommended,
            TimerName::Aggressive => TimerProfile::Aggressive,
            TimerName::Fast => TimerProfile::Fast,
            TimerName::Advanced => {
                let a = self
                    .advanced_timers
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default();
                let mut t = Timers::recommended();
                let ms = Duration::from_millis;
                if let Some(v) = a.promotion_hold_ms {
                    t.promotion_hold = ms(v);
                }
                if let Some(v) = a.hello_interval_ms {
                    t.hello_interval = ms(v);
                }
                if let Some(v) = a.heartbeat_interval_ms {
                    t.heartbeat_interval = ms(v);
                }
                if let Some(v) = a.heartbeat_loss_threshold {
                    t.heartbeat_loss_threshold = v;
                }
                if let Some(v) = a.preemption_hold_ms {
                    t.preemption_hold = ms(v);
                }
                if let Some(v) = a.monitor_fail_hold_up_ms {
                    t.monitor_fail_hold_up = ms(v);
                }
                if let Some(v) = a.additional_master_hold_up_ms {
                    t.additional_master_hold_up = ms(v);
                }
                if let Some(v) = a.max_flaps {
                    t.max_flaps = v;
                }
                t.initial_wait = match a.initial_wait_ms {
                    Some(v) => ms(v),
                    None => hafw_ha::default_initial_wait(
                        t.heartbeat_interval,
                        t.heartbeat_loss_threshold,
                        t.hello_interval,
                    ),
                };
                TimerProfile::Advanced(t)
            }
        }
    }

    /// The election core's configuration.
    pub fn election_config(&self) -> hafw_ha::Config {
        let mut c = hafw_ha::Config::new(*self.group_id.get_ref() as u8, self.node_id());
        c.device_priority = *self.device_priority.get_ref() as u8;
        c.preemptive = self.preemptive;
        c.mode = self.mode;
        c.ha2_transport = self
            .ha2
            .as_ref()
            .map(|l| l.get_ref().transport)
            .unwrap_or(Ha2Transport::Ethernet);
        c.ha1_backup = self.ha1_backup.is_some();
        c.heartbeat_backup = self.heartbeat_backup.is_some();
        c.timers = self.timer_profile();
        c
    }
}

/// The virtual MAC of a data port: `02:68:61:<group id>:<interface id, 16 bits>`. `0x02` makes it
/// locally administered unicast (IEEE 802 section 8.2.2); `68:61` is "ha". The interface id is the
/// 1-based position of the `[[interface]]` entry, so both peers derive the same MAC from the same
/// interface list, and two pairs on one segment differ by group id.
pub fn virtual_mac(group_id: u8, interface_id: u16) -> [u8; 6] {
    let [hi, lo] = interface_id.to_be_bytes();
    [0x02, 0x68, 0x61, group_id, hi, lo]
}

/// Parses `aa:bb:cc:dd:ee:ff`; multicast and all-zero MACs are refused.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

fn out_of_range(span: Range<usize>, field: &'static str, message: String) -> Invalid {
    (Some(span), ErrorKind::OutOfRange { field, message })
}

fn bad_addr(span: &Range<usize>, object: &str, field: &'static str, value: &str) -> Invalid {
    (
        Some(span.clone()),
        ErrorKind::BadPrefix {
            object: object.to_owned(),
            field,
            value: value.to_owned(),
        },
    )
}

fn validate_link(
    link: &Spanned<HaLink>,
    object: &str,
    data_ports: &[String],
) -> Result<(), Invalid> {
    let span = link.span();
    let l = link.get_ref();
    let local: IpNet = l
        .address
        .parse()
        .map_err(|_| bad_addr(&span, object, "address", &l.address))?;
    let peer: IpAddr = l
        .peer
        .parse()
        .map_err(|_| bad_addr(&span, object, "peer", &l.peer))?;
    if local.addr().is_ipv4() != peer.is_ipv4() {
        return Err(out_of_range(
            span,
            "peer",
            format!("{object}: peer {peer} and address {local} are of different families"),
        ));
    }
    if local.addr() == peer {
        return Err(out_of_range(
            span,
            "peer",
            format!("{object}: peer {peer} is this node's own address"),
        ));
    }
    match &l.gateway {
        Some(g) => {
            g.parse::<IpAddr>()
                .map_err(|_| bad_addr(&span, object, "gateway", g))?;
        }
        None if !local.contains(&peer) => {
            return Err(out_of_range(
                span,
                "peer",
                format!(
                    "{object}: peer {peer} is outside {local}; set `gateway` to reach another subnet"
                ),
            ));
        }
        None => {}
    }
    if data_ports.contains(&l.interface) {
        return Err(out_of_range(
            span,
            "interface",
            format!(
                "{object}: {} is a data port; HA links need their own interface",
                l.interface
            ),
        ));
    }
    Ok(())
}

fn validate_ha2(
    link: &Spanned<Ha2Link>,
    object: &str,
    data_ports: &[String],
) -> Result<(), Invalid> {
    let span = link.span();
    let l = link.get_ref();
    if data_ports.contains(&l.interface) {
        return Err(out_of_range(
            span,
            "interface",
            format!(
                "{object}: {} is a data port; HA links need their own interface",
                l.interface
            ),
        ));
    }
    if l.transport != Ha2Transport::Ethernet {
        let (Some(address), Some(peer)) = (&l.address, &l.peer) else {
            return Err(out_of_range(
                span,
                "transport",
                format!(
                    "{object}: transport {} needs `address` and `peer`",
                    l.transport
                ),
            ));
        };
        let local = address
            .parse::<IpNet>()
            .map_err(|_| bad_addr(&span, object, "address", address))?
            .addr();
        let peer = peer
            .parse::<IpAddr>()
            .map_err(|_| bad_addr(&span, object, "peer", peer))?;
        // The ingest program (`hafw_ha2`) parses only IPv4 headers and the raw IP socket is
        // AF_INET: an IPv6 link would pass here and never sync.
        for (field, addr) in [("address", local), ("peer", peer)] {
            if addr.is_ipv6() {
                return Err(out_of_range(
                    span,
                    field,
                    format!(
                        "{object}: transport {} carries IPv4 only; {field} {addr} is IPv6",
                        l.transport
                    ),
                ));
            }
        }
    }
    if l.keepalive_threshold_ms <= l.keepalive_interval_ms {
        return Err(out_of_range(
            span,
            "keepalive_threshold_ms",
            format!(
                "{object}: threshold {} ms must exceed the interval {} ms",
                l.keepalive_threshold_ms, l.keepalive_interval_ms
            ),
        ));
    }
    Ok(())
}

/// Validates `[high_availability]` against the rest of the config.
pub(crate) fn validate(ha: &HaSettings, config: &Config) -> Result<(), Invalid> {
    let data_ports: Vec<String> = config
        .interfaces
        .iter()
        .map(|i| i.name.get_ref().clone())
        .collect();
    let group = *ha.group_id.get_ref();
    if !(1..=63).contains(&group) {
        return Err(out_of_range(
            ha.group_id.span(),
            "group_id",
            format!("{group} is out of range 1-63"),
        ));
    }
    let prio = *ha.device_priority.get_ref();
    if !(0..=255).contains(&prio) {
        return Err(out_of_range(
            ha.device_priority.span(),
            "device_priority",
            format!("{prio} is out of range 0-255"),
        ));
    }
    validate_link(&ha.ha1, "high_availability.ha1", &data_ports)?;
    for (link, object) in [
        (&ha.ha1_backup, "high_availability.ha1_backup"),
        (&ha.heartbeat_backup, "high_availability.heartbeat_backup"),
    ] {
        if let Some(l) = link {
            validate_link(l, object, &data_ports)?;
        }
    }
    if let Some(b) = &ha.ha1_backup
        && b.get_ref().interface == ha.ha1.get_ref().interface
    {
        return Err(out_of_range(
            b.span(),
            "interface",
            "high_availability.ha1_backup: must use another interface than ha1".into(),
        ));
    }
    match (&ha.ha2, ha.mode) {
        (None, Mode::ActivePassive) => {
            return Err(out_of_range(
                ha.ha1.span(),
                "ha2",
                "active-passive mode needs [high_availability.ha2]".into(),
            ));
        }
        (Some(l), mode) => {
            validate_ha2(l, "high_availability.ha2", &data_ports)?;
            if mode == Mode::ActivePassive && l.get_ref().interface == ha.ha1.get_ref().interface {
                return Err(out_of_range(
                    l.span(),
                    "interface",
                    "high_availability.ha2: must use another interface than ha1 (or mode = \"lite\")"
                        .into(),
                ));
            }
        }
        (None, Mode::Lite) => {}
    }
    if let Some(l) = &ha.ha2_backup {
        validate_ha2(l, "high_availability.ha2_backup", &data_ports)?;
    }
    match (ha.timers.get_ref(), &ha.advanced_timers) {
        (TimerName::Advanced, None) => {
            return Err(out_of_range(
                ha.timers.span(),
                "timers",
                "\"advanced\" needs a [high_availability.advanced_timers] table".into(),
            ));
        }
        (name, Some(a)) if *name != TimerName::Advanced => {
            return Err(out_of_range(
                a.span(),
                "advanced_timers",
                "only allowed with timers = \"advanced\"".into(),
            ));
        }
        _ => {}
    }
    if let Err(e) = ha.timer_profile().timers().validate() {
        let span = ha
            .advanced_timers
            .as_ref()
            .map(|a| a.span())
            .unwrap_or(ha.timers.span());
        return Err(out_of_range(span, "advanced_timers", e.to_string()));
    }
    Ok(())
}
