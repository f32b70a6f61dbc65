//! `soak`: false failovers of an idle, healthy pair while both CPUs are kept busy by an unrelated
//! load, hafw against keepalived (VRRPv3) at the same failure-detection time, side by side in one
//! run. Scheduling stalls are the classic cause of split brain in VRRP pairs: a healthy pair should
//! never change state here.
//!
//! - hafw: the lab pair at keepalived's detection time (advanced timers: 10 ms heartbeats, peer
//!   dead after 30 ms), and a second pair on the `fast` profile (5 ms, dead after 15 ms).
//! - keepalived: two VRRPv3 routers on the same lab topology, `advert_int 0.01` (master down after
//!   3 adverts plus skew, about 34 ms), one floating IP on the client side, `max_auto_priority`
//!   (real-time scheduling, as hafw's HA thread has).
//! - Load: one spinning thread per CPU in this process (nice 0), started after both pairs settle.
//!
//! A false failover is any state change after the start: `HA state` log lines for hafw, `Entering
//! ... STATE` log lines for keepalived.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use hafw_lab::{HaPair, LabProcess, PairRun, unique_prefix, wait_until};
use serde::Serialize;

#[derive(Serialize)]
pub struct Row {
    pub implementation: &'static str,
    pub detection: &'static str,
    pub minutes: f64,
    pub state_changes: usize,
    pub detail: String,
}

/// The keepalived pair: the lab topology with two keepalived processes.
/// Fields drop in order: the processes die before their namespaces go.
struct Keepalived {
    _procs: Vec<LabProcess>,
    _topo: HaPair,
    dir: PathBuf,
    logs: [PathBuf; 2],
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn count(path: &PathBuf, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.matches(needle).count())
        .unwrap_or(0)
}

