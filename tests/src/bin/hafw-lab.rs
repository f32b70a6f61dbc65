//! `hafw-lab up|down|status` (run by `cargo xtask lab ...`): the HA lab of network namespaces
//! (client, server, two switches, a firewall pair) with hafw running on both firewalls on the
//! built-in lab config, and a short demonstration: the election, traffic filtered through the
//! active node, then a failover under a running ping.
//!
//! `HAFW_BIN` names the hafw binary (xtask sets it).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hafw_lab::{HaPair, in_netns, netns, wait_until};

const PREFIX: &str = "hafwlab";
/// Instances (and control sockets) of the two firewalls.
const INSTANCES: [&str; 2] = ["fw1", "fw2"];
const STATE_DIR: &str = "/run/hafw/lab";

fn main() -> Result<()> {
    let hafw = std::env::var("HAFW_BIN").unwrap_or_else(|_| "target/release/hafw".into());
    match std::env::args().nth(1).as_deref() {
        Some("up") => up(&hafw),
        Some("down") => down(),
        Some("status") => status(&hafw),
        _ => bail!("usage: hafw-lab up|down|status"),
    }
}

fn hafw_cli(hafw: &str, instance: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(hafw)
        .args(["--instance", instance])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The node's HA state as `show high-availability all --json` reports it.
fn ha_state(hafw: &str, instance: &str) -> String {
    hafw_cli(
        hafw,
        instance,
        &["--json", "show", "high-availability", "all"],
    )
    .ok()
    .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
    .and_then(|v| v["status"]["local"]["state"].as_str().map(str::to_owned))
    .unwrap_or_else(|| "down".into())
}

fn wait_states(hafw: &str, want: [&str; 2], timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(50), || {
        INSTANCES
            .iter()
            .zip(want)
            .all(|(i, w)| ha_state(hafw, i) == w)
    })
}

fn up(hafw: &str) -> Result<()> {
    down()?;
    std::fs::create_dir_all(STATE_DIR)?;
    println!(
        "lab: creating namespaces {PREFIX}-client, -server, -sw (switches swc, sws, swm), -fw1, -fw2"
    );
    let mut topo = HaPair::up(PREFIX)?;
    topo.persist();
    for (ns, ifname) in topo.xdp_peer_ends() {
        let pin = format!("/sys/fs/bpf/hafw-lab/{PREFIX}/{}-{ifname}", ns.name);
        ns.exec_ok(&[hafw, "xdp-pass", "--iface", &ifname, "--pin", &pin])?;
    }
    for (i, instance) in INSTANCES.iter().enumerate() {
        let config = Path::new(STATE_DIR).join(format!("{instance}.toml"));
        std::fs::write(&config, hafw_config::Config::ha_example_text(i, instance))?;
        let log = Path::new(STATE_DIR).join(format!("{instance}.log"));
        let proc = topo.fw[i].spawn(
            &[hafw, "run", "--config", config.to_str().unwrap_or_default()],
            &log,
        )?;
        let pid = proc.detach();
        std::fs::write(
            Path::new(STATE_DIR).join(format!("{instance}.pid")),
            pid.to_string(),
        )?;
        println!(
            "lab: hafw {instance} running in {} (pid {pid}), config {}, log {}",
            topo.fw[i].name,
            config.display(),
            log.display()
        );
    }
    if !wait_states(hafw, ["active", "passive"], Duration::from_secs(30)) {
        bail!(
            "the pair did not elect fw1 active and fw2 passive; see the logs in {STATE_DIR} \
             (fw1: {}, fw2: {})",
            ha_state(hafw, INSTANCES[0]),
            ha_state(hafw, INSTANCES[1])
        );
    }
    println!("\nlab: election done: fw1 active (priority 100), fw2 passive (priority 200)");
    println!(
        "$ hafw --instance fw1 show high-availability all\n{}",
        hafw_cli(hafw, "fw1", &["show", "high-availability", "all"])?
    );
    serve_echo(&topo)?;
    demo_traffic(&topo)?;

    println!("\nlab: failover: suspending fw1 while the client pings the server every 10 ms");
    let ping = topo.client.command(&[
        "ping",
        "-i",
        "0.01",
        "-w",
        "3",
        "-W",
        "1",
        HaPair::SERVER_IP,
    ]);
    let ping = std::thread::spawn(move || {
        let mut ping = ping;
        ping.output()
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    hafw_cli(
        hafw,
        "fw1",
        &["request", "high-availability", "state", "suspend"],
    )?;
    let took_over = wait_states(hafw, ["suspended", "active"], Duration::from_secs(10));
    println!(
        "lab: fw2 is {} {:.0} ms after the request",
        ha_state(hafw, "fw2"),
        t.elapsed().as_secs_f64() * 1e3
    );
    if !took_over {
        bail!("fw2 did not take over; see the logs in {STATE_DIR}");
    }
    if let Ok(Ok(out)) = ping.join() {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(summary) = text.lines().find(|l| l.contains("packets transmitted")) {
            println!("lab: ping across the failover: {summary}");
        }
    }
    demo_traffic(&topo)?;
    hafw_cli(
        hafw,
        "fw1",
        &["request", "high-availability", "state", "functional"],
    )?;
    println!(
        "lab: fw1 is functional again ({}); being preemptive with the better priority, it takes the \
         active role back after the preemption hold (10 s in the fast profile)",
        ha_state(hafw, "fw1")
    );
    println!(
        "\n$ hafw --instance fw2 show high-availability all\n{}",
        hafw_cli(hafw, "fw2", &["show", "high-availability", "all"])?
    );
    println!(
        "lab is up. Try: ip netns exec {PREFIX}-client ping {}",
        HaPair::SERVER_IP
    );
    println!("           hafw --instance fw1 show high-availability all   (or fw2; --json)");
    println!("           hafw --instance fw2 show session all");
    println!(
        "           bpftool map dump pinned /sys/fs/bpf/hafw/fw1/v{}/counters",
        hafw_common::LAYOUT_VERSION
    );
    println!("           cargo xtask lab down");
    Ok(())
}

/// TCP echo servers on the server, on the allowed (80) and the denied (22) port.
fn serve_echo(topo: &HaPair) -> Result<()> {
    let server = topo.server.name.clone();
    let listeners: Vec<TcpListener> = [80u16, 22]
        .iter()
        .map(|p| {
            in_netns(&server, move || TcpListener::bind((HaPair::SERVER_IP, *p)))
                .and_then(|r| Ok(r?))
        })
        .collect::<Result<_>>()?;
    for l in listeners {
        std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                let mut buf = [0u8; 64];
                if let Ok(n) = conn.read(&mut buf) {
                    let _ = conn.write_all(&buf[..n]);
                }
            }
        });
    }
    Ok(())
}

