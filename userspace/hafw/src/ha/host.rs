//! What taking over and giving up the active role does to the host: the data ports' virtual MACs
//! and floating IPs, gratuitous ARPs and unsolicited neighbour advertisements, link carrier.
//!
//! Every change to the host's interfaces goes through this module. Addresses and MACs are set
//! with one `ip -batch` run per role change (iproute2 is what operators read and trust; a run
//! takes about 3 ms, tens while the kernel is busy with a failure, which is why the HA shell runs
//! it off its thread and after the announcements, and why the passive node keeps standby routes,
//! see [`release`]); announcements are raw frames sent with pnet.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use hafw_common::ha2::NeighbourRecord;
use ipnet::IpNet;
use log::{debug, warn};
use pnet_datalink::MacAddr;
use pnet_packet::{
    MutablePacket as _, Packet as _,
    arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket},
    ethernet::{EtherTypes, MutableEthernetPacket},
    icmpv6::{
        Icmpv6Code, Icmpv6Types,
        ndp::{MutableNeighborAdvertPacket, NdpOptionTypes, NeighborAdvertFlags},
    },
    ip::IpNextHeaderProtocols,
    ipv6::MutableIpv6Packet,
};

/// A data port as the HA shell manages it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPort {
    pub name: String,
    /// Owned while active.
    pub virtual_mac: [u8; 6],
    /// The MAC the port has while passive (its own).
    pub own_mac: [u8; 6],
    /// Floating addresses, owned while active.
    pub addresses: Vec<IpNet>,
}

/// Announcements sent on each port when the node becomes active: the first at once, the rest
/// after these delays, so a switch or host that missed one (port still learning, queue full)
/// catches the next.
pub const ANNOUNCE_DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(500),
];

pub fn format_mac(mac: [u8; 6]) -> String {
    MacAddr::from(mac).to_string()
}

/// Runs `ip -batch -` with `commands` (one per line). With `force`, errors (an address already
/// gone) do not stop the batch.
fn ip_batch(commands: &[String], force: bool) -> Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (iproute2)")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(commands.join("\n").as_bytes())?;
    stdin.write_all(b"\n")?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() && !force {
        bail!(
            "ip -batch failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            commands.join("\n")
        );
    }
    Ok(())
}

/// One entry of the kernel's neighbour table (ARP, IPv6 ND), as iproute2 shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct NeighbourEntry {
    pub dst: IpAddr,
    pub dev: String,
    pub lladdr: Option<String>,
    /// NUD states, upper case (`REACHABLE`, `STALE`, ...).
    #[serde(default)]
    pub state: Vec<String>,
    /// Installed by a control plane (`NTF_EXT_LEARNED`): on a passive node, synced from the peer.
    #[serde(default, deserialize_with = "present")]
    pub extern_learn: bool,
}

/// For a JSON flag iproute2 shows as a key with a null value: true when the key is there.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d)?;
    Ok(true)
}

impl NeighbourEntry {
    /// Parses a neighbour line of `ip -o monitor label neigh`
    /// (`[NEIGH]198.18.2.2 dev eth2 lladdr 02:00:00:00:00:09 router REACHABLE`); `None` for other
    /// objects' lines and for deletions.
    pub fn from_monitor_line(line: &str) -> Option<NeighbourEntry> {
        let mut words = line.strip_prefix("[NEIGH]")?.split_whitespace();
        let dst = words.next()?.parse().ok()?;
        let (mut dev, mut lladdr, mut state, mut extern_learn) = (None, None, Vec::new(), false);
        while let Some(word) = words.next() {
            match word {
                "dev" => dev = words.next().map(str::to_owned),
                "lladdr" => lladdr = words.next().map(str::to_owned),
                "extern_learn" => extern_learn = true,
                _ if word.bytes().all(|b| b.is_ascii_uppercase()) => state.push(word.to_owned()),
                _ => {}
            }
        }
        Some(NeighbourEntry {
            dst,
            dev: dev?,
            lladdr,
            state,
            extern_learn,
        })
    }

