//! The HA pair end to end: two real `hafw run` processes in their own namespaces, a client and a
//! server behind two bridges, HA1, HA2 and management links (see `hafw_lab::HaPair`).
//!
//! Each test states the guarantee it checks; where a guarantee could hold by accident, the test
//! also runs the configuration that must break it and shows that it does. The pair runs on the
//! lab tests' HA timers (500 ms failure detection, see `advanced_timers`), not the built-in
//! `fast` profile, unless a test chooses its own.
//!
//! Needs root. Namespaces are unique per run and removed on drop, even when a test fails.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hafw::control::{Request, request};
use hafw_common::session::SessionState;
use hafw_lab::{HaPair, PairRun, in_netns, unique_prefix, wait_until};

const HAFW: &str = env!("CARGO_BIN_EXE_hafw");

struct Pair {
    run: PairRun,
    instances: [String; 2],
    stop_echo: Arc<AtomicBool>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop_echo.store(true, Ordering::Relaxed);
    }
}

/// The lab tests' HA timers, `extra` added: 10 ms heartbeats, the peer dead after 50 of them
/// (500 ms), no promotion hold, hellos every second. These tests check behaviour, not detection
/// speed (the failover and soak benchmarks measure that). On a
/// kernel that does not preempt, kernel work elsewhere (a node starting beside a running one,
/// a burst of new flows) can hold an HA thread off its CPU for tens of milliseconds (README,
/// known gaps): CI lost the `fast` profile's 15 ms that way, and the false failover restarted
/// sync or swapped the roles. In the lab, stalls of 50-320 ms from large BPF maps created in a
/// loop beside the pair failed 5 of 6 runs of two such tests on `fast`, 3 of 6 on 200 ms, and
/// none of 6 on 500 ms.
/// A timer that `extra` sets replaces the default here; the ones not set here have the
/// `recommended` profile's values (preemption hold 60 s, max flaps 3, ...).
fn advanced_timers(text: String, extra: &str) -> String {
    let defaults = [
        "heartbeat_interval_ms = 10\n",
        "heartbeat_loss_threshold = 50\n",
        "promotion_hold_ms = 0\n",
        "hello_interval_ms = 1000\n",
    ];
    let set_by_extra = |line: &&str| {
        let key = line.split(' ').next().unwrap_or_default();
        extra.lines().any(|l| l.split(' ').next() == Some(key))
    };
    let mut text = text.replace("timers = \"fast\"", "timers = \"advanced\"")
        + "\n[high_availability.advanced_timers]\n";
    for line in defaults.iter().filter(|line| !set_by_extra(line)) {
        text += line;
    }
    text + extra
}

/// The lab config for node `i` as a test edits it, on the lab tests' timers unless the test
/// chose its own (see [`advanced_timers`]) or `HAFW_LAB_TESTS_ON_FAST` is set (the built-in
/// `fast` profile then, for a host whose kernel preempts).
fn lab_config(edit: &dyn Fn(usize, String) -> String, i: usize, text: String) -> String {
    let text = edit(i, text);
    let builtin = std::env::var_os("HAFW_LAB_TESTS_ON_FAST").is_some();
    if !builtin && text.contains("timers = \"fast\"") {
        advanced_timers(text, "")
    } else {
        text
    }
}

impl Pair {
    /// Builds the topology and an echo server on the server's port 80; starts no controller.
    fn new(edit: &dyn Fn(usize, String) -> String) -> Pair {
        let run = PairRun::new(HAFW, &|i, text| lab_config(edit, i, text)).expect("HA lab");
        let stop_echo =
            hafw_lab::tcp_echo(&run.topo.server.name, "198.18.2.2:80".into()).expect("echo server");
        Pair {
            instances: run.instances.clone(),
            run,
            stop_echo,
        }
    }

    fn start_node(&mut self, i: usize) {
        self.run.start_node(i).expect("start hafw");
        let instance = self.instances[i].clone();
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            request(&instance, &Request::ShowHighAvailability).is_ok()
        });
        assert!(up, "fw{} did not come up:\n{}", i + 1, self.logs());
    }

    /// Both nodes started; waits for fw1 active and fw2 passive.
    fn start(edit: &dyn Fn(usize, String) -> String) -> Pair {
        let mut pair = Pair::new(edit);
        pair.start_node(0);
        pair.start_node(1);
        assert!(
            pair.wait_states(["active", "passive"], Duration::from_secs(10)),
            "election: {:?}\n{}",
            pair.states(),
            pair.logs()
        );
        pair
    }

    /// fw1 alone until it is active, with `sessions` established TCP sessions written into its
    /// table (no session events: only a bulk sync carries them), then fw2 starts.
    fn with_late_passive(edit: &dyn Fn(usize, String) -> String, sessions: u32) -> Pair {
        let mut pair = Pair::with_active_alone(edit, sessions);
        pair.start_node(1);
        pair
    }

    /// fw1 alone, active, holding `sessions` established sessions; fw2 not started.
    fn with_active_alone(edit: &dyn Fn(usize, String) -> String, sessions: u32) -> Pair {
        let mut pair = Pair::new(edit);
        pair.start_node(0);
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                pair.state(0) == "active"
            }),
            "{}",
            pair.logs()
        );
        hafw::testkit::write_established_sessions(&pair.instances[0], sessions).unwrap();
        pair
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        self.run.procs[i].as_ref().unwrap().signal(sig).unwrap();
    }

    /// Both logs, then what each node's HA thread saw of its own pauses and of the peer's
    /// heartbeat gaps: a false failover in a failing test shows there.
    fn logs(&self) -> String {
        let mut out = self.run.logs();
        for i in 0..2 {
            let Some(shell) = self.show(i).map(|v| v["shell"].clone()) else {
                continue;
            };
            let gaps: Vec<String> = shell["links"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(link, c)| {
                    let gap = c["max_heartbeat_gap_ms"].as_f64().unwrap_or(0.0);
                    format!("{link} {gap:.1} ms")
                })
                .collect();
            out += &format!(
                "--- fw{}: {} pauses (longest {:.1} ms); longest heartbeat gap: {} ---\n",
                i + 1,
                shell["pauses"],
                shell["longest_pause_ms"].as_f64().unwrap_or(0.0),
                gaps.join(", ")
            );
        }
        out
    }

    fn show(&self, i: usize) -> Option<serde_json::Value> {
        request(&self.instances[i], &Request::ShowHighAvailability).ok()
    }

    fn state(&self, i: usize) -> String {
        self.show(i)
            .and_then(|v| v["status"]["local"]["state"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "down".into())
    }

    fn states(&self) -> [String; 2] {
        [self.state(0), self.state(1)]
    }

    fn wait_states(&self, want: [&str; 2], timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(10), || self.states() == want)
    }

    /// A new TCP connection from the client to the server's echo port through the pair.
    fn connect(&self) -> std::io::Result<String> {
        in_netns(&self.run.topo.client.name, || -> std::io::Result<String> {
            let mut c = TcpStream::connect_timeout(
                &"198.18.2.2:80".parse().unwrap(),
                Duration::from_millis(500),
            )?;
            c.set_read_timeout(Some(Duration::from_millis(500)))?;
            c.write_all(b"through the pair")?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .expect("client namespace")
    }

    /// New connections succeed within `timeout` (switches and ARP caches settle after a
    /// takeover within a few announcements).
    fn connects_within(&self, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(50), || {
            self.connect().is_ok_and(|echo| echo == "through the pair")
        })
    }

    /// Runs tcpdump (`-n -l -U` and `args`) in the switches' namespace into `file` of the run's
    /// directory, and gives it time to start; it stops when the process is dropped.
    fn capture(&self, file: &str, args: &[&str]) -> (std::path::PathBuf, hafw_lab::LabProcess) {
        let path = self.run.dir.join(file);
        let argv: Vec<&str> = ["tcpdump", "-n", "-l", "-U"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let tcpdump = self.run.topo.switch.spawn(&argv, &path).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        (path, tcpdump)
    }

    /// Suspends fw1 by the operator's request and waits until fw2 has taken over.
    fn suspend_fw1(&self) {
        request(
            &self.instances[0],
            &Request::RequestHighAvailabilityState { functional: false },
        )
        .unwrap();
        assert!(
            self.wait_states(["suspended", "active"], Duration::from_secs(2)),
            "{:?}",
            self.states()
        );
    }

    /// Asserts that fw2 becomes active within `timeout`.
    fn assert_fw2_takes_over(&self, timeout: Duration) {
        assert!(
            wait_until(timeout, Duration::from_millis(5), || self.state(1)
                == "active"),
            "fw2 did not take over:\n{}",
            self.logs()
        );
    }

    fn links_down(&self, i: usize, links: &[&str]) {
        for l in links {
            self.run.topo.fw[i]
                .exec_ok(&["ip", "link", "set", l, "down"])
                .unwrap();
        }
    }
}

fn unchanged(_: usize, text: String) -> String {
    text
}

/// Input: the lab pair (fw1 priority 100, fw2 200), a capture on the client-side switch.
/// Output: fw1 active, fw2 passive; fw1's gratuitous ARPs for the floating IP from the virtual
/// MAC on the switch; traffic flows through the pair and the passive node forwards none of it.
#[test]
fn election_follows_priority_and_the_active_announces_its_virtual_mac() {
    let mut pair = Pair::new(&unchanged);
    let (capture, _tcpdump) = pair.capture("swc.txt", &["-i", HaPair::CLIENT_SWITCH, "-e", "arp"]);
    pair.start_node(0);
    pair.start_node(1);
    assert!(
        pair.wait_states(["active", "passive"], Duration::from_secs(10)),
        "{:?}\n{}",
        pair.states(),
        pair.logs()
    );
    let status = pair.show(0).unwrap();
    assert_eq!(status["status"]["peer"]["state"], "passive");
    assert_eq!(status["status"]["peer"]["pairing"], "paired");
    assert_eq!(status["shell"]["virtual_macs"]["eth1"], "02:68:61:01:00:01");
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );

    let garp = "02:68:61:01:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.1.1 tell 198.18.1.1";
    let seen = wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        std::fs::read_to_string(&capture).is_ok_and(|c| c.matches(garp).count() >= 2)
    });
    assert!(
        seen,
        "gratuitous ARPs from the virtual MAC on swc:\n{}",
        std::fs::read_to_string(&capture).unwrap_or_default()
    );
    // fw2 holds nothing: no virtual MAC, no floating IP.
    let fw2 = pair.run.topo.fw[1]
        .exec_ok(&["ip", "addr", "show", "eth1"])
        .unwrap();
    assert!(
        !fw2.contains("02:68:61") && !fw2.contains("198.18.1.1"),
        "{fw2}"
    );
}

