//! Forwarding throughput through the lab's firewall namespace, hafw's XDP path against the
//! kernel's own forwarding with an equivalent nftables stateful ruleset, in one run.
//!
//! A sender of our own in the client namespace ([`xdp_flood`]) puts 64-byte UDP frames
//! (198.18.1.2:40000 -> 198.18.2.2:53, one flow, allowed by both rulesets) into the firewall's
//! receive ring as fast as it can; the server end counts and drops what arrives (`hafw_sink`),
//! and that count over the time is the forwarded rate. Both paths receive through the veth's
//! NAPI (XDP on it for hafw, GRO on it for the kernel path, which is what makes a veth use NAPI
//! without XDP), as both would from a NIC. A third path, the floor, drops every frame at the
//! firewall's port: the sender's and the ring's own cost.
//!
//! Each path runs in two placements:
//! - **one core**: sender, firewall and receiver on CPU 0. Without threaded NAPI the veth's NAPI
//!   runs in the sender's softirq when each batch of 64 is flushed, so a frame is normally carried
//!   to the server before the next batch and the rate is one over the cost of the whole path;
//!   beyond the floor, that cost is the firewall's. When the kernel defers that softirq work to
//!   ksoftirqd the ring can overflow: the table shows what was dropped at ingress.
//! - **own core**: the sender on CPU 0, the firewall's receive work on CPU 1 (threaded NAPI, the
//!   thread pinned; see [`place_on_own_core`]). The sender outruns both paths and the ring
//!   overflows: this is the rate under overload, lowered by the sender and the firewall fighting
//!   over the ring's cache lines and by the NAPI thread's wake-ups.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
use hafw_lab::{SingleFirewall, netns::Netns, unique_prefix, wait_until};
use serde::Serialize;

const FLOOD_SECONDS: f64 = 2.0;
/// Floods per path and placement; the table has the median.
const FLOODS: usize = 3;
/// The sender's dummy port in the client namespace (see [`xdp_flood`]).
const GEN_DUMMY: &str = "hafwgen0";
const GEN_DUMMY_PEER: &str = "hafwgen1";
const HAFW: &str = "target/release/hafw";
const SENDER_CPU: usize = 0;
const FIREWALL_CPU: usize = 1;

#[derive(Serialize)]
pub struct FwdRow {
    pub path: String,
    pub placement: String,
    pub offered_pps: f64,
    /// Median of [`FLOODS`] floods.
    pub received_pps: f64,
    /// Frames the firewall's ingress ring had no room for, in that flood.
    pub dropped_at_ingress: u64,
    /// 1 / received rate: the time per frame of the path's bottleneck (on one core, the whole
    /// path; flooded, the firewall's core).
    pub ns_per_frame: f64,
}

/// Where the firewall's packet work runs.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    OwnCore,
    OneCore,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::OwnCore => "own core, overload",
            Placement::OneCore => "one core",
        }
    }
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

/// A receive counter of a port (`packets`, `dropped`).
fn rx_stat(ns: &Netns, ifname: &str, counter: &str) -> Result<u64> {
    let out = ns.exec_ok(&["ip", "-j", "-s", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"][counter]
        .as_u64()
        .with_context(|| format!("rx {counter} of {ifname}"))
}

/// The frame both paths forward: 64 bytes on the wire (60 + FCS), UDP 198.18.1.2:40000 ->
/// 198.18.2.2:53, allowed by both rulesets.
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4([198, 18, 1, 2], [198, 18, 2, 2], 64)
        .udp(40000, 53);
    let payload = [0x41u8; 18];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .expect("writing to a Vec cannot fail");
    frame
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next().context("short MAC")?, 16).context("MAC byte")?;
    }
    Ok(mac)
}

