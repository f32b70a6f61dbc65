//! The benchmarks' own programs, which ship in the XDP object, through BPF_PROG_TEST_RUN: the
//! forwarding benchmark's sender and receiver (`hafw_bench_tx`, `hafw_sink`) and the new-flow
//! benchmark's fast path (`hafw_bench_new_flows`), the calibration's lone session lookup
//! (`hafw_bench_lookup`) and the sync benchmark's lone session insert (`hafw_bench_insert`).
//!
//! Needs root (BPF, netns).

use aya::programs::Xdp;
use etherparse::PacketBuilder;
use hafw::{
    dataplane::{
        self, BENCH_TX_PROGRAM, INSERT_BENCH_PROGRAM, LOOKUP_BENCH_PROGRAM,
        NEW_FLOWS_BENCH_PROGRAM, SINK_PROGRAM,
    },
    testkit::{
        BENCH_IDLE_PORTS, CLIENT, Fixture, SERVER, Verdict, arp_request, key_octets, run_program,
        session_key, tcp, udp,
    },
};

fn bench_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(CLIENT, SERVER, 64)
        .udp(40000, 53)
        .write(&mut frame, &[0x41; 18])
        .unwrap();
    frame
}

/// Live-frame pages come back to the sender with whatever the receiver wrote into them: the
/// sender writes its whole frame every time.
#[test]
fn the_bench_sender_transmits_its_frame_over_whatever_the_page_held() {
    let f = Fixture::new();
    let frame = bench_frame();
    let ebpf = dataplane::load_bench_sender(&frame).unwrap();
    let prog: &Xdp = ebpf.program(BENCH_TX_PROGRAM).unwrap().try_into().unwrap();
    let scribbled = vec![0xee; frame.len()];
    let (out, _) = run_program(prog, &scribbled, f.trust, 1);
    assert_eq!(out.verdict, Verdict::Tx);
    assert_eq!(out.data, frame);
    assert!(
        dataplane::load_bench_sender(&frame[..59]).is_err(),
        "a frame of another length is refused"
    );
}

#[test]
fn the_bench_sink_passes_arp_and_drops_the_rest() {
    let f = Fixture::new();
    let ebpf = dataplane::load_alone(SINK_PROGRAM).unwrap();
    let prog: &Xdp = ebpf.program(SINK_PROGRAM).unwrap().try_into().unwrap();
    let cases = [
        ("ARP", arp_request(CLIENT, SERVER), Verdict::Pass),
        ("UDP", udp(CLIENT, 40000, SERVER, 53, 64), Verdict::Drop),
        (
            "a bare Ethernet header (test runs refuse shorter frames)",
            [[0xff; 12].as_slice(), &[0x88, 0xb5]].concat(),
            Verdict::Drop,
        ),
    ];
    for (what, frame, verdict) in cases {
        assert_eq!(
            run_program(prog, &frame, f.trust, 1).0.verdict,
            verdict,
            "{what}"
        );
    }
}

/// A repeated test run replays one frame, and the frame keeps what the previous run wrote into it:
/// the new-flow benchmark's program must still make every run a flow of its own, each allowed,
/// given a session and forwarded by the fast path.
#[test]
fn the_new_flow_bench_program_makes_every_run_a_new_flow() {
    let mut f = Fixture::new();
    f.dp.load_bench_program(NEW_FLOWS_BENCH_PROGRAM, BENCH_IDLE_PORTS[0])
        .unwrap();
    let prog = f.dp.bench_program(NEW_FLOWS_BENCH_PROGRAM).unwrap();
    let syn = tcp([198, 18, 1, 200], 40000, SERVER, 80, 0x02, 64);
    assert_eq!(
        run_program(prog, &syn, f.trust, 3).0.verdict,
        Verdict::Redirect
    );
    assert_eq!(
        run_program(prog, &syn, f.trust, 1).0.verdict,
        Verdict::Redirect
    );
    assert_eq!(f.counters().session_created, 4);
    for run in 0..4u16 {
        let flow = tcp([198, 18, 1, 128], run, SERVER, 80, 0x02, 64);
        assert!(f.session_of(&flow).is_some(), "run {run}: no session");
    }
    assert_eq!(f.sessions().len(), 4);
}

/// The calibration program looks up the session whose key is the frame: found, dropped; not
/// found, passed.
#[test]
fn the_bench_lookup_finds_the_session_whose_key_is_the_frame() {
    let mut f = Fixture::new();
    f.handshake(CLIENT, 40000, SERVER, 80);
    f.dp.load_bench_program(LOOKUP_BENCH_PROGRAM, BENCH_IDLE_PORTS[1])
        .unwrap();
    let prog = f.dp.bench_program(LOOKUP_BENCH_PROGRAM).unwrap();
    let frame = |port| key_octets(&session_key(&tcp(CLIENT, port, SERVER, 80, 0x10, 64)));
    assert_eq!(
        run_program(prog, &frame(40000), f.trust, 1).0.verdict,
        Verdict::Drop
    );
    assert_eq!(
        run_program(prog, &frame(40001), f.trust, 1).0.verdict,
        Verdict::Pass
    );
}

/// The insert calibration adds a new session at every run (the frame's key with the run's number
/// as its ports) and drops; once the table has no room for the run's session, it passes.
#[test]
fn the_bench_insert_adds_a_new_session_at_every_run() {
    const SIZE: u32 = 64;
    let mut f = Fixture::with_policy(hafw::testkit::POLICY, SIZE);
    f.dp.load_bench_program(INSERT_BENCH_PROGRAM, BENCH_IDLE_PORTS[0])
        .unwrap();
    let prog = f.dp.bench_program(INSERT_BENCH_PROGRAM).unwrap();
    let frame = key_octets(&session_key(&tcp(CLIENT, 40000, SERVER, 80, 0x10, 64)));
    let (out, _) = run_program(prog, &frame, f.trust, SIZE);
    assert_eq!(out.verdict, Verdict::Drop);
    assert_eq!(f.sessions().len(), SIZE as usize);
    // The table holds at least its size, and refuses by twice its size (see `hafw_common::table`).
    let more = (0..=SIZE)
        .find(|_| run_program(prog, &frame, f.trust, 1).0.verdict == Verdict::Pass)
        .expect("full by twice the size");
    let inserted = SIZE + more;
    let mut ports: Vec<(u16, u16)> = f
        .sessions()
        .iter()
        .map(|(k, _)| (k.port_lo, k.port_hi))
        .collect();
    ports.sort();
    // The refused run took a number too.
    let runs: Vec<(u16, u16)> = (0..inserted as u16).map(|run| (run, 0)).collect();
    assert_eq!(ports, runs);
}