/// Input: SIGKILL of the active node's controller. Output: the passive node takes over and new
/// connections succeed through it; the dead node's dataplane stops forwarding on its own.
#[test]
fn killing_the_active_process_hands_over() {
    let mut pair = Pair::start(&unchanged);
    assert!(pair.connects_within(Duration::from_secs(5)));
    let t = Instant::now();
    pair.signal(0, nix::sys::signal::Signal::SIGKILL);
    let took_over = wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
        pair.state(1) == "active"
    });
    let took = t.elapsed();
    assert!(took_over, "{}", pair.logs());
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
    eprintln!("takeover after SIGKILL seen by the CLI after {took:?}");
    // The dead node's XDP program is still attached (pinned) but its lease lapsed.
    let dump = pair.run.topo.fw[0]
        .exec_ok(&[
            "bpftool",
            "map",
            "dump",
            "pinned",
            hafw::dataplane::pin_dir(&pair.instances[0])
                .join("counters")
                .to_str()
                .unwrap(),
        ])
        .unwrap();
    assert!(dump.contains("drop_not_active"), "{dump}");
    // The dead node's kernel still holds the virtual MACs and addresses; what it sends from them
    // would pull the switch back to it. Its tc egress program drops it.
    let ping = pair.run.topo.fw[0]
        .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", HaPair::CLIENT_IP])
        .unwrap();
    assert!(
        !ping.status.success(),
        "the orphaned node's host reached the client"
    );
    let silenced =
        hafw::testkit::pinned_counter(&pair.instances[0], "drop_host_tx_not_active").unwrap();
    assert!(silenced > 0, "host frames dropped at egress: {silenced}");
    let _ = pair.run.procs[0].take();
}

/// Input: the active process is killed while every claim of the passive node (virtual MACs,
/// floating addresses) is held back 3 s, as a kernel busy with a failure may hold an `ip` run
/// back for tens of milliseconds. Output: new connections succeed through the new active node
/// long before its addresses are back: it announces the virtual MACs first and forwards by its
/// standby routes. Without either (claim before announcing; no route to the data networks while
/// passive) no connection gets through until the claim.
#[test]
fn the_new_active_forwards_before_its_addresses_are_back() {
    let mut pair = Pair::new(&unchanged);
    pair.start_node(0);
    pair.run
        .start_node_with_env(1, &["HAFW_TEST_CLAIM_DELAY_MS=3000"])
        .unwrap();
    assert!(
        pair.wait_states(["active", "passive"], Duration::from_secs(10)),
        "{}",
        pair.logs()
    );
    let fw2 = &pair.run.topo.fw[1];
    let routes = fw2.exec_ok(&["ip", "route", "show"]).unwrap();
    let standby = |prefix: &str| {
        routes
            .lines()
            .any(|l| l.starts_with(prefix) && l.trim_end().ends_with("metric 4242"))
    };
    assert!(
        standby("198.18.1.0/24 dev eth1") && standby("198.18.2.0/24 dev eth2"),
        "standby routes on the passive node:\n{routes}"
    );
    // The active node's neighbours reach the passive one, so it forwards without resolving.
    assert!(pair.connects_within(Duration::from_secs(5)));
    let synced = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        request(&pair.instances[1], &Request::ShowStateSync)
            .is_ok_and(|v| v["neighbours_installed"].as_u64().unwrap_or(0) >= 2)
    });
    assert!(synced, "{}", pair.logs());

    let killed = Instant::now();
    pair.signal(0, nix::sys::signal::Signal::SIGKILL);
    pair.assert_fw2_takes_over(Duration::from_secs(2));
    assert!(
        pair.connects_within(Duration::from_secs(1)),
        "no connection through the new active node before its claim:\n{}",
        pair.logs()
    );
    let through = killed.elapsed();
    let has_address = |fw: &hafw_lab::Netns| {
        fw.exec_ok(&["ip", "-br", "addr", "show", "dev", "eth1"])
            .is_ok_and(|a| a.contains("198.18.1.1/24"))
    };
    assert!(
        !has_address(fw2),
        "the claim was not held back (test hook); connected {through:?} after the kill"
    );
    eprintln!("connected through fw2 {through:?} after the kill, before its claim");
    // The claim still completes; the kernel's connected route then wins over the standby one.
    assert!(
        wait_until(Duration::from_secs(6), Duration::from_millis(50), || {
            has_address(fw2)
        }),
        "{}",
        pair.logs()
    );
    let _ = pair.run.procs[0].take();
}

/// Input: every link of the active node goes down. Output: the passive node takes over at once
/// and new connections succeed through it.
#[test]
fn downing_all_links_of_the_active_hands_over() {
    let pair = Pair::start(&unchanged);
    pair.links_down(0, &HaPair::FW_LINKS);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
}

/// Whether both nodes are active at any moment of `watch`.
fn both_active_during(pair: &Pair, watch: Duration) -> bool {
    let deadline = Instant::now() + watch;
    while Instant::now() < deadline {
        if pair.states() == ["active", "active"] {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Input: only HA1 is cut, the heartbeat backup over management still works. Output: never two
/// active nodes. Control: the same cut without a heartbeat backup does make both active (split
/// brain), so the check can fail.
#[test]
fn cutting_only_ha1_with_heartbeat_backup_keeps_one_active() {
    let pair = Pair::start(&unchanged);
    pair.links_down(0, &["ha1"]);
    assert!(
        !both_active_during(&pair, Duration::from_secs(2)),
        "{}",
        pair.logs()
    );
    assert_eq!(pair.states(), ["active", "passive"]);
    let link = &pair.show(1).unwrap()["shell"]["links"]["ha1"];
    assert_eq!(link["carrier"], false, "{link}");
    drop(pair);

    let no_backup = |_: usize, text: String| {
        let start = text.find("[high_availability.heartbeat_backup]").unwrap();
        let end = text.find("[high_availability.ha2]").unwrap();
        format!("{}{}", &text[..start], &text[end..])
    };
    let pair = Pair::start(&no_backup);
    pair.links_down(0, &["ha1"]);
    assert!(
        both_active_during(&pair, Duration::from_secs(2)),
        "without heartbeat backup, losing HA1 must look like a dead peer: {:?}",
        pair.states()
    );
}

/// Input: fw2 runs alone and becomes active; then fw1 (better priority, both preemptive) joins.
/// Output: fw1 joins passive and takes the active role only after the preemption hold (2 s
/// here); the handover is passive-first, never two actives.
#[test]
fn preemption_returns_the_active_role_after_the_hold() {
    let hold = Duration::from_secs(2);
    let edit = |_: usize, text: String| advanced_timers(text, "preemption_hold_ms = 2000\n");
    let mut pair = Pair::new(&edit);
    pair.start_node(1);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            pair.state(1) == "active"
        }),
        "fw2 alone must become active: {}",
        pair.logs()
    );
    pair.start_node(0);
    assert!(
        pair.wait_states(["passive", "active"], Duration::from_secs(5)),
        "{:?}\n{}",
        pair.states(),
        pair.logs()
    );
    let paired = Instant::now();
    assert!(
        !both_active_during(&pair, hold / 2),
        "preempted before the hold"
    );
    assert_eq!(pair.states(), ["passive", "active"], "hold not respected");
    assert!(
        pair.wait_states(["active", "passive"], Duration::from_secs(6)),
        "{:?}\n{}",
        pair.states(),
        pair.logs()
    );
    let took = paired.elapsed();
    assert!(took >= hold - Duration::from_millis(200), "took {took:?}");
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
}

