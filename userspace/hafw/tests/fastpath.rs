//! The data-port program through BPF_PROG_TEST_RUN: real packets into the loaded program, with
//! real maps, a real FIB (routes and neighbours in a private network namespace), and assertions
//! on the verdict, the output packet, the counters and the session table.
//!
//! Needs root (BPF, netns). Each test runs in its own thread-private network namespace.

use hafw::testkit::{
    self as testkit, CLIENT, CLIENT6, Fixture, SERVER, SERVER6, Verdict, arp_request, icmp_echo,
    icmp_unreachable_for_tcp, tcp, tcp6, udp,
};
use hafw_common::session::SessionState;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYNACK: u8 = 0x12;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

/// The handshake and data of one TCP connection, both directions finding one session.
#[test]
fn tcp_handshake_establishes_one_session_for_both_directions() {
    let f = Fixture::new();
    let steps = [
        // (description, packet, verdict, session state after)
        (
            "client SYN",
            tcp(CLIENT, 40000, SERVER, 80, SYN, 64),
            Verdict::Redirect,
            SessionState::New,
        ),
        (
            "server SYN-ACK",
            tcp(SERVER, 80, CLIENT, 40000, SYNACK, 64),
            Verdict::Redirect,
            SessionState::SynRecv,
        ),
        (
            "client ACK",
            tcp(CLIENT, 40000, SERVER, 80, ACK, 64),
            Verdict::Redirect,
            SessionState::Established,
        ),
        (
            "client data",
            tcp(CLIENT, 40000, SERVER, 80, ACK | 0x08, 64),
            Verdict::Redirect,
            SessionState::Established,
        ),
        (
            "server data",
            tcp(SERVER, 80, CLIENT, 40000, ACK | 0x08, 64),
            Verdict::Redirect,
            SessionState::Established,
        ),
        (
            "client FIN",
            tcp(CLIENT, 40000, SERVER, 80, FIN_ACK, 64),
            Verdict::Redirect,
            SessionState::FinWait,
        ),
        (
            "server FIN",
            tcp(SERVER, 80, CLIENT, 40000, FIN_ACK, 64),
            Verdict::Redirect,
            SessionState::TimeWait,
        ),
        (
            "last ACK",
            tcp(CLIENT, 40000, SERVER, 80, ACK, 64),
            Verdict::Redirect,
            SessionState::TimeWait,
        ),
    ];
    for (what, pkt, verdict, state) in steps {
        let out = f.run(&pkt, f.ingress_for(&pkt));
        assert_eq!(out.verdict, verdict, "{what}");
        let s = f
            .session_of(&pkt)
            .unwrap_or_else(|| panic!("{what}: no session"));
        assert_eq!(SessionState::from_u8(s.state), state, "{what}");
    }
    assert_eq!(f.sessions().len(), 1, "both directions share one entry");
    let s = f
        .session_of(&tcp(CLIENT, 40000, SERVER, 80, ACK, 64))
        .unwrap();
    assert_eq!((s.packets_orig, s.packets_reply), (5, 3));
    let c = f.counters();
    assert_eq!(c.forwarded, 8);
    assert_eq!(c.session_created, 1);
    assert_eq!(c.session_established, 1);
}

#[test]
fn forwarded_packet_is_rewritten_for_the_next_hop() {
    let f = Fixture::new();
    let pkt = tcp(CLIENT, 40000, SERVER, 80, SYN, 64);
    let out = f.run(&pkt, f.trust);
    assert_eq!(out.verdict, Verdict::Redirect);
    let (eth, ip) = testkit::parse_ipv4(&out.data);
    assert_eq!(
        eth.destination,
        testkit::SERVER_MAC,
        "next hop MAC from the neighbour table"
    );
    assert_eq!(eth.source, f.untrust_mac, "egress interface MAC");
    assert_eq!(ip.time_to_live, 63);
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "incremental checksum update"
    );
}

/// Established packets take the next hop cached in their session, per direction, until the FIB
/// generation changes: a neighbour changed behind the generation's back is not seen (the proof
/// that the cache, not the FIB, answered), a new generation sees it, and a packet longer than the
/// cache vouches for is looked up again. With the generation at 0 nothing is cached.
#[test]
fn established_packets_use_the_cached_next_hop_until_the_fib_generation_changes() {
    const NEW_SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x0b];
    let mut f = Fixture::new();
    let generation = f.dp.fib_generation();
    generation.bump().unwrap();
    f.handshake(CLIENT, 40000, SERVER, 80);
    let ack = tcp(CLIENT, 40000, SERVER, 80, ACK, 64);
    let to_server = |f: &Fixture| {
        let out = f.run(&ack, f.trust);
        assert_eq!(out.verdict, Verdict::Redirect);
        testkit::parse_ipv4(&out.data).0.destination
    };
    assert_eq!(to_server(&f), testkit::SERVER_MAC);
    let s = f.session_of(&ack).unwrap();
    let nh = s.next_hop[hafw_common::session::DIR_ORIG];
    assert_eq!(
        (nh.ifindex, nh.dmac(), nh.smac()),
        (f.untrust, testkit::SERVER_MAC, f.untrust_mac)
    );
    assert_eq!(
        s.next_hop[hafw_common::session::DIR_REPLY].dmac(),
        testkit::CLIENT_MAC
    );
    let cached = f.counter("route_cached");
    assert_eq!(
        cached, 1,
        "the first packet of each direction looks up, later ones do not"
    );

    testkit::sh(&[
        "ip",
        "neigh",
        "replace",
        "198.18.2.2",
        "lladdr",
        "02:00:00:00:0b:0b",
        "dev",
        "untrust0",
        "nud",
        "permanent",
    ]);
    assert_eq!(
        to_server(&f),
        testkit::SERVER_MAC,
        "cached: the change is not seen yet"
    );
    assert_eq!(f.counter("route_cached"), cached + 1);
    generation.bump().unwrap();
    assert_eq!(
        to_server(&f),
        NEW_SERVER_MAC,
        "a new generation looks up again"
    );
    assert_eq!(f.counter("route_cached"), cached + 1);
    assert_eq!(to_server(&f), NEW_SERVER_MAC);
    assert_eq!(f.counter("route_cached"), cached + 2);

    // Longer than any packet the cache has seen: looked up again (the FIB checks the MTU).
    let mut long = tcp(CLIENT, 40000, SERVER, 80, ACK, 64);
    long.extend_from_slice(&[0; 100]);
    let ip_len = (long.len() - 14) as u16;
    long[16..18].copy_from_slice(&ip_len.to_be_bytes());
    long[24..26].fill(0);
    let csum = testkit::parse_ipv4(&long).1.calc_header_checksum();
    long[24..26].copy_from_slice(&csum.to_be_bytes());
    assert_eq!(f.run(&long, f.trust).verdict, Verdict::Redirect);
    assert_eq!(f.counter("route_cached"), cached + 2);
    assert_eq!(f.run(&long, f.trust).verdict, Verdict::Redirect);
    assert_eq!(f.counter("route_cached"), cached + 3, "now vouched for");

    generation.disable().unwrap();
    assert_eq!(to_server(&f), NEW_SERVER_MAC);
    assert_eq!(
        f.counter("route_cached"),
        cached + 3,
        "generation 0: no cache"
    );
}

