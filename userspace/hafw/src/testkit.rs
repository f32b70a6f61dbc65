//! Support for BPF_PROG_TEST_RUN tests and benchmarks: a fixture that puts the calling thread in a
//! private network namespace with two routed data ports and static neighbours, loads the dataplane
//! with a policy, and runs packets built with etherparse through the real program.
//!
//! Needs root. Nothing here touches the caller's network namespace: the private one disappears
//! with the thread.

use std::{collections::BTreeMap, process::Command};

use crate::dataplane::{Dataplane, LoadOptions};
use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{
    Ethernet2Header, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use hafw_common::{
    config::{CONFIG_F_SESSION_EVENTS, DataplaneConfig, Role},
    counters::Counters,
    session::{FAMILY_IPV4, FAMILY_IPV6, SessionKey, SessionValue},
};

pub const CLIENT: [u8; 4] = [198, 18, 1, 2];
pub const SERVER: [u8; 4] = [198, 18, 2, 2];
pub const TRUST_IP: [u8; 4] = [198, 18, 1, 1];
pub const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];
pub const TRUST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
pub const UNTRUST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x02];

/// The policy most tests run with.
pub const POLICY: &str = r#"
instance = "fastpath-test"

[[interface]]
name = "trust0"
zone = "trust"

[[interface]]
name = "untrust0"
zone = "untrust"

[[address]]
name = "clients"
prefixes = ["198.18.1.0/24", "2001:2:0:1::/64"]

[[address]]
name = "servers"
prefixes = ["198.18.2.0/24", "2001:2:0:2::/64"]

[[service]]
name = "web"
protocol = "tcp"
ports = ["80", "443"]

[[service]]
name = "alt-web"
protocol = "tcp"
ports = ["8080"]

[[service]]
name = "dns"
protocol = "udp"
ports = ["53"]

[[service]]
name = "ping"
protocol = "icmp"

[[rule]]
name = "deny-alt-web"
from = ["trust"]
to = ["untrust"]
source = ["any"]
destination = ["any"]
service = ["alt-web"]
action = "deny"

[[rule]]
name = "allow-web"
from = ["trust"]
to = ["untrust"]
source = ["clients"]
destination = ["servers"]
service = ["web", "alt-web"]
action = "allow"

[[rule]]
name = "allow-dns-ping"
from = ["trust"]
to = ["untrust"]
source = ["clients"]
destination = ["any"]
service = ["dns", "ping"]
action = "allow"
"#;

/// Same zones and objects, but web is no longer allowed.
pub const POLICY_WITHOUT_WEB: &str = r#"
instance = "fastpath-test"

[[interface]]
name = "trust0"
zone = "trust"

[[interface]]
name = "untrust0"
zone = "untrust"

[[service]]
name = "dns"
protocol = "udp"
ports = ["53"]

[[rule]]
name = "allow-dns"
from = ["trust"]
to = ["untrust"]
source = ["any"]
destination = ["any"]
service = ["dns"]
action = "allow"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
}

pub struct Output {
    pub verdict: Verdict,
    pub data: Vec<u8>,
}

pub struct Fixture {
    pub dp: Dataplane,
    pub trust: u32,
    pub untrust: u32,
    pub untrust_mac: [u8; 6],
    cfg: DataplaneConfig,
}

/// Runs a command in the calling thread's network namespace; panics with its stderr on failure
/// (this is test support: a broken fixture must stop the test loudly).
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Ports of the private namespace that never come up; they hold the programs in the XDP
/// dispatcher.
const IDLE_PORTS: [&str; 3] = ["idle0", "idle1", "idle2"];
/// Idle ports for a benchmark's own programs (`Dataplane::load_bench_program`).
pub const BENCH_IDLE_PORTS: [&str; 2] = ["idle3", "idle4"];

