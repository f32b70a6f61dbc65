//! `sync`: HA2 session sync. Ingest rate of the XDP program (records per second per core, from
//! the kernel's own timing of BPF_PROG_TEST_RUN on full frames of 18 session records, each frame
//! a new sequence number so every record is really written; five passes on fresh tables, the
//! median reported), beside it the session table's insert alone (`hafw_bench_insert`), and the
//! bulk sync of a table of 100k and 1M sessions through the lab pair (active table filled through
//! its pinned map, then the passive node starts; the time is the passive's, from bulk start to
//! bulk end). Sync lag:
//! new flows one at a time through the active node, each timed from its first packet until its
//! session is in the passive node's map. Sessions/s through the pair with sync on and off: new
//! UDP flows as fast as a packet socket sends them, sessions created per second on the active.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hafw::{
    dataplane::INSERT_BENCH_PROGRAM,
    sync::{self, MessageWriter},
    testkit::{Fixture, Verdict, run_program},
    testkit::{pinned_counter, pinned_sessions},
};
use hafw_common::{
    ha2::{HA2_SESSION_UPDATE, Ha2Config, MAX_SESSION_RECORDS, RECORD_F_NEW, SessionRecord},
    session::{FAMILY_IPV4, PROTO_TCP, SessionKey, SessionState},
};
use hafw_lab::{PairRun, wait_until};
use serde::Serialize;

#[derive(Serialize)]
pub struct Row {
    pub case: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: String,
    pub note: String,
}