/// Known gap of the harness, not of the dataplane: under BPF_PROG_TEST_RUN, `bpf_fib_lookup`
/// answers NOT_FWDED for these IPv6 destinations (addresses verified inside the program; `ip -6
/// route get ... iif trust0` routes them; DIRECT/OUTPUT flags change nothing), while live IPv6
/// traffic is forwarded by XDP (`lab::tcp_udp_and_ping_pass_denied_flows_do_not` checks it).
/// This test states the behaviour the harness should show.
#[test]
#[ignore = "bpf_fib_lookup answers NOT_FWDED for IPv6 under BPF_PROG_TEST_RUN only"]
fn ipv6_new_flows_are_forwarded() {
    let f = Fixture::new();
    let pkt6 = tcp6(CLIENT6, 40000, SERVER6, 443, SYN, 64);
    let out = f.run(&pkt6, f.trust);
    assert_eq!(out.verdict, Verdict::Redirect);
    assert_eq!(out.data[14 + 7], 63, "hop limit decremented");
    assert_eq!(&out.data[0..6], &testkit::SERVER_MAC);
}

/// Policy for new flows, one row per rule outcome.
#[test]
fn policy_allows_and_denies_new_flows_per_rule() {
    let f = Fixture::new();
    // (description, packet, ingress is trust?, verdict, counter that must move)
    let table: Vec<(&str, Vec<u8>, bool, Verdict, &str)> = vec![
        (
            "web from clients allowed",
            tcp(CLIENT, 1000, SERVER, 443, SYN, 64),
            true,
            Verdict::Redirect,
            "policy_allow",
        ),
        (
            "ssh not in any allow rule: interzone default",
            tcp(CLIENT, 1001, SERVER, 22, SYN, 64),
            true,
            Verdict::Drop,
            "drop_policy",
        ),
        (
            "explicit deny rule before allow",
            tcp(CLIENT, 1002, SERVER, 8080, SYN, 64),
            true,
            Verdict::Drop,
            "drop_policy",
        ),
        (
            "dns over udp allowed",
            udp(CLIENT, 5353, SERVER, 53, 64),
            true,
            Verdict::Redirect,
            "policy_allow",
        ),
        (
            "untrust to trust denied by default",
            tcp(SERVER, 2000, CLIENT, 80, SYN, 64),
            false,
            Verdict::Drop,
            "drop_policy",
        ),
        (
            "ping allowed",
            icmp_echo(CLIENT, SERVER, 7, true, 64),
            true,
            Verdict::Redirect,
            "policy_allow",
        ),
    ];
    for (what, pkt, from_trust, verdict, counter) in table {
        let before = f.counter(counter);
        let ingress = if from_trust { f.trust } else { f.untrust };
        let out = f.run(&pkt, ingress);
        assert_eq!(out.verdict, verdict, "{what}");
        assert_eq!(f.counter(counter), before + 1, "{what}: {counter}");
        assert_eq!(
            f.session_of(&pkt).is_some(),
            verdict == Verdict::Redirect,
            "{what}: session"
        );
    }
}

/// A policy of 131 rules (three bitmap words): filler allow rules on ports 20000 up, and
/// `(index, source, port, action)` at the given positions.
fn spread_policy(rules: &[(usize, &str, u16, &str)]) -> String {
    let mut s = String::from(
        "instance = \"t\"\n[[interface]]\nname = \"trust0\"\nzone = \"trust\"\n\
         [[interface]]\nname = \"untrust0\"\nzone = \"untrust\"\n",
    );
    for i in 0..131 {
        let (source, port, action) = rules
            .iter()
            .find(|r| r.0 == i)
            .map_or(("198.18.1.0/24", 20000 + i as u16, "allow"), |r| {
                (r.1, r.2, r.3)
            });
        s += &format!(
            "[[service]]\nname = \"s{i}\"\nprotocol = \"tcp\"\nports = [\"{port}\"]\n\
             [[rule]]\nname = \"r{i}\"\nfrom = [\"trust\"]\nto = [\"untrust\"]\n\
             source = [\"{source}\"]\ndestination = [\"198.18.2.0/24\"]\n\
             service = [\"s{i}\"]\naction = \"{action}\"\n"
        );
    }
    s
}