    /// Whether the entry holds a usable link-layer address.
    fn is_resolved(&self) -> bool {
        const USABLE: [&str; 5] = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"];
        self.lladdr.is_some() && self.state.iter().any(|s| USABLE.contains(&s.as_str()))
    }

    /// The entry as an HA2 record, if it is resolved and on one of the data ports `ports`
    /// (config position, 1-based, and name).
    pub fn record(&self, ports: &[(u16, String)]) -> Option<NeighbourRecord> {
        if !self.is_resolved() {
            return None;
        }
        let port = ports.iter().find(|(_, name)| *name == self.dev)?.0;
        let mac = hafw_config::parse_mac(self.lladdr.as_deref()?)?;
        let (family, addr) = match self.dst {
            IpAddr::V4(a) => {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&a.octets());
                (libc::AF_INET as u8, addr)
            }
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets()),
        };
        Some(NeighbourRecord {
            addr,
            mac,
            port,
            family,
            _pad: [0; 7],
        })
    }
}

/// The neighbour entries the kernel resolved on data ports `ports` (config position, 1-based,
/// and name), as HA2 records: what the active node forwards to.
pub fn resolved_neighbours(ports: &[(u16, String)]) -> Result<Vec<NeighbourRecord>> {
    Ok(neighbour_table()?
        .iter()
        .filter_map(|e| e.record(ports))
        .collect())
}

/// The entries on data ports `ports` installed by a control plane (`extern_learn`): on a passive
/// node, those synced from the peer, whoever was running then.
pub fn synced_neighbours(ports: &[(u16, String)]) -> Result<Vec<NeighbourRecord>> {
    Ok(neighbour_table()?
        .iter()
        .filter(|e| e.extern_learn)
        .filter_map(|e| e.record(ports))
        .collect())
}

/// The kernel's neighbour table.
fn neighbour_table() -> Result<Vec<NeighbourEntry>> {
    let out = Command::new("ip")
        .args(["-j", "neigh", "show"])
        .output()
        .context("running ip neigh (iproute2)")?;
    serde_json::from_slice(&out.stdout).context("parsing `ip -j neigh show`")
}

/// `ip` commands that put back the resolved neighbour entries of `ports`, to follow a change of
/// their MACs: the kernel flushes an interface's neighbour entries when its MAC changes
/// (NETDEV_CHANGEADDR), the ones synced from the peer and permanent ones included, and a new
/// active node would then hold its first packets to every host behind address resolution.
/// Each port's commands go right after its MAC change: a packet forwarded between the two would
/// find no entry and start resolution. They cannot fail where the change did not: each puts
/// back an entry the kernel held on the same interface a moment before.
fn neighbours_to_restore(ports: &[DataPort]) -> Vec<(String, String)> {
    let table = match neighbour_table() {
        Ok(table) => table,
        Err(e) => {
            warn!("reading the neighbour entries to keep across the MAC change: {e:#}");
            return Vec::new();
        }
    };
    table
        .iter()
        .filter(|e| e.is_resolved() && ports.iter().any(|p| p.name == e.dev))
        .filter_map(|e| {
            let nud = if e.state.iter().any(|s| s == "PERMANENT") {
                "permanent"
            } else {
                "stale"
            };
            let command = neigh_replace(e.dst, e.lladdr.as_deref()?, &e.dev, nud);
            Some((e.dev.clone(), command))
        })
        .collect()
}

/// `ip` commands setting port `name`'s MAC, then putting back its entries of `neighbours`.
fn set_mac(name: &str, mac: [u8; 6], neighbours: &[(String, String)]) -> Vec<String> {
    std::iter::once(format!("link set dev {name} address {}", format_mac(mac)))
        .chain(
            neighbours
                .iter()
                .filter(|(dev, _)| dev == name)
                .map(|(_, command)| command.clone()),
        )
        .collect()
}

/// The `ip` command that sets a neighbour entry.
fn neigh_replace(addr: IpAddr, lladdr: &str, dev: &str, nud: &str) -> String {
    format!("neigh replace {addr} lladdr {lladdr} dev {dev} nud {nud}")
}

