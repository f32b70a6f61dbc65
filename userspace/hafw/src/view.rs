//! Sessions and counters as operators see them: serializable views and fixed-width tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hafw_common::{
    policy::{RULE_ID_INTERZONE_DEFAULT, RULE_ID_INTRAZONE_DEFAULT},
    session::{
        FAMILY_IPV4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SESSION_F_INITIATOR_IS_HI,
        SESSION_F_SYNCED, SessionKey, SessionState, SessionValue,
    },
};
use serde::{Deserialize, Serialize};

/// One session, initiator first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    pub protocol: String,
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub state: String,
    pub rule: String,
    pub from_zone: String,
    pub to_zone: String,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// Seconds since the session was created.
    pub age_s: f64,
    /// Seconds since the last packet.
    pub idle_s: f64,
    /// Learned from the HA peer rather than created here.
    pub synced: bool,
}

pub fn addr(family: u8, words: &[u32; 4]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        p => p.to_string(),
    }
}

/// Builds the view; `rule_name` and `zone_name` resolve ids through the running config.
pub fn session_view(
    key: &SessionKey,
    v: &SessionValue,
    now_ns: u64,
    rule_name: impl Fn(u32) -> String,
    zone_name: impl Fn(u8) -> String,
) -> SessionView {
    let lo = (addr(key.family, &key.addr_lo), u16::from_be(key.port_lo));
    let hi = (addr(key.family, &key.addr_hi), u16::from_be(key.port_hi));
    let (init, resp) = if v.flags & SESSION_F_INITIATOR_IS_HI != 0 {
        (hi, lo)
    } else {
        (lo, hi)
    };
    let rule = match v.rule_id {
        RULE_ID_INTRAZONE_DEFAULT => "intrazone-default".to_owned(),
        RULE_ID_INTERZONE_DEFAULT => "interzone-default".to_owned(),
        id => rule_name(id),
    };
    SessionView {
        protocol: proto_name(key.proto),
        source: init.0,
        source_port: init.1,
        destination: resp.0,
        destination_port: resp.1,
        state: SessionState::from_u8(v.state).name().to_owned(),
        rule,
        from_zone: zone_name(v.ingress_zone),
        to_zone: zone_name(v.egress_zone),
        packets_orig: v.packets_orig,
        bytes_orig: v.bytes_orig,
        packets_reply: v.packets_reply,
        bytes_reply: v.bytes_reply,
        age_s: now_ns.saturating_sub(v.created_ns) as f64 / 1e9,
        idle_s: now_ns.saturating_sub(v.last_seen_ns) as f64 / 1e9,
        synced: v.flags & SESSION_F_SYNCED != 0,
    }
}