/// `hafw-bench xdp-flood IFACE DST_MAC SRC_MAC SECONDS CPU`: the sender, run inside the client
/// namespace, pinned to CPU. BPF_PROG_TEST_RUN in live-frames mode runs a program that returns
/// XDP_TX on the frame: the kernel transmits each copy out of IFACE with the veth's
/// `ndo_xdp_xmit`, straight into the firewall's receive ring, without a socket or an skb, as a NIC
/// would hand frames to its driver. The sender never waits: when the ring is full the veth drops
/// the frame (counted as the receiving port's rx_dropped), so the firewall's core runs flat out.
/// Prints `{"sent":..,"seconds":..}`.
pub fn xdp_flood(args: &[String]) -> Result<()> {
    let [iface, dst, src, seconds, cpu] = args else {
        bail!("usage: hafw-bench xdp-flood IFACE DST_MAC SRC_MAC SECONDS CPU");
    };
    let frame = udp_frame(parse_mac(dst)?, parse_mac(src)?);
    let seconds: f64 = seconds.parse().context("seconds")?;
    pin_to_cpu(0, cpu.parse().context("cpu")?)?;
    let ifindex = nix::net::if_::if_nametoindex(iface.as_str())?;
    let mut ebpf = hafw::dataplane::load_bench_sender(&frame)?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(hafw::dataplane::BENCH_TX_PROGRAM)
        .context("sender program missing")?
        .try_into()?;
    // A test run with repeat > 1 puts the program into the kernel's XDP dispatcher and takes it
    // out again, and each change waits for an RCU grace period (~16 ms here, a quarter of a
    // run of 65536 frames at 1 Mpps). Attached to a dummy port for the sender's life, the program stays
    // in the dispatcher and a run costs no change. (A veth: this kernel has no dummy driver.
    // The namespace takes it away with the lab.)
    // An earlier flood's port, if any, goes first (its attachment went with its process).
    let _ = std::process::Command::new("ip")
        .args(["link", "del", GEN_DUMMY])
        .output();
    let out = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            GEN_DUMMY,
            "type",
            "veth",
            "peer",
            "name",
            GEN_DUMMY_PEER,
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "adding {GEN_DUMMY}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    prog.attach(GEN_DUMMY, aya::programs::XdpMode::Skb)
        .context("attaching the sender to its dummy port")?;
    let ctx = hafw::testkit::xdp_md(frame.len(), ifindex);
    // The kernel transmits (and flushes) in batches of 64.
    const FRAMES_PER_RUN: u32 = 1 << 16;
    let mut sent = 0u64;
    let start = Instant::now();
    let deadline = start + std::time::Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: FRAMES_PER_RUN,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })
        .context("live-frames test run")?;
        sent += u64::from(FRAMES_PER_RUN);
    }
    println!(
        "{}",
        serde_json::json!({ "sent": sent, "seconds": start.elapsed().as_secs_f64() })
    );
    Ok(())
}

/// Lets thread `pid` (0: the caller) run on `cpu` only.
fn pin_to_cpu(pid: i32, cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)?;
    Ok(())
}

/// Writes a sysfs file of the namespace's devices (`ip netns exec` mounts the namespace's /sys).
fn write_sysfs(ns: &Netns, path: &str, value: &str) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg(format!("echo {value} > {path}"))
        .output()?;
    if !out.status.success() {
        bail!(
            "writing {value} to {path} in {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn napi_threads(ifname: &str) -> Vec<i32> {
    let prefix = format!("napi/{ifname}-");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.trim().starts_with(&prefix).then_some(pid)
        })
        .collect()
}

/// Moves the firewall's receive work on its ingress port (eth1) to [`FIREWALL_CPU`]: threaded
/// NAPI, the thread pinned.
fn place_on_own_core(fw: &Netns) -> Result<()> {
    let before = napi_threads("eth1");
    write_sysfs(fw, "/sys/class/net/eth1/threaded", "1")?;
    let ours: Vec<i32> = napi_threads("eth1")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if ours.is_empty() {
        bail!("no NAPI thread appeared for the firewall's eth1");
    }
    for pid in ours {
        pin_to_cpu(pid, FIREWALL_CPU).with_context(|| format!("pinning NAPI thread {pid}"))?;
    }
    Ok(())
}