/// Moves the calling thread into a fresh, unnamed network namespace with the two data ports.
/// Child processes (`ip`, `sysctl`) inherit it; it disappears with the thread.
pub fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): run as root");
    for (dev, peer, m, v4, v6) in [
        (
            "trust0",
            "trust0p",
            TRUST_MAC,
            "198.18.1.1/24",
            "2001:2:0:1::1/64",
        ),
        (
            "untrust0",
            "untrust0p",
            UNTRUST_MAC,
            "198.18.2.1/24",
            "2001:2:0:2::1/64",
        ),
    ] {
        sh(&[
            "ip",
            "link",
            "add",
            dev,
            "address",
            &mac(m),
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ]);
        sh(&["ip", "addr", "add", v4, "dev", dev]);
        sh(&["ip", "addr", "add", v6, "dev", dev, "nodad"]);
        sh(&["ip", "link", "set", dev, "up"]);
        sh(&["ip", "link", "set", peer, "up"]);
    }
    // Left down: see `Dataplane::stay_in_dispatcher`.
    for port in IDLE_PORTS.into_iter().chain(BENCH_IDLE_PORTS) {
        sh(&[
            "ip",
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{port}p"),
        ]);
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    for (ip, m, dev) in [
        ("198.18.1.2", CLIENT_MAC, "trust0"),
        ("198.18.2.2", SERVER_MAC, "untrust0"),
        ("2001:2:0:1::2", CLIENT_MAC, "trust0"),
        ("2001:2:0:2::2", SERVER_MAC, "untrust0"),
    ] {
        sh(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac(m),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Fixture {
    /// A fixture with [`POLICY`] committed. Moves the calling thread into a private netns.
    pub fn new() -> Fixture {
        Fixture::with_policy(POLICY, 65536)
    }

    pub fn with_policy(policy: &str, session_table_size: u32) -> Fixture {
        private_netns();
        let mut dp = Dataplane::load(&LoadOptions {
            session_table_size,
            pin_dir: None,
        })
        .expect("load dataplane");
        let trust = crate::dataplane::ifindex("trust0").unwrap();
        let untrust = crate::dataplane::ifindex("untrust0").unwrap();
        dp.register_port(trust).unwrap();
        dp.register_port(untrust).unwrap();
        dp.stay_in_dispatcher(IDLE_PORTS).unwrap();
        let cfg = DataplaneConfig {
            role: Role::Standalone as u32,
            flags: CONFIG_F_SESSION_EVENTS,
            ..Default::default()
        };
        let mut f = Fixture {
            dp,
            trust,
            untrust,
            untrust_mac: UNTRUST_MAC,
            cfg,
        };
        f.dp.set_config(cfg).unwrap();
        f.commit(policy);
        f
    }

    pub fn commit(&mut self, policy: &str) {
        let config = hafw_config::Config::parse(policy, "test.toml").expect("test policy parses");
        let compiled = hafw_config::compile(&config).expect("test policy compiles");
        let ifindexes: BTreeMap<String, u32> = [
            ("trust0".to_owned(), self.trust),
            ("untrust0".to_owned(), self.untrust),
        ]
        .into();
        self.dp
            .commit_policy(&compiled, &ifindexes)
            .expect("commit");
    }

    pub fn set_role(&mut self, role: Role) {
        self.cfg.role = role as u32;
        self.dp.set_config(self.cfg).unwrap();
    }

    pub fn set_clock(&mut self, ns: u64) {
        self.cfg.clock_override_ns = ns;
        self.dp.set_config(self.cfg).unwrap();
    }

    pub fn set_lease(&mut self, role: Role, expires_ns: u64) {
        self.cfg.role = role as u32;
        self.cfg.active_lease_expires_ns = expires_ns;
        self.dp.set_config(self.cfg).unwrap();
    }

    /// Runs one frame through the HA2 ingest program (as received on the trust port).
    pub fn run_ha2(&self, frame: &[u8]) -> Output {
        run_program(self.dp.ha2_program().unwrap(), frame, self.trust, 1).0
    }

    /// Runs one packet through the program as if received on `ingress_ifindex`.
    pub fn run(&self, pkt: &[u8], ingress_ifindex: u32) -> Output {
        run_packet(&self.dp, pkt, ingress_ifindex, 1).0
    }

    pub fn ingress_for(&self, pkt: &[u8]) -> u32 {
        let t = tuple(pkt).expect("ip packet");
        if t.src == addr_words(&CLIENT) || t.src == addr_words6(&CLIENT6) {
            self.trust
        } else {
            self.untrust
        }
    }

    pub fn handshake(&mut self, c: [u8; 4], cp: u16, s: [u8; 4], sp: u16) {
        for (pkt, ingress) in [
            (tcp(c, cp, s, sp, 0x02, 64), self.trust),
            (tcp(s, sp, c, cp, 0x12, 64), self.untrust),
            (tcp(c, cp, s, sp, 0x10, 64), self.trust),
        ] {
            assert_eq!(
                self.run(&pkt, ingress).verdict,
                Verdict::Redirect,
                "handshake"
            );
        }
    }

    pub fn counters(&self) -> Counters {
        self.dp.counters().unwrap()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters()
            .fields()
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }

    pub fn sessions_len(&self) -> usize {
        self.dp.sessions().len()
    }

    pub fn sessions(&self) -> Vec<(SessionKey, SessionValue)> {
        self.dp.sessions()
    }

    pub fn session_of(&self, pkt: &[u8]) -> Option<SessionValue> {
        self.dp.session(&session_key(pkt))
    }
}

/// The test-run context: `struct xdp_md { data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex }`. The ingress interface must exist in the caller's namespace;
/// the FIB lookup runs there.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    let md: [u32; 6] = [0, len as u32, 0, ingress_ifindex, 0, 0];
    md.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Runs a packet `repeat` times; returns the output of the last run and the kernel's average
/// duration per run.
pub fn run_packet(
    dp: &Dataplane,
    pkt: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> (Output, std::time::Duration) {
    run_program(dp.fast_path().unwrap(), pkt, ingress_ifindex, repeat)
}

/// Runs a packet through any program of the object `repeat` times (see [`run_packet`]).
pub fn run_program(
    prog: &aya::programs::Xdp,
    pkt: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> (Output, std::time::Duration) {
    let mut out = vec![0u8; pkt.len() + 256];
    let ctx = xdp_md(pkt.len(), ingress_ifindex);
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    let verdict = match res.return_value {
        0 => Verdict::Aborted,
        1 => Verdict::Drop,
        2 => Verdict::Pass,
        3 => Verdict::Tx,
        4 => Verdict::Redirect,
        v => panic!("unexpected XDP action {v}"),
    };
    (Output { verdict, data: out }, res.duration)
}

pub struct Tuple {
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
}

pub fn addr_words(a: &[u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(*a), 0, 0, 0]
}

pub fn addr_words6(a: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, c) in a.chunks(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// The 5-tuple of a packet in the dataplane's representation (network-order ports, echo id as
/// both ports).
pub fn tuple(pkt: &[u8]) -> Option<Tuple> {
    let sliced = SlicedPacket::from_ethernet(pkt).ok()?;
    let (family, src, dst, proto) = match sliced.net? {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            (
                FAMILY_IPV4,
                addr_words(&h.source()),
                addr_words(&h.destination()),
                h.protocol().0,
            )
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                FAMILY_IPV6,
                addr_words6(&h.source()),
                addr_words6(&h.destination()),
                ip.payload().ip_number.0,
            )
        }
    };
    let (sport, dport) = match sliced.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        Some(TransportSlice::Icmpv4(i)) => {
            let id = u16::from_be_bytes([i.slice()[4], i.slice()[5]]);
            (id, id)
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let id = u16::from_be_bytes([i.slice()[4], i.slice()[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some(Tuple {
        family,
        proto,
        src,
        dst,
        sport: sport.to_be(),
        dport: dport.to_be(),
    })
}

/// The octets of a session key: the frame of the calibration program `hafw_bench_lookup`.
pub fn key_octets(key: &SessionKey) -> Vec<u8> {
    crate::sync::bytes_of(key).to_vec()
}

pub fn session_key(pkt: &[u8]) -> SessionKey {
    let t = tuple(pkt).expect("ip packet");
    SessionKey::normalized(t.family, t.proto, t.src, t.sport, t.dst, t.dport).0
}

fn macs_for(src: &[u8]) -> ([u8; 6], [u8; 6]) {
    if src == CLIENT || src == CLIENT6 {
        (CLIENT_MAC, TRUST_MAC)
    } else {
        (SERVER_MAC, UNTRUST_MAC)
    }
}

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8, ttl: u8) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d)
        .ipv4(src, dst, ttl)
        .tcp(sport, dport, 1000, 64240);
    build_tcp(b, flags)
}

pub fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: u8, hop: u8) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d)
        .ipv6(src, dst, hop)
        .tcp(sport, dport, 1000, 64240);
    build_tcp(b, flags)
}

fn build_tcp(mut b: etherparse::PacketBuilderStep<etherparse::TcpHeader>, flags: u8) -> Vec<u8> {
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x08 != 0 {
        b = b.psh();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let payload: &[u8] = if flags & 0x08 != 0 { b"hello" } else { b"" };
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ttl: u8) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d)
        .ipv4(src, dst, ttl)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, b"query").unwrap();
    out
}