/// Installs the peer's neighbour entries on data ports `ports` (position, name) as `stale`:
/// used at once for forwarding, and confirmed by the kernel on first use. `extern_learn`: learned
/// by a control plane, so the kernel's garbage collection leaves them alone (the passive node
/// never uses them; see `sync::NeighbourLeases` for who removes them). Returns how many.
pub fn install_neighbours(records: &[NeighbourRecord], ports: &[(u16, String)]) -> Result<usize> {
    let commands: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let (addr, dev) = record_place(r, ports)?;
            Some(neigh_replace(addr, &format_mac(r.mac), dev, "stale") + " extern_learn")
        })
        .collect();
    ip_batch(&commands, true)?;
    Ok(commands.len())
}

/// Removes the peer's neighbour entries `records` from data ports `ports` (position, name).
pub fn remove_neighbours(records: &[NeighbourRecord], ports: &[(u16, String)]) -> Result<()> {
    let commands: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let (addr, dev) = record_place(r, ports)?;
            Some(format!("neigh del {addr} dev {dev}"))
        })
        .collect();
    ip_batch(&commands, true)
}

/// A neighbour record's address and the name of its port.
fn record_place<'a>(r: &NeighbourRecord, ports: &'a [(u16, String)]) -> Option<(IpAddr, &'a str)> {
    let dev = &ports.iter().find(|(pos, _)| *pos == r.port)?.1;
    let addr = match i32::from(r.family) {
        libc::AF_INET => IpAddr::from([r.addr[0], r.addr[1], r.addr[2], r.addr[3]]),
        libc::AF_INET6 => IpAddr::from(r.addr),
        _ => return None,
    };
    Some((addr, dev))
}

/// Takes the ports' virtual MACs and floating addresses (idempotent: `replace`), keeping their
/// neighbour entries (see [`neighbours_to_restore`]).
pub fn claim(ports: &[DataPort], bring_up: bool) -> Result<()> {
    let neighbours = neighbours_to_restore(ports);
    let mut cmds = Vec::new();
    for p in ports {
        cmds.extend(set_mac(&p.name, p.virtual_mac, &neighbours));
        if bring_up {
            cmds.push(format!("link set dev {} up", p.name));
        }
        for a in &p.addresses {
            // No DAD: the peer released the address before we got here (or is dead), and DAD
            // would hold the address back for a second.
            let extra = if a.addr().is_ipv6() { " nodad" } else { "" };
            cmds.push(format!("addr replace {a} dev {}{extra}", p.name));
        }
    }
    ip_batch(&cmds, false)
}

/// Metric of the standby routes (see [`release`]): above the kernel's own prefix routes (0 for
/// IPv4, 256 for IPv6), so an active node's connected routes win and the standby ones only serve
/// while the addresses are away.
pub const STANDBY_ROUTE_METRIC: u32 = 4242;

/// Gives the ports' virtual MACs and floating addresses back; never fails half-way (every
/// command is tried). With `shut_down`, the data links are set down too (passive link state
/// `shutdown`). Neighbour entries are kept (see [`neighbours_to_restore`]): a new active peer
/// may have sent its own already, for this node's next takeover.
///
/// Otherwise each floating address's prefix keeps a **standby route** on its port
/// ([`STANDBY_ROUTE_METRIC`]): without it a passive node has no route to its data networks, so
/// after a takeover the fast path's FIB lookups fail until the addresses are back, and every
/// packet waits for that `ip` run (3 ms typically, 15-30 ms when the kernel is busy with the
/// failure). With it the new active node forwards from its first packet. The passive node's own
/// traffic does not leave by these routes: the egress program drops it on data ports.
pub fn release(ports: &[DataPort], shut_down: bool) -> Result<()> {
    let neighbours = neighbours_to_restore(ports);
    let mut cmds = Vec::new();
    for p in ports {
        for a in &p.addresses {
            cmds.push(format!("addr del {a} dev {}", p.name));
            if !shut_down {
                cmds.push(format!(
                    "route replace {} dev {} metric {STANDBY_ROUTE_METRIC}",
                    a.trunc(),
                    p.name
                ));
            }
        }
        cmds.extend(set_mac(&p.name, p.own_mac, &neighbours));
        if shut_down {
            cmds.push(format!("link set dev {} down", p.name));
        }
    }
    ip_batch(&cmds, true)
}