/// Shows allowed and denied traffic through whichever node is active.
fn demo_traffic(topo: &HaPair) -> Result<()> {
    let client = topo.client.name.clone();
    for (port, what) in [
        (80u16, "web (allowed)"),
        (22, "ssh (denied by rule no-ssh-to-servers)"),
    ] {
        let res = in_netns(&client, move || -> std::io::Result<String> {
            let mut c = TcpStream::connect_timeout(
                &(std::net::Ipv4Addr::new(198, 18, 2, 2), port).into(),
                Duration::from_secs(1),
            )?;
            c.set_read_timeout(Some(Duration::from_secs(1)))?;
            c.write_all(b"hello through hafw")?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })?;
        match res {
            Ok(echo) => println!(
                "demo: client -> {}:{port} {what}: connected, echo \"{echo}\"",
                HaPair::SERVER_IP
            ),
            Err(e) => println!("demo: client -> {}:{port} {what}: {e}", HaPair::SERVER_IP),
        }
    }
    Ok(())
}

fn down() -> Result<()> {
    for instance in INSTANCES {
        let pidfile = Path::new(STATE_DIR).join(format!("{instance}.pid"));
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let pid: i32 = pid.trim().parse().context("pid file")?;
            // Only the controllers this lab started, recorded at `up`.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            });
            let _ = std::fs::remove_file(&pidfile);
        }
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/hafw/{instance}"));
        let _ = std::fs::remove_dir_all(format!("/run/hafw/{instance}"));
    }
    let n = netns::destroy(PREFIX)?;
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/hafw-lab/{PREFIX}"));
    if n > 0 {
        println!("lab: removed {n} namespaces");
    }
    Ok(())
}

fn status(hafw: &str) -> Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(PREFIX))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    if names.is_empty() {
        println!("lab is down");
        return Ok(());
    }
    println!("namespaces: {}", names.join(", "));
    for instance in INSTANCES {
        println!("{instance}: {}", ha_state(hafw, instance));
    }
    Ok(())
}
