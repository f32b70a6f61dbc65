//! `hafw-bench`: benchmarks behind `cargo xtask bench ...`. Each prints a table and writes
//! `bench/results/<name>.{md,json}`.
//!
//! `fastpath`: ns per packet through BPF_PROG_TEST_RUN (the kernel times the program runs only)
//! for an established TCP packet with 1, 100k and 1M sessions in the table, and for new flows
//! through a 1,000-rule policy; a bare pass-through program in the same run is the floor.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use hafw::dataplane::{LOOKUP_BENCH_PROGRAM, NEW_FLOWS_BENCH_PROGRAM};
use hafw::testkit::{self, CLIENT, Fixture, SERVER, Verdict, run_packet, run_program, tcp};
use hafw_common::config::Role;
use hafw_common::session::{FAMILY_IPV4, PROTO_TCP, SessionKey, SessionState, SessionValue};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    case: String,
    /// The median pass (see [`median_rows`]).
    ns_per_packet: f64,
    /// The fastest pass.
    best_ns: f64,
    runs: u64,
    target_ns: Option<f64>,
    note: String,
}

impl Row {
    fn new(
        case: impl Into<String>,
        ns: f64,
        runs: u64,
        target_ns: Option<f64>,
        note: impl Into<String>,
    ) -> Row {
        Row {
            case: case.into(),
            ns_per_packet: ns,
            best_ns: ns,
            runs,
            target_ns,
            note: note.into(),
        }
    }
}

/// The `hafw` binary built beside this one.
fn hafw_binary() -> Result<std::path::PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("bench binary directory")?
        .join("hafw"))
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "fastpath" => {
            let only_forwarding = std::env::args().any(|a| a == "--forwarding-only");
            let mut rows = Vec::new();
            if !only_forwarding {
                // Whole passes, each in a fresh thread (the fixture moves its thread into a
                // private network namespace), then per case the median pass: this VM has slow
                // phases of seconds that move every case of a pass alike.
                let passes = if quick() { 1 } else { PASSES };
                let mut all = Vec::with_capacity(passes);
                for _ in 0..passes {
                    all.push(in_thread(fastpath_test_run)?);
                }
                rows = median_rows(all);
            }
            if std::env::args().any(|a| a == "--test-run-only") {
                // A partial run prints its rows and leaves the saved results alone.
                for r in &rows {
                    println!(
                        "{}: {:.1} ns, fastest pass {:.1} ({})",
                        r.case, r.ns_per_packet, r.best_ns, r.note
                    );
                }
                return Ok(());
            }
            // A failure here must not lose the per-packet results measured above.
            let forwarding = forwarding::compare().map_err(|e| {
                eprintln!("forwarding comparison failed: {e:#}");
                format!("{e:#}")
            });
            report("fastpath", &rows, forwarding)
        }
        "xdp-flood" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            forwarding::xdp_flood(&args)
        }
        "failover" => {
            let all = ["fast", "aggressive", "recommended"];
            let profiles: Vec<&'static str> = match std::env::args().nth(2) {
                Some(p) => vec![
                    all.into_iter()
                        .find(|a| *a == p)
                        .context("unknown profile")?,
                ],
                None => all.to_vec(),
            };
            let rows = failover::measure(&profiles)?;
            report_failover(&rows, profiles.len() == all.len())
        }
        "soak" => {
            let minutes: f64 = match std::env::args().nth(2) {
                Some(m) => m.parse().context("soak minutes")?,
                None => 10.0,
            };
            let rows = soak::measure(minutes)?;
            report_soak(&rows, minutes >= 10.0)
        }
        "sync" => {
            // `sync <part>` runs one part (ingest, lag, rate, bulk), prints its rows and leaves
            // the saved results alone.
            let part = std::env::args().nth(2);
            let wanted = |name: &str| part.as_deref().is_none_or(|p| p == name);
            let mut rows = Vec::new();
            if wanted("ingest") {
                rows.extend(sync::ingest()?);
            }
            if wanted("lag") {
                rows.extend(sync::lag(2_000)?);
            }
            if wanted("rate") {
                rows.extend(sync::sessions_per_second(200_000)?);
            }
            if wanted("bulk") {
                for n in [100_000, 1_000_000] {
                    rows.push(sync::bulk(n)?);
                }
            }
            if part.is_none() {
                return report_sync(&rows);
            }
            if rows.is_empty() {
                bail!("unknown part of the sync benchmark (expected: ingest, lag, rate, bulk)");
            }
            for r in &rows {
                println!(
                    "{}: {:.2} {} (target {}; {})",
                    r.case, r.value, r.unit, r.target, r.note
                );
            }
            Ok(())
        }
        other => bail!("unknown benchmark {other:?} (expected: fastpath, failover, soak, sync)"),
    }
}