/// The longest heartbeat gap either node of a hafw pair saw on any link, and the pauses its HA
/// threads noticed.
fn max_gap(hafw: &str, side: &PairRun) -> String {
    let shows: Vec<serde_json::Value> = side
        .instances
        .iter()
        .filter_map(|i| {
            std::process::Command::new(hafw)
                .args([
                    "--instance",
                    i,
                    "--json",
                    "show",
                    "high-availability",
                    "all",
                ])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        })
        .collect();
    let gap = shows
        .iter()
        .flat_map(|v| {
            v["shell"]["links"]
                .as_object()
                .map(|links| {
                    links
                        .values()
                        .filter_map(|l| l["max_heartbeat_gap_ms"].as_f64())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .fold(0.0, f64::max);
    let pauses: u64 = shows
        .iter()
        .filter_map(|v| v["shell"]["pauses"].as_u64())
        .sum();
    let longest = shows
        .iter()
        .filter_map(|v| v["shell"]["longest_pause_ms"].as_f64())
        .fold(0.0, f64::max);
    format!(
        "longest heartbeat gap {gap:.1} ms; HA thread pauses noticed {pauses} (longest {longest:.1} ms)"
    )
}

/// The state-change lines of both logs, for the report (the logs go with the namespaces).
fn changes(logs: &[PathBuf; 2], needle: &str) -> String {
    logs.iter()
        .enumerate()
        .flat_map(|(i, p)| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .map(|l| format!("fw{}: {}", i + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn hafw_side(hafw: &str, edit: &dyn Fn(String) -> String) -> Result<PairRun> {
    let mut run = PairRun::new(hafw, &|_, text| edit(text))?;
    run.start_node(0)?;
    run.start_node(1)?;
    Ok(run)
}

fn keepalived_side() -> Result<Keepalived> {
    let prefix = unique_prefix();
    let topo = HaPair::up(&prefix)?;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let logs = [dir.join("fw1.log"), dir.join("fw2.log")];
    let mut procs = Vec::new();
    for i in 0..2 {
        // VRRP needs an address of its own on the interface, besides the floating one.
        topo.fw[i].exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.1.1{}/24", i + 1),
            "dev",
            "eth1",
        ])?;
        // keepalived: the higher priority wins (fw1, as in the hafw pair). `max_auto_priority`
        // gives its VRRP process a real-time priority, as hafw's HA thread has: a fair fight.
        let conf = format!(
            "global_defs {{\n  router_id fw{n}\n  vrrp_version 3\n  vrrp_garp_master_repeat 3\n  max_auto_priority\n}}\n\
             vrrp_instance lab {{\n  state BACKUP\n  interface eth1\n  virtual_router_id 51\n  \
             priority {prio}\n  advert_int 0.01\n  virtual_ipaddress {{\n    198.18.1.1/24\n  }}\n}}\n",
            n = i + 1,
            prio = [200, 100][i]
        );
        let path = dir.join(format!("keepalived-fw{}.conf", i + 1));
        std::fs::write(&path, conf)?;
        let pid = |what: &str| {
            dir.join(format!("{what}-fw{}.pid", i + 1))
                .to_string_lossy()
                .into_owned()
        };
        procs.push(topo.fw[i].spawn(
            &[
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                path.to_str().unwrap_or_default(),
                "-p",
                &pid("keepalived"),
                "-r",
                &pid("vrrp"),
                "-c",
                &pid("checkers"),
            ],
            &logs[i],
        )?);
    }
    Ok(Keepalived {
        _procs: procs,
        _topo: topo,
        dir,
        logs,
    })
}

/// Waits until a pair has elected; if it does not, fails with the state lines of both logs
/// (the logs go with the lab).
fn settle(what: &str, logs: &[PathBuf; 2], settled: impl Fn() -> bool) -> Result<()> {
    if wait_until(Duration::from_secs(30), Duration::from_millis(100), settled) {
        return Ok(());
    }
    let states = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("HA state") || l.contains("Entering ") || l.contains("paused"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    bail!(
        "{what} did not settle:\n{}\n{}",
        states(&logs[0]),
        states(&logs[1])
    )
}

pub fn measure(minutes: f64) -> Result<Vec<Row>> {
    let hafw = std::env::current_exe()?
        .parent()
        .map(|d| d.join("hafw").to_string_lossy().into_owned())
        .unwrap_or_default();
    let logs = |s: &PairRun| [s.log(0), s.log(1)];
    let hafw_changes = |s: &PairRun| count(&s.log(0), "HA state ") + count(&s.log(1), "HA state ");
    let ka_changes =
        |s: &Keepalived| count(&s.logs[0], "Entering ") + count(&s.logs[1], "Entering ");
    let hafw_settled =
        |s: &PairRun| count(&s.log(0), "-> active") == 1 && count(&s.log(1), "-> passive") == 1;
    // One pair at a time, each elected before the next starts: a starting node's kernel work
    // (its 1.25M-entry session table, the verifier) runs unpreempted on this kernel
    // (PREEMPT_NONE) and stalled the other pairs' elections by 20 to 90 ms when all started at
    // once. What the soak measures starts after.
    let h = hafw_side(&hafw, &|t| {
        t.replace("timers = \"fast\"", "timers = \"advanced\"")
            + "\n[high_availability.advanced_timers]\nheartbeat_interval_ms = 10\npromotion_hold_ms = 0\nhello_interval_ms = 1000\npreemption_hold_ms = 10000\n"
    })?;
    settle("hafw 30 ms", &logs(&h), || hafw_settled(&h))?;
    let f = hafw_side(&hafw, &|t| t)?;
    settle("hafw fast", &logs(&f), || hafw_settled(&f))?;
    let k = keepalived_side()?;
    settle("keepalived", &k.logs, || {
        count(&k.logs[0], "Entering MASTER STATE") == 1
    })?;
    std::thread::sleep(Duration::from_secs(2));
    // A start can stall the HA threads of pairs already running long enough for a takeover
    // (see the README); preemption then hands the role back after its 10 s hold. The soak
    // counts from the moment both pairs are back in their roles.
    for (name, side) in [("hafw 30 ms", &h), ("hafw fast", &f)] {
        let in_roles = || side.cli_state(0) == "active" && side.cli_state(1) == "passive";
        if !wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            in_roles,
        ) {
            bail!("{name}: not back in its roles 30 s after the starts");
        }
    }
    let (h0, f0, k0) = (hafw_changes(&h), hafw_changes(&f), ka_changes(&k));
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let spinners: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let start = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(10));
        eprintln!(
            "soak {:.0} s: state changes: hafw 30 ms {}, hafw fast {}, keepalived {}",
            start.elapsed().as_secs_f64(),
            hafw_changes(&h) - h0,
            hafw_changes(&f) - f0,
            ka_changes(&k) - k0
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    Ok(vec![
        Row {
            implementation: "hafw (SCHED_FIFO HA thread)",
            detection: "advanced: 10 ms heartbeats, dead after 30 ms",
            minutes,
            state_changes: hafw_changes(&h) - h0,
            detail: format!(
                "{}; {}",
                max_gap(&hafw, &h),
                changes(&logs(&h), "HA state ")
            ),
        },
        Row {
            implementation: "hafw (SCHED_FIFO HA thread)",
            detection: "fast: 5 ms heartbeats, dead after 15 ms",
            minutes,
            state_changes: hafw_changes(&f) - f0,
            detail: format!(
                "{}; {}",
                max_gap(&hafw, &f),
                changes(&logs(&f), "HA state ")
            ),
        },
        Row {
            implementation: "keepalived 2.2 VRRPv3 (max_auto_priority)",
            detection: "advert_int 0.01: master down after ~34 ms",
            minutes,
            state_changes: ka_changes(&k) - k0,
            detail: changes(&k.logs, "Entering "),
        },
    ])
}
