//! `sync`: HA2 session sync. Ingest rate of the XDP program (records per second per core, from
//! the kernel's own timing of BPF_PROG_TEST_RUN on full frames of 18 session records, each frame
//! a new sequence number so every record is really written), and the bulk sync of a table of
//! 100k and 1M sessions through the lab pair (active table filled through its pinned map, then
//! the passive node starts; the time is the passive's, from bulk start to bulk end).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hafw::{
    sync::{self, MessageWriter},
    testkit::{Fixture, Verdict, run_program},
};
use hafw_common::{
    ha2::{HA2_SESSION_UPDATE, Ha2Config, MAX_SESSION_RECORDS, SessionRecord},
    session::{FAMILY_IPV4, PROTO_TCP, SessionKey, SessionState, SessionValue},
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

/// Ingest rate in records per second per core.
pub fn ingest() -> Result<Row> {
    const FRAMES: u32 = 20_000;
    let f = Fixture::with_policy(hafw::testkit::POLICY, 1_250_000);
    let mut f = f;
    f.dp.set_ha2(Ha2Config {
        receiving: 1,
        peer: 7,
        group_id: 1,
        _pad: [0; 7],
    })?;
    let mut w = MessageWriter::new(1, 7);
    let prog = f.dp.ha2_program()?;
    let mut total = Duration::ZERO;
    for frame_no in 0..FRAMES {
        let records: Vec<SessionRecord> = (0..MAX_SESSION_RECORDS as u32)
            .map(|r| SessionRecord {
                key: key(frame_no * MAX_SESSION_RECORDS as u32 + r),
                state: SessionState::Established as u8,
                idle_ms: 10,
                age_ms: 1000,
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
    let records = u64::from(FRAMES) * MAX_SESSION_RECORDS as u64;
    let written = f.dp.ha2_counters()?.session_updates;
    if written != records {
        bail!("{written} of {records} records written");
    }
    let per_record_ns = total.as_secs_f64() * 1e9 / records as f64;
    Ok(Row {
        case: "ingest: full frames of 18 session records, XDP test run".into(),
        value: 1e9 / per_record_ns / 1e6,
        unit: "M records/s/core",
        target: format!(
            "≥ 3 ({})",
            if per_record_ns <= 1e9 / 3e6 {
                "met"
            } else {
                "MISSED"
            }
        ),
        note: format!(
            "{:.0} ns per record, {:.0} ns per frame, {records} records into a table of 1.25M",
            per_record_ns,
            per_record_ns * MAX_SESSION_RECORDS as f64
        ),
    })
}

/// Bulk sync of `n` sessions through the lab pair.
pub fn bulk(n: u32) -> Result<Row> {
    let hafw = std::env::current_exe()?
        .parent()
        .context("bench binary directory")?
        .join("hafw");
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
    let pin = format!("/sys/fs/bpf/hafw/{}/v2/sessions", run.instances[0]);
    let data = aya::maps::MapData::from_pin(&pin)?;
    let mut map: aya::maps::HashMap<_, SessionKey, SessionValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data)?)?;
    let now = hafw::aging::monotonic_now_ns();
    let value = SessionValue {
        created_ns: now,
        last_seen_ns: now,
        state: SessionState::Established as u8,
        ..Default::default()
    };
    for i in 0..n {
        map.insert(key(i), value, 0)?;
    }
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