pub fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool, ttl: u8) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d).ipv4(src, dst, ttl);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    let mut out = Vec::new();
    b.write(&mut out, b"ping").unwrap();
    out
}

/// A port-unreachable error from `src` to `dst` quoting a TCP segment of `quoted`.
pub fn icmp_unreachable_for_tcp(
    src: [u8; 4],
    dst: [u8; 4],
    quoted: ([u8; 4], u16, [u8; 4], u16),
) -> Vec<u8> {
    let inner = tcp(quoted.0, quoted.1, quoted.2, quoted.3, 0x10, 64);
    icmpv4_error(
        src,
        dst,
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &inner,
    )
}

/// An ICMP error of type `ty` from `src` to `dst` quoting the IPv4 packet of the frame `quoted`
/// (its IP header and the first 8 octets after it).
pub fn icmpv4_error(
    src: [u8; 4],
    dst: [u8; 4],
    ty: etherparse::Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d).ipv4(src, dst, 64).icmpv4(ty);
    let mut out = Vec::new();
    b.write(&mut out, &quoted[14..14 + 28]).unwrap();
    out
}

/// An ICMPv6 error of type `ty` from `src` to `dst` quoting the IPv6 packet of the frame `quoted`
/// (its fixed header and the first 8 octets after it).
pub fn icmpv6_error(
    src: [u8; 16],
    dst: [u8; 16],
    ty: etherparse::Icmpv6Type,
    quoted: &[u8],
) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d).ipv6(src, dst, 64).icmpv6(ty);
    let mut out = Vec::new();
    b.write(&mut out, &quoted[14..14 + 48]).unwrap();
    out
}