/// Test runs per batched case and pass.
const RUNS: u64 = 5_000_000;
/// Runs per BPF_PROG_TEST_RUN call (the programs rewrite TTL, so a batch stays below the TTL).
const BATCH: u32 = 200;

/// A batched case: `pkt` through `prog` as received on `ingress`, every run ending in `want`.
struct Case<'a> {
    prog: &'a aya::programs::Xdp,
    pkt: &'a [u8],
    ingress: u32,
    want: Verdict,
}

impl Case<'_> {
    /// Runs the case `total` times in batches of [`BATCH`], in [`ROUNDS`] rounds, and returns the
    /// median round's mean ns per run: a VM's neighbours move single rounds by a third.
    fn measure(&self, total: u64) -> Result<f64> {
        self.measure_with(total, || {})
    }

    /// Runs the case for a second, unmeasured. The second after a fixture allocates its
    /// 1.25M-entry table, or after a million sessions were written into it, measures up to a third
    /// slower here (the kernel and the hypervisor are still busy with the fresh memory).
    fn warm_up(&self) {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            run_program(self.prog, self.pkt, self.ingress, BATCH);
        }
    }

    /// [`Case::measure`], calling `between` after every batch (outside the kernel's timing).
    fn measure_with(&self, total: u64, mut between: impl FnMut()) -> Result<f64> {
        let per_round = total / ROUNDS as u64;
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let mut sum = Duration::ZERO;
            let mut runs = 0u64;
            while runs < per_round {
                let (out, avg) = run_program(self.prog, self.pkt, self.ingress, BATCH);
                if out.verdict != self.want {
                    bail!(
                        "benchmark packet got {:?}, expected {:?}",
                        out.verdict,
                        self.want
                    );
                }
                sum += avg * BATCH;
                runs += u64::from(BATCH);
                between();
            }
            rounds.push(sum.as_nanos() as f64 / runs as f64);
        }
        rounds.sort_by(f64::total_cmp);
        Ok(rounds[ROUNDS / 2])
    }
}

/// The smallest, the median and the largest of `values` (not empty).
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    )
}

/// Runs `pass` in a thread of its own: its fixture moves the thread into a private network
/// namespace.
fn in_thread<T: Send + 'static>(pass: fn() -> Result<T>) -> Result<T> {
    std::thread::spawn(pass)
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

/// Passes of the per-packet cases in a full `fastpath` run.
const PASSES: usize = 3;

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// Per case, the row of the pass with the median time, with the fastest pass's time beside it.
/// Every pass measures the same cases in the same order.
fn median_rows(passes: Vec<Vec<Row>>) -> Vec<Row> {
    let cases = passes.first().map_or(0, Vec::len);
    (0..cases)
        .map(|i| {
            let mut candidates: Vec<&Row> = passes.iter().map(|p| &p[i]).collect();
            assert!(candidates.iter().all(|r| r.case == candidates[0].case));
            candidates.sort_by(|a, b| a.ns_per_packet.total_cmp(&b.ns_per_packet));
            let median = candidates[candidates.len() / 2];
            Row {
                best_ns: candidates[0].ns_per_packet,
                case: median.case.clone(),
                note: median.note.clone(),
                ..*median
            }
        })
        .collect()
}

/// Rounds per measured case (see [`measure`]).
const ROUNDS: usize = 25;