/// The MAC an interface has now.
pub fn current_mac(name: &str) -> Result<[u8; 6]> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| anyhow!("no interface named {name}"))?;
    iface
        .mac
        .map(|m| m.octets())
        .ok_or_else(|| anyhow!("{name} has no MAC address"))
}

/// Whether the interface is administratively up and has carrier (`IFF_UP` and `IFF_RUNNING`),
/// read with one `SIOCGIFFLAGS` ioctl in this thread's network namespace: cheap enough to poll
/// every few milliseconds from the HA thread (enumerating interfaces is not), and independent of
/// which namespace sysfs shows.
pub fn has_carrier(name: &str) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    interface_flags(&sock, name)
        .is_some_and(|f| f & libc::IFF_UP != 0 && f & libc::IFF_RUNNING != 0)
}

fn interface_flags(sock: &std::net::UdpSocket, name: &str) -> Option<i32> {
    let req = interface_request(sock, name, libc::SIOCGIFFLAGS)?;
    // SAFETY: the kernel filled the flags member of the union.
    Some(i32::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// The MTU of interface `name` (in this network namespace), if it exists.
pub fn interface_mtu(name: &str) -> Option<u32> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    let req = interface_request(&sock, name, libc::SIOCGIFMTU)?;
    // SAFETY: the kernel filled the MTU member of the union.
    u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).ok()
}

/// An `ifreq` for `name` after the read-only interface ioctl `request`.
fn interface_request(
    sock: &std::net::UdpSocket,
    name: &str,
    request: libc::c_ulong,
) -> Option<libc::ifreq> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the request reads the name and writes one member of a valid, zeroed ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) };
    (rc == 0).then_some(req)
}

/// A packet socket bound to one interface that sends whole Ethernet frames and receives nothing
/// (protocol 0 registers no receive hook, so it costs the data path nothing). Opened once, so
/// sending an announcement or an HA2 message is one `send` call.
#[derive(Clone, Debug)]
pub struct FrameSocket {
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
    pub interface: String,
    pub mac: [u8; 6],
}

impl FrameSocket {
    /// A socket that sends frames on `interface` and receives none.
    pub fn open(interface: &str) -> Result<FrameSocket> {
        Self::open_protocol(interface, 0)
    }

