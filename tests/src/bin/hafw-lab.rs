//! `hafw-lab up|down|status` (run by `cargo xtask lab ...`): the lab of network namespaces with
//! hafw running on its built-in config, and a short demonstration of it filtering real traffic.
//!
//! `HAFW_BIN` names the hafw binary (xtask sets it).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use hafw_lab::{SingleFirewall, in_netns, netns, wait_until};

const PREFIX: &str = "hafwlab";
const INSTANCE: &str = "hafwlab";
const CONFIG: &str = include_str!("../../../userspace/hafw-config/example.toml");
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

fn hafw_cli(hafw: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(hafw)
        .args(["--instance", INSTANCE])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn up(hafw: &str) -> Result<()> {
    down()?;
    std::fs::create_dir_all(STATE_DIR)?;
    println!("lab: creating namespaces {PREFIX}-client, {PREFIX}-fw, {PREFIX}-server");
    let mut topo = SingleFirewall::up(PREFIX)?;
    topo.persist();
    for (ns, ifname) in topo.xdp_peer_ends() {
        let pin = format!("/sys/fs/bpf/hafw-lab/{PREFIX}/{}-{ifname}", ns.name);
        ns.exec_ok(&[hafw, "xdp-pass", "--iface", ifname, "--pin", &pin])?;
    }
    let config = Path::new(STATE_DIR).join("hafw.toml");
    std::fs::write(&config, CONFIG)?;
    let log = Path::new(STATE_DIR).join("hafw.log");
    let proc = topo.fw.spawn(
        &[hafw, "run", "--config", config.to_str().unwrap_or_default()],
        &log,
    )?;
    let pid = proc.detach();
    std::fs::write(Path::new(STATE_DIR).join("hafw.pid"), pid.to_string())?;
    let up = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        hafw_cli(hafw, &["show", "interface"])
            .map(|o| o.contains("eth1"))
            .unwrap_or(false)
    });
    if !up {
        bail!("hafw did not start; see {}", log.display());
    }
    println!(
        "lab: hafw running in {PREFIX}-fw (pid {pid}), config {}, log {}",
        config.display(),
        log.display()
    );
    println!("{}", hafw_cli(hafw, &["show", "interface"])?);
    demo(&topo)?;
    println!(
        "\n$ hafw --instance {INSTANCE} show session all\n{}",
        hafw_cli(hafw, &["show", "session", "all"])?
    );
    println!(
        "$ hafw --instance {INSTANCE} show counter global\n{}",
        hafw_cli(hafw, &["show", "counter", "global"])?
    );
    println!("lab is up. Try: ip netns exec {PREFIX}-client ping 198.18.2.2");
    println!("           bpftool map dump pinned /sys/fs/bpf/hafw/{INSTANCE}/v1/counters");
    println!("           cargo xtask lab down");
    Ok(())
}

/// Shows allowed and denied traffic through the firewall.
fn demo(topo: &SingleFirewall) -> Result<()> {
    let server = topo.server.name.clone();
    let client = topo.client.name.clone();
    let listeners: Vec<TcpListener> = [80u16, 22]
        .iter()
        .map(|p| {
            in_netns(&server, move || TcpListener::bind(("198.18.2.2", *p))).and_then(|r| Ok(r?))
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
            Ok(echo) => {
                println!("demo: client -> 198.18.2.2:{port} {what}: connected, echo \"{echo}\"")
            }
            Err(e) => println!("demo: client -> 198.18.2.2:{port} {what}: {e}"),
        }
    }
    let ping = topo
        .client
        .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "198.18.2.2"])?;
    println!(
        "demo: client ping 198.18.2.2: {}",
        if ping.status.success() {
            "replies received"
        } else {
            "no reply"
        }
    );
    Ok(())
}

fn down() -> Result<()> {
    let pidfile = Path::new(STATE_DIR).join("hafw.pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let pid: i32 = pid.trim().parse().context("pid file")?;
        // Only the controller this lab started, recorded at `up`.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        });
        let _ = std::fs::remove_file(&pidfile);
    }
    let n = netns::destroy(PREFIX)?;
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/hafw-lab/{PREFIX}"));
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/hafw/{INSTANCE}"));
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
    println!("{}", hafw_cli(hafw, &["show", "counter", "global"])?);
    Ok(())
}