/// Fills the session table with `n` synthetic established sessions (distinct client ports and
/// addresses in 198.19.0.0/16).
fn fill_sessions(f: &mut Fixture, n: u32) -> Result<()> {
    let existing = f.sessions().len() as u32;
    for i in existing..n {
        let src = [
            u32::from_ne_bytes([198, 19, (i >> 16) as u8, (i >> 8) as u8]),
            0,
            0,
            0,
        ];
        let dst = [u32::from_ne_bytes(SERVER), 0, 0, 0];
        let (key, src_is_hi) = SessionKey::normalized(
            FAMILY_IPV4,
            PROTO_TCP,
            src,
            (1024 + (i & 0xff) as u16).to_be(),
            dst,
            80u16.to_be(),
        );
        let value = SessionValue {
            state: SessionState::Established as u8,
            flags: u8::from(src_is_hi),
            rule_id: 1,
            ..Default::default()
        };
        f.dp.insert_session(&key, &value)
            .context("filling the session table")?;
    }
    Ok(())
}

/// A policy of `n` rules; only the last one allows TCP/9999 from 198.18.1.0/24.
fn big_policy(n: usize) -> String {
    let mut s = String::from(
        "instance = \"bench\"\n[[interface]]\nname = \"trust0\"\nzone = \"trust\"\n\
         [[interface]]\nname = \"untrust0\"\nzone = \"untrust\"\n",
    );
    for i in 0..n - 1 {
        let _ = write!(
            s,
            "[[service]]\nname = \"svc{i}\"\nprotocol = \"tcp\"\nports = [\"{}\"]\n\
             [[rule]]\nname = \"r{i}\"\nfrom = [\"trust\"]\nto = [\"untrust\"]\n\
             source = [\"198.19.{}.{}/32\"]\ndestination = [\"198.18.2.0/24\"]\n\
             service = [\"svc{i}\"]\naction = \"allow\"\n",
            10000 + i,
            i / 256,
            i % 256
        );
    }
    s.push_str(
        "[[service]]\nname = \"last\"\nprotocol = \"tcp\"\nports = [\"9999\"]\n\
         [[rule]]\nname = \"last\"\nfrom = [\"trust\"]\nto = [\"untrust\"]\n\
         source = [\"198.18.1.0/24\"]\ndestination = [\"198.18.2.0/24\"]\n\
         service = [\"last\"]\naction = \"allow\"\n",
    );
    s
}

/// An established TCP packet of the fixture's session through the fast path.
fn established_case<'a>(f: &'a Fixture, est: &'a [u8]) -> Result<Case<'a>> {
    Ok(Case {
        prog: f.dp.fast_path()?,
        pkt: est,
        ingress: f.trust,
        want: Verdict::Redirect,
    })
}