/// Any IPv4 packet with the given protocol number and a small payload.
pub fn ip_proto(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
    let (s, d) = macs_for(&src);
    let b = PacketBuilder::ethernet2(s, d).ipv4(src, dst, 64);
    let mut out = Vec::new();
    b.write(&mut out, etherparse::IpNumber(proto), &[0u8; 32])
        .unwrap();
    out
}

pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

pub fn ha2_ethernet_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&TRUST_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x7261u16.to_be_bytes());
    f.resize(64, 0xa5);
    f
}

/// Inserts an 802.1Q tag after the MAC addresses.
pub fn vlan(vid: u16, pkt: &[u8]) -> Vec<u8> {
    vlan_tag(0x8100, vid, pkt)
}

/// Inserts a VLAN tag with tag protocol `tpid` (0x8100, 0x88a8, ...) after the MAC addresses:
/// outside any tag the frame already has.
pub fn vlan_tag(tpid: u16, vid: u16, pkt: &[u8]) -> Vec<u8> {
    let mut f = pkt[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&pkt[12..]);
    f
}

pub fn parse_ipv4(frame: &[u8]) -> (Ethernet2Header, Ipv4Header) {
    let (eth, rest) = Ethernet2Header::from_slice(frame).unwrap();
    let (ip, _) = Ipv4Header::from_slice(rest).unwrap();
    (eth, ip)
}