/// Input: `request high-availability state suspend` on the active node, then `functional`.
/// Output: the peer takes over at once; the suspended node holds nothing and comes back passive.
#[test]
fn operator_suspend_hands_over_and_functional_returns_passive() {
    let pair = Pair::start(&unchanged);
    pair.suspend_fw1();
    assert!(pair.connects_within(Duration::from_secs(5)));
    request(
        &pair.instances[0],
        &Request::RequestHighAvailabilityState { functional: true },
    )
    .unwrap();
    assert!(pair.wait_states(["passive", "active"], Duration::from_secs(2)));
}

/// `hafw ha keygen` into `dir`, returning (private key file, public key file).
fn keygen(dir: &std::path::Path, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let out = std::process::Command::new(HAFW)
        .args(["ha", "keygen", "--key"])
        .arg(&key)
        .arg("--public")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        key.to_string_lossy().into_owned(),
        public.to_string_lossy().into_owned(),
    )
}

/// Input: HA1 encryption on, each node importing the other's public key. Output: the pair forms
/// over the authenticated channel. Then fw2 presents a key fw1 did not import: fw1 refuses it
/// (counted and shown with the reason) and never pairs with it.
#[test]
fn encryption_pairs_with_the_imported_key_and_refuses_any_other() {
    let dir = std::env::temp_dir().join(format!("{}-keys", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = [
        keygen(&dir, "fw1"),
        keygen(&dir, "fw2"),
        keygen(&dir, "impostor"),
    ];
    let encryption = |own: usize, peer: usize| {
        format!(
            "\n[high_availability.encryption]\nkey_file = \"{}\"\npeer_key_file = \"{}\"\n",
            keys[own].0, keys[peer].1
        )
    };
    let good = |i: usize, text: String| text + &encryption(i, 1 - i);
    let pair = Pair::start(&good);
    // A false peer loss under load unpairs the peer until the next hello (a round trip): wait for
    // that rather than read one instant.
    let paired = wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        pair.show(0)
            .is_some_and(|v| v["status"]["peer"]["pairing"] == "paired")
    });
    let show = pair.show(0).unwrap();
    assert_eq!(show["shell"]["encryption"], "on");
    assert!(paired, "{show}\n{}", pair.logs());
    assert!(pair.connects_within(Duration::from_secs(5)));
    drop(pair);

    // fw2 holds the impostor's key; fw1 expects fw2's.
    let bad = |i: usize, text: String| {
        text + &if i == 0 {
            encryption(0, 1)
        } else {
            encryption(2, 0)
        }
    };
    let mut pair = Pair::new(&bad);
    pair.start_node(0);
    pair.start_node(1);
    let refused = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        pair.show(0).is_some_and(|v| {
            v["shell"]["links"]["ha1"]["refused_unauthenticated"]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
    });
    let show = pair.show(0).unwrap();
    assert!(refused, "{show}\n{}", pair.logs());
    let reason = show["shell"]["links"]["ha1"]["last_refusal"].to_string();
    assert!(reason.contains("not authenticated"), "{reason}");
    std::thread::sleep(Duration::from_secs(1));
    let show = pair.show(0).unwrap();
    assert_ne!(show["status"]["peer"]["pairing"], "paired", "{show}");
    assert_eq!(
        show["shell"]["links"]["ha1"]["hellos_received"], 0,
        "{show}"
    );
    assert_eq!(
        show["shell"]["links"]["ha1"]["heartbeats_received"], 0,
        "{show}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Input: SIGTERM to the active node's controller (a planned restart), with the `recommended`
/// timers whose failure detection takes 6 s. Output: the peer takes over within a second,
/// because the stopping node hands the role over (suspends and says so) instead of vanishing.
#[test]
fn a_planned_stop_hands_over_at_once() {
    let recommended =
        |_: usize, text: String| text.replace("timers = \"fast\"", "timers = \"recommended\"");
    let pair = Pair::start(&recommended);
    let t = Instant::now();
    pair.signal(0, nix::sys::signal::Signal::SIGTERM);
    pair.assert_fw2_takes_over(Duration::from_secs(1));
    eprintln!("handover after SIGTERM: {:?}", t.elapsed());
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
}

/// Opens `n` TCP connections from the client to the echo server through the pair and checks each
/// echoes once.
fn open_connections(pair: &Pair, n: usize) -> Vec<TcpStream> {
    let conns = in_netns(&pair.run.topo.client.name, move || {
        (0..n)
            .map(|_| {
                TcpStream::connect_timeout(
                    &"198.18.2.2:80".parse().unwrap(),
                    Duration::from_secs(2),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .unwrap()
    .expect("connections through the active node");
    for mut c in &conns {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"before").unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).unwrap();
    }
    conns
}

/// Sends on every connection, waits, then counts the connections whose echo came back.
fn connections_alive(conns: &[TcpStream], wait: Duration) -> usize {
    for mut c in conns {
        let _ = c.write_all(b"after!");
    }
    std::thread::sleep(wait);
    conns
        .iter()
        .filter(|c| {
            let mut c = *c;
            c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let mut buf = [0u8; 6];
            c.read_exact(&mut buf).is_ok() && &buf == b"after!"
        })
        .count()
}

/// Number of sessions fw `i` holds (from `show session all`).
fn session_count(pair: &Pair, i: usize) -> usize {
    request(&pair.instances[i], &Request::ShowSessions)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Kills the active node's controller and downs its links, as a dead box would.
fn kill_active(pair: &mut Pair) {
    pair.signal(0, nix::sys::signal::Signal::SIGKILL);
    pair.links_down(0, &HaPair::FW_LINKS);
    let _ = pair.run.procs[0].take();
}

/// Input: 1,000 established TCP connections carrying data, UDP flows and a ping through fw1;
/// then fw1 dies (SIGKILL and links down). Output: every TCP connection exchanges data again
/// through fw2, UDP flows and the ping continue. Control: with session sync off the same
/// connections die (strict TCP on fw2 drops their segments), so the test can fail.
#[test]
fn established_sessions_survive_the_failover() {
    const N: usize = 1000;
    let mut pair = Pair::start(&unchanged);
    let udp_echo = in_netns(&pair.run.topo.server.name, || {
        std::net::UdpSocket::bind("198.18.2.2:53")
    })
    .unwrap()
    .unwrap();
    udp_echo
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = pair.stop_echo.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = udp_echo.recv_from(&mut buf) {
                let _ = udp_echo.send_to(&buf[..n], from);
            }
        }
    });
    let udp: Vec<std::net::UdpSocket> = in_netns(&pair.run.topo.client.name, || {
        (0..10)
            .map(|_| {
                let s = std::net::UdpSocket::bind("198.18.1.2:0").unwrap();
                s.connect("198.18.2.2:53").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                s
            })
            .collect()
    })
    .unwrap();
    let udp_ok = |socks: &[std::net::UdpSocket]| {
        socks
            .iter()
            .filter(|s| {
                let mut buf = [0u8; 8];
                s.send(b"udp").is_ok() && s.recv(&mut buf).is_ok()
            })
            .count()
    };
    assert_eq!(udp_ok(&udp), 10);
    let conns = open_connections(&pair, N);
    let ping = pair
        .run
        .topo
        .client
        .command(&["ping", "-i", "0.05", "-w", "8", "198.18.2.2"]);
    let ping = std::thread::spawn(move || {
        let mut ping = ping;
        ping.output()
    });
    // Every session reaches fw2 through HA2.
    let synced = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        session_count(&pair, 1) >= N + 10
    });
    assert!(synced, "fw2 holds {} sessions", session_count(&pair, 1));
    std::thread::sleep(Duration::from_secs(1));
    kill_active(&mut pair);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    let alive = connections_alive(&conns, Duration::from_secs(2));
    assert_eq!(
        alive,
        N,
        "connections alive after the failover\n{}",
        pair.logs()
    );
    assert_eq!(udp_ok(&udp), 10, "UDP flows after the failover");
    let out = ping.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("ping across the failover: {summary}");
    let received: usize = summary
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(received > 100, "ping stopped: {summary}");
    drop(conns);
    drop(pair);

    // Control: session sync off.
    let no_sync = |_: usize, text: String| {
        text.replace(
            "interface = \"ha2\"\n",
            "interface = \"ha2\"\nsession_sync = false\n",
        )
    };
    let mut pair = Pair::start(&no_sync);
    let conns = open_connections(&pair, 100);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(session_count(&pair, 1), 0, "nothing synced with sync off");
    kill_active(&mut pair);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    assert_eq!(
        connections_alive(&conns, Duration::from_secs(2)),
        0,
        "without sync, established connections must die on the new active node"
    );
}

/// Input: a TCP connection whose SYN reaches fw2 by HA2 sync and whose handshake then completes
/// through fw1 with HA2 cut (fw1 drops what it sends on both HA2 links), so fw2's copy of the
/// session stays `new`, as it would when fw1 dies with the handshake's state changes in flight;
/// the connection carries data; then fw1 dies. Output: the connection carries data through fw2.
/// Before synced sessions took an ACK as the handshake done, strict TCP on fw2 dropped every
/// segment of it.
#[test]
fn a_connection_whose_handshake_was_not_synced_survives_the_failover() {
    let mut pair = Pair::start(&unchanged);
    // The server's SYN-ACK is held back until fw2 holds the SYN's session and HA2 is cut.
    let hold = "table inet hold {\n chain out {\n  type filter hook output priority 0;\n  tcp flags & (syn | ack) == syn | ack drop\n }\n}\n";
    nft(&pair.run.topo.server, hold);
    let client = pair.run.topo.client.name.clone();
    let connecting = std::thread::spawn(move || {
        in_netns(&client, || {
            TcpStream::connect_timeout(&"198.18.2.2:80".parse().unwrap(), Duration::from_secs(10))
        })
    });
    let synced_new = || {
        let states = tcp_states(&pair, 1);
        states.len() == 1 && states.values().all(|&s| s == SessionState::New as u8)
    };
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            synced_new
        ),
        "fw2 holds the SYN's session: {:?}\n{}",
        tcp_states(&pair, 1),
        pair.logs()
    );
    let cut = "table netdev cut {\n chain ha2 {\n  type filter hook egress device \"ha2\" priority 0;\n  drop\n }\n chain ha2b {\n  type filter hook egress device \"ha2b\" priority 0;\n  drop\n }\n}\n";
    nft(&pair.run.topo.fw[0], cut);
    pair.run
        .topo
        .server
        .exec_ok(&["nft", "delete", "table", "inet", "hold"])
        .unwrap();
    // The server sends its SYN-ACK again after a second.
    let mut conn = connecting
        .join()
        .unwrap()
        .unwrap()
        .expect("handshake through fw1");
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    conn.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).unwrap();
    let on_fw1: Vec<u8> = tcp_states(&pair, 0).into_values().collect();
    assert_eq!(on_fw1, [SessionState::Established as u8], "fw1");
    assert!(synced_new(), "fw2's copy lags: {:?}", tcp_states(&pair, 1));

    kill_active(&mut pair);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    assert_eq!(
        connections_alive(std::slice::from_ref(&conn), Duration::from_secs(2)),
        1,
        "the connection through fw2\n{}",
        pair.logs()
    );
    let on_fw2: Vec<u8> = tcp_states(&pair, 1).into_values().collect();
    assert_eq!(on_fw2, [SessionState::Established as u8], "fw2");
}