fn fastpath_test_run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut f = Fixture::with_policy(testkit::POLICY, 1_250_000);

    f.handshake(CLIENT, 40000, SERVER, 80);
    let est = tcp(CLIENT, 40000, SERVER, 80, 0x10, 255);
    let established = |f: &Fixture| -> Result<f64> { established_case(f, &est)?.measure(RUNS) };
    established_case(&f, &est)?.warm_up();
    let pass = Case {
        prog: f.dp.pass_program()?,
        pkt: &tcp(CLIENT, 1, SERVER, 2, 0x10, 64),
        ingress: f.trust,
        want: Verdict::Pass,
    }
    .measure(RUNS)?;
    rows.push(Row::new(
        "floor: pass-through XDP program",
        pass,
        RUNS,
        None,
        "same harness, program returns XDP_PASS",
    ));
    // First without the next-hop cache (FIB generation 0: a FIB lookup per packet), then with it
    // on, as the controller runs it.
    let ns = established(&f)?;
    rows.push(Row::new(
        "established TCP, 1 session in table, next-hop cache off",
        ns,
        RUNS,
        None,
        "bpf_fib_lookup on every packet",
    ));
    f.dp.fib_generation().bump()?;
    // `--quick`: one session only, for profiling changes (minutes less: no table to fill).
    let sizes: &[(&str, u32)] = if quick() {
        &[("1 session", 1)]
    } else {
        &[
            ("1 session", 1),
            ("100k sessions", 100_000),
            ("1M sessions", 1_000_000),
        ]
    };
    // The calibration: the established packet's session lookup alone, the frame being its key.
    f.dp.load_bench_program(LOOKUP_BENCH_PROGRAM, testkit::BENCH_IDLE_PORTS[1])?;
    let key_frame = testkit::key_octets(&testkit::session_key(&est));
    for &(label, n) in sizes {
        fill_sessions(&mut f, n)?;
        established_case(&f, &est)?.warm_up();
        let ns = established(&f)?;
        rows.push(Row::new(
            format!("established TCP, {label} in table"),
            ns,
            RUNS,
            (n == 1_000_000).then_some(120.0),
            format!("sessions present: {}", f.sessions_len()),
        ));
        if Some(&(label, n)) == sizes.last() {
            let ns = Case {
                prog: f.dp.bench_program(LOOKUP_BENCH_PROGRAM)?,
                pkt: &key_frame,
                ingress: f.trust,
                want: Verdict::Drop,
            }
            .measure(RUNS)?;
            rows.push(Row::new(
                format!("calibration: the session lookup alone, {label} in table"),
                ns,
                RUNS,
                None,
                "the established packet's key copied from the frame and looked up \
                 (hafw_bench_lookup); the issue's reference: a hot LRU lookup about 58 ns, \
                 its floor 25",
            ));
        }
    }
    // The active node of a pair checks its lease on every packet: on the coarse clock while the
    // lease is far from its end (recommended and aggressive profiles), on the exact clock near
    // it (the fast profile's 10 ms lease always is: see `fastpath::orphaned`).
    f.set_lease(Role::Active, u64::MAX);
    let ns = established(&f)?;
    rows.push(Row::new(
        "established TCP, active node of a pair",
        ns,
        RUNS,
        None,
        format!(
            "sessions present: {}; lease far from its end, checked on the coarse clock",
            f.sessions_len()
        ),
    ));
    f.set_lease(Role::Standalone, 0);

    // New flows through 1,000 rules, in batches like the cases above: a program that gives every
    // run a flow of its own, then runs the fast path (`hafw_bench_new_flows`: source port and last
    // source octet from a run counter, sources 198.18.1.128-255), so each run pays the session
    // lookup's miss in a cold bucket as a real new flow does. A fresh table, large enough for every
    // flow of the case.
    let mut f = Fixture::with_policy(&big_policy(1000), 1_250_000);
    f.dp.load_bench_program(NEW_FLOWS_BENCH_PROGRAM, testkit::BENCH_IDLE_PORTS[0])?;
    let mut events =
        f.dp.take_events()
            .context("the session event ring buffer")?;
    let new_flows = f.dp.bench_program(NEW_FLOWS_BENCH_PROGRAM)?;
    let denied = tcp([198, 18, 1, 128], 0, SERVER, 22, 0x02, 255);
    let deny = Case {
        prog: new_flows,
        pkt: &denied,
        ingress: f.trust,
        want: Verdict::Drop,
    };
    deny.warm_up();
    let ns = deny.measure(RUNS)?;
    rows.push(Row::new(
        "new flow, 1,000 rules, no match (default deny)",
        ns,
        RUNS,
        Some(1000.0),
        "full classification, no session insert; every run a new flow",
    ));
    // Allowed: each creates a session and sends its event; the events are drained between
    // batches, as the controller reads them meanwhile, so none is lost to a full ring buffer.
    const BATCHED_NEW_FLOWS: u64 = 500_000;
    const WARM_UP_BATCHES: u64 = 50;
    let mut drain = || while events.next().is_some() {};
    let syn = tcp([198, 18, 1, 128], 0, SERVER, 9999, 0x02, 255);
    let before = f.counters();
    for _ in 0..WARM_UP_BATCHES {
        run_program(new_flows, &syn, f.trust, BATCH);
        drain();
    }
    let ns = Case {
        prog: new_flows,
        pkt: &syn,
        ingress: f.trust,
        want: Verdict::Redirect,
    }
    .measure_with(BATCHED_NEW_FLOWS, &mut drain)?;
    let after = f.counters();
    let created = after.session_created - before.session_created;
    let runs = WARM_UP_BATCHES * u64::from(BATCH) + BATCHED_NEW_FLOWS;
    if created != runs || after.event_ringbuf_full != before.event_ringbuf_full {
        bail!(
            "{runs} new flows created {created} sessions, {} events lost",
            after.event_ringbuf_full - before.event_ringbuf_full
        );
    }
    rows.push(Row::new(
        "new flow, 1,000 rules, allowed by the last rule",
        ns,
        BATCHED_NEW_FLOWS,
        Some(1000.0),
        format!(
            "classification + session insert + ring buffer event + forward; every run a new flow \
             (sessions present after the pass: {})",
            f.sessions_len()
        ),
    ));
    drain();

    const NEW_FLOWS: u32 = 50_000;
    // The same new flows, each in a run of its own (one syscall per flow): the harness's cost is
    // then not spread over a batch, and the caches are as cold as a syscall leaves them. The same
    // harness with the pass-through program shows how much of a run that is.
    let pass = f.dp.pass_program()?;
    let probe = tcp(CLIENT, 1, SERVER, 2, 0x10, 64);
    let mut sum = Duration::ZERO;
    for _ in 0..NEW_FLOWS {
        sum += run_program(pass, &probe, f.trust, 1).1;
    }
    rows.push(Row::new(
        "floor, one run per packet: pass-through XDP program",
        sum.as_nanos() as f64 / f64::from(NEW_FLOWS),
        u64::from(NEW_FLOWS),
        None,
        "the harness of the next row",
    ));
    let mut sum = Duration::ZERO;
    for i in 0..NEW_FLOWS {
        let syn = tcp(CLIENT, 1024 + (i % 60000) as u16, SERVER, 9999, 0x02, 64);
        let (out, d) = run_packet(&f.dp, &syn, f.trust, 1);
        if out.verdict != Verdict::Redirect {
            bail!("new flow {i} got {:?}", out.verdict);
        }
        sum += d;
    }
    rows.push(Row::new(
        "new flow, 1,000 rules, allowed, one run per flow",
        sum.as_nanos() as f64 / f64::from(NEW_FLOWS),
        u64::from(NEW_FLOWS),
        None,
        "as the batched row, in the harness of the floor above",
    ));
    Ok(rows)
}