fn key(i: u32) -> SessionKey {
    SessionKey {
        addr_lo: [u32::from_ne_bytes([198, 18, 1, 2]), 0, 0, 0],
        addr_hi: [
            u32::from_ne_bytes([198, 18, 2, (i >> 16) as u8 | 0x80]),
            0,
            0,
            0,
        ],
        port_lo: (i & 0xffff) as u16,
        port_hi: 80,
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

/// Passes of the ingest measurement, each on a fresh table.
const INGEST_PASSES: usize = 5;

/// Ingest rate in records per second per core: first every record a new session (the table's
/// insert path), then the same sessions again as updates (state changes of existing sessions).
/// [`INGEST_PASSES`] passes, each on a fresh table in a thread of its own (the fixture moves its
/// thread into a private network namespace); per case the median pass, the fastest and slowest
/// beside it, as this VM has slow phases of seconds.
pub fn ingest() -> Result<Vec<Row>> {
    let mut passes = Vec::with_capacity(INGEST_PASSES);
    for _ in 0..INGEST_PASSES {
        let [new, update] = crate::in_thread(ingest_pass)?;
        passes.push([new, update, crate::in_thread(insert_pass)?]);
    }
    let median_of = |case: usize| {
        let ns: Vec<f64> = passes.iter().map(|pass| pass[case]).collect();
        crate::spread(&ns)
    };
    let rate = |ns: f64| 1e3 / ns;
    let cases = ["new sessions", "updates of existing sessions"];
    let mut rows: Vec<Row> = cases
        .iter()
        .enumerate()
        .map(|(case, what)| {
            let (fastest, median, slowest) = median_of(case);
            Row {
                case: format!("ingest, {what}: full frames of 18 session records, XDP test run"),
                value: rate(median),
                unit: "M records/s/core",
                target: format!(
                    "≥ 3 ({})",
                    if rate(median) >= 3.0 { "met" } else { "MISSED" }
                ),
                note: format!(
                    "median of {INGEST_PASSES} passes, each on a fresh table of 1.25M: \
                     {median:.0} ns per record, {:.0} ns per frame, {INGEST_RECORDS} records per \
                     pass; fastest pass {:.2}, slowest {:.2}",
                    median * MAX_SESSION_RECORDS as f64,
                    rate(fastest),
                    rate(slowest),
                ),
            }
        })
        .collect();
    let (fastest, median, slowest) = median_of(2);
    rows.push(Row {
        case: "calibration: the session table's insert alone, XDP test run".into(),
        value: rate(median),
        unit: "M inserts/s/core",
        target: "-".into(),
        note: format!(
            "hafw_bench_insert: one new session per run and nothing else, {INGEST_RECORDS} into a \
             fresh table of 1.25M, as a pass of new records; the ceiling of that row. Median of \
             {INGEST_PASSES} passes: {median:.0} ns per insert (the test run's own cost, a \
             pass-through program, is about 30 ns: see the fastpath benchmark); fastest pass \
             {:.2}, slowest {:.2}",
            rate(fastest),
            rate(slowest),
        ),
    });
    Ok(rows)
}

/// Frames of one ingest pass, and the records they carry.
const INGEST_FRAMES: u32 = 20_000;
const INGEST_RECORDS: u64 = INGEST_FRAMES as u64 * MAX_SESSION_RECORDS as u64;

/// Runs per BPF_PROG_TEST_RUN call of the insert calibration.
const INSERT_BATCH: u64 = 200;

/// The calibration of [`ingest`]: ns per insert of `hafw_bench_insert`, as many new sessions as
/// a pass of new records writes, into a fresh table of the same size.
fn insert_pass() -> Result<f64> {
    let mut f = Fixture::with_policy(hafw::testkit::POLICY, 1_250_000);
    f.dp.load_bench_program(INSERT_BENCH_PROGRAM, hafw::testkit::BENCH_IDLE_PORTS[0])?;
    let prog = f.dp.bench_program(INSERT_BENCH_PROGRAM)?;
    let frame = hafw::testkit::key_octets(&key(0));
    let mut total = Duration::ZERO;
    for _ in 0..INGEST_RECORDS / INSERT_BATCH {
        let (out, took) = run_program(prog, &frame, f.trust, INSERT_BATCH as u32);
        if out.verdict != Verdict::Drop {
            bail!("insert verdict {:?}", out.verdict);
        }
        total += took * INSERT_BATCH as u32;
    }
    let held = f.sessions_len() as u64;
    if held != INGEST_RECORDS {
        bail!("{held} of {INGEST_RECORDS} sessions inserted");
    }
    Ok(total.as_secs_f64() * 1e9 / INGEST_RECORDS as f64)
}

/// One pass of [`ingest`]: the kernel's time per record of new sessions, then of their updates.
fn ingest_pass() -> Result<[f64; 2]> {
    let mut f = Fixture::with_policy(hafw::testkit::POLICY, 1_250_000);
    f.dp.set_ha2(Ha2Config {
        receiving: 1,
        peer: 7,
        group_id: 1,
        _pad: [0; 7],
    })?;
    let mut w = MessageWriter::new(1, 7);
    let prog = f.dp.ha2_program()?;
    let mut per_record_ns = [0.0; 2];
    for (pass, ns) in (1..).zip(per_record_ns.iter_mut()) {
        let mut total = Duration::ZERO;
        for frame_no in 0..INGEST_FRAMES {
            let records: Vec<SessionRecord> = (0..MAX_SESSION_RECORDS as u32)
                .map(|r| SessionRecord {
                    key: key(frame_no * MAX_SESSION_RECORDS as u32 + r),
                    state: SessionState::Established as u8,
                    idle_ms: 10,
                    age_ms: 1000,
                    packets_orig: pass,
                    flags: if pass == 1 { RECORD_F_NEW } else { 0 },
                    ..Default::default()
                })
                .collect();
            let frame = sync::ethernet_frame(
                [0xff; 6],
                [2, 0, 0, 0, 0, 1],
                &w.message(HA2_SESSION_UPDATE, &records),
            );
            let (out, took) = run_program(prog, &frame, f.trust, 1);
            if out.verdict != Verdict::Drop {
                bail!("ingest verdict {:?}", out.verdict);
            }
            total += took;
        }
        let written = f.dp.ha2_counters()?.session_updates;
        if written != INGEST_RECORDS * u64::from(pass) {
            bail!(
                "{written} of {} records written",
                INGEST_RECORDS * u64::from(pass)
            );
        }
        *ns = total.as_secs_f64() * 1e9 / INGEST_RECORDS as f64;
    }
    Ok(per_record_ns)
}

/// Bulk sync of `n` sessions through the lab pair.
pub fn bulk(n: u32) -> Result<Row> {
    let hafw = crate::hafw_binary()?;
    let size = (n * 2).next_power_of_two().max(262_144);
    let edit = |_: usize, text: String| {
        text.replace(
            "session_table_size = 262144",
            &format!("session_table_size = {size}"),
        )
    };
    let mut run = PairRun::new(hafw.to_str().unwrap_or_default(), &edit)?;
    run.start_node(0)?;
    if !wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        run.cli_state(0) == "active"
    }) {
        bail!("fw1 did not become active:\n{}", run.logs());
    }
    hafw::testkit::write_established_sessions(&run.instances[0], n)?;
    let started = Instant::now();
    run.start_node(1)?;
    let state = |run: &PairRun| -> Option<serde_json::Value> {
        let out = std::process::Command::new(&hafw)
            .args(["--instance", &run.instances[1], "--json"])
            .args(["show", "high-availability", "state-synchronization"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let complete = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        state(&run).is_some_and(|v| v["status"] == "state sync complete")
    });
    let v = state(&run).unwrap_or_default();
    if !complete {
        bail!("no bulk sync completed: {v}\n{}", run.logs());
    }
    let ms = v["last_bulk_sync_received_ms"].as_f64().unwrap_or(f64::NAN);
    let written = v["received"]["session_updates"].as_u64().unwrap_or(0);
    let missing = v["sequence"]["missing"].as_u64().unwrap_or(0);
    Ok(Row {
        case: format!("bulk sync of {n} sessions, lab pair over veth"),
        value: ms,
        unit: "ms",
        target: if n >= 1_000_000 {
            format!("≤ 2000 ({})", if ms <= 2000.0 { "met" } else { "MISSED" })
        } else {
            "-".into()
        },
        note: format!(
            "passive wrote {written} records, {missing} messages missing; passive up to complete {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    })
}

/// The lab pair on its default config passed through `edit`, fw1 active and fw2 passive.
fn start_pair(edit: hafw_lab::ConfigEdit) -> Result<PairRun> {
    let hafw = crate::hafw_binary()?;
    PairRun::start_elected(
        hafw.to_str().unwrap_or_default(),
        edit,
        Duration::from_secs(10),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sync lag over `flows` new flows, one every millisecond: p50 and p99 rows.
pub fn lag(flows: u32) -> Result<Vec<Row>> {
    const GIVE_UP: Duration = Duration::from_millis(100);
    let run = start_pair(&|_, text| text)?;
    let passive = pinned_sessions(&run.instances[1])?;
    let lags = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(flows as usize)));
    let record = lags.clone();
    hafw::testkit::send_lab_udp_flows(&run.topo.client.name, 0, flows, move |frame, sent| {
        let key = hafw::testkit::session_key(frame);
        // Yielding, not spinning: the pair has two CPUs to share with this poll.
        while passive.get(&key).is_none() && sent.elapsed() < GIVE_UP {
            std::thread::yield_now();
        }
        if let Ok(mut l) = record.lock() {
            l.push(sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
        true
    })?;
    let mut lags = lags.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    lags.sort();
    let lost = lags.iter().filter(|l| **l >= GIVE_UP).count();
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let note = format!(
        "{} flows, one per ms; from the client sending the first packet to the session in the \
         passive map (polled, yielding); max {:.0} µs; {lost} not synced within {} ms",
        lags.len(),
        us(lags[lags.len() - 1]),
        GIVE_UP.as_millis()
    );
    Ok(vec![
        Row {
            case: "sync lag p50, lab pair over veth".into(),
            value: us(p50),
            unit: "µs",
            target: "-".into(),
            note: note.clone(),
        },
        Row {
            case: "sync lag p99, lab pair over veth".into(),
            value: us(p99),
            unit: "µs",
            target: format!(
                "≤ 1000 ({})",
                if p99 <= Duration::from_millis(1) {
                    "met"
                } else {
                    "MISSED"
                }
            ),
            note,
        },
    ])
}

/// New sessions per second through the pair, with session sync on and off: three runs of each,
/// a fresh pair for every run, in the order on, off, off, on, on, off so that a slow phase of the
/// VM falls on both alike; per setting the median run.
pub fn sessions_per_second(flows: u32) -> Result<Vec<Row>> {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for sync_on in [true, false, false, true, true, false] {
        let rate = rate_through_pair(sync_on, flows)?;
        if sync_on { &mut on } else { &mut off }.push(rate);
    }
    let runs = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let runs_note = format!("runs: on {}; off {}", runs(&on), runs(&off));
    let rates = [crate::spread(&on).1, crate::spread(&off).1];
    let ratio = rates[0] / rates[1];
    Ok(vec![
        Row {
            case: "new sessions/s through the pair, sync on".into(),
            value: rates[0],
            unit: "sessions/s",
            target: format!(
                "≥ 80% of sync off: {:.0}% ({})",
                ratio * 100.0,
                if ratio >= 0.8 { "met" } else { "MISSED" }
            ),
            note: format!(
                "median of 3 runs, each {flows} new UDP flows from one packet socket in the \
                 client namespace; the sender, XDP and the controller share the 2 CPUs; \
                 {runs_note}"
            ),
        },
        Row {
            case: "new sessions/s through the pair, sync off".into(),
            value: rates[1],
            unit: "sessions/s",
            target: "-".into(),
            note: "same, session_sync = false".into(),
        },
    ])
}

/// New sessions per second through a fresh pair, with session sync on or off.
fn rate_through_pair(sync_on: bool, flows: u32) -> Result<f64> {
    let off = |_: usize, text: String| {
        text.replace(
            "interface = \"ha2\"\n",
            "interface = \"ha2\"\nsession_sync = false\n",
        )
    };
    let run = if sync_on {
        start_pair(&|_, text| text)?
    } else {
        start_pair(&off)?
    };
    let before = pinned_counter(&run.instances[0], "session_created")?;
    let took = hafw::testkit::send_lab_udp_flows(&run.topo.client.name, 0, flows, |_, _| true)?;
    std::thread::sleep(Duration::from_millis(300));
    let created = pinned_counter(&run.instances[0], "session_created")? - before;
    let synced = if sync_on {
        let passive = pinned_sessions(&run.instances[1])?;
        let mut held = 0;
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            held = passive.keys().count();
            held >= created as usize
        });
        format!("; passive holds {held}")
    } else {
        String::new()
    };
    eprintln!(
        "sync {}: {created} sessions in {:.2} s{synced}",
        if sync_on { "on" } else { "off" },
        took.as_secs_f64()
    );
    Ok(created as f64 / took.as_secs_f64())
}