/// Input: 20 TCP connections through fw1 (active); fw1's controller is frozen (SIGSTOP) until fw2
/// has taken over, 20 more connections are opened through fw2 (their sessions exist on fw2
/// only), and fw1 runs again (SIGCONT). Output: fw1 goes passive with the stall as its reason,
/// fw2 stays active throughout, and all 40 connections exchange data. Without the stall rule fw1
/// refreshed its lease, forwarded beside fw2, won the split brain on priority, and the 20
/// connections opened meanwhile died on it (strict TCP: it never had their sessions).
#[test]
fn a_frozen_active_node_yields_to_the_node_that_took_over() {
    let pair = Pair::start(&unchanged);
    let before = open_connections(&pair, 20);
    // Synced whole: a copy still in its handshake would age out as one (`tcp_init`) before this
    // test's last check (the lag has a test of its own).
    let established = || {
        tcp_states(&pair, 1)
            .values()
            .filter(|&&s| s == SessionState::Established as u8)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            established() == 20
        }),
        "synced established: {}",
        established()
    );
    pair.signal(0, nix::sys::signal::Signal::SIGSTOP);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    let meanwhile = open_connections(&pair, 20);
    std::thread::sleep(Duration::from_millis(500));
    pair.signal(0, nix::sys::signal::Signal::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(pair.state(1), "active", "fw2 yielded\n{}", pair.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    let fw1 = pair.show(0).expect("fw1 answers");
    let local = &fw1["status"]["local"];
    assert_eq!(local["state"], "passive", "{fw1:#}");
    assert!(
        local["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("stalled for"),
        "{fw1:#}"
    );
    let alive = [
        connections_alive(&before, Duration::from_secs(1)),
        connections_alive(&meanwhile, Duration::from_secs(1)),
    ];
    assert_eq!(
        alive,
        [20, 20],
        "{}\nfw2: TCP sessions by state (new, syn-recv, established, fin-wait, time-wait, closed) \
         {:?}; counters {}",
        pair.logs(),
        tcp_states(&pair, 1).values().fold([0; 6], |mut n, &s| {
            n[usize::from(s).min(5)] += 1;
            n
        }),
        request(&pair.instances[1], &Request::ShowCounters).unwrap_or_default()
    );
}

/// Input: a preemptive pair with a 1 s preemption hold; fw1, the preferred node, is frozen
/// (SIGSTOP) until fw2 has taken over and then runs again (SIGCONT), four times, each after it took
/// the role back by preemption. Output: fw1 yields after each of the first three stalls; the
/// fourth departure from active within 15 minutes is its third flap, so it suspends itself ("too
/// many flaps") and fw2 keeps the role. Before stall yields counted as flaps, fw1 took the role
/// back every time.
#[test]
fn a_node_that_keeps_stalling_suspends_itself_at_the_flap_limit() {
    let edit = |_: usize, text: String| advanced_timers(text, "preemption_hold_ms = 1000\n");
    let pair = Pair::start(&edit);
    for round in 0..4 {
        assert!(
            pair.wait_states(["active", "passive"], Duration::from_secs(5)),
            "round {round}: {:?}\n{}",
            pair.states(),
            pair.logs()
        );
        pair.signal(0, nix::sys::signal::Signal::SIGSTOP);
        pair.assert_fw2_takes_over(Duration::from_secs(5));
        pair.signal(0, nix::sys::signal::Signal::SIGCONT);
        let left = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            matches!(pair.state(0).as_str(), "passive" | "suspended")
        });
        assert!(
            left,
            "round {round}: fw1 {}\n{}",
            pair.state(0),
            pair.logs()
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pair.states(), ["suspended", "active"], "{}", pair.logs());
    let fw1 = pair.show(0).expect("fw1 answers");
    let reason = fw1["status"]["local"]["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("too many flaps"), "{fw1:#}");
}

/// Input: 20 TCP connections through fw1 (active); both controllers are frozen together for
/// a second (SIGSTOP, as one overloaded host stalls both: longer than the lease, and than the
/// peer-dead time, which fw2, running again first, must not count against fw1), then run again, fw2 first. Output: no
/// state changes on either node (both kept their transition histories), fw1 held forwarding
/// after the stall and forwards again once fw2 showed it is still passive ("forwarding again" in
/// its log), and every connection exchanges data.
#[test]
fn a_stall_of_both_nodes_changes_no_state_and_forwarding_resumes() {
    let pair = Pair::start(&unchanged);
    let conns = open_connections(&pair, 20);
    let transitions = |i: usize| {
        pair.show(i).expect("answers")["status"]["transitions"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = [transitions(0), transitions(1)];
    pair.signal(0, nix::sys::signal::Signal::SIGSTOP);
    pair.signal(1, nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    pair.signal(1, nix::sys::signal::Signal::SIGCONT);
    pair.signal(0, nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pair.states(), ["active", "passive"], "{}", pair.logs());
    assert_eq!([transitions(0), transitions(1)], before, "{}", pair.logs());
    let logs = pair.logs();
    assert!(logs.contains("forwarding held after a stall"), "{logs}");
    assert!(logs.contains("forwarding again"), "{logs}");
    assert_eq!(
        connections_alive(&conns, Duration::from_secs(1)),
        20,
        "{logs}"
    );
}

/// Input: fw1 takes over 1,000 ms after losing its peer (500 ms to declare it dead, promotion
/// hold 500 ms: its own lease would be 666 ms), fw2 after 500 ms (promotion hold 0). Output: once
/// paired, fw1's lease is 333 ms, two thirds of fw2's takeover time, in its dataplane (the pinned
/// config's lease ends at most that far ahead) and in `show high-availability all`, which also
/// warns of the difference. With its own 666 ms lease, a stopped fw1 would forward beside fw2 for
/// 166 ms.
#[test]
fn the_active_nodes_lease_ends_before_its_quicker_peer_takes_over() {
    let timers = |i: usize, text: String| {
        if i == 0 {
            advanced_timers(text, "promotion_hold_ms = 500\n")
        } else {
            advanced_timers(text, "")
        }
    };
    let pair = Pair::start(&timers);
    let show = pair.show(0).expect("fw1 answers");
    assert_eq!(show["shell"]["lease_ms"], 333, "{show:#}");
    let warnings = show["status"]["peer"]["warnings"].to_string();
    assert!(
        warnings.contains("takes over 1000 ms after losing its peer, the peer after 500 ms"),
        "{warnings}"
    );
    for _ in 0..20 {
        let config = hafw::testkit::pinned_dataplane_config(&pair.instances[0]).unwrap();
        let ahead = config
            .active_lease_expires_ns
            .saturating_sub(hafw::aging::monotonic_now_ns());
        assert!(ahead <= 333_333_334, "lease ends {ahead} ns ahead");
        std::thread::sleep(Duration::from_millis(7));
    }
}

/// Input: 100,000 established sessions in the active node's table, then the passive node starts.
/// Output: the passive node reports `state sync complete` after one bulk sync, with its duration,
/// and holds every session.
#[test]
fn a_late_passive_gets_the_whole_table_by_bulk_sync() {
    const N: u32 = 100_000;
    let pair = Pair::with_late_passive(&unchanged, N);
    let complete = state_sync_complete(&pair, Duration::from_secs(30));
    let sync = request(&pair.instances[1], &Request::ShowStateSync).unwrap();
    assert!(complete, "{sync:#}\n{}", pair.logs());
    let bulk_ms = sync["last_bulk_sync_received_ms"].as_f64().unwrap();
    let held = hafw::testkit::pinned_sessions(&pair.instances[1])
        .unwrap()
        .keys()
        .count();
    eprintln!("bulk sync of {N} sessions: {bulk_ms:.1} ms; passive holds {held}");
    assert!(held >= N as usize, "passive holds {held} of {N}: {sync:#}");
    assert_eq!(sync["sequence"]["missing"], 0, "{sync:#}");
}

/// Input: the passive node's tables are sized for 1,024 sessions each (they hold at least that,
/// and refuse by twice that); the active node has 3,000 and sends them by bulk sync. Output: the
/// passive node keeps at least 1,024 and at most 2,048, counts the rest as refused
/// (`session_write_failed`), and logs that they would not survive a failover; the table went
/// once.
#[test]
fn a_passive_with_a_full_table_counts_and_logs_the_sessions_it_refuses() {
    const N: u32 = 3_000;
    const PASSIVE_TABLE: u32 = 1_024;
    let small_passive_table = |i: usize, text: String| {
        if i == 1 {
            text.replace(
                "session_table_size = 262144",
                &format!("session_table_size = {PASSIVE_TABLE}"),
            )
        } else {
            text
        }
    };
    let pair = Pair::with_late_passive(&small_passive_table, N);
    let refused = || {
        request(&pair.instances[1], &Request::ShowStateSync)
            .ok()
            .and_then(|v| v["received"]["session_write_failed"].as_u64())
            .unwrap_or(0)
    };
    // At least: a retransmission would count its refused records again.
    let counted = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        refused() + session_count(&pair, 1) as u64 >= u64::from(N)
    });
    let held = session_count(&pair, 1) as u32;
    assert!(
        counted,
        "refused {}, held {held}\n{}",
        refused(),
        pair.logs()
    );
    assert!(
        (PASSIVE_TABLE..=2 * PASSIVE_TABLE).contains(&held),
        "held {held}"
    );
    // Logged as the passive node's periodic look at HA2 finds them, possibly in parts (one line
    // per 10 s at most).
    let logged_refusals = || -> u64 {
        let log = std::fs::read_to_string(pair.run.log(1)).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                line.split_once("HA2: ")?
                    .1
                    .split_once(" synced session records refused")
            })
            .filter_map(|(count, _)| count.parse::<u64>().ok())
            .sum()
    };
    let logged = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        logged_refusals() == refused()
    });
    assert!(logged, "logged {}\n{}", logged_refusals(), pair.logs());
    // One bulk sync: a hello the passive node sent before it turned passive, arriving after its
    // heartbeat that said passive, used to restart sync and so send the table twice.
    let active_log = std::fs::read_to_string(pair.run.log(0)).unwrap_or_default();
    assert_eq!(
        active_log.matches("HA2: bulk sync of").count(),
        1,
        "{}",
        pair.logs()
    );
}