/// Prints the table; writes bench/results/ only for a full run, so a partial run
/// (`--forwarding-only`) never replaces the recorded results.
/// `forwarding`: the comparison's rows and ratio, or why it failed (the table says so).
fn report(
    name: &str,
    rows: &[Row],
    forwarding: std::result::Result<forwarding::Comparison, String>,
) -> Result<()> {
    let mut md = format!(
        "# {name} benchmark\n\nkernel {}, {} CPUs\n\n## Per packet, BPF_PROG_TEST_RUN\n\nBatched cases: the median of 25 rounds; one-run-per-packet cases: the mean of their runs. Three passes of all cases, the median pass shown and the fastest beside it (this VM has slow phases of seconds).\n\n| case | ns/packet | fastest pass | target | runs per pass | note |\n|---|---:|---:|---:|---:|---|\n",
        kernel_release(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for r in rows {
        let target = match r.target_ns {
            Some(t) => format!(
                "≤ {t:.0} ({})",
                if r.ns_per_packet <= t {
                    "met"
                } else {
                    "MISSED"
                }
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {} | {} | {} |",
            r.case, r.ns_per_packet, r.best_ns, target, r.runs, r.note
        );
    }
    let _ = write!(
        md,
        "\n## Forwarding through the firewall namespace (veth, 64-byte UDP, one flow)\n\n\
         One core: sender, firewall and receiver share CPU 0 and each batch is carried to the end \
         before the next, so the rate is one over the whole path's cost. Own core: the firewall \
         on CPU 1, flooded. Median of 3 floods of 2 s each.\n\n\
         | path | placement | offered pps | received pps | dropped at ingress | ns per frame |\n\
         |---|---|---:|---:|---:|---:|\n"
    );
    match &forwarding {
        Ok(cmp) => {
            for r in &cmp.rows {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {:.0} | {} | {:.0} |",
                    r.path,
                    r.placement,
                    r.offered_pps,
                    r.received_pps,
                    r.dropped_at_ingress,
                    r.ns_per_frame
                );
            }
            md.push('\n');
            for r in &cmp.ratios {
                let beyond = r.beyond_floor.map_or(String::new(), |b| {
                    format!("; per frame beyond the floor, nftables costs {b:.2}x what hafw does")
                });
                let _ = writeln!(
                    md,
                    "hafw XDP / nftables, {}: **{:.2}x** the rate (target ≥ 3x){beyond}  ",
                    r.placement, r.received
                );
            }
        }
        Err(e) => {
            let _ = writeln!(
                md,
                "\nNot measured in this run: the comparison failed ({}).",
                e.lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .trim()
            );
        }
    }
    print!("{md}");
    if rows.is_empty() {
        println!("\n(partial run: bench/results/ left as it was)");
        return Ok(());
    }
    let dir = std::path::Path::new("bench/results");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{name}.md")), &md)?;
    let json = match &forwarding {
        Ok(cmp) => serde_json::json!({
            "per_packet": rows,
            "forwarding": cmp.rows,
            "xdp_over_nftables": cmp.ratios,
        }),
        Err(e) => serde_json::json!({ "per_packet": rows, "forwarding_failed": e }),
    };
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("\nwritten: bench/results/{name}.md, bench/results/{name}.json");
    Ok(())
}

mod failover;
mod forwarding;
mod soak;
mod sync;

/// Prints the HA2 sync table and writes bench/results/sync.*.
fn report_sync(rows: &[sync::Row]) -> Result<()> {
    let mut md = format!(
        "# sync benchmark\n\nkernel {}, {} CPUs.\n\n| case | value | unit | target | note |\n|---|---:|---|---|---|\n",
        kernel_release(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {} | {} | {} |",
            r.case, r.value, r.unit, r.target, r.note
        );
    }
    print!("{md}");
    let dir = std::path::Path::new("bench/results");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("sync.md"), &md)?;
    std::fs::write(dir.join("sync.json"), serde_json::to_string_pretty(rows)?)?;
    println!("\nwritten: bench/results/sync.md, bench/results/sync.json");
    Ok(())
}

/// Prints the soak table; writes bench/results/soak.* only for a run of 10 minutes or more.
fn report_soak(rows: &[soak::Row], full: bool) -> Result<()> {
    let mut md = format!(
        "# soak benchmark\n\nkernel {}, {} CPUs, every CPU kept busy by a spinning thread. An \
         idle, healthy pair should never change state; each change is a false failover.\n\n\
         | implementation | failure detection | minutes | state changes | detail |\n|---|---|---:|---:|---|\n",
        kernel_release(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} | {} |",
            r.implementation, r.detection, r.minutes, r.state_changes, r.detail
        );
    }
    print!("{md}");
    if !full {
        println!("\n(shorter than 10 minutes: bench/results/ left as it was)");
        return Ok(());
    }
    let dir = std::path::Path::new("bench/results");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("soak.md"), &md)?;
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(rows)?)?;
    println!("\nwritten: bench/results/soak.md, bench/results/soak.json");
    Ok(())
}