/// The first matching rule wins wherever it lies in the bitmaps, and a word where every field has
/// rules, but no rule has them all, does not end the search (the classifier visits only the words
/// the fields' summaries have in common).
#[test]
fn the_first_matching_rule_wins_across_bitmap_words() {
    let mut f = Fixture::new();
    f.commit(&spread_policy(&[
        (5, "198.18.1.2/32", 80, "allow"),
        (10, "198.18.1.99/32", 443, "allow"),
        (70, "198.18.1.2/32", 8443, "deny"),
        (129, "198.18.1.0/24", 443, "allow"),
        (130, "198.18.1.0/24", 8443, "allow"),
    ]));
    let cases = [
        (
            "word 0 has the source's and the port's rules, none with both: found in word 2",
            tcp(CLIENT, 1000, SERVER, 443, SYN, 64),
            Verdict::Redirect,
        ),
        (
            "the deny in word 1 comes before the allow in word 2",
            tcp(CLIENT, 1001, SERVER, 8443, SYN, 64),
            Verdict::Drop,
        ),
        (
            "another source skips the deny",
            tcp([198, 18, 1, 50], 1002, SERVER, 8443, SYN, 64),
            Verdict::Redirect,
        ),
        (
            "no rule: the inter-zone default",
            tcp(CLIENT, 1003, SERVER, 22, SYN, 64),
            Verdict::Drop,
        ),
    ];
    for (what, pkt, verdict) in cases {
        assert_eq!(f.run(&pkt, f.trust).verdict, verdict, "{what}");
    }
}