/// What one burst measured.
struct Burst {
    sent: u64,
    dropped_at_ingress: u64,
    received: u64,
    seconds: f64,
}

/// [`FLOODS`] floods, the firewall placed as asked (once its ingress port has its NAPI: XDP
/// or GRO on it); the one with the median received rate.
fn measure(topo: &SingleFirewall, placement: Placement, receiver: (&Netns, &str)) -> Result<Burst> {
    if placement == Placement::OwnCore {
        place_on_own_core(&topo.fw)?;
    }
    let mut floods = (0..FLOODS)
        .map(|_| burst(topo, receiver))
        .collect::<Result<Vec<_>>>()?;
    floods.sort_by(|a, b| {
        (a.received as f64 / a.seconds).total_cmp(&(b.received as f64 / b.seconds))
    });
    Ok(floods.swap_remove(FLOODS / 2))
}

/// Floods for [`FLOOD_SECONDS`]; `receiver` is the port that counts what arrives.
fn burst(topo: &SingleFirewall, (rx_ns, rx_port): (&Netns, &str)) -> Result<Burst> {
    let exe = std::env::current_exe()?;
    let received_before = rx_stat(rx_ns, rx_port, "packets")?;
    let dropped_before = rx_stat(&topo.fw, "eth1", "dropped")?;
    let out = topo.client.exec_ok(&[
        exe.to_str().unwrap_or_default(),
        "xdp-flood",
        "eth0",
        &topo.fw.mac("eth1")?,
        &topo.client.mac("eth0")?,
        &FLOOD_SECONDS.to_string(),
        &SENDER_CPU.to_string(),
    ])?;
    // Let the last frames drain.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let received = rx_stat(rx_ns, rx_port, "packets")? - received_before;
    let dropped_at_ingress = rx_stat(&topo.fw, "eth1", "dropped")? - dropped_before;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("xdp-flood output")?;
    Ok(Burst {
        sent: v["sent"].as_u64().context("sent")?,
        dropped_at_ingress,
        received,
        seconds: v["seconds"].as_f64().context("seconds")?,
    })
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

/// A lab for one measurement, and the guard that removes its pinned programs.
fn lab(dir: &std::path::Path) -> Result<(SingleFirewall, Cleanup)> {
    let topo = SingleFirewall::up(&unique_prefix())?;
    let pins = Cleanup(vec![format!("/sys/fs/bpf/hafw-lab/{}", topo.prefix).into()]);
    for (ns, ifname) in topo.xdp_peer_ends() {
        let pin = format!("/sys/fs/bpf/hafw-lab/{}/{}-{ifname}", topo.prefix, ns.name);
        let mut argv = vec![HAFW, "xdp-pass", "--iface", ifname, "--pin", &pin];
        // The server's end drops what it receives (after counting it), so the receiver's cost
        // is the same small constant on both paths.
        if ns.name == topo.server.name {
            argv.push("--sink");
        }
        ns.exec_ok(&argv)?;
    }
    // Resolve the server's MAC on the firewall before the burst (the sink drops the echo
    // request; it lets the ARP exchange through).
    topo.fw
        .exec(&["ping", "-c", "1", "-W", "1", SingleFirewall::SERVER_IP])?;
    let neigh = topo
        .fw
        .exec_ok(&["ip", "neigh", "show", SingleFirewall::SERVER_IP])?;
    if !neigh.contains("lladdr") {
        bail!("the firewall did not resolve the server: {neigh:?}");
    }
    std::fs::create_dir_all(dir)?;
    Ok((topo, pins))
}

/// Every path in both placements, and the hafw / nftables ratios.
pub struct Comparison {
    pub rows: Vec<FwdRow>,
    pub ratios: Vec<Ratio>,
}

/// hafw / nftables in one placement.
#[derive(Serialize)]
pub struct Ratio {
    pub placement: String,
    /// Of the received rates.
    pub received: f64,
    /// Of the time per frame beyond the floor: what each firewall adds to the path. One core
    /// only: flooded, the rates are not costs of one path.
    pub beyond_floor: Option<f64>,
}

fn row(path: String, placement: Placement, b: Burst) -> FwdRow {
    let received_pps = b.received as f64 / b.seconds;
    FwdRow {
        path,
        placement: placement.label().into(),
        offered_pps: b.sent as f64 / b.seconds,
        received_pps,
        dropped_at_ingress: b.dropped_at_ingress,
        ns_per_frame: 1e9 / received_pps.max(1.0),
    }
}

/// The floor: the firewall's port drops every frame it receives (`hafw_sink` on it; the kernel
/// counts them there).
fn floor(dir: &std::path::Path, placement: Placement) -> Result<FwdRow> {
    let (topo, _pins) = lab(dir)?;
    let pin = format!("/sys/fs/bpf/hafw-lab/{}/fw-eth1", topo.prefix);
    topo.fw
        .exec_ok(&[HAFW, "xdp-pass", "--iface", "eth1", "--pin", &pin, "--sink"])?;
    Ok(row(
        "floor: dropped at the firewall's port".into(),
        placement,
        measure(&topo, placement, (&topo.fw, "eth1"))?,
    ))
}

fn kernel_path(dir: &std::path::Path, placement: Placement) -> Result<FwdRow> {
    let (topo, _pins) = lab(dir)?;
    let rules = dir.join("nft.conf");
    std::fs::write(&rules, NFT_RULESET)?;
    topo.fw
        .exec_ok(&["nft", "-f", rules.to_str().unwrap_or_default()])?;
    // A veth without XDP receives through NAPI only with GRO on (else the sender's frames
    // would have nowhere to go).
    topo.fw.exec_ok(&["ethtool", "-K", "eth1", "gro", "on"])?;
    Ok(row(
        "kernel forwarding + nftables (ct state)".into(),
        placement,
        measure(&topo, placement, (&topo.server, "eth0"))?,
    ))
}

/// hafw XDP on the same topology and an equivalent policy (the lab's example config).
fn hafw_path(dir: &std::path::Path, placement: Placement) -> Result<FwdRow> {
    let (topo, _pins) = lab(dir)?;
    let instance = topo.prefix.clone();
    // Declared before the controller so it drops after it: the controller dies first.
    let _hafw_files = Cleanup(vec![
        format!("/sys/fs/bpf/hafw/{instance}").into(),
        hafw::control::socket_path(&instance),
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
    let result = measure(&topo, placement, (&topo.server, "eth0"))?;
    let c = hafw::control::request(&instance, &hafw::control::Request::ShowCounters)?;
    Ok(row(
        format!("hafw XDP (forwarded by XDP: {})", c["forwarded"]),
        placement,
        result,
    ))
}

pub fn compare() -> Result<Comparison> {
    let dir = std::env::temp_dir().join(format!("hafw-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for placement in [Placement::OneCore, Placement::OwnCore] {
        let floor = floor(&dir, placement)?;
        let kernel = kernel_path(&dir, placement)?;
        let xdp = hafw_path(&dir, placement)?;
        ratios.push(Ratio {
            placement: placement.label().to_owned(),
            received: xdp.received_pps / kernel.received_pps.max(1.0),
            beyond_floor: (placement == Placement::OneCore).then(|| {
                (kernel.ns_per_frame - floor.ns_per_frame)
                    / (xdp.ns_per_frame - floor.ns_per_frame).max(1.0)
            }),
        });
        rows.extend([floor, kernel, xdp]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Comparison { rows, ratios })
}