    /// A socket on `interface` that also receives the frames of `ethertype` (0: none).
    pub fn open_protocol(interface: &str, ethertype: u16) -> Result<FrameSocket> {
        use std::os::fd::FromRawFd as _;
        let ifindex = crate::dataplane::ifindex(interface)?;
        let protocol = i32::from(ethertype.to_be());
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("packet socket for {interface}"));
        }
        // SAFETY: fd is a fresh socket owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = ifindex as i32;
        use std::os::fd::AsRawFd as _;
        // SAFETY: bind with a valid sockaddr_ll of the right length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding a packet socket to {interface}"));
        }
        if ethertype != 0 {
            // A packet tap sees this host's own transmissions too; this socket wants only what
            // arrives (and the HA2 sender's own frames would cost a copy each).
            let on: libc::c_int = 1;
            // SAFETY: setsockopt(2) with a valid int option on an owned socket.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_IGNORE_OUTGOING,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
        }
        Ok(FrameSocket {
            fd: std::sync::Arc::new(fd),
            interface: interface.to_owned(),
            mac: current_mac(interface)?,
        })
    }

    /// The socket itself, for a receiver (`None` while a clone of it is alive).
    pub fn into_socket(self) -> Option<socket2::Socket> {
        std::sync::Arc::into_inner(self.fd).map(socket2::Socket::from)
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: send(2) of a valid buffer on an owned socket.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sends one round of announcements for `port` on its socket: a gratuitous ARP request (RFC 5227
/// section 3, "ARP Announcement") per IPv4 address and an unsolicited neighbour advertisement
/// with the override flag (RFC 4861 section 7.2.6) per IPv6 address, all from the virtual MAC.
pub fn announce(port: &DataPort, socket: &FrameSocket) -> usize {
    let mut sent = 0;
    for a in &port.addresses {
        let frame = match a.addr() {
            IpAddr::V4(ip) => gratuitous_arp(port.virtual_mac, ip),
            IpAddr::V6(ip) => unsolicited_na(port.virtual_mac, ip),
        };
        match socket.send(&frame) {
            Ok(()) => sent += 1,
            Err(e) => warn!("{}: announcing {a}: {e}", port.name),
        }
    }
    debug!("{}: {sent} announcements sent", port.name);
    sent
}

/// A gratuitous ARP request: sender and target protocol address both `ip`, to broadcast.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + 28];
    let mac = MacAddr::from(mac);
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer sized for Ethernet");
    eth.set_destination(MacAddr::broadcast());
    eth.set_source(mac);
    eth.set_ethertype(EtherTypes::Arp);
    let mut arp = MutableArpPacket::new(eth.payload_mut()).expect("buffer sized for ARP");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(mac);
    arp.set_sender_proto_addr(ip);
    arp.set_target_hw_addr(MacAddr::zero());
    arp.set_target_proto_addr(ip);
    buf
}

/// An unsolicited neighbour advertisement for `ip` to all nodes (ff02::1), router and override
/// flags set, with the target link-layer address option carrying `mac`.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    const NA_LEN: usize = 24 + 8; // advertisement + one target link-layer address option
    let mut buf = vec![0u8; 14 + 40 + NA_LEN];
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mac = MacAddr::from(mac);
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer sized for Ethernet");
    eth.set_destination(MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
    eth.set_source(mac);
    eth.set_ethertype(EtherTypes::Ipv6);
    let mut ip6 = MutableIpv6Packet::new(eth.payload_mut()).expect("buffer sized for IPv6");
    ip6.set_version(6);
    ip6.set_payload_length(NA_LEN as u16);
    ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
    // RFC 4861 section 7.1.2: a hop limit other than 255 is discarded by receivers.
    ip6.set_hop_limit(255);
    ip6.set_source(ip);
    ip6.set_destination(all_nodes);
    {
        let mut na =
            MutableNeighborAdvertPacket::new(ip6.payload_mut()).expect("buffer sized for NA");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        na.set_flags(NeighborAdvertFlags::Router | NeighborAdvertFlags::Override);
        na.set_target_addr(ip);
    }
    // Target link-layer address option (RFC 4861 section 4.6.1), right after the 24-octet
    // advertisement: type 2, length 1 (8 octets), the MAC.
    let option = &mut ip6.payload_mut()[24..32];
    option[0] = NdpOptionTypes::TargetLLAddr.0;
    option[1] = 1;
    option[2..8].copy_from_slice(&mac.octets());
    let checksum = pnet_packet::icmpv6::checksum(
        &pnet_packet::icmpv6::Icmpv6Packet::new(ip6.payload()).expect("NA is an ICMPv6 packet"),
        &ip,
        &all_nodes,
    );
    let mut icmp = pnet_packet::icmpv6::MutableIcmpv6Packet::new(ip6.payload_mut())
        .expect("NA is an ICMPv6 packet");
    icmp.set_checksum(checksum);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as `ip -o monitor label route neigh link` printed them (iproute2 6.1).
    #[test]
    fn monitor_neighbour_lines_become_records_when_resolved_on_a_data_port() {
        let ports = [(1, "eth1".to_owned()), (2, "eth2".to_owned())];
        let line = "[NEIGH]198.18.2.11 dev eth2 lladdr 02:00:00:00:00:09 REACHABLE ";
        let entry = NeighbourEntry::from_monitor_line(line).unwrap();
        assert_eq!(
            entry,
            NeighbourEntry {
                dst: "198.18.2.11".parse().unwrap(),
                dev: "eth2".into(),
                lladdr: Some("02:00:00:00:00:09".into()),
                state: vec!["REACHABLE".into()],
                extern_learn: false,
            }
        );
        let synced = "[NEIGH]198.18.2.11 dev eth2 lladdr 02:00:00:00:00:09 extern_learn STALE ";
        assert!(
            NeighbourEntry::from_monitor_line(synced)
                .unwrap()
                .extern_learn
        );
        // `ip -j neigh show` shows the flag as a key with no value.
        let json = r#"[{"dst":"198.18.2.11","dev":"eth2","lladdr":"02:00:00:00:00:09","extern_learn":null,"state":["STALE"]},
                       {"dst":"198.18.2.12","dev":"eth2","lladdr":"02:00:00:00:00:0a","state":["STALE"]}]"#;
        let table: Vec<NeighbourEntry> = serde_json::from_str(json).unwrap();
        assert_eq!(
            table.iter().map(|e| e.extern_learn).collect::<Vec<_>>(),
            [true, false]
        );
        let record = entry.record(&ports).unwrap();
        assert_eq!(
            (record.port, record.family, record.mac),
            (2, libc::AF_INET as u8, [2, 0, 0, 0, 0, 9])
        );
        assert_eq!(record.addr[..4], [198, 18, 2, 11]);
        let v6 = "[NEIGH]2001:db8::2 dev eth1 lladdr 02:00:00:00:00:0a router STALE";
        let record = NeighbourEntry::from_monitor_line(v6)
            .unwrap()
            .record(&ports)
            .unwrap();
        assert_eq!((record.port, record.family), (1, libc::AF_INET6 as u8));
        // Not resolved, not a data port, deleted, other objects: nothing to send.
        for line in [
            "[NEIGH]198.18.2.11 dev eth2  INCOMPLETE ",
            "[NEIGH]198.18.2.11 dev eth2 FAILED ",
            "[NEIGH]169.254.1.2 dev ha1 lladdr 02:00:00:00:00:01 REACHABLE ",
            "[NEIGH]Deleted 198.18.2.11 dev eth2 lladdr 02:00:00:00:00:09 STALE ",
            "[ROUTE]198.18.78.0/24 via 198.18.77.9 dev v0 ",
        ] {
            let record = NeighbourEntry::from_monitor_line(line).and_then(|e| e.record(&ports));
            assert_eq!(record, None, "{line}");
        }
    }

    #[test]
    fn gratuitous_arp_announces_the_address_from_the_virtual_mac() {
        let mac = [0x02, 0x68, 0x61, 1, 0, 1];
        let f = gratuitous_arp(mac, Ipv4Addr::new(198, 18, 1, 1));
        let eth = etherparse::Ethernet2HeaderSlice::from_slice(&f).unwrap();
        assert_eq!(eth.destination(), [0xff; 6]);
        assert_eq!(eth.source(), mac);
        assert_eq!(eth.ether_type(), etherparse::EtherType::ARP);
        // op request, sender = target = the VIP, sender MAC = VMAC.
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[198, 18, 1, 1]);
        assert_eq!(&f[38..42], &[198, 18, 1, 1]);
    }

    #[test]
    fn unsolicited_na_is_a_valid_icmpv6_packet() {
        let mac = [0x02, 0x68, 0x61, 1, 0, 1];
        let ip: Ipv6Addr = "2001:2:0:1::1".parse().unwrap();
        let f = unsolicited_na(mac, ip);
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("not ICMPv6");
        };
        assert_eq!(icmp.type_u8(), 136);
        let Some(etherparse::NetSlice::Ipv6(v6)) = p.net else {
            panic!("not IPv6");
        };
        assert_eq!(v6.header().hop_limit(), 255);
        let expected = icmp
            .icmp_type()
            .calc_checksum(
                v6.header().source(),
                v6.header().destination(),
                icmp.payload(),
            )
            .unwrap();
        assert_eq!(icmp.checksum(), expected);
        // Override and router flags; target address; TLLA option with the VMAC.
        assert_eq!(f[54 + 4] & 0xa0, 0xa0);
        assert_eq!(&f[54 + 8..54 + 24], &ip.octets());
        assert_eq!(&f[54 + 24..54 + 32], &[2, 1, 0x02, 0x68, 0x61, 1, 0, 1]);
    }
}
