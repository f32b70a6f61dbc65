//! `failover`: the loss window of a failover through the lab pair. The client sends
//! sequence-numbered UDP at 1,000 packets/s to an echo on the server through the pair; the
//! window is the longest gap between two consecutive replies around the fault. Faults: SIGKILL of
//! the active node's controller, and all of the active node's links cut. Each timer profile, five
//! runs each, median and range. The fault comes once the pair is in steady state: replies flow
//! and the passive node holds the neighbour entries the active node resolved.

use std::{
    net::UdpSocket,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hafw_lab::{HaPair, PairRun, in_netns, wait_until};
use serde::Serialize;

const RUNS: usize = 5;
/// UDP echo port on the server (the lab policy allows DNS from clients to servers).
const ECHO_PORT: u16 = 53;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    ProcessKill,
    LinkCut,
}

#[derive(Serialize)]
pub struct Row {
    pub profile: &'static str,
    pub fault: Fault,
    pub windows_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// Starts the lab pair on `profile` and waits for fw1 active, fw2 passive.
fn start(hafw: &Path, profile: &str) -> Result<PairRun> {
    let edit = |_: usize, text: String| {
        text.replace("timers = \"fast\"", &format!("timers = \"{profile}\""))
    };
    // The recommended profile waits up to 12 s at boot for a peer.
    PairRun::start_elected(
        hafw.to_str().unwrap_or_default(),
        &edit,
        Duration::from_secs(30),
    )
}

/// Sends at 1 kpps from the client and records when each reply arrives, until `stop`.
fn traffic(lab: &PairRun, stop: Arc<AtomicBool>) -> Result<Arc<Mutex<Vec<Instant>>>> {
    let server = in_netns(&lab.topo.server.name, || {
        UdpSocket::bind((HaPair::SERVER_IP, ECHO_PORT))
    })??;
    server.set_read_timeout(Some(Duration::from_millis(50)))?;
    let s = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        }
    });
    let client = in_netns(&lab.topo.client.name, || {
        UdpSocket::bind((HaPair::CLIENT_IP, 0))
    })??;
    client.connect((HaPair::SERVER_IP, ECHO_PORT))?;
    client.set_read_timeout(Some(Duration::from_millis(50)))?;
    let receiver = client.try_clone()?;
    let replies = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
    let r = replies.clone();
    let s = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if receiver.recv(&mut buf).is_ok()
                && let Ok(mut r) = r.lock()
            {
                r.push(Instant::now());
            }
        }
    });
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut seq: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let _ = client.send(&seq.to_be_bytes());
            seq += 1;
            // Deadline-based pacing: 1,000 packets per second on average even if a sleep overruns.
            let next = start + Duration::from_millis(seq);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    Ok(replies)
}

fn one_run(hafw: &Path, profile: &str, fault: Fault) -> Result<f64> {
    let mut lab = start(hafw, profile)?;
    let stop = Arc::new(AtomicBool::new(false));
    let replies = traffic(&lab, stop.clone())?;
    // Warm up: sessions exist and replies flow before the fault.
    let flowing = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        replies.lock().map(|r| r.len() > 200).unwrap_or(false)
    });
    if !flowing {
        stop.store(true, Ordering::Relaxed);
        bail!("no UDP replies through the pair before the fault");
    }
    // Steady state, as in a pair that has run for a while: the passive node holds the neighbour
    // entries the active one resolved (synced every second).
    let neighbours_synced = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        lab.topo.fw[1]
            .exec_ok(&["ip", "neigh", "show"])
            .is_ok_and(|n| {
                [HaPair::CLIENT_IP, HaPair::SERVER_IP].iter().all(|ip| {
                    n.lines()
                        .any(|l| l.starts_with(&format!("{ip} ")) && l.contains("lladdr"))
                })
            })
    });
    if !neighbours_synced {
        stop.store(true, Ordering::Relaxed);
        bail!("the passive node did not get the active node's neighbours");
    }
    let fault_at = Instant::now();
    match fault {
        Fault::ProcessKill => {
            if let Some(p) = &lab.procs[0] {
                p.signal(nix::sys::signal::Signal::SIGKILL)?;
            }
        }
        Fault::LinkCut => {
            // Every link at once (one ip process): cutting them one command at a time would
            // spread the fault over tens of milliseconds and measure the commands.
            let script = lab.dir.join("cut.ip");
            let lines: Vec<String> = HaPair::FW_LINKS
                .iter()
                .map(|l| format!("link set {l} down"))
                .collect();
            std::fs::write(&script, lines.join("\n") + "\n")?;
            lab.topo.fw[0].exec_ok(&["ip", "-batch", script.to_str().unwrap_or_default()])?;
        }
    }
    // The dead node's dataplane keeps forwarding until its lease lapses, so replies alone do not
    // say the failover is over: wait for the peer to take over, then for replies through it.
    // Polled gently: each poll is a process, and CPU taken here is CPU the pair does not get.
    let took_over = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        lab.cli_state(1) == "active"
    });
    let takeover_at = Instant::now();
    let resumed = took_over
        && wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            replies
                .lock()
                .map(|r| r.iter().filter(|t| **t > takeover_at).count() > 300)
                .unwrap_or(false)
        });
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    if !resumed {
        bail!("traffic did not resume after the {fault:?}");
    }
    let r = replies.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let (gap_start, window) = r
        .windows(2)
        .filter(|w| w[1] > fault_at)
        .map(|w| (w[0], w[1].duration_since(w[0])))
        .max_by_key(|(_, gap)| *gap)
        .unwrap_or((fault_at, Duration::ZERO));
    drop(r);
    if std::env::var_os("HAFW_BENCH_VERBOSE").is_some() {
        let offset = gap_start.saturating_duration_since(fault_at).as_secs_f64() * 1e3;
        let log = std::fs::read_to_string(lab.log(1)).unwrap_or_default();
        let takeover: Vec<&str> = log.lines().filter(|l| l.contains("HA")).collect();
        eprintln!(
            "  gap starts {offset:.1} ms after the fault; fw2: {}",
            takeover[takeover.len().saturating_sub(3)..].join(" | ")
        );
    }
    let _ = lab.procs[0].take();
    Ok(window.as_secs_f64() * 1e3)
}

pub fn measure(profiles: &[&'static str]) -> Result<Vec<Row>> {
    let hafw = crate::hafw_binary()?;
    let mut rows = Vec::new();
    for &profile in profiles {
        for fault in [Fault::ProcessKill, Fault::LinkCut] {
            let mut windows = Vec::new();
            for run in 0..RUNS {
                let w = one_run(&hafw, profile, fault)
                    .with_context(|| format!("{profile} {fault:?} run {run}"))?;
                eprintln!("failover {profile} {fault:?} run {run}: {w:.1} ms");
                windows.push(w);
            }
            let (min_ms, median_ms, max_ms) = crate::spread(&windows);
            rows.push(Row {
                profile,
                fault,
                median_ms,
                min_ms,
                max_ms,
                windows_ms: windows,
            });
        }
    }
    Ok(rows)
}