/// Prints the failover table; writes bench/results/failover.* only for a run of every profile.
fn report_failover(rows: &[failover::Row], full: bool) -> Result<()> {
    let mut md = format!(
        "# failover benchmark\n\nkernel {}, {} CPUs. Client sends sequence-numbered UDP at \
         1,000 packets/s through the lab pair to an echo on the server; loss window = longest gap \
         between replies after the fault, which comes once the passive node holds the active \
         node's neighbour entries (steady state). {} runs per line.\n\n\
         | timer profile | fault | median ms | min ms | max ms | runs (ms) |\n|---|---|---:|---:|---:|---|\n",
        kernel_release(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        rows.first().map(|r| r.windows_ms.len()).unwrap_or(0),
    );
    for r in rows {
        let runs: Vec<String> = r.windows_ms.iter().map(|w| format!("{w:.0}")).collect();
        let _ = writeln!(
            md,
            "| {} | {:?} | {:.1} | {:.1} | {:.1} | {} |",
            r.profile,
            r.fault,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            runs.join(", ")
        );
    }
    print!("{md}");
    if !full {
        println!("\n(partial run: bench/results/ left as it was)");
        return Ok(());
    }
    let dir = std::path::Path::new("bench/results");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("failover.md"), &md)?;
    std::fs::write(
        dir.join("failover.json"),
        serde_json::to_string_pretty(rows)?,
    )?;
    println!("\nwritten: bench/results/failover.md, bench/results/failover.json");
    Ok(())
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}
