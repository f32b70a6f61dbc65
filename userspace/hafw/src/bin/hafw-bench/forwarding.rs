//! Forwarding throughput through the lab's firewall namespace, hafw's XDP path against the
//! kernel's own forwarding with an equivalent nftables stateful ruleset, in one run.
//!
//! trafgen (netsniff-ng) in the client namespace sends a bounded number of 64-byte UDP frames
//! (198.18.1.2:40000 -> 198.18.2.2:53, allowed by both rulesets) as fast as it can; the server
//! end's receive counter over the sending time gives the forwarded rate. trafgen ignores SIGTERM,
//! so the packet count bounds it, and `timeout -s KILL` bounds the count.
//!
//! Limitation: on veth the sender, the firewall and the receiver all run in the sending CPU's
//! softirq, so when both paths deliver every packet the run is sender-bound and the ratio
//! understates the difference. Moving the firewall to the other core (threaded NAPI) makes veth
//! push back, and trafgen aborts on EAGAIN; an AF_XDP or pktgen-free generator is the next step.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use hafw_lab::{SingleFirewall, netns::Netns, unique_prefix, wait_until};
use serde::Serialize;

const PACKETS: u64 = 3_000_000;
const HAFW: &str = "target/release/hafw";

#[derive(Serialize)]
pub struct FwdRow {
    pub path: String,
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
    pub pps: f64,
}

const NFT_RULESET: &str = r#"table inet hafwbench {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "eth1" oifname "eth2" ip saddr 198.18.1.0/24 ip daddr 198.18.2.0/24 udp dport { 53 } ct state new accept
    iifname "eth1" oifname "eth2" ip saddr 198.18.1.0/24 ip daddr 198.18.2.0/24 tcp dport { 80, 443, 8000-8099 } ct state new accept
    iifname "eth1" oifname "eth2" icmp type echo-request ct state new accept
  }
}
"#;

fn mac_of(ns: &Netns, ifname: &str) -> Result<String> {
    let out = ns.exec_ok(&["ip", "-br", "link", "show", ifname])?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .context("no MAC in ip -br link")
}

fn rx_packets(ns: &Netns, ifname: &str) -> Result<u64> {
    let out = ns.exec_ok(&["ip", "-j", "-s", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("rx packets")
}

fn trafgen_config(dst_mac: &str, src_mac: &str) -> String {
    let hex = |m: &str| {
        m.split(':')
            .map(|b| format!("0x{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{\n  {}, {},\n  0x08, 0x00,\n  0x45, 0x00, const16(46), const16(0), const16(0x4000), 64, 17, csumip(14, 33),\n  198, 18, 1, 2, 198, 18, 2, 2,\n  const16(40000), const16(53), const16(26), const16(0),\n  fill(0x41, 18)\n}}\n",
        hex(dst_mac),
        hex(src_mac)
    )
}

/// trafgen sometimes aborts at start with EAGAIN from the TX ring when veth pushes back; a
/// bounded number of fresh attempts gets a clean run.
const ATTEMPTS: u32 = 3;

fn burst(topo: &SingleFirewall, dir: &Path) -> Result<(u64, u64, f64)> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match burst_once(topo, dir) {
            Ok(r) => return Ok(r),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// Sends the bounded burst and returns (sent, received at the server, seconds).
fn burst_once(topo: &SingleFirewall, dir: &Path) -> Result<(u64, u64, f64)> {
    let conf = dir.join("udp.cfg");
    std::fs::write(
        &conf,
        trafgen_config(&mac_of(&topo.fw, "eth1")?, &mac_of(&topo.client, "eth0")?),
    )?;
    let before = rx_packets(&topo.server, "eth0")?;
    let start = Instant::now();
    let n = PACKETS.to_string();
    let out = topo.client.exec(&[
        "timeout",
        "-s",
        "KILL",
        "120",
        "trafgen",
        "--dev",
        "eth0",
        "--conf",
        conf.to_str().unwrap_or_default(),
        "--cpus",
        "1",
        "-n",
        &n,
    ])?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "trafgen: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Let the last frames drain.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let received = rx_packets(&topo.server, "eth0")? - before;
    Ok((PACKETS, received, seconds))
}

/// Removes the paths it holds when dropped, on every exit path (a failed burst returns early).
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

fn lab(dir: &Path) -> Result<SingleFirewall> {
    let topo = SingleFirewall::up(&unique_prefix())?;
    for (ns, ifname) in topo.xdp_peer_ends() {
        let pin = format!("/sys/fs/bpf/hafw-lab/{}/{}-{ifname}", topo.prefix, ns.name);
        ns.exec_ok(&[HAFW, "xdp-pass", "--iface", ifname, "--pin", &pin])?;
    }
    // Resolve the server's MAC on the firewall before the burst.
    topo.fw
        .exec_ok(&["ping", "-c", "1", "-W", "1", SingleFirewall::SERVER_IP])?;
    std::fs::create_dir_all(dir)?;
    Ok(topo)
}

pub fn compare() -> Result<(Vec<FwdRow>, f64)> {
    let dir = std::env::temp_dir().join(format!("hafw-bench-{}", std::process::id()));
    let mut rows = Vec::new();

    // Kernel forwarding with nftables.
    {
        let topo = lab(&dir)?;
        let _cleanup = Cleanup(vec![format!("/sys/fs/bpf/hafw-lab/{}", topo.prefix).into()]);
        let rules = dir.join("nft.conf");
        std::fs::write(&rules, NFT_RULESET)?;
        topo.fw
            .exec_ok(&["nft", "-f", rules.to_str().unwrap_or_default()])?;
        let (sent, received, seconds) = burst(&topo, &dir)?;
        rows.push(FwdRow {
            path: "kernel forwarding + nftables (ct state)".into(),
            sent,
            received,
            seconds,
            pps: received as f64 / seconds,
        });
    }

    // hafw XDP on the same topology and an equivalent policy (the lab's example config).
    {
        let topo = lab(&dir)?;
        let instance = topo.prefix.clone();
        // Declared before the controller so it drops after it: the controller dies first.
        let _cleanup = Cleanup(vec![
            format!("/sys/fs/bpf/hafw/{instance}").into(),
            hafw::control::socket_path(&instance),
            format!("/sys/fs/bpf/hafw-lab/{}", topo.prefix).into(),
        ]);
        let config = dir.join("hafw.toml");
        std::fs::write(
            &config,
            hafw_config::EXAMPLE.replace(
                "instance = \"hafwlab\"",
                &format!("instance = \"{instance}\""),
            ),
        )?;
        let _hafw = topo.fw.spawn(
            &[HAFW, "run", "--config", config.to_str().unwrap_or_default()],
            &dir.join("hafw.log"),
        )?;
        let up = wait_until(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(100),
            || hafw::control::request(&instance, &hafw::control::Request::ShowCounters).is_ok(),
        );
        if !up {
            bail!("hafw did not start for the benchmark");
        }
        let (sent, received, seconds) = burst(&topo, &dir)?;
        let c = hafw::control::request(&instance, &hafw::control::Request::ShowCounters)?;
        rows.push(FwdRow {
            path: format!("hafw XDP (forwarded by XDP: {})", c["forwarded"]),
            sent,
            received,
            seconds,
            pps: received as f64 / seconds,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = rows[1].pps / rows[0].pps.max(1.0);
    Ok((rows, ratio))
}