/// Input: a pair whose UDP sessions time out after 2 s; 100 TCP sessions on the active node
/// before the passive node joins, 3 sessions written straight into the passive node's table after
/// its bulk sync, 50 UDP flows through the active node. Output: the passive node removes the 3
/// (its complete bulk sync did not write them: the active node does not have them), and the UDP
/// sessions, once they age out on the active node, leave the passive node too (their deletes are
/// synced); the TCP sessions stay on both. Without either, the passive table would only grow: it
/// never ages synced sessions on its own, and a full table refuses new ones.
#[test]
fn the_passive_table_follows_the_active_as_sessions_age_out_and_after_a_bulk_sync() {
    use hafw_common::session::{FAMILY_IPV4, PROTO_UDP, SessionKey, SessionValue};
    const UDP_FLOWS: u32 = 50;
    let short_udp = |_: usize, text: String| text.replace("udp = 30", "udp = 2");
    let pair = Pair::with_late_passive(&short_udp, 100);
    assert!(
        state_sync_complete(&pair, Duration::from_secs(20)),
        "{}",
        pair.logs()
    );

    let mut passive = hafw::testkit::pinned_sessions(&pair.instances[1]).unwrap();
    let ghost = |port: u16| SessionKey {
        addr_lo: [u32::from_ne_bytes([198, 18, 1, 9]), 0, 0, 0],
        addr_hi: [u32::from_ne_bytes([198, 18, 2, 9]), 0, 0, 0],
        port_lo: port,
        port_hi: 53,
        proto: PROTO_UDP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    };
    for port in 1..=3 {
        passive
            .insert(&ghost(port), &SessionValue::default())
            .unwrap();
    }
    let swept = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        (1..=3).all(|port| passive.get(&ghost(port)).is_none())
    });
    assert!(
        swept,
        "sessions the active node lacks stayed\n{}",
        pair.logs()
    );
    assert_eq!(session_keys(&pair, 1).len(), 100, "the synced ones stay");

    hafw::testkit::send_lab_udp_flows(&pair.run.topo.client.name, 0, UDP_FLOWS, |_, _| true)
        .unwrap();
    let udp_on = |i: usize| {
        session_keys(&pair, i)
            .iter()
            .filter(|k| k.proto == PROTO_UDP)
            .count()
    };
    let synced = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        udp_on(0) == UDP_FLOWS as usize && udp_on(1) == UDP_FLOWS as usize
    });
    assert!(synced, "udp: active {}, passive {}", udp_on(0), udp_on(1));
    let aged_out = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        udp_on(0) == 0 && udp_on(1) == 0
    });
    assert!(
        aged_out,
        "udp after their timeout: active {}, passive {}\n{}",
        udp_on(0),
        udp_on(1),
        pair.logs()
    );
    assert_eq!(session_keys(&pair, 1).len(), 100, "the TCP sessions stay");
}