/// The lab's new UDP flow number `i`: one datagram to the server's port 53 (allowed by the lab
/// policy) from its own source, 198.18.1.2 + `i / 50,000`, port 10,000 + `i % 50,000`, addressed
/// to the pair's virtual MAC on the client side. With `src_mac` the client's MAC.
pub fn lab_udp_flow(src_mac: [u8; 6], i: u32) -> Vec<u8> {
    let source = [198, 18, 1, 2 + (i / 50_000) as u8];
    let mut frame = Vec::with_capacity(64);
    PacketBuilder::ethernet2(src_mac, hafw_config::virtual_mac(1, 1))
        .ipv4(source, [198, 18, 2, 2], 64)
        .udp(10_000 + (i % 50_000) as u16, 53)
        .write(&mut frame, b"q")
        .expect("UDP frame");
    frame
}

/// Sends the lab's new UDP flows `first..first + count` (see [`lab_udp_flow`]) from the client
/// namespace `client_ns`, as fast as one packet socket sends, calling `after_each` after every
/// frame with the frame and when its sending began (return false to stop). Returns the sending
/// time.
pub fn send_lab_udp_flows(
    client_ns: &str,
    first: u32,
    count: u32,
    mut after_each: impl FnMut(&[u8], std::time::Instant) -> bool + Send + 'static,
) -> anyhow::Result<std::time::Duration> {
    hafw_lab::in_netns(client_ns, move || -> anyhow::Result<std::time::Duration> {
        let socket = crate::ha::host::FrameSocket::open("eth0")?;
        let started = std::time::Instant::now();
        for i in first..first + count {
            let frame = lab_udp_flow(socket.mac, i);
            let sending = std::time::Instant::now();
            // A full socket buffer: wait for the veth to drain it.
            while socket.send(&frame).is_err() {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            if !after_each(&frame, sending) {
                break;
            }
        }
        Ok(started.elapsed())
    })?
}

/// The session tables of a running instance, opened through their pins.
pub fn pinned_sessions(instance: &str) -> anyhow::Result<crate::session_tables::SessionTables> {
    crate::session_tables::SessionTables::from_pins(&crate::dataplane::pin_dir(instance))
}

/// Writes `n` established TCP sessions (198.18.1.2 to 198.18.2.2, each with ports of its own)
/// straight into a running instance's IPv4 table through its pin: without session events, so
/// only a bulk sync carries them to the peer.
pub fn write_established_sessions(instance: &str, n: u32) -> anyhow::Result<()> {
    let mut tables = pinned_sessions(instance)?;
    let now = crate::aging::monotonic_now_ns();
    let value = SessionValue {
        created_ns: now,
        last_seen_ns: now,
        state: hafw_common::session::SessionState::Established as u8,
        rule_id: 2,
        egress_zone: 1,
        ..Default::default()
    };
    for k in 0..n {
        let key = SessionKey {
            addr_lo: [u32::from_ne_bytes([198, 18, 1, 2]), 0, 0, 0],
            addr_hi: [u32::from_ne_bytes([198, 18, 2, 2]), 0, 0, 0],
            port_lo: 10_000 + (k % 50_000) as u16,
            port_hi: 80 + (k / 50_000) as u16,
            proto: hafw_common::session::PROTO_TCP,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        };
        tables.insert(&key, &value)?;
    }
    Ok(())
}

/// Fast path counter `name` of a running instance, summed over CPUs, through its pin.
/// A running instance's dataplane configuration (role, lease, ...), read through its pin.
pub fn pinned_dataplane_config(
    instance: &str,
) -> anyhow::Result<hafw_common::config::DataplaneConfig> {
    let pin = crate::dataplane::pin_dir(instance).join("config");
    let data = aya::maps::MapData::from_pin(&pin)?;
    let map: aya::maps::Array<_, hafw_common::config::DataplaneConfig> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data)?)?;
    Ok(map.get(&0, 0)?)
}

pub fn pinned_counter(instance: &str, name: &str) -> anyhow::Result<u64> {
    use hafw_common::counters::Counters;
    let pin = crate::dataplane::pin_dir(instance).join("counters");
    let data = aya::maps::MapData::from_pin(&pin)?;
    let map: aya::maps::PerCpuArray<_, Counters> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::from_map_data(data)?)?;
    let mut total = Counters::default();
    for per_cpu in map.get(&0, 0)?.iter() {
        total.accumulate(per_cpu);
    }
    total
        .fields()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| anyhow::anyhow!("no counter {name}"))
}