pub fn sessions_table(sessions: &[SessionView]) -> String {
    let mut out = format!(
        "{:<7} {:<40} {:<40} {:<12} {:<18} {:<17} {:>10} {:>10} {:>8}\n",
        "proto",
        "source",
        "destination",
        "state",
        "rule",
        "zones",
        "pkts o/r",
        "bytes o/r",
        "idle s"
    );
    for s in sessions {
        let src = endpoint(s.source, s.source_port);
        let dst = endpoint(s.destination, s.destination_port);
        out += &format!(
            "{:<7} {:<40} {:<40} {:<12} {:<18} {:<17} {:>10} {:>10} {:>8.1}\n",
            s.protocol,
            src,
            dst,
            s.state,
            s.rule,
            format!("{}->{}", s.from_zone, s.to_zone),
            format!("{}/{}", s.packets_orig, s.packets_reply),
            format!("{}/{}", s.bytes_orig, s.bytes_reply),
            s.idle_s
        );
    }
    out += &format!("total sessions: {}\n", sessions.len());
    out
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub fn counters_table(fields: &[(String, u64)]) -> String {
    let mut out = format!("{:<28} {:>16}\n", "counter", "value");
    for (name, value) in fields {
        out += &format!("{name:<28} {value:>16}\n");
    }
    out
}

/// A JSON value as the text views print it: strings bare, null as `-`, fractions to 2 places.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

/// `show high-availability state-synchronization` as text, from the JSON the controller serves.
pub fn state_sync(data: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let s = text;
    let mut out = String::from("HA2 state synchronization:\n");
    let _ = writeln!(
        out,
        "  Link:                 {} ({}), backup {}; in use: {}",
        s(&data["interface"]),
        s(&data["transport"]),
        s(&data["backup_interface"]),
        s(&data["link_in_use"])
    );
    let _ = writeln!(out, "  Role:                 {}", s(&data["role"]));
    let bulk = data["last_bulk_sync_received_ms"]
        .as_f64()
        .map(|ms| format!(" (last bulk sync {ms:.1} ms)"))
        .unwrap_or_default();
    let _ = writeln!(out, "  Status:               {}{bulk}", s(&data["status"]));
    let q = &data["sequence"];
    let _ = writeln!(
        out,
        "  Sequence:             epoch {}, contiguous {}, highest {}, missing {}, skipped {}",
        s(&q["epoch"]),
        s(&q["contiguous"]),
        s(&q["highest"]),
        s(&q["missing"]),
        s(&q["skipped"])
    );
    let r = &data["recovery"];
    let _ = writeln!(
        out,
        "  Recovery:             {} gaps, {} retransmit requests ({} messages), {} resync requests",
        s(&r["gaps_detected"]),
        s(&r["retransmit_requests_sent"]),
        s(&r["messages_requested"]),
        s(&r["resync_requests_sent"])
    );
    let k = &data["keepalive"];
    if !k.is_null() {
        let _ = writeln!(
            out,
            "  Keep-alive:           {} ({} threshold failures)",
            s(&k["status"]),
            s(&k["threshold_failures"])
        );
    }
    let _ = writeln!(
        out,
        "  Neighbours:           {} of the peer's held ({} records applied, refreshes included)",
        s(&data["neighbours_held"]),
        s(&data["neighbours_installed"])
    );
    let _ = writeln!(
        out,
        "  Outdated sessions:    {} removed (not written by the peer's last bulk sync or since)",
        s(&data["outdated_sessions_removed"])
    );
    // Counters: only the non-zero ones, as a firewall's counter view does.
    for (title, section) in [("Sent", &data["sent"]), ("Received", &data["received"])] {
        let _ = writeln!(out, "  {title}:");
        if let Some(fields) = section.as_object() {
            for (name, value) in fields {
                if value.as_u64().is_some_and(|v| v > 0) || value.as_f64().is_some_and(|v| v > 0.0)
                {
                    let _ = writeln!(out, "    {name:<34} {}", s(value));
                }
            }
        }
    }
    out
}

/// `show high-availability all` as text, from the JSON the HA shell serves (the same document
/// `--json` prints, so scripts and eyes read one source).
pub fn high_availability(data: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let st = &data["status"];
    let sh = &data["shell"];
    let s = text;
    let secs = |from: &serde_json::Value| {
        let as_of = st["as_of"].as_u64().unwrap_or(0);
        from.as_u64()
            .map(|t| format!("{:.1} s", as_of.saturating_sub(t) as f64 / 1e9))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::new();
    let _ = writeln!(out, "Group {}:", s(&st["group_id"]));
    let _ = writeln!(out, "  Mode:                  {}", s(&st["mode"]));
    let _ = writeln!(out, "  Local information:");
    let l = &st["local"];
    let _ = writeln!(
        out,
        "    State:               {} (for {})",
        s(&l["state"]),
        secs(&l["since"])
    );
    let _ = writeln!(out, "    State reason:        {}", s(&l["reason"]));
    let _ = writeln!(out, "    Node id:             {}", s(&st["node_id"]));
    let _ = writeln!(out, "    Priority:            {}", s(&l["priority"]));
    let _ = writeln!(out, "    Preemptive:          {}", s(&l["preemptive"]));
    let _ = writeln!(
        out,
        "    Software version:    {}",
        s(&sh["software_version"])
    );
    let _ = writeln!(
        out,
        "    Timers:              {} (heartbeat {} ms, peer dead after {} missed, promotion hold {} ms, hello {} ms, preemption hold {} ms)",
        s(&st["timer_profile"]),
        s(&st["timers"]["heartbeat_interval_ms"]),
        s(&st["timers"]["heartbeat_loss_threshold"]),
        s(&st["timers"]["promotion_hold_ms"]),
        s(&st["timers"]["hello_interval_ms"]),
        s(&st["timers"]["preemption_hold_ms"]),
    );
    let _ = writeln!(
        out,
        "    Dataplane lease:     {} ms{}",
        s(&sh["lease_ms"]),
        if l["forwarding_held"] == true {
            " (held after a stall until the peer's state is known)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "    Passive link state:  {}",
        s(&sh["passive_link_state"])
    );
    let _ = writeln!(
        out,
        "    HA1 encryption:      {}{}",
        s(&sh["encryption"]),
        if sh["encryption"] == "on" {
            format!(
                " (local key {}, peer key {})",
                s(&sh["local_key"]),
                s(&sh["peer_key"])
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "    State sync:          {}", s(&st["session_sync"]));
    let _ = writeln!(out, "    Flaps:               {}", s(&st["flaps"]));
    let _ = writeln!(
        out,
        "    HA thread pauses:    {} (longest {:.1} ms)",
        s(&sh["pauses"]),
        sh["longest_pause_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(macs) = sh["virtual_macs"].as_object() {
        for (port, mac) in macs {
            let _ = writeln!(out, "    Virtual MAC {port:<8} {}", s(mac));
        }
    }
    let p = &st["peer"];
    let _ = writeln!(out, "  Peer information:");
    let _ = writeln!(out, "    State:               {}", s(&p["state"]));
    let _ = writeln!(out, "    Alive:               {}", s(&p["alive"]));
    let _ = writeln!(out, "    Pairing:             {}", s(&p["pairing"]));
    let _ = writeln!(out, "    Node id:             {}", s(&p["node_id"]));
    let _ = writeln!(out, "    Priority:            {}", s(&p["priority"]));
    let _ = writeln!(out, "    Preemptive:          {}", s(&p["preemptive"]));
    let _ = writeln!(
        out,
        "    Software version:    {}",
        s(&sh["peer_software_version"])
    );
    let _ = writeln!(
        out,
        "    Last heard:          {} ago",
        secs(&p["last_heard"])
    );
    if let Some(w) = p["warnings"].as_array().filter(|w| !w.is_empty()) {
        for w in w {
            let _ = writeln!(out, "    Warning:             {}", s(w));
        }
    }
    let _ = writeln!(out, "  Links:");
    if let Some(links) = sh["links"].as_object() {
        for (name, c) in links {
            let connected = match &c["connected"] {
                serde_json::Value::Bool(true) => ", connected",
                serde_json::Value::Bool(false) => ", not connected",
                _ => "",
            };
            if let Some(r) = c["last_refusal"].as_str() {
                let _ = writeln!(
                    out,
                    "    {name:<17} REFUSED {} time(s), last: {r}",
                    s(&c["refused_unauthenticated"])
                );
            }
            let _ = writeln!(
                out,
                "    {name:<17} {} {} -> {}: {}{connected}; hellos {}/{} heartbeats {}/{} (sent/received); dropped malformed {} wrong-source {} stale {}; longest heartbeat gap {:.1} ms",
                s(&c["interface"]),
                s(&c["local"]),
                s(&c["peer"]),
                if c["carrier"] == true { "up" } else { "down" },
                s(&c["hellos_sent"]),
                s(&c["hellos_received"]),
                s(&c["heartbeats_sent"]),
                s(&c["heartbeats_received"]),
                s(&c["dropped_malformed"]),
                s(&c["dropped_wrong_source"]),
                s(&c["dropped_stale"]),
                c["max_heartbeat_gap_ms"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if let Some(ts) = st["transitions"].as_array() {
        let _ = writeln!(out, "  Recent transitions:");
        for t in ts.iter().rev().take(10) {
            let _ = writeln!(
                out,
                "    {} ago: {} -> {} ({})",
                secs(&t["at"]),
                s(&t["from"]),
                s(&t["to"]),
                s(&t["reason"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn state_sync_text_names_the_status_link_and_non_zero_counters() {
        let data = serde_json::json!({
            "interface": "ha2", "transport": "ethernet", "backup_interface": "ha2b",
            "link_in_use": "ha2b", "role": "receiving", "status": "state sync complete",
            "last_bulk_sync_received_ms": 57.31,
            "sequence": {"epoch": 7, "contiguous": 10, "highest": 12, "missing": 1, "skipped": 0},
            "recovery": {"gaps_detected": 1, "retransmit_requests_sent": 1,
                         "messages_requested": 1, "resync_requests_sent": 0},
            "keepalive": {"status": "up", "threshold_failures": 0},
            "neighbours_installed": 2,
            "outdated_sessions_removed": 3,
            "sent": {"messages_sent": 0},
            "received": {"accepted": 12, "drop_wrong_group": 0},
        });
        let text = super::state_sync(&data);
        assert!(
            text.contains("ha2 (ethernet), backup ha2b; in use: ha2b"),
            "{text}"
        );
        assert!(
            text.contains("state sync complete (last bulk sync 57.3 ms)"),
            "{text}"
        );
        assert!(text.contains("missing 1"), "{text}");
        assert!(text.contains("Outdated sessions:    3 removed"), "{text}");
        assert!(
            text.contains("accepted") && !text.contains("drop_wrong_group"),
            "{text}"
        );
    }
}
