//! Lab topologies.

use anyhow::Result;

use crate::netns::Netns;

/// `client -- fw -- server`:
///
/// ```text
/// client eth0 198.18.1.2/24 2001:2:0:1::2/64 -- eth1 fw eth2 -- eth0 server 198.18.2.2/24 2001:2:0:2::2/64
///                                  198.18.1.1        198.18.2.1
/// ```
///
/// The firewall forwards (ip_forward on); client and server route via it.
pub struct SingleFirewall {
    pub prefix: String,
    pub client: Netns,
    pub fw: Netns,
    pub server: Netns,
}

impl SingleFirewall {
    pub const CLIENT_IP: &str = "198.18.1.2";
    pub const SERVER_IP: &str = "198.18.2.2";
    pub const FW_TRUST_IP: &str = "198.18.1.1";
    pub const FW_UNTRUST_IP: &str = "198.18.2.1";

    pub fn up(prefix: &str) -> Result<SingleFirewall> {
        let client = Netns::create(&format!("{prefix}-client"))?;
        let fw = Netns::create(&format!("{prefix}-fw"))?;
        let server = Netns::create(&format!("{prefix}-server"))?;
        for (peer, fw_if, fw_ip, fw_ip6, peer_ip, peer_ip6, gw, gw6) in [
            (
                &client,
                "eth1",
                "198.18.1.1/24",
                "2001:2:0:1::1/64",
                "198.18.1.2/24",
                "2001:2:0:1::2/64",
                "198.18.1.1",
                "2001:2:0:1::1",
            ),
            (
                &server,
                "eth2",
                "198.18.2.1/24",
                "2001:2:0:2::1/64",
                "198.18.2.2/24",
                "2001:2:0:2::2/64",
                "198.18.2.1",
                "2001:2:0:2::1",
            ),
        ] {
            fw.exec_ok(&[
                "ip", "link", "add", fw_if, "type", "veth", "peer", "name", "eth0", "netns",
                &peer.name,
            ])?;
            fw.exec_ok(&["ip", "addr", "add", fw_ip, "dev", fw_if])?;
            fw.exec_ok(&["ip", "addr", "add", fw_ip6, "dev", fw_if, "nodad"])?;
            fw.exec_ok(&["ip", "link", "set", fw_if, "up"])?;
            peer.exec_ok(&["ip", "addr", "add", peer_ip, "dev", "eth0"])?;
            peer.exec_ok(&["ip", "addr", "add", peer_ip6, "dev", "eth0", "nodad"])?;
            peer.exec_ok(&["ip", "link", "set", "eth0", "up"])?;
            // Frames a veth sends leave checksums to "offload" (CHECKSUM_PARTIAL). Redirected by
            // XDP they are never completed, so receivers drop TCP and UDP; a NIC's wire never
            // carries such frames. Software checksums on both ends make the lab behave like one.
            peer.exec_ok(&["ethtool", "-K", "eth0", "tx", "off"])?;
            fw.exec_ok(&["ethtool", "-K", fw_if, "tx", "off"])?;
            peer.exec_ok(&["ip", "route", "add", "default", "via", gw])?;
            peer.exec_ok(&["ip", "-6", "route", "add", "default", "via", gw6])?;
        }
        fw.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        fw.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(SingleFirewall {
            prefix: prefix.to_owned(),
            client,
            fw,
            server,
        })
    }

    /// The veth ends facing the firewall's data ports: they need an XDP program (pass-through is
    /// enough) for XDP_REDIRECT into them to deliver.
    pub fn xdp_peer_ends(&self) -> [(&Netns, &str); 2] {
        [(&self.client, "eth0"), (&self.server, "eth0")]
    }

    pub fn persist(&mut self) {
        self.client.persist();
        self.fw.persist();
        self.server.persist();
    }
}

/// The HA lab: a client and a server, two switches (bridges) and a firewall pair.
///
/// ```text
///                     client eth0 198.18.1.2/24 2001:2:0:1::2/64
///                          |     (gw 198.18.1.1 and 2001:2:0:1::1, the pair's floating IPs)
///                          |
///               [ swc: client-side switch, bridge in <prefix>-sw ]
///                   |                                  |
///             eth1 fw1 ha1 169.254.1.1/30 ---- 169.254.1.2/30 ha1 fw2 eth1
///                      ha2 169.254.2.1/30 ---- 169.254.2.2/30 ha2
///                     ha1b (HA1 backup) --------------------- ha1b
///                     ha2b (HA2 backup) --------------------- ha2b
///                     mgmt 169.254.3.1/24 -[swm]- 169.254.3.2/24 mgmt
///             eth2 fw1                                         fw2 eth2
///                   |                                  |
///               [ sws: server-side switch ]
///                          |
///                     server eth0 198.18.2.2/24 2001:2:0:2::2/64 (gw .2.1, 2001:2:0:2::1)
/// ```
///
/// The firewalls' data ports have no addresses of their own: the active node owns the floating
/// IPs and the virtual MAC. HA1, HA2 and management are direct veth links (management through a
/// bridge, as a management network would be); hafw adds the HA link addresses from its config.
pub struct HaPair {
    pub prefix: String,
    pub client: Netns,
    pub server: Netns,
    pub switch: Netns,
    pub fw: [Netns; 2],
}