#[test]
fn strict_tcp_drops_segments_without_or_against_a_session() {
    let f = Fixture::new();
    // Mid-stream ACK with no session: dropped, nothing created.
    let out = f.run(&tcp(CLIENT, 40001, SERVER, 80, ACK, 64), f.trust);
    assert_eq!(out.verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_tcp_no_session"), 1);
    assert!(f.sessions().is_empty());
    // SYN-ACK from the initiator's side while the session waits for the responder.
    f.run(&tcp(CLIENT, 40002, SERVER, 80, SYN, 64), f.trust);
    let out = f.run(&tcp(CLIENT, 40002, SERVER, 80, SYNACK, 64), f.trust);
    assert_eq!(out.verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_tcp_invalid"), 1);
    // Data before the handshake completes.
    let out = f.run(&tcp(CLIENT, 40002, SERVER, 80, ACK | 0x08, 64), f.trust);
    assert_eq!(out.verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_tcp_invalid"), 2);
}

#[test]
fn rst_closes_and_a_new_syn_reopens_through_policy() {
    let mut f = Fixture::new();
    f.handshake(CLIENT, 40003, SERVER, 80);
    let out = f.run(&tcp(SERVER, 80, CLIENT, 40003, RST | ACK, 64), f.untrust);
    assert_eq!(out.verdict, Verdict::Redirect);
    let key_pkt = tcp(CLIENT, 40003, SERVER, 80, SYN, 64);
    assert_eq!(
        SessionState::from_u8(f.session_of(&key_pkt).unwrap().state),
        SessionState::Closed
    );
    assert_eq!(f.counter("session_closed"), 1);
    let out = f.run(&key_pkt, f.trust);
    assert_eq!(out.verdict, Verdict::Redirect);
    assert_eq!(
        SessionState::from_u8(f.session_of(&key_pkt).unwrap().state),
        SessionState::New
    );
    assert_eq!(
        f.counter("session_created"),
        2,
        "reopen re-ran the policy and created anew"
    );
}

/// A pure SYN meets the policy before the session table; when its tuple has a session, that
/// session still decides: a retransmitted SYN passes without a second session, a SYN into an
/// established connection is dropped and leaves it as it was, and a SYN the policy denies is
/// dropped by the policy without a session.
#[test]
fn a_syn_on_a_tuple_with_a_session_is_decided_by_the_session() {
    let mut f = Fixture::new();
    let syn = tcp(CLIENT, 40030, SERVER, 80, SYN, 64);
    assert_eq!(f.run(&syn, f.trust).verdict, Verdict::Redirect);
    assert_eq!(
        f.run(&syn, f.trust).verdict,
        Verdict::Redirect,
        "retransmitted"
    );
    assert_eq!(f.counter("session_created"), 1);
    let session = f.session_of(&syn).unwrap();
    assert_eq!(SessionState::from_u8(session.state), SessionState::New);
    assert_eq!(
        session.packets_orig, 2,
        "the retransmission counted in its session"
    );

    f.handshake(CLIENT, 40031, SERVER, 80);
    let syn = tcp(CLIENT, 40031, SERVER, 80, SYN, 64);
    let before = f.session_of(&syn).unwrap();
    assert_eq!(f.run(&syn, f.trust).verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_tcp_invalid"), 1);
    let after = f.session_of(&syn).unwrap();
    assert_eq!(
        SessionState::from_u8(after.state),
        SessionState::Established
    );
    assert_eq!(after.packets_orig, before.packets_orig);
    assert_eq!(f.counter("session_created"), 2);

    f.commit(testkit::POLICY_WITHOUT_WEB);
    let denied = tcp(CLIENT, 40032, SERVER, 80, SYN, 64);
    assert_eq!(f.run(&denied, f.trust).verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_policy"), 1);
    assert!(f.session_of(&denied).is_none());
}

#[test]
fn udp_and_icmp_replies_establish_their_sessions() {
    let f = Fixture::new();
    f.run(&udp(CLIENT, 5000, SERVER, 53, 64), f.trust);
    let reply = udp(SERVER, 53, CLIENT, 5000, 64);
    assert_eq!(
        f.run(&reply, f.untrust).verdict,
        Verdict::Redirect,
        "reply allowed by the session"
    );
    assert_eq!(
        SessionState::from_u8(f.session_of(&reply).unwrap().state),
        SessionState::Established
    );

    f.run(&icmp_echo(CLIENT, SERVER, 9, true, 64), f.trust);
    let pong = icmp_echo(SERVER, CLIENT, 9, false, 64);
    assert_eq!(f.run(&pong, f.untrust).verdict, Verdict::Redirect);
    assert_eq!(
        SessionState::from_u8(f.session_of(&pong).unwrap().state),
        SessionState::Established
    );
    // An echo reply nobody asked for is a new flow untrust->trust: denied.
    let stray = icmp_echo(SERVER, CLIENT, 10, false, 64);
    assert_eq!(f.run(&stray, f.untrust).verdict, Verdict::Drop);
}

/// A session table holds at least its configured size; a new flow whose two buckets are full is
/// refused (dropped, counted, no session), and the table evicts none of its sessions to make room:
/// every flow it holds still passes. (The table has two slots per session of its size, so the
/// refusal comes between the size and twice the size.)
#[test]
fn a_full_session_table_refuses_new_flows_and_keeps_its_sessions() {
    const SIZE: u16 = 1024;
    let f = Fixture::with_policy(testkit::POLICY, SIZE.into());
    let flow = |i: u16| udp(CLIENT, 10_000 + i, SERVER, 53, 64);
    let refused = (0..2 * SIZE + 1)
        .find(|&i| f.run(&flow(i), f.trust).verdict != Verdict::Redirect)
        .expect("a table of two slots per session refuses by twice its size");
    assert!(
        refused >= SIZE,
        "refused flow {refused}, below the size {SIZE}"
    );
    assert_eq!(f.counter("drop_session_table_full"), 1);
    assert!(f.session_of(&flow(refused)).is_none());
    assert_eq!(f.sessions_len(), usize::from(refused));
    for i in 0..refused {
        let reply = udp(SERVER, 53, CLIENT, 10_000 + i, 64);
        assert_eq!(
            f.run(&reply, f.untrust).verdict,
            Verdict::Redirect,
            "reply {i}"
        );
    }
    assert_eq!(f.sessions_len(), usize::from(refused));
}

#[test]
fn icmp_errors_follow_the_session_they_quote() {
    let mut f = Fixture::new();
    f.handshake(CLIENT, 40004, SERVER, 80);
    let related = icmp_unreachable_for_tcp(SERVER, CLIENT, (CLIENT, 40004, SERVER, 80));
    assert_eq!(f.run(&related, f.untrust).verdict, Verdict::Redirect);
    let unrelated = icmp_unreachable_for_tcp(SERVER, CLIENT, (CLIENT, 49999, SERVER, 80));
    assert_eq!(f.run(&unrelated, f.untrust).verdict, Verdict::Drop);
}

/// An ICMP error goes only to the source of the packet it quotes, the host the error is about
/// (as Linux conntrack requires): with the old code one allowed session let anybody send errors
/// quoting it to any host. Path MTU discovery (frag-needed, packet-too-big to the sender) passes.
#[test]
fn icmp_errors_reach_only_the_sender_of_the_packet_they_quote() {
    use etherparse::{
        Icmpv4Type, Icmpv6Type,
        icmpv4::{DestUnreachableHeader, TimeExceededCode},
        icmpv6::DestUnreachableCode,
    };
    use testkit::{icmpv4_error, icmpv6_error};
    const VICTIM: [u8; 4] = [198, 18, 1, 3];
    const ROUTER_IN: [u8; 4] = [198, 18, 1, 254];
    const ROUTER_OUT: [u8; 4] = [198, 18, 2, 254];
    const VICTIM6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    const ROUTER_OUT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];
    let mut f = Fixture::new();
    // Another host on the client side, resolved: the old code redirected forged errors to it.
    testkit::sh(&[
        "ip",
        "neigh",
        "replace",
        "198.18.1.3",
        "lladdr",
        "02:00:00:00:01:03",
        "dev",
        "trust0",
        "nud",
        "permanent",
    ]);
    f.handshake(CLIENT, 40050, SERVER, 80);
    let out = tcp(CLIENT, 40050, SERVER, 80, ACK, 64);
    let back = tcp(SERVER, 80, CLIENT, 40050, ACK, 64);
    let out6 = tcp6(CLIENT6, 40051, SERVER6, 80, ACK, 64);
    f.dp.insert_session(
        &testkit::session_key(&out6),
        &hafw_common::session::SessionValue {
            state: SessionState::Established as u8,
            ..Default::default()
        },
    )
    .unwrap();
    let port = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let frag = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    let ttl = Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit);
    let port6 = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let ptb6 = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let (trust, untrust) = (f.trust, f.untrust);
    let mismatch = "drop_icmp_error_mismatch";
    let table: Vec<(&str, Vec<u8>, u32, Verdict, &str)> = vec![
        (
            "port unreachable from the server to the client",
            icmpv4_error(SERVER, CLIENT, port.clone(), &out),
            untrust,
            Verdict::Redirect,
            "forwarded",
        ),
        (
            "frag needed from a router to the client (PMTU)",
            icmpv4_error(ROUTER_OUT, CLIENT, frag.clone(), &out),
            untrust,
            Verdict::Redirect,
            "forwarded",
        ),
        (
            "time exceeded from a router to the server, quoting its reply",
            icmpv4_error(ROUTER_IN, SERVER, ttl.clone(), &back),
            trust,
            Verdict::Redirect,
            "forwarded",
        ),
        (
            "port unreachable to another client-side host",
            icmpv4_error(SERVER, VICTIM, port, &out),
            untrust,
            Verdict::Drop,
            mismatch,
        ),
        (
            "frag needed to another client-side host",
            icmpv4_error(ROUTER_OUT, VICTIM, frag, &out),
            untrust,
            Verdict::Drop,
            mismatch,
        ),
        (
            "time exceeded to the server, quoting the client's packet",
            icmpv4_error(ROUTER_IN, SERVER, ttl, &out),
            trust,
            Verdict::Drop,
            mismatch,
        ),
        // IPv6: under test-run the FIB does not forward IPv6 (see ipv6_new_flows_are_forwarded),
        // so an error that passes the check goes to the kernel here; the lab forwards it.
        (
            "packet too big from a router to the client (PMTU)",
            icmpv6_error(ROUTER_OUT6, CLIENT6, ptb6, &out6),
            untrust,
            Verdict::Pass,
            "pass_host",
        ),
        (
            "IPv6 port unreachable to another client-side host",
            icmpv6_error(SERVER6, VICTIM6, port6, &out6),
            untrust,
            Verdict::Drop,
            mismatch,
        ),
    ];
    for (what, pkt, ingress, verdict, counter) in table {
        let before = f.counter(counter);
        assert_eq!(f.run(&pkt, ingress).verdict, verdict, "{what}");
        assert_eq!(f.counter(counter), before + 1, "{what}");
    }
    assert_eq!(f.sessions().len(), 2, "no error opened a session");
}

#[test]
fn vlan_tagged_traffic_is_checked_then_handed_to_the_kernel() {
    let f = Fixture::new();
    let pkt = testkit::vlan(100, &tcp(CLIENT, 40005, SERVER, 80, SYN, 64));
    let out = f.run(&pkt, f.trust);
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(f.counter("pass_vlan"), 1);
    assert_eq!(f.counter("vlan_packets"), 1);
    assert_eq!(f.sessions().len(), 1);
    let denied = testkit::vlan(100, &tcp(CLIENT, 40006, SERVER, 22, SYN, 64));
    assert_eq!(f.run(&denied, f.trust).verdict, Verdict::Drop);
    let midstream = testkit::vlan(100, &tcp(CLIENT, 40007, SERVER, 80, ACK, 64));
    assert_eq!(f.run(&midstream, f.trust).verdict, Verdict::Drop);
}

/// A frame with a second VLAN tag, or an outer 0x9100 one, is dropped and counted: the fast path
/// checks one tag, and the old code handed such a frame to the kernel as "not IP", which strips
/// an outer VID-0 tag, takes the inner one and forwards the packet (the host has no filter of its
/// own) with no policy at all. One tag, 802.1Q or 802.1ad, is still checked and then the kernel's.
#[test]
fn stacked_vlan_tags_are_dropped_and_counted() {
    use testkit::vlan_tag;
    let f = Fixture::new();
    let denied = tcp(CLIENT, 40040, SERVER, 22, SYN, 64);
    let midstream = tcp(CLIENT, 40041, SERVER, 80, ACK, 64);
    let allowed = tcp(CLIENT, 40042, SERVER, 80, SYN, 64);
    let denied6 = tcp6(CLIENT6, 40043, SERVER6, 22, SYN, 64);
    // Outer tag VID 0, inner tag VID 100.
    let two = |outer: u16, inner: u16, pkt: &[u8]| vlan_tag(outer, 0, &vlan_tag(inner, 100, pkt));
    let stacked = "drop_vlan_stacked";
    let table: Vec<(&str, Vec<u8>, Verdict, &str)> = vec![
        (
            "802.1Q in 802.1Q, denied flow",
            two(0x8100, 0x8100, &denied),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1Q in 802.1Q, no session",
            two(0x8100, 0x8100, &midstream),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1Q in 802.1Q, allowed flow",
            two(0x8100, 0x8100, &allowed),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1Q in 802.1Q, IPv6",
            two(0x8100, 0x8100, &denied6),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1ad in 802.1Q",
            two(0x8100, 0x88a8, &denied),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1Q in 802.1ad",
            two(0x88a8, 0x8100, &denied),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1ad in 802.1ad",
            two(0x88a8, 0x88a8, &denied),
            Verdict::Drop,
            stacked,
        ),
        (
            "0x9100 in 802.1Q",
            two(0x8100, 0x9100, &denied),
            Verdict::Drop,
            stacked,
        ),
        (
            "802.1Q in 0x9100",
            two(0x9100, 0x8100, &denied),
            Verdict::Drop,
            stacked,
        ),
        (
            "0x9100 alone",
            vlan_tag(0x9100, 100, &denied),
            Verdict::Drop,
            stacked,
        ),
        // One tag: checked, then handed to the kernel's VLAN devices, as before.
        (
            "802.1Q, allowed flow",
            vlan_tag(0x8100, 100, &allowed),
            Verdict::Pass,
            "pass_vlan",
        ),
        (
            "802.1ad, allowed flow",
            vlan_tag(0x88a8, 100, &tcp(CLIENT, 40044, SERVER, 80, SYN, 64)),
            Verdict::Pass,
            "pass_vlan",
        ),
        (
            "802.1Q, denied flow",
            vlan_tag(0x8100, 100, &denied),
            Verdict::Drop,
            "drop_policy",
        ),
        (
            "802.1ad, denied flow",
            vlan_tag(0x88a8, 100, &denied),
            Verdict::Drop,
            "drop_policy",
        ),
    ];
    for (what, pkt, verdict, counter) in table {
        let before = f.counter(counter);
        assert_eq!(f.run(&pkt, f.trust).verdict, verdict, "{what}");
        assert_eq!(f.counter(counter), before + 1, "{what}");
    }
    assert_eq!(
        f.sessions().len(),
        2,
        "only the two single-tagged allowed flows opened sessions"
    );
}

/// Truncated and malformed packets: dropped and counted, never a session.
#[test]
fn malformed_packets_are_dropped_and_counted() {
    let f = Fixture::new();
    let good = tcp(CLIENT, 40008, SERVER, 80, SYN, 64);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44; // IHL 4 (< 5)
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    let mut fragment = good.clone();
    fragment[14 + 6] = 0x20; // more fragments
    let mut tcp_doff = good.clone();
    tcp_doff[14 + 20 + 12] = 0x40; // data offset 4
    let table: Vec<(&str, Vec<u8>, &str)> = vec![
        // The kernel refuses test-run frames shorter than an Ethernet header before the program
        // runs; the shortest frame the program can see is a bare header.
        (
            "ethernet header only",
            good[..14].to_vec(),
            "drop_malformed",
        ),
        (
            "ipv4 header cut",
            good[..14 + 12].to_vec(),
            "drop_malformed",
        ),
        (
            "tcp header cut",
            good[..14 + 20 + 10].to_vec(),
            "drop_malformed",
        ),
        ("ihl below 5", bad_ihl, "drop_malformed"),
        ("wrong ip version", bad_version, "drop_malformed"),
        ("tcp data offset below 5", tcp_doff, "drop_malformed"),
        ("ipv4 fragment", fragment, "drop_fragment"),
        (
            "ipv6 header cut",
            tcp6(CLIENT6, 1, SERVER6, 80, SYN, 64)[..14 + 30].to_vec(),
            "drop_malformed",
        ),
        (
            "ipv6 tcp header cut",
            tcp6(CLIENT6, 1, SERVER6, 80, SYN, 64)[..14 + 40 + 8].to_vec(),
            "drop_malformed",
        ),
        (
            "vlan tag cut",
            testkit::vlan(5, &good)[..16].to_vec(),
            "drop_malformed",
        ),
    ];
    for (what, pkt, counter) in table {
        let before = f.counter(counter);
        assert_eq!(f.run(&pkt, f.trust).verdict, Verdict::Drop, "{what}");
        assert_eq!(f.counter(counter), before + 1, "{what}");
    }
    assert!(
        f.sessions().is_empty(),
        "no malformed packet created a session"
    );
}

#[test]
fn host_arp_ttl_and_ha_traffic_take_their_own_paths() {
    let f = Fixture::new();
    let table: Vec<(&str, Vec<u8>, Verdict, &str)> = vec![
        (
            "arp to the kernel",
            arp_request(CLIENT, testkit::TRUST_IP),
            Verdict::Pass,
            "pass_non_ip",
        ),
        (
            "ping the firewall itself",
            icmp_echo(CLIENT, testkit::TRUST_IP, 1, true, 64),
            Verdict::Pass,
            "pass_host",
        ),
        (
            "ttl 1 to the kernel for time-exceeded",
            tcp(CLIENT, 40009, SERVER, 80, SYN, 1),
            Verdict::Pass,
            "pass_ttl",
        ),
        (
            "HA2 ethertype on a data port",
            testkit::ha2_ethernet_frame(),
            Verdict::Drop,
            "drop_ha_frame",
        ),
        (
            "HA2 over IP on a data port",
            testkit::ip_proto(CLIENT, SERVER, 99),
            Verdict::Drop,
            "drop_ha_frame",
        ),
        (
            "HA1 to the firewall on a data port",
            tcp(CLIENT, 40010, testkit::TRUST_IP, 28769, SYN, 64),
            Verdict::Drop,
            "drop_ha_frame",
        ),
        // The FIB says NOT_FWDED for both "local" and "no route": the kernel answers the latter
        // with ICMP net unreachable, and cannot forward it either.
        (
            "no route: the kernel answers",
            tcp(CLIENT, 40011, [198, 19, 200, 1], 80, SYN, 64),
            Verdict::Pass,
            "pass_host",
        ),
    ];
    for (what, pkt, verdict, counter) in table {
        let before = f.counter(counter);
        assert_eq!(f.run(&pkt, f.trust).verdict, verdict, "{what}");
        assert_eq!(f.counter(counter), before + 1, "{what}");
    }
}

/// A UDP datagram of `ip_len` octets from the IP header on, without DF (the kernel may fragment it).
fn big_udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ip_len: usize) -> Vec<u8> {
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ethernet2(testkit::CLIENT_MAC, testkit::TRUST_MAC)
        .ip(etherparse::IpHeaders::Ipv4(
            {
                let mut h = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, dst)
                    .unwrap();
                h.dont_fragment = false;
                h
            },
            Default::default(),
        ))
        .udp(sport, dport)
        .write(&mut pkt, &vec![0x5a; ip_len - 28])
        .unwrap();
    assert_eq!(testkit::parse_ipv4(&pkt).1.total_len as usize, ip_len);
    pkt
}

/// Input: transit packets longer than the egress MTU (the FIB answers FRAG_NEEDED), to the
/// untrust port with MTU 1280. Output: they meet the role check, the session table and the policy
/// like forwarded ones, and only the allowed ones go to the kernel (which fragments them or sends
/// ICMP frag-needed); the old program handed every one of them to the kernel, which forwarded
/// what the policy denies. Packets for the host itself still pass.
#[test]
fn transit_packets_over_the_egress_mtu_meet_policy_before_the_kernel() {
    let mut f = Fixture::new();
    testkit::sh(&["ip", "link", "set", "untrust0", "mtu", "1280"]);
    let denied = big_udp(CLIENT, 5000, SERVER, 5001, 1400);
    let (deny_before, pass_before) = (f.counter("drop_policy"), f.counter("pass_host"));
    assert_eq!(
        f.run(&denied, f.trust).verdict,
        Verdict::Drop,
        "denied flow"
    );
    assert_eq!(f.counter("drop_policy"), deny_before + 1);
    assert_eq!(f.counter("pass_host"), pass_before);
    assert!(f.session_of(&denied).is_none());

    let dns = big_udp(CLIENT, 5002, SERVER, 53, 1400);
    assert_eq!(f.run(&dns, f.trust).verdict, Verdict::Pass, "allowed flow");
    assert_eq!(f.counter("pass_host"), pass_before + 1);
    assert!(
        f.session_of(&dns).is_some(),
        "allowed: a session as forwarded"
    );
    let small = udp(CLIENT, 5002, SERVER, 53, 64);
    assert_eq!(f.run(&small, f.trust).verdict, Verdict::Redirect);

    // An established TCP connection: its session decides.
    f.handshake(CLIENT, 40030, SERVER, 80);
    let mut long = tcp(CLIENT, 40030, SERVER, 80, ACK, 64);
    long.extend_from_slice(&[0; 1400]);
    let ip_len = (long.len() - 14) as u16;
    long[16..18].copy_from_slice(&ip_len.to_be_bytes());
    long[24..26].fill(0);
    let csum = testkit::parse_ipv4(&long).1.calc_header_checksum();
    long[24..26].copy_from_slice(&csum.to_be_bytes());
    assert_eq!(f.run(&long, f.trust).verdict, Verdict::Pass, "session");
    let mut no_session = long.clone();
    no_session[34..36].copy_from_slice(&40031u16.to_be_bytes());
    let before = f.counter("drop_tcp_no_session");
    assert_eq!(f.run(&no_session, f.trust).verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_tcp_no_session"), before + 1);

    // For the host itself: passes, however long.
    let to_me = big_udp(CLIENT, 5003, testkit::TRUST_IP, 5004, 1400);
    assert_eq!(f.run(&to_me, f.trust).verdict, Verdict::Pass, "local");

    // A passive node hands nothing of it to the kernel, allowed or not, but its own traffic.
    f.set_role(hafw_common::config::Role::Passive);
    let before = f.counter("drop_not_active");
    assert_eq!(f.run(&dns, f.trust).verdict, Verdict::Drop, "passive");
    assert_eq!(f.run(&long, f.trust).verdict, Verdict::Drop, "passive");
    assert_eq!(f.counter("drop_not_active"), before + 2);
    assert_eq!(
        f.run(&to_me, f.trust).verdict,
        Verdict::Pass,
        "passive, local"
    );
}

#[test]
fn passive_node_drops_data_but_keeps_host_traffic() {
    let mut f = Fixture::new();
    f.handshake(CLIENT, 40012, SERVER, 80);
    f.set_role(hafw_common::config::Role::Passive);
    let data = tcp(CLIENT, 40012, SERVER, 80, ACK, 64);
    assert_eq!(f.run(&data, f.trust).verdict, Verdict::Drop);
    assert_eq!(f.counter("drop_not_active"), 1);
    assert_eq!(
        f.run(&tcp(CLIENT, 40013, SERVER, 80, SYN, 64), f.trust)
            .verdict,
        Verdict::Drop
    );
    let ping_me = icmp_echo(CLIENT, testkit::TRUST_IP, 2, true, 64);
    assert_eq!(f.run(&ping_me, f.trust).verdict, Verdict::Pass);
    // Back to active: the session is still there and carries traffic.
    f.set_role(hafw_common::config::Role::Active);
    assert_eq!(f.run(&data, f.trust).verdict, Verdict::Redirect);
}

#[test]
fn an_expired_active_lease_stops_forwarding() {
    let mut f = Fixture::new();
    f.set_clock(1_000_000_000);
    f.set_lease(hafw_common::config::Role::Active, 2_000_000_000);
    assert_eq!(
        f.run(&tcp(CLIENT, 40014, SERVER, 80, SYN, 64), f.trust)
            .verdict,
        Verdict::Redirect
    );
    f.set_clock(2_000_000_001);
    let out = f.run(&tcp(CLIENT, 40014, SERVER, 80, SYN, 64), f.trust);
    assert_eq!(
        out.verdict,
        Verdict::Drop,
        "controller stopped refreshing: no forwarding"
    );
    // Nor ARP or traffic for the host: the orphaned node must stay silent on the segment.
    let arp = arp_request(CLIENT, testkit::TRUST_IP);
    assert_eq!(f.run(&arp, f.trust).verdict, Verdict::Drop);
    let ping_me = icmp_echo(CLIENT, testkit::TRUST_IP, 3, true, 64);
    assert_eq!(f.run(&ping_me, f.trust).verdict, Verdict::Drop);
    // A refreshed lease brings everything back.
    f.set_lease(hafw_common::config::Role::Active, 3_000_000_000);
    assert_eq!(f.run(&arp, f.trust).verdict, Verdict::Pass);
}

/// The program keeps time on the coarse clock and confirms a lease's end on the exact one, only
/// within `LEASE_COARSE_SLACK_NS` of that end.
#[test]
fn a_lease_is_judged_on_the_exact_clock_near_its_end() {
    let mut f = Fixture::new();
    let pkt = tcp(CLIENT, 40016, SERVER, 80, SYN, 64);
    // Ends 1 ms from now: within the slack of the coarse clock, so perhaps over on it (it lags
    // by up to two ticks), not on the exact one: still forwarding. A try whose run ends after the lease (the test was
    // preempted) says nothing and is repeated.
    let mut conclusive = 0;
    for _ in 0..50 {
        let end = hafw::aging::monotonic_now_ns() + 1_000_000;
        f.set_lease(hafw_common::config::Role::Active, end);
        let verdict = f.run(&pkt, f.trust).verdict;
        if hafw::aging::monotonic_now_ns() >= end {
            continue;
        }
        assert_eq!(verdict, Verdict::Redirect, "a lease 1 ms from its end");
        conclusive += 1;
        if conclusive == 5 {
            break;
        }
    }
    assert_eq!(conclusive, 5, "too few runs finished within the lease");
    // Over on the exact clock, though perhaps not yet on the coarse one: stopped at once.
    let end = hafw::aging::monotonic_now_ns() + 1_000_000;
    f.set_lease(hafw_common::config::Role::Active, end);
    while hafw::aging::monotonic_now_ns() <= end {
        std::hint::spin_loop();
    }
    assert_eq!(f.run(&pkt, f.trust).verdict, Verdict::Drop);
}

#[test]
fn sessions_carry_the_program_clock() {
    let mut f = Fixture::new();
    f.set_clock(5_000);
    let pkt = tcp(CLIENT, 40015, SERVER, 80, SYN, 64);
    f.run(&pkt, f.trust);
    f.set_clock(9_000);
    f.run(&tcp(SERVER, 80, CLIENT, 40015, SYNACK, 64), f.untrust);
    let s = f.session_of(&pkt).unwrap();
    assert_eq!((s.created_ns, s.last_seen_ns), (5_000, 9_000));
}

/// A commit swaps the policy for new flows; existing sessions keep flowing.
#[test]
fn commit_swaps_policy_for_new_flows_only() {
    let mut f = Fixture::new();
    f.handshake(CLIENT, 40016, SERVER, 80);
    f.commit(testkit::POLICY_WITHOUT_WEB);
    assert_eq!(
        f.run(&tcp(CLIENT, 40017, SERVER, 80, SYN, 64), f.trust)
            .verdict,
        Verdict::Drop,
        "new web flow denied"
    );
    assert_eq!(
        f.run(&tcp(CLIENT, 40016, SERVER, 80, ACK, 64), f.trust)
            .verdict,
        Verdict::Redirect,
        "established session unaffected"
    );
    f.commit(testkit::POLICY);
    assert_eq!(
        f.run(&tcp(CLIENT, 40018, SERVER, 80, SYN, 64), f.trust)
            .verdict,
        Verdict::Redirect
    );
}

/// Every packet increments exactly one verdict counter.
#[test]
fn verdict_counters_add_up_to_received_packets() {
    let mut f = Fixture::new();
    f.handshake(CLIENT, 40019, SERVER, 80);
    f.run(&tcp(CLIENT, 40020, SERVER, 22, SYN, 64), f.trust);
    f.run(&arp_request(CLIENT, testkit::TRUST_IP), f.trust);
    f.run(&tcp(CLIENT, 40021, SERVER, 80, SYN, 64)[..20], f.trust);
    let c = f.counters();
    let verdicts: u64 = c
        .fields()
        .iter()
        .filter(|(n, _)| *n == "forwarded" || n.starts_with("pass_") || n.starts_with("drop_"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(verdicts, c.rx_packets);
}

/// Seeded mutation fuzzing through the real program: flipped bytes, truncations and garbage
/// extensions of valid packets never abort the program, every packet lands in exactly one verdict
/// counter, and every session left in the table is a flow the policy allows.
#[test]
fn mutated_packets_never_abort_or_create_sessions_the_policy_denies() {
    let f = Fixture::new();
    let seeds = [
        tcp(CLIENT, 40100, SERVER, 80, SYN, 64),
        tcp(CLIENT, 40101, SERVER, 22, SYN, 64),
        tcp6(CLIENT6, 40102, SERVER6, 443, SYN, 64),
        udp(CLIENT, 5300, SERVER, 53, 64),
        icmp_echo(CLIENT, SERVER, 11, true, 64),
        icmp_unreachable_for_tcp(SERVER, CLIENT, (CLIENT, 40100, SERVER, 80)),
        testkit::vlan(7, &tcp(CLIENT, 40103, SERVER, 80, SYN, 64)),
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    const CASES: usize = 4000;
    for i in 0..CASES {
        let mut pkt = seeds[i % seeds.len()].clone();
        match next() % 3 {
            0 => {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % pkt.len();
                    pkt[at] ^= 1 << (next() % 8);
                }
            }
            1 => pkt.truncate(14 + (next() as usize) % (pkt.len() - 13)),
            _ => pkt.extend((0..next() % 64).map(|_| next() as u8)),
        }
        let ingress = if next() % 2 == 0 { f.trust } else { f.untrust };
        let out = f.run(&pkt, ingress);
        assert_ne!(out.verdict, Verdict::Aborted, "case {i}: {pkt:02x?}");
    }
    let c = f.counters();
    let verdicts: u64 = c
        .fields()
        .iter()
        .filter(|(n, _)| *n == "forwarded" || n.starts_with("pass_") || n.starts_with("drop_"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(verdicts, c.rx_packets);
    assert_eq!(c.rx_packets, CASES as u64);

    // Every session must be one the committed policy allows, judged by the compiler's reference
    // classifier from the session's own zones, addresses and ports.
    let config = hafw_config::Config::parse(testkit::POLICY, "policy.toml").unwrap();
    let compiled = hafw_config::compile(&config).unwrap();
    for (key, value) in f.sessions() {
        let lo = hafw::view::addr(key.family, &key.addr_lo);
        let hi = hafw::view::addr(key.family, &key.addr_hi);
        let initiator_is_hi = value.flags & hafw_common::session::SESSION_F_INITIATOR_IS_HI != 0;
        let (src, dst, dport) = if initiator_is_hi {
            (hi, lo, u16::from_be(key.port_lo))
        } else {
            (lo, hi, u16::from_be(key.port_hi))
        };
        // ICMP sessions carry the echo id as ports; the policy matched the request type (8/128).
        let dport = match key.proto {
            1 => 8,
            58 => 128,
            _ => dport,
        };
        let (_, action) = compiled.classify(
            u32::from(value.ingress_zone),
            u32::from(value.egress_zone),
            src,
            dst,
            key.proto,
            dport,
        );
        assert_eq!(
            action.action,
            hafw_common::policy::ACTION_ALLOW,
            "session {src} -> {dst}:{dport} proto {} exists but the policy denies it",
            key.proto
        );
    }
}

/// The verifier resolves a map access at load time (an array lookup inlined, a hash lookup a
/// direct call into the map's code) only where a call site has one map. A generic
/// `bpf_map_*_elem` call left in a translated program means the optimizer merged two maps' calls
/// into one (the session tables, one per family, look alike): that cost the established packet
/// several ns through the map's operations table.
#[test]
fn every_map_access_of_the_programs_is_resolved_at_load() {
    let f = Fixture::new();
    for (name, prog) in [
        ("hafw_fw", f.dp.fast_path().unwrap()),
        ("hafw_ha2", f.dp.ha2_program().unwrap()),
    ] {
        let id = prog.info().unwrap().id();
        let out = std::process::Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool: {out:?}");
        let xlated = String::from_utf8_lossy(&out.stdout);
        let generic: Vec<&str> = xlated
            .lines()
            .filter(|l| {
                ["lookup", "update", "delete"]
                    .iter()
                    .any(|op| l.contains(&format!("call bpf_map_{op}_elem")))
            })
            .collect();
        assert!(generic.is_empty(), "{name}: {generic:#?}");
        assert!(
            xlated.contains("hafw_session_find_v4"),
            "{name}: no session lookup"
        );
    }
}

/// Input: a SIGCHLD handler installed (the controller has one: tokio's process support), and a
/// thread that starts short-lived children without pause while the dataplane loads, five times.
/// Output: every load succeeds. The verifier gives up with EAGAIN when a signal is pending for
/// the loading thread, and a child's SIGCHLD goes to any thread that does not block it: before
/// the load blocked signals on its thread, all six attempts could fail that way.
#[test]
fn the_dataplane_loads_while_children_exit() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::sync::atomic::{AtomicBool, Ordering};

    extern "C" fn on_child(_: libc::c_int) {}
    let handler = SigAction::new(
        SigHandler::Handler(on_child),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    let previous = unsafe { sigaction(Signal::SIGCHLD, &handler) }.unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut children = 0u32;
            while !stop.load(Ordering::Relaxed) && children < 100_000 {
                let _ = std::process::Command::new("true").status();
                children += 1;
            }
            children
        })
    };
    let loads: Vec<_> = (0..5)
        .map(|_| {
            hafw::dataplane::Dataplane::load(&hafw::dataplane::LoadOptions {
                session_table_size: 1024,
                pin_dir: None,
            })
            .map(drop)
            .map_err(|e| {
                format!("{e:#}")
                    .lines()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let children = spawner.join().unwrap();
    // SAFETY: restores the disposition found above.
    unsafe { sigaction(Signal::SIGCHLD, &previous) }.unwrap();
    assert!(children > 0);
    assert!(
        loads.iter().all(Result::is_ok),
        "{loads:?} ({children} children)"
    );
}