/// Whether fw2 reports `state sync complete` within `wait`.
fn state_sync_complete(pair: &Pair, wait: Duration) -> bool {
    wait_until(wait, Duration::from_millis(100), || {
        request(&pair.instances[1], &Request::ShowStateSync)
            .is_ok_and(|v| v["status"] == "state sync complete")
    })
}

/// Input: passive link state `shutdown`. Output: the passive node's data links are down while it
/// is passive, come up when it takes over, and carry the traffic then.
#[test]
fn passive_link_state_shutdown_keeps_the_passive_data_links_down() {
    let shutdown = |_: usize, text: String| {
        text.replace(
            "passive_link_state = \"auto\"",
            "passive_link_state = \"shutdown\"",
        )
    };
    let mut pair = Pair::start(&shutdown);
    let admin_up = |pair: &Pair, i: usize, link: &str| {
        let out = pair.run.topo.fw[i]
            .exec_ok(&["ip", "-o", "link", "show", link])
            .unwrap();
        let flags = out
            .split('<')
            .nth(1)
            .unwrap_or("")
            .split('>')
            .next()
            .unwrap_or("");
        flags.split(',').any(|f| f == "UP")
    };
    for link in ["eth1", "eth2"] {
        assert!(admin_up(&pair, 0, link), "active fw1 {link} up");
        assert!(!admin_up(&pair, 1, link), "passive fw2 {link} down");
    }
    assert!(pair.connects_within(Duration::from_secs(5)));
    kill_active(&mut pair);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    // The claim brings the links up on the host worker, just after the state change.
    for link in ["eth1", "eth2"] {
        let up = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
            admin_up(&pair, 1, link)
        });
        assert!(up, "new active fw2 {link} up\n{}", pair.logs());
    }
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
}

/// Input: an HA1 backup link and no heartbeat backup; HA1 is cut. Output: hellos and heartbeats
/// continue over the HA1 backup, so neither node changes state (the control without any backup
/// is in `cutting_only_ha1_with_heartbeat_backup_keeps_one_active`: there both become active).
#[test]
fn the_ha1_backup_carries_the_pair_when_ha1_is_cut() {
    let with_backup = |i: usize, text: String| {
        let start = text.find("[high_availability.heartbeat_backup]").unwrap();
        let end = text.find("[high_availability.ha2]").unwrap();
        let backup = format!(
            "[high_availability.ha1_backup]\ninterface = \"ha1b\"\naddress = \"169.254.4.{}/30\"\npeer = \"169.254.4.{}\"\n\n",
            i + 1,
            2 - i
        );
        format!("{}{backup}{}", &text[..start], &text[end..])
    };
    let pair = Pair::start(&with_backup);
    let hellos = |pair: &Pair| {
        pair.show(1).unwrap()["shell"]["links"]["ha1-backup"]["hellos_received"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            pair.show(1)
                .is_some_and(|v| v["shell"]["links"]["ha1-backup"]["connected"] == true)
        }),
        "HA1 backup connected: {}",
        pair.show(1).unwrap()["shell"]["links"]
    );
    let before = hellos(&pair);
    pair.links_down(0, &["ha1"]);
    assert!(
        !both_active_during(&pair, Duration::from_secs(3)),
        "{}",
        pair.logs()
    );
    assert_eq!(pair.states(), ["active", "passive"]);
    assert!(hellos(&pair) > before, "hellos go on over the HA1 backup");
}

/// Whether the active node holds (nearly) all of `flows` new sessions: a busy host may drop a few
/// of the generator's frames on the client side before they reach the firewall, so those flows
/// never exist; what the test checks is that the passive holds every session the active does.
fn created(sessions: usize, flows: u32) -> bool {
    sessions as u64 * 100 >= u64::from(flows) * 98
}

/// The state of every TCP session fw `i` holds.
fn tcp_states(
    pair: &Pair,
    i: usize,
) -> std::collections::HashMap<hafw_common::session::SessionKey, u8> {
    hafw::testkit::pinned_sessions(&pair.instances[i])
        .unwrap()
        .iter()
        .filter(|(k, _)| k.proto == 6)
        .map(|(k, v)| (k, v.state))
        .collect()
}

/// The session keys fw `i` holds.
fn session_keys(
    pair: &Pair,
    i: usize,
) -> std::collections::HashSet<hafw_common::session::SessionKey> {
    hafw::testkit::pinned_sessions(&pair.instances[i])
        .unwrap()
        .keys()
        .collect()
}

/// Input: a UDP flow sends every 200 ms for 10 s (UDP timeout 8 s), then stops, and the active
/// node is killed. Output: while the flow runs, the passive node's copy of its session stays
/// current (the active node re-syncs busy sessions' ages), and after the takeover the new active
/// node keeps the session past two aging walks. Without the refresh the copy keeps the age of its
/// creation, 10 s idle; the new active node then keeps the session anyway, since it ages one
/// with no packet since the takeover from the takeover (before it did, the first walk after the
/// takeover removed it).
#[test]
fn busy_sessions_keep_current_ages_on_the_passive_and_survive_a_takeover_idle() {
    let mut pair = Pair::start(&|_, text: String| text.replace("udp = 30", "udp = 8"));
    // A listener, so the server answers nothing (no port unreachable).
    let _server = in_netns(&pair.run.topo.server.name, || {
        std::net::UdpSocket::bind((HaPair::SERVER_IP, 53))
    })
    .unwrap()
    .unwrap();
    let client = in_netns(&pair.run.topo.client.name, || {
        std::net::UdpSocket::bind((HaPair::CLIENT_IP, 0))
    })
    .unwrap()
    .unwrap();
    client.connect((HaPair::SERVER_IP, 53)).unwrap();
    // Keys hold ports as they are on the wire.
    let port = client.local_addr().unwrap().port().to_be();
    let flow = |i: usize| {
        hafw::testkit::pinned_sessions(&pair.instances[i])
            .unwrap()
            .iter()
            .find(|(k, _)| k.proto == 17 && (k.port_lo == port || k.port_hi == port))
            .map(|(_, v)| v)
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        client.send(b"keep me").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = flow(1).expect("the flow's session on the passive node");
    let idle = Duration::from_nanos(hafw::aging::monotonic_now_ns().saturating_sub(v.last_seen_ns));
    assert!(
        idle < Duration::from_secs(4),
        "the passive node's copy is {idle:?} idle after 10 s of traffic\n{}",
        pair.logs()
    );
    let active = request(&pair.instances[0], &Request::ShowStateSync).unwrap();
    assert!(
        active["sent"]["age_refreshes_sent"].as_u64().unwrap_or(0) >= 3,
        "{active:#}\n{}",
        pair.logs()
    );
    pair.signal(0, nix::sys::signal::Signal::SIGKILL);
    pair.assert_fw2_takes_over(Duration::from_secs(2));
    // Two aging walks on the new active node (one a second).
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(
        flow(1).is_some(),
        "the new active node aged the idle session out:\n{}",
        pair.logs()
    );
    let _ = pair.run.procs[0].take();
}

/// Input: fw1's HA2 link with MTU 1400 (a full HA2 message over the lab's ethernet transport
/// needs 1464). Output: fw1 refuses to sync over it and its log says why; the old code sent
/// anyway, the kernel refused every full message, and only a counter grew.
#[test]
fn an_ha2_link_with_too_small_an_mtu_is_refused_with_the_reason() {
    let mut pair = Pair::new(&unchanged);
    pair.run.topo.fw[0]
        .exec_ok(&["ip", "link", "set", "ha2", "mtu", "1400"])
        .unwrap();
    pair.start_node(0);
    pair.start_node(1);
    let said = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        pair.logs()
            .contains("HA2 interface ha2: MTU 1400 is below the 1464 octets")
    });
    assert!(said, "{}", pair.logs());
}

/// Drops one in 20 frames fw`i` sends on its HA2 link (nft table `netdev lossy`).
fn drop_on_ha2(pair: &Pair, i: usize) {
    let lossy = "table netdev lossy {\n chain egress {\n  type filter hook egress device \"ha2\" priority 0;\n  numgen random mod 20 == 0 counter drop\n }\n}\n";
    nft(&pair.run.topo.fw[i], lossy);
}