impl HaPair {
    pub const CLIENT_IP: &str = "198.18.1.2";
    pub const SERVER_IP: &str = "198.18.2.2";
    pub const CLIENT_IP6: &str = "2001:2:0:1::2";
    pub const SERVER_IP6: &str = "2001:2:0:2::2";
    pub const TRUST_VIP: &str = "198.18.1.1";
    pub const UNTRUST_VIP: &str = "198.18.2.1";
    /// Client-side bridge, in the switch namespace.
    pub const CLIENT_SWITCH: &str = "swc";
    pub const SERVER_SWITCH: &str = "sws";

    pub fn up(prefix: &str) -> Result<HaPair> {
        let client = Netns::create(&format!("{prefix}-client"))?;
        let server = Netns::create(&format!("{prefix}-server"))?;
        let switch = Netns::create(&format!("{prefix}-sw"))?;
        let fw = [
            Netns::create(&format!("{prefix}-fw1"))?,
            Netns::create(&format!("{prefix}-fw2"))?,
        ];
        let sw = &switch.name;
        for bridge in [Self::CLIENT_SWITCH, Self::SERVER_SWITCH, "swm"] {
            switch.exec_ok(&["ip", "link", "add", bridge, "type", "bridge"])?;
            switch.exec_ok(&["ip", "link", "set", bridge, "up"])?;
        }
        // Hosts: one port each on their switch; the gateways are the pair's floating addresses.
        for (host, port, bridge, [ip, gw], [ip6, gw6]) in [
            (
                &client,
                "c0",
                Self::CLIENT_SWITCH,
                ["198.18.1.2/24", Self::TRUST_VIP],
                ["2001:2:0:1::2/64", "2001:2:0:1::1"],
            ),
            (
                &server,
                "s0",
                Self::SERVER_SWITCH,
                ["198.18.2.2/24", Self::UNTRUST_VIP],
                ["2001:2:0:2::2/64", "2001:2:0:2::1"],
            ),
        ] {
            host.exec_ok(&[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", sw,
            ])?;
            host.exec_ok(&["ip", "addr", "add", ip, "dev", "eth0"])?;
            host.exec_ok(&["ip", "addr", "add", ip6, "dev", "eth0", "nodad"])?;
            host.exec_ok(&["ip", "link", "set", "eth0", "up"])?;
            // See SingleFirewall: software checksums, as on a real wire.
            host.exec_ok(&["ethtool", "-K", "eth0", "tx", "off"])?;
            host.exec_ok(&["ip", "route", "add", "default", "via", gw])?;
            host.exec_ok(&["ip", "-6", "route", "add", "default", "via", gw6])?;
            switch.exec_ok(&["ip", "link", "set", port, "master", bridge])?;
            switch.exec_ok(&["ip", "link", "set", port, "up"])?;
        }
        for (i, f) in fw.iter().enumerate() {
            let n = i + 1;
            for (ifname, port, bridge) in [
                ("eth1", format!("f{n}c"), Self::CLIENT_SWITCH),
                ("eth2", format!("f{n}s"), Self::SERVER_SWITCH),
                ("mgmt", format!("f{n}m"), "swm"),
            ] {
                f.exec_ok(&[
                    "ip", "link", "add", ifname, "type", "veth", "peer", "name", &port, "netns", sw,
                ])?;
                f.exec_ok(&["ip", "link", "set", ifname, "up"])?;
                f.exec_ok(&["ethtool", "-K", ifname, "tx", "off"])?;
                switch.exec_ok(&["ip", "link", "set", &port, "master", bridge])?;
                switch.exec_ok(&["ip", "link", "set", &port, "up"])?;
                switch.exec_ok(&["ethtool", "-K", &port, "tx", "off"])?;
            }
            f.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            f.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        for link in ["ha1", "ha2", "ha1b", "ha2b"] {
            fw[0].exec_ok(&[
                "ip",
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                link,
                "netns",
                &fw[1].name,
            ])?;
            fw[0].exec_ok(&["ip", "link", "set", link, "up"])?;
            fw[1].exec_ok(&["ip", "link", "set", link, "up"])?;
        }
        Ok(HaPair {
            prefix: prefix.to_owned(),
            client,
            server,
            switch,
            fw,
        })
    }

    /// The veth ends the firewalls' data ports redirect into (switch ports): they need an XDP
    /// program (pass-through is enough) for XDP_REDIRECT into their peers to deliver.
    pub fn xdp_peer_ends(&self) -> Vec<(&Netns, String)> {
        ["f1c", "f1s", "f2c", "f2s"]
            .into_iter()
            .map(|p| (&self.switch, p.to_owned()))
            .collect()
    }

    /// Every link of firewall `i` (0 or 1), for "down all its links".
    pub const FW_LINKS: [&str; 7] = ["eth1", "eth2", "ha1", "ha2", "ha1b", "ha2b", "mgmt"];

    pub fn persist(&mut self) {
        self.client.persist();
        self.server.persist();
        self.switch.persist();
        for f in &mut self.fw {
            f.persist();
        }
    }
}
