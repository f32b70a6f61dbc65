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