/// Loads an nftables ruleset in `ns`.
fn nft(ns: &hafw_lab::Netns, ruleset: &str) {
    let nft = ns
        .command(&["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut nft = nft.expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft ruleset");
}

/// Input: 200,000 sessions on the active node (a bulk sync of 11,112 messages, more than the
/// 8,192 the resend buffer keeps in normal times), then the passive node starts with 5% of HA2
/// frames dropped. Output: `state sync complete` with every session on the passive node, the
/// losses filled from the resend buffer, no resync. The old code answered a loss early in the
/// bulk sync with another bulk sync, which lost more early messages: it never completed.
#[test]
fn a_large_bulk_sync_completes_under_ha2_loss() {
    const N: u32 = 200_000;
    let mut pair = Pair::with_active_alone(&unchanged, N);
    drop_on_ha2(&pair, 0);
    pair.start_node(1);
    let complete = state_sync_complete(&pair, Duration::from_secs(40));
    let sync = request(&pair.instances[1], &Request::ShowStateSync).unwrap();
    let sent = request(&pair.instances[0], &Request::ShowStateSync).unwrap();
    eprintln!(
        "passive: {} {}\nactive: {}",
        sync["status"], sync["recovery"], sent["sent"]
    );
    assert!(complete, "{sync:#}\n{sent:#}\n{}", pair.logs());
    let held = session_keys(&pair, 1).len();
    assert!(held >= N as usize, "passive holds {held} of {N}: {sync:#}");
    assert!(
        sync["recovery"]["messages_requested"].as_u64().unwrap() > 0,
        "{sync:#}"
    );
    assert_eq!(sent["sent"]["resyncs_sent"], 0, "{sent:#}");
}

/// Input: 5% of the active node's HA2 frames dropped (nftables on its HA2 egress) while 100,000
/// new sessions are created through it, with 50 TCP connections established before. Output:
/// the passive node asks for what it lost, its table converges to the active node's (the same
/// keys, nothing more, and the same TCP states), and after a failover every TCP connection
/// carries data. Control: the drops happened (nft counter) and were repaired by retransmission
/// (the passive's recovery counters).
#[test]
fn sessions_converge_under_ha2_loss_and_survive_a_failover() {
    const FLOWS: u32 = 100_000;
    // The burst (100,000 new flows in about 2 s through the lab's 2 vCPUs) holds heartbeats off
    // for tens of milliseconds on a kernel that does not preempt (README, known gaps); the lab
    // tests' 500 ms keep a split brain from sending part of the burst through the other node.
    let mut pair = Pair::start(&unchanged);
    let conns = open_connections(&pair, 50);
    drop_on_ha2(&pair, 0);
    let t = Instant::now();
    // Paced (about 20,000 flows/s): flat out, the lab's 2 vCPUs dropped up to 6% of the burst at
    // the firewall's veth ring when slow, and the test needs the flows in the active's table.
    let mut sent = 0u32;
    let paced = move |_: &[u8], _| {
        sent += 1;
        if sent.is_multiple_of(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    };
    hafw::testkit::send_lab_udp_flows(&pair.run.topo.client.name, 0, FLOWS, paced).unwrap();
    eprintln!("{FLOWS} new flows sent in {:?}", t.elapsed());
    let mut missing = usize::MAX;
    let mut tcp_differ = usize::MAX;
    let mut extra = usize::MAX;
    let converged = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        let active = session_keys(&pair, 0);
        let passive = session_keys(&pair, 1);
        missing = active.difference(&passive).count();
        extra = passive.difference(&active).count();
        // The connections' sessions in the same state on both: a retransmission applied late
        // must not leave one half-open on the passive (after a failover it would age out as a
        // handshake in `tcp_init` if idle).
        let (a, p) = (tcp_states(&pair, 0), tcp_states(&pair, 1));
        tcp_differ = a.iter().filter(|(k, s)| p.get(*k) != Some(*s)).count();
        created(active.len(), FLOWS) && missing == 0 && extra == 0 && tcp_differ == 0
    });
    let sync = request(&pair.instances[1], &Request::ShowStateSync).unwrap();
    let sent = request(&pair.instances[0], &Request::ShowStateSync).unwrap();
    let dropped = pair.run.topo.fw[0]
        .exec_ok(&["nft", "list", "table", "netdev", "lossy"])
        .unwrap();
    eprintln!(
        "passive recovery: {}\nactive: {}\n{dropped}",
        sync["recovery"], sent["sent"]
    );
    assert!(
        converged,
        "{missing} sessions missing on the passive, {extra} only there, {tcp_differ} TCP sessions \
         in another state\n\
         {sync:#}\n{}",
        pair.logs()
    );
    assert!(
        sync["recovery"]["gaps_detected"].as_u64().unwrap() > 0,
        "{sync:#}"
    );
    assert!(
        sent["sent"]["messages_retransmitted"].as_u64().unwrap() > 0,
        "{sent:#}"
    );
    assert!(
        !dropped.contains("packets 0 "),
        "the link dropped nothing: {dropped}"
    );
    kill_active(&mut pair);
    pair.assert_fw2_takes_over(Duration::from_secs(5));
    assert_eq!(
        connections_alive(&conns, Duration::from_secs(2)),
        conns.len()
    );
}

/// Input: traffic between client and server through the active node, which resolves both.
/// Output: the passive node's kernel holds the same neighbour entries (client on eth1, server
/// on eth2, with their MACs), synced over HA2, so the first packets after a failover are
/// forwarded at once instead of waiting for ARP. The passive node's HA2 keep-alives reach the
/// active node.
#[test]
fn the_active_nodes_neighbours_are_installed_on_the_passive_and_keepalives_flow_back() {
    let pair = Pair::start(&unchanged);
    assert!(pair.connects_within(Duration::from_secs(5)));
    let (client_mac, server_mac) = (
        pair.run.topo.client.mac("eth0").unwrap(),
        pair.run.topo.server.mac("eth0").unwrap(),
    );
    let mut neighbours = String::new();
    let installed = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        neighbours = pair.run.topo.fw[1]
            .exec_ok(&["ip", "neigh", "show"])
            .unwrap_or_default();
        neighbours.lines().any(|l| {
            l.starts_with(&format!(
                "{} dev eth1 lladdr {client_mac}",
                HaPair::CLIENT_IP
            ))
        }) && neighbours.lines().any(|l| {
            l.starts_with(&format!(
                "{} dev eth2 lladdr {server_mac}",
                HaPair::SERVER_IP
            ))
        })
    });
    assert!(
        installed,
        "client {client_mac}, server {server_mac}; passive neighbours:\n{neighbours}\n{}",
        pair.logs()
    );
    let sync = request(&pair.instances[1], &Request::ShowStateSync).unwrap();
    assert!(
        sync["neighbours_installed"].as_u64().unwrap() >= 2,
        "{sync:#}"
    );
    // HA2 keep-alives flow both ways: the active node hears the passive's.
    let mut active = serde_json::Value::Null;
    let heard = wait_until(Duration::from_secs(4), Duration::from_millis(100), || {
        active = request(&pair.instances[0], &Request::ShowStateSync).unwrap_or_default();
        active["keepalives_from_passive_peer"].as_u64().unwrap_or(0) >= 1
    });
    assert!(heard, "{active:#}");
    assert_eq!(active["keepalive"]["status"], "up", "{active:#}");
}

/// Input: the server side gains new hosts, and the client pings each of them once through the
/// active node, which resolves it by ARP. Output: each new neighbour entry is installed on the
/// passive node within 300 ms of the ping, so a failover right after it finds the host resolved.
/// Measured: 11-28 ms per entry (ping included) with each entry the kernel reports sent at once;
/// 0.26-1.0 s with only the once-a-second read of the table, which fails this test.
#[test]
fn a_new_neighbour_reaches_the_passive_node_at_once() {
    const IN_TIME: Duration = Duration::from_millis(300);
    let pair = Pair::start(&unchanged);
    assert!(pair.connects_within(Duration::from_secs(5)));
    let (server, client, passive) = (
        &pair.run.topo.server,
        &pair.run.topo.client,
        &pair.run.topo.fw[1],
    );
    let server_mac = server.mac("eth0").unwrap();
    let mut took = Vec::new();
    for host in ["198.18.2.11", "198.18.2.12", "198.18.2.13"] {
        server
            .exec_ok(&["ip", "addr", "add", &format!("{host}/24"), "dev", "eth0"])
            .unwrap();
        let start = Instant::now();
        client
            .exec_ok(&["ping", "-c", "1", "-W", "2", host])
            .unwrap_or_else(|e| panic!("ping {host}: {e:#}\n{}", pair.logs()));
        let installed = wait_until(Duration::from_secs(3), Duration::from_millis(5), || {
            passive
                .exec_ok(&["ip", "neigh", "show", host, "dev", "eth2"])
                .is_ok_and(|out| out.contains(&format!("lladdr {server_mac}")))
        });
        took.push((host, installed.then(|| start.elapsed())));
    }
    assert!(
        took.iter().all(|(_, t)| t.is_some_and(|t| t <= IN_TIME)),
        "time from each ping to the entry on the passive node (None: not within 3 s): \
         {took:?}\n{}",
        pair.logs()
    );
}

/// Input: fw2 holds the client's and the server's entries, synced from fw1; the kernel's
/// neighbour table holds more than `gc_thresh1` (128) entries, and fw2's data ports forget an
/// unused entry after 1 s (`gc_stale_time`, 60 s by default). Output: the synced entries stay on
/// fw2 through 18 s (more than one garbage-collection pass, every 15 s): the passive node never
/// uses them itself, and the kernel would otherwise drop them, by default a minute after they
/// came, and the takeover would have to resolve every host again.
#[test]
fn the_passive_node_keeps_synced_neighbours_it_never_uses() {
    let pair = Pair::start(&unchanged);
    assert!(pair.connects_within(Duration::from_secs(5)));
    let fw2 = &pair.run.topo.fw[1];
    let entries = [(HaPair::CLIENT_IP, "eth1"), (HaPair::SERVER_IP, "eth2")];
    let held = || {
        entries.iter().all(|(ip, dev)| {
            fw2.exec_ok(&["ip", "neigh", "show", ip, "dev", dev])
                .is_ok_and(|out| out.contains("lladdr"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), held),
        "{}",
        pair.logs()
    );
    let server = fw2
        .exec_ok(&["ip", "neigh", "show", HaPair::SERVER_IP, "dev", "eth2"])
        .unwrap();
    assert!(server.contains("extern_learn"), "{server}");
    // The table's size counts every namespace's entries: 150 permanent ones on the server.
    let fill: Vec<String> = (100..250)
        .map(|i| {
            format!(
                "neigh replace 198.18.2.{i} lladdr 02:00:00:00:01:{:02x} dev eth0 nud permanent",
                i - 100
            )
        })
        .collect();
    let batch = pair.run.dir.join("neigh-fill.txt");
    std::fs::write(&batch, fill.join("\n") + "\n").unwrap();
    pair.run
        .topo
        .server
        .exec_ok(&["ip", "-batch", batch.to_str().unwrap()])
        .unwrap();
    for (_, dev) in entries {
        fw2.exec_ok(&[
            "sysctl",
            "-w",
            &format!("net.ipv4.neigh.{dev}.gc_stale_time=1"),
        ])
        .unwrap();
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(18) {
        assert!(
            held(),
            "fw2 lost a synced entry after {:?}:\n{}\n{}",
            start.elapsed(),
            fw2.exec_ok(&["ip", "neigh", "show"]).unwrap_or_default(),
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Input: traffic through fw1 over IPv4 and IPv6, which resolves client and server; fw2 holds the
/// synced entries; a capture of ARP and ICMPv6 on both switches; fw1 suspended. Output: new
/// connections and pings succeed through fw2 and it never asks who has the client or the server
/// (ARP or neighbour solicitation): the first packets after the takeover are forwarded at once,
/// not held behind address resolution. The takeover sets the ports' MACs,
/// which flushes their neighbour entries: without putting them back, fw2 asked for both.
#[test]
fn after_a_takeover_the_new_active_node_forwards_without_resolving_addresses() {
    takes_over_without_resolving_addresses(&unchanged);
}

/// As [`after_a_takeover_the_new_active_node_forwards_without_resolving_addresses`], with the
/// passive node's data links down until it takes over (passive link state `shutdown`).
#[test]
fn with_its_links_down_while_passive_the_new_active_node_forwards_without_resolving_addresses() {
    takes_over_without_resolving_addresses(&|_, text: String| {
        text.replace(
            "passive_link_state = \"auto\"",
            "passive_link_state = \"shutdown\"",
        )
    });
}

fn takes_over_without_resolving_addresses(edit: &dyn Fn(usize, String) -> String) {
    let hosts = [
        (HaPair::CLIENT_IP, "eth1"),
        (HaPair::SERVER_IP, "eth2"),
        (HaPair::CLIENT_IP6, "eth1"),
        (HaPair::SERVER_IP6, "eth2"),
    ];
    // How the capture shows a request to resolve `ip`: ARP or neighbour solicitation.
    let request = |ip: &str| {
        if ip.contains(':') {
            format!("who has {ip},")
        } else {
            format!("who-has {ip} ")
        }
    };
    let pair = Pair::start(edit);
    let client = &pair.run.topo.client;
    let ping6 = || client.exec_ok(&["ping", "-6", "-c", "1", "-W", "1", HaPair::SERVER_IP6]);
    assert!(pair.connects_within(Duration::from_secs(5)));
    let pinged = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        ping6().is_ok()
    });
    assert!(pinged, "{}", pair.logs());
    let fw2 = &pair.run.topo.fw[1];
    let synced = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        hosts.iter().all(|(ip, dev)| {
            fw2.exec_ok(&["ip", "neigh", "show", ip, "dev", dev])
                .is_ok_and(|out| out.contains("lladdr"))
        })
    });
    assert!(
        synced,
        "{}\n{}",
        fw2.exec_ok(&["ip", "neigh", "show"]).unwrap_or_default(),
        pair.logs()
    );
    let (capture, _tcpdump) = pair.capture("resolution.txt", &["-i", "any", "arp or icmp6"]);
    pair.suspend_fw1();
    assert!(
        pair.connects_within(Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
    ping6().unwrap_or_else(|e| panic!("ping over IPv6 through fw2: {e:#}\n{}", pair.logs()));
    std::thread::sleep(Duration::from_millis(300));
    let seen = std::fs::read_to_string(&capture).unwrap_or_default();
    let asked: Vec<_> = seen
        .lines()
        .filter(|l| hosts.iter().any(|(ip, _)| l.contains(&request(ip))))
        .collect();
    assert!(
        asked.is_empty(),
        "the new active node resolved addresses:\n{}\nwhole capture:\n{seen}\n{}",
        asked.join("\n"),
        pair.logs()
    );
    // The capture saw the takeover (fw2's gratuitous ARPs), so an empty result is not an idle
    // capture's.
    assert!(
        seen.contains("who-has 198.18.1.1 tell 198.18.1.1"),
        "{seen}"
    );
    // The entries are fw2's own now, no longer `extern_learn`: the kernel ages them out again.
    for (ip, dev) in &hosts {
        let entry = fw2
            .exec_ok(&["ip", "neigh", "show", ip, "dev", dev])
            .unwrap();
        assert!(
            entry.contains("lladdr") && !entry.contains("extern_learn"),
            "{entry}"
        );
    }
}

/// Input: the HA2 link loses carrier, then 2,000 new sessions are created through the active
/// node. Output: sync moves to the HA2 backup link and the passive node's table converges to
/// the active node's.
#[test]
fn the_ha2_backup_carries_sync_when_ha2_is_cut() {
    const FLOWS: u32 = 2_000;
    let pair = Pair::start(&unchanged);
    pair.links_down(0, &["ha2"]);
    let mut missing = usize::MAX;
    let mut status = serde_json::Value::Null;
    // Sending goes on while the links are checked; the first messages after the cut may take
    // the dead link and come back through retransmission.
    hafw::testkit::send_lab_udp_flows(&pair.run.topo.client.name, 0, FLOWS, |_, _| true).unwrap();
    let converged = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let active = session_keys(&pair, 0);
        missing = active.difference(&session_keys(&pair, 1)).count();
        created(active.len(), FLOWS) && missing == 0
    });
    if let Ok(v) = request(&pair.instances[0], &Request::ShowStateSync) {
        status = v;
    }
    let passive = request(&pair.instances[1], &Request::ShowStateSync).unwrap_or_default();
    assert!(
        converged,
        "{missing} sessions missing on the passive\nactive {status:#}\npassive {passive:#}\n{}",
        pair.logs()
    );
    assert_eq!(status["link_in_use"], "ha2b", "{status:#}");
}
