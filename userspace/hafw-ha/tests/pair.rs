//! Scenario tests of the election core on a simulated pair (see `sim/mod.rs`), plus the golden
//! traces.
//!
//! Every test is deterministic: virtual time, fixed delays, seeded loss. Timer durations are
//! asserted exactly, as differences between recorded transition times and the instants that started
//! the timers.

mod sim;

use std::{fs, path::Path, time::Duration};

use hafw_ha::{
    Action, Config, Core, Event, Ha2Transport, Hello, Link, Mismatch, Mode, Notice,
    PROTOCOL_VERSION, Pairing, PeerLossCause, PeerState, Reason, State, SyncRole, TimerProfile,
    Timestamp, Warning,
};
use sim::{A, B, Pair, fast, fmt_time, run_script, with_timers};

const MS: Duration = Duration::from_millis(1);

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// a (priority 100) and b (110) booted together, settled: a active, b passive.
fn settled(a: Config, b: Config) -> Pair {
    let mut pair = Pair::new(a, b);
    pair.run_for(ms(100));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    pair
}

/// The fast profile on both, both preemptive: a (100) is the better node, b (110) the worse.
fn preemptive_fast_pair() -> [Config; 2] {
    [fast(1, 100), fast(2, 110)].map(|mut config| {
        config.preemptive = true;
        config
    })
}

/// b boots alone and becomes active; a boots at 5 s and becomes passive.
fn b_first(a: Config, b: Config) -> Pair {
    let mut pair = Pair::unbooted(a, b);
    pair.boot(B);
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.state(B), State::Active);
    pair.boot(A);
    pair.run_for(ms(10));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    pair
}

/// Input: a single node, nobody on the wire. Output: active with peer unknown exactly at the
/// initial wait (1 s for `fast`, 12 s for `recommended`).
#[test]
fn alone_at_boot_becomes_active_after_the_initial_wait() {
    for (profile, wait) in [
        (TimerProfile::Fast, ms(1000)),
        (TimerProfile::Recommended, ms(12_000)),
    ] {
        let mut config = fast(1, 100);
        config.timers = profile;
        let mut pair = Pair::unbooted(config, fast(2, 110));
        pair.boot(A);
        pair.run_for(wait - MS);
        assert_eq!(pair.state(A), State::Initial, "{}", profile.name());
        pair.run_for(Duration::from_secs(60));
        assert_eq!(pair.state(A), State::Active);
        let t = &pair.transitions(A)[0];
        assert_eq!((t.at, &t.reason), (Timestamp::ZERO + wait, &Reason::NoPeer));
        let status = pair.core(A).status();
        assert_eq!(status.peer.state, PeerState::Unknown);
        assert!(!status.peer.alive);
        assert_eq!(status.transitions.len(), 1);
    }
}

/// Input: a priority 110, b priority 100, booted together. Output: b active, a passive, decided on
/// the first hello exchange (one message delay), not after the initial wait.
#[test]
fn lower_priority_number_wins() {
    let mut pair = Pair::new(fast(1, 110), fast(2, 100));
    pair.run_for(ms(5));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    assert_eq!(
        pair.entered(B, State::Active),
        Some(Timestamp::from_millis(1))
    );
    assert_eq!(
        pair.transitions(A)[0].reason,
        Reason::ElectionLost { peer_priority: 100 }
    );
    pair.run_for(Duration::from_secs(30));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    assert_eq!(pair.transitions(A).len(), 1);
    assert_eq!(pair.transitions(B).len(), 1);
}

/// Input: equal priorities, node ids 7 and 3. Output: node id 3 wins, both warn about it.
#[test]
fn equal_priority_is_broken_by_the_lower_node_id() {
    let mut pair = Pair::new(fast(7, 100), fast(3, 100));
    pair.run_for(ms(5));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    for i in [A, B] {
        assert_eq!(
            pair.core(i).status().peer.warnings,
            [Warning::SamePriority { priority: 100 }]
        );
    }
}

/// Input: b (worse) active first, a (better) joins; preemptive on one side only, then on neither.
/// Output: nobody moves, however long it runs.
#[test]
fn no_preemption_unless_both_peers_enable_it() {
    for (a_preempt, b_preempt) in [(true, false), (false, true), (false, false)] {
        let mut a = fast(1, 100);
        a.preemptive = a_preempt;
        let mut b = fast(2, 110);
        b.preemptive = b_preempt;
        let mut pair = b_first(a, b);
        pair.run_for(Duration::from_secs(300));
        assert_eq!(pair.states(), [State::Passive, State::Active]);
        assert_eq!(pair.transitions(B).len(), 1, "{a_preempt} {b_preempt}");
    }
}

/// Input: both preemptive, b (worse) active, a joins and goes passive at T. Output: b goes passive
/// exactly at T + delay + preemption hold (10 s), not a tick earlier, and a becomes active one
/// delay later; nobody is ever active at the same time as the other.
#[test]
fn preemption_after_exactly_the_hold_time() {
    let [a, b] = preemptive_fast_pair();
    let mut pair = b_first(a, b);
    let delay = pair.wire.delay;
    let a_passive = pair.entered(A, State::Passive).expect("a passive");
    let due = a_passive + delay + Duration::from_secs(10);

    let early = pair.run_until(due - (pair.now + MS), |p| p.state(B) != State::Active);
    assert_eq!(early, None, "b yielded before the preemption hold");
    pair.run_for(ms(100));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    let b_passive = pair.entered(B, State::Passive).expect("b passive");
    assert_eq!(b_passive, due);
    assert_eq!(
        pair.transitions(B).last().map(|t| t.reason.clone()),
        Some(Reason::Preempted { peer_priority: 100 })
    );
    assert_eq!(pair.entered(A, State::Active), Some(b_passive + delay));
}

/// Input: a active, b passive, a crashes silently. Output: b becomes active exactly at (last heard
/// from a) + peer-dead time + promotion hold, for an advanced fast profile and for `recommended`.
#[test]
fn promotion_hold_is_respected_after_the_peer_goes_silent() {
    let advanced = |id, prio| with_timers(fast(id, prio), |t| t.promotion_hold = ms(250));
    let recommended = |id, prio| {
        let mut config = fast(id, prio);
        config.timers = TimerProfile::Recommended;
        config
    };
    for (a, b) in [
        (advanced(1, 100), advanced(2, 110)),
        (recommended(1, 100), recommended(2, 110)),
    ] {
        let timers = b.timers.timers();
        let mut pair = settled(a, b);
        pair.run_for(Duration::from_secs(20));
        pair.crash(A);
        let last_heard = pair.core(B).status().peer.last_heard.expect("heard");
        let due = last_heard + timers.peer_dead() + timers.promotion_hold;

        let early = pair.run_until(due - (pair.now + MS), |p| p.state(B) != State::Passive);
        assert_eq!(early, None, "b took over before the promotion hold");
        pair.run_for(ms(10));
        assert_eq!(pair.state(B), State::Active);
        assert_eq!(pair.entered(B, State::Active), Some(due));
        assert_eq!(
            pair.transitions(B).last().map(|t| t.reason.clone()),
            Some(Reason::PeerLost {
                cause: PeerLossCause::HeartbeatLoss
            })
        );
    }
}

/// Input: heartbeat backup configured, HA1 cut silently for a minute. Output: no transition on
/// either node (the peer stays alive through the backup). Then the backup is cut too: b takes over
/// after peer-dead + promotion hold, and a, which cannot know, stays active (split brain, healed
/// elsewhere).
#[test]
fn losing_ha1_alone_changes_nothing_when_the_heartbeat_backup_works() {
    let mut a = fast(1, 100);
    a.heartbeat_backup = true;
    let mut b = fast(2, 110);
    b.heartbeat_backup = true;
    let mut pair = settled(a, b);
    pair.cut(Link::Ha1);
    pair.run_for(Duration::from_secs(60));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(pair.transitions(A).len() + pair.transitions(B).len(), 2);
    let status = pair.core(B).status();
    assert!(status.peer.alive);
    assert_eq!(status.peer.pairing, Pairing::Paired);
    let ha1 = &status.links[0];
    assert_eq!(ha1.link, Link::Ha1);
    assert!(ha1.last_heard < status.links[2].last_heard);

    pair.cut(Link::HeartbeatBackup);
    let last_heard = pair.core(B).status().peer.last_heard.expect("heard");
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.states(), [State::Active, State::Active]);
    assert_eq!(
        pair.entered(B, State::Active),
        Some(last_heard + b_dead_time(&pair))
    );
}

fn b_dead_time(pair: &Pair) -> Duration {
    let timers = pair.nodes[B].config.timers.timers();
    timers.peer_dead() + timers.promotion_hold
}

/// Input: a (100) active, b (110) passive, every link cut, both become active, links heal.
/// Output: b yields to passive with a split-brain reason, a stays active and announces itself again
/// exactly once; HA2 sync resumes from a to b.
#[test]
fn split_brain_heals_to_the_better_priority() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    pair.cut_all();
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.states(), [State::Active, State::Active]);
    let a_transitions = pair.transitions(A).len();
    let healed_at = pair.now;
    pair.heal_all();
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(
        pair.transitions(A).len(),
        a_transitions,
        "a never left active"
    );
    let yielded = pair.transitions(B).last().expect("b yielded");
    assert_eq!(yielded.reason, Reason::SplitBrain { peer_priority: 100 });
    assert!(
        yielded.at - healed_at <= ms(20),
        "healed within two heartbeats"
    );
    let announces = pair.actions_matching(A, |a| *a == Action::AnnounceAgain);
    assert_eq!(announces.len(), 1);
    assert_eq!(pair.core(A).status().session_sync, SyncRole::Sender);
    assert_eq!(pair.core(B).status().session_sync, SyncRole::Receiver);
}

/// Input: a (100) active, b (110) passive, fast profile (lease 10 ms); a is frozen for 100 ms (a
/// SIGSTOP), long enough for b to declare it dead after 15 ms and take over, then thaws. Output:
/// the moment it runs again a holds forwarding and says it is resuming; the heartbeats that
/// waited for it say b is active, so a yields with the stall as its reason, although it wins the
/// election; b, the node holding the sessions created meanwhile, keeps the role (without the
/// stall rule a refreshes its lease, wins the split brain on priority, and b yields); HA2 then
/// runs from b to a. a never forwards again: no `ResumeForwarding`, no `BecomeActive`.
#[test]
fn a_frozen_active_yields_to_the_peer_that_took_over() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    pair.freeze(A);
    pair.run_for(ms(100));
    assert_eq!(pair.state(B), State::Active, "b took over");
    let b_transitions = pair.transitions(B).len();
    let thawed_at = pair.now;
    pair.thaw(A);
    let after_thaw = |pair: &Pair, pred: &dyn Fn(&Action) -> bool| {
        pair.actions_matching(A, pred)
            .into_iter()
            .filter(|at| *at >= thawed_at)
            .count()
    };
    assert_eq!(after_thaw(&pair, &|a| *a == Action::HoldForwarding), 1);
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    assert_eq!(pair.transitions(B).len(), b_transitions, "b never yielded");
    let stalled = pair.transitions(A).last().expect("a left active");
    assert_eq!(
        (stalled.from, stalled.reason.clone()),
        (State::Active, Reason::Stalled { paused_ms: 100 })
    );
    assert_eq!(
        pair.core(A)
            .status()
            .as_of
            .saturating_duration_since(stalled.at),
        ms(2000),
        "a yielded the moment it ran again"
    );
    let forwarding_again =
        |a: &Action| matches!(a, Action::ResumeForwarding | Action::BecomeActive);
    assert_eq!(after_thaw(&pair, &forwarding_again), 0);
    assert_eq!(pair.core(A).status().session_sync, SyncRole::Receiver);
    assert_eq!(pair.core(B).status().session_sync, SyncRole::Sender);
}

/// How many transitions each node has logged.
fn transition_counts(pair: &Pair) -> [usize; 2] {
    [pair.transitions(A).len(), pair.transitions(B).len()]
}

/// Input: a (100) active, b (110) passive, fast profile; a is frozen for 8 ms, less than its 10 ms
/// lease. Output: nothing changes and nothing is held: its dataplane never stopped forwarding,
/// and b, which needs 15 ms of silence, cannot have taken over.
#[test]
fn a_freeze_shorter_than_the_lease_changes_nothing() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    let transitions = transition_counts(&pair);
    pair.freeze(A);
    pair.run_for(ms(8));
    pair.thaw(A);
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(transition_counts(&pair), transitions, "no state changes");
    assert!(
        pair.actions_matching(A, |a| *a == Action::HoldForwarding)
            .is_empty()
    );
}

/// Input: a (100) active, b (110) passive, promotion hold 100 ms on both (lease 76 ms, b takes over
/// 115 ms after a falls silent); a is frozen for 90 ms. Output: a holds forwarding on the thaw (it
/// cannot know yet that b did not take over), hears b passive, and forwards again when its 10 ms
/// stall hold ends; no state changes on either node.
#[test]
fn a_frozen_active_whose_peer_did_not_take_over_forwards_again_after_the_hold() {
    let hold = |t: &mut hafw_ha::Timers| t.promotion_hold = ms(100);
    let mut pair = settled(
        with_timers(fast(1, 100), hold),
        with_timers(fast(2, 110), hold),
    );
    let transitions = transition_counts(&pair);
    pair.freeze(A);
    pair.run_for(ms(90));
    assert_eq!(pair.state(B), State::Passive);
    let thawed_at = pair.now;
    pair.thaw(A);
    assert!(pair.core(A).status().local.forwarding_held);
    pair.run_for(Duration::from_secs(1));
    assert!(!pair.core(A).status().local.forwarding_held);
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(transition_counts(&pair), transitions, "no state changes");
    let held = pair.actions_matching(A, |a| *a == Action::HoldForwarding);
    let resumed = pair.actions_matching(A, |a| *a == Action::ResumeForwarding);
    assert_eq!((held, resumed), (vec![thawed_at], vec![thawed_at + ms(10)]));
}

/// After stalls in which nobody took over: a still active and b passive, no transitions since
/// `transitions` were counted, and a forwarding again after one hold.
fn assert_roles_kept_and_a_forwarding_again(pair: &Pair, transitions: [usize; 2]) {
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(transition_counts(pair), transitions, "no state changes");
    let resumed = pair.actions_matching(A, |a| *a == Action::ResumeForwarding);
    assert_eq!(resumed.len(), 1);
}

/// Input: a (100) active, b (110) passive, fast profile; both are frozen for 100 ms together (one
/// overloaded host running both, as in the soak benchmark), then thaw, b first. Output: neither
/// took over while the other ran, so no state changes: a holds forwarding for its 10 ms stall
/// hold and forwards again. (Going passive on every stall of the lease's length would have made
/// each such pause two false failovers.)
#[test]
fn a_stall_of_both_nodes_changes_no_state() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    let transitions = transition_counts(&pair);
    pair.freeze(A);
    pair.freeze(B);
    pair.run_for(ms(100));
    pair.thaw(B);
    pair.thaw(A);
    pair.run_for(Duration::from_secs(1));
    assert_roles_kept_and_a_forwarding_again(&pair, transitions);
}

/// Input: a (100) active, b (110) passive, fast profile. a is frozen; 11 ms later b is frozen too,
/// just after sending a heartbeat, its peer-dead timer for a due 1 ms later, its earliest; a
/// thaws after 12 ms (holding forwarding, its resuming heartbeats wait for b), b after 21 ms,
/// its clock resuming at that timer's deadline.
/// Output: b reads a's waiting heartbeats before the timer fires, so nobody changes state and a
/// forwards again after its hold. (When the stall report fired due timers first, b declared a
/// dead on a silence that was its own, took over, and a yielded: a false failover.)
#[test]
fn a_passive_node_that_stalled_reads_what_waited_before_its_timers_fire() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    let transitions = transition_counts(&pair);
    pair.freeze(A);
    pair.run_for(ms(11));
    pair.freeze(B);
    pair.run_for(ms(1));
    pair.thaw(A);
    pair.run_for(ms(20));
    pair.thaw(B);
    pair.run_for(Duration::from_secs(1));
    assert_roles_kept_and_a_forwarding_again(&pair, transitions);
}

/// Input: a (100) active, b (110) passive, fast profile; a is frozen, b takes over after 12 ms,
/// then b is frozen too, and both thaw together, both active and holding. Output: a yields to
/// b, whose waiting heartbeats say it took over (active, not resuming); b keeps the role,
/// since a says it is resuming (its being active is from before its stall), although a wins the
/// election; the nodes are never both passive, and b, which holds the sessions created while a
/// was frozen, forwards again after its hold. (Settling two resuming nodes by the election
/// made b yield too, both passive until a took the role again.)
#[test]
fn the_node_that_took_over_keeps_the_role_when_it_stalled_too() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    pair.freeze(A);
    pair.run_for(ms(50));
    assert_eq!(pair.state(B), State::Active);
    pair.freeze(B);
    pair.run_for(ms(50));
    let b_transitions = pair.transitions(B).len();
    pair.thaw(A);
    pair.thaw(B);
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    assert_eq!(pair.transitions(B).len(), b_transitions, "b never yielded");
    let yielded = pair.transitions(A).last().expect("a yielded");
    assert_eq!(yielded.reason, Reason::Stalled { paused_ms: 100 });
    assert_eq!(
        pair.actions_matching(B, |a| *a == Action::ResumeForwarding)
            .len(),
        1
    );
}

/// Input: a takes over 515 ms after losing its peer (fast profile, promotion hold 500 ms: its own
/// lease would be 343 ms), b after 15 ms (fast: lease 10 ms). Output: from the first hello both
/// leases are 10 ms, two thirds of the quicker takeover, and both report the difference. So a,
/// active, stops forwarding 10 ms after it stops running, before b takes over 15 ms after it;
/// and after a 12 ms stall, beyond that lease, a holds forwarding. The lease stays when b is
/// lost. A hello that does not say its sender's takeover time (an older peer: zero) leaves a
/// node's own.
#[test]
fn the_lease_follows_the_quicker_takeover_of_the_pair() {
    let slow = with_timers(fast(1, 100), |t| t.promotion_hold = ms(500));
    assert_eq!(
        Core::new(slow.clone(), Timestamp::ZERO).unwrap().lease(),
        ms(515) * 2 / 3
    );
    let mut pair = settled(slow, fast(2, 110));
    assert_eq!(
        [pair.core(A).lease(), pair.core(B).lease()],
        [ms(10), ms(10)]
    );
    let differ = Warning::TakeoverTimesDiffer {
        local_ms: 515,
        peer_ms: 15,
    };
    assert_eq!(pair.core(A).status().peer.warnings, vec![differ]);
    assert_eq!(
        pair.core(B).status().peer.warnings,
        vec![Warning::TakeoverTimesDiffer {
            local_ms: 15,
            peer_ms: 515,
        }]
    );
    pair.freeze(A);
    pair.run_for(ms(12));
    pair.thaw(A);
    assert_eq!(
        pair.actions_matching(A, |a| *a == Action::HoldForwarding),
        vec![pair.now]
    );
    // A peer a no longer hears may still hear a, and take over as quickly as it said.
    pair.crash(B);
    pair.run_for(ms(100));
    assert_eq!(pair.core(A).lease(), ms(10));

    let mut core = Core::new(fast(1, 100), Timestamp::ZERO).unwrap();
    let older = Hello {
        takeover_after: Duration::ZERO,
        ..hello(State::Passive)
    };
    core.handle(
        Event::PeerHello {
            via: Link::Ha1,
            hello: older,
            stale: false,
        },
        Timestamp::from_millis(1),
    );
    assert_eq!(core.lease(), ms(10));
    assert!(core.status().peer.warnings.is_empty());
}

/// Input: group ids 1 and 2 booted together. Output: no pair, both stay initial with a group-id
/// mismatch recorded (status and notice), however long it runs.
#[test]
fn group_id_mismatch_gives_a_reason_and_no_pair() {
    let mut b = fast(2, 110);
    b.group_id = 2;
    let mut pair = Pair::new(fast(1, 100), b);
    pair.run_for(Duration::from_secs(60));
    assert_eq!(pair.states(), [State::Initial, State::Initial]);
    let status = pair.core(A).status();
    assert!(status.peer.alive);
    let expected = Mismatch::GroupId { local: 1, peer: 2 };
    assert_eq!(status.peer.pairing, Pairing::Mismatch(expected.clone()));
    let notices: Vec<_> = pair.nodes[A]
        .actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::Notice(Notice::Mismatch(_))))
        .collect();
    assert_eq!(notices.len(), 1, "reported once, not per message");
    assert_eq!(notices[0].1, Action::Notice(Notice::Mismatch(expected)));
}

/// Input: b active alone, then a joins with another group id. Output: b stays active, a stays
/// initial past its initial wait; when b dies, a (alone now) becomes active.
#[test]
fn mismatched_newcomer_never_becomes_active_beside_the_peer() {
    let mut a = fast(1, 100);
    a.group_id = 5;
    let mut pair = Pair::unbooted(a, fast(2, 110));
    pair.boot(B);
    pair.run_for(Duration::from_secs(5));
    pair.boot(A);
    pair.run_for(Duration::from_secs(30));
    assert_eq!(pair.states(), [State::Initial, State::Active]);
    pair.crash(B);
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.state(A), State::Active);
    assert_eq!(pair.transitions(A)[0].reason, Reason::NoPeer);
}

fn hello(state: State) -> Hello {
    Hello {
        group_id: 1,
        node_id: 2,
        priority: 110,
        preemptive: false,
        state,
        protocol_version: PROTOCOL_VERSION,
        mode: Mode::ActivePassive,
        ha2_transport: Ha2Transport::Ethernet,
        takeover_after: ms(15),
        wants_reply: false,
        resuming: false,
    }
}

/// Input: hellos with another protocol version, mode, transport, or our own node id, fed to a
/// booting node. Output: each is refused with its reason and the node does not leave initial; a
/// matching hello then forms the pair.
#[test]
fn every_kind_of_mismatch_is_refused() {
    let cases = [
        (
            Hello {
                protocol_version: PROTOCOL_VERSION + 1,
                ..hello(State::Passive)
            },
            Mismatch::ProtocolVersion {
                local: PROTOCOL_VERSION,
                peer: PROTOCOL_VERSION + 1,
            },
        ),
        (
            Hello {
                mode: Mode::Lite,
                ..hello(State::Passive)
            },
            Mismatch::Mode {
                local: Mode::ActivePassive,
                peer: Mode::Lite,
            },
        ),
        (
            Hello {
                ha2_transport: Ha2Transport::Udp,
                ..hello(State::Passive)
            },
            Mismatch::Ha2Transport {
                local: Ha2Transport::Ethernet,
                peer: Ha2Transport::Udp,
            },
        ),
        (
            Hello {
                node_id: 1,
                ..hello(State::Passive)
            },
            Mismatch::SameNodeId { node_id: 1 },
        ),
    ];
    for (bad, mismatch) in cases {
        let mut core = Core::new(fast(1, 100), Timestamp::ZERO).expect("valid");
        let mut now = Timestamp::ZERO;
        // Keep the peer alive well past the initial wait.
        for _ in 0..300 {
            now = now + ms(10);
            core.handle_timeout(now);
            let event = Event::PeerHello {
                via: Link::Ha1,
                hello: bad.clone(),
                stale: false,
            };
            core.handle(event, now);
        }
        assert_eq!(core.state(), State::Initial, "{mismatch}");
        assert_eq!(core.status().peer.pairing, Pairing::Mismatch(mismatch));
        let event = Event::PeerHello {
            via: Link::Ha1,
            hello: hello(State::Passive),
            stale: false,
        };
        core.handle(event, now);
        assert_eq!(core.state(), State::Active);
    }
}

/// Input: a hello asking for a reply. Output: exactly one hello back, which does not ask for one.
#[test]
fn a_hello_asking_for_a_reply_gets_exactly_one() {
    let mut core = Core::new(fast(1, 100), Timestamp::ZERO).expect("valid");
    while core.poll_action().is_some() {}
    let asking = Hello {
        wants_reply: true,
        ..hello(State::Initial)
    };
    let now = Timestamp::from_millis(1);
    core.handle(
        Event::PeerHello {
            via: Link::Ha1,
            hello: asking,
            stale: false,
        },
        now,
    );
    let hellos: Vec<_> = std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::SendHello(h) => Some(h),
            _ => None,
        })
        .collect();
    // One reply, then one more carrying the new state (active after winning the election).
    assert_eq!(hellos.len(), 2);
    assert!(hellos.iter().all(|h| !h.wants_reply));
    assert_eq!(hellos[1].state, State::Active);
}

/// Input: monitor failure on the active a, hold-ups 100 ms + 500 ms. Output: a non-functional
/// exactly 600 ms later, b active one delay after; on recovery a returns to passive (no
/// preemption).
#[test]
fn monitor_failure_on_the_active_fails_over_and_recovery_returns_to_passive() {
    let holds = |config| {
        with_timers(config, |t| {
            t.monitor_fail_hold_up = ms(100);
            t.additional_master_hold_up = ms(500);
        })
    };
    let mut pair = settled(holds(fast(1, 100)), holds(fast(2, 110)));
    let failed_at = pair.now;
    pair.inject(
        A,
        Event::MonitorFailed {
            reason: "path group dmz: 10.0.0.1 unreachable".into(),
        },
    );
    pair.run_for(ms(599));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    pair.run_for(ms(100));
    assert_eq!(pair.states(), [State::NonFunctional, State::Active]);
    let nf = pair
        .entered(A, State::NonFunctional)
        .expect("non-functional");
    assert_eq!(nf, failed_at + ms(600));
    assert_eq!(pair.entered(B, State::Active), Some(nf + pair.wire.delay));
    assert_eq!(
        pair.core(B)
            .status()
            .transitions
            .last()
            .map(|t| t.reason.clone()),
        Some(Reason::PeerUnavailable {
            peer_state: PeerState::NonFunctional
        })
    );
    assert_eq!(
        pair.core(A).status().local.reason,
        Reason::MonitorFailed {
            reason: "path group dmz: 10.0.0.1 unreachable".into()
        }
    );

    pair.inject(A, Event::MonitorRecovered);
    pair.run_for(Duration::from_secs(120));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    assert_eq!(
        pair.transitions(A).last().map(|t| t.reason.clone()),
        Some(Reason::Recovered)
    );
}

/// Input: monitor failure on the passive b with the same hold-ups. Output: b non-functional after
/// the monitor-fail hold-up only (the additional master hold-up is for the active).
#[test]
fn monitor_failure_on_the_passive_uses_the_monitor_hold_up_only() {
    let holds = |config| {
        with_timers(config, |t| {
            t.monitor_fail_hold_up = ms(100);
            t.additional_master_hold_up = ms(500);
        })
    };
    let mut pair = settled(holds(fast(1, 100)), holds(fast(2, 110)));
    let failed_at = pair.now;
    pair.inject(
        B,
        Event::MonitorFailed {
            reason: "link group uplinks".into(),
        },
    );
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.states(), [State::Active, State::NonFunctional]);
    assert_eq!(
        pair.entered(B, State::NonFunctional),
        Some(failed_at + ms(100))
    );
}

/// Input: a monitor failure that recovers inside the hold-up. Output: no transition at all.
#[test]
fn monitor_recovery_inside_the_hold_up_changes_nothing() {
    let holds = |config| with_timers(config, |t| t.monitor_fail_hold_up = ms(300));
    let mut pair = settled(holds(fast(1, 100)), holds(fast(2, 110)));
    pair.inject(
        A,
        Event::MonitorFailed {
            reason: "blip".into(),
        },
    );
    pair.run_for(ms(299));
    pair.inject(A, Event::MonitorRecovered);
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(pair.transitions(A).len(), 1);
}

/// Input: both preemptive, a (better) fails its monitor and recovers. Output: a passive on
/// recovery, then active again exactly one preemption hold (plus a delay) later.
#[test]
fn recovery_with_preemption_takes_the_active_role_back() {
    let [a, b] = preemptive_fast_pair();
    let mut pair = settled(a, b);
    pair.inject(A, Event::MonitorFailed { reason: "x".into() });
    pair.run_for(ms(50));
    assert_eq!(pair.states(), [State::NonFunctional, State::Active]);
    pair.inject(A, Event::MonitorRecovered);
    let recovered = pair.now;
    pair.run_for(Duration::from_secs(9));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    let d = pair.wire.delay;
    assert_eq!(
        pair.entered(B, State::Passive),
        Some(recovered + d + Duration::from_secs(10))
    );
}

/// Input: the dataplane of the active goes down. Output: non-functional at once (no hold-up), peer
/// active one delay later; dataplane up -> passive.
#[test]
fn dataplane_down_is_immediate() {
    let mut pair = settled(
        with_timers(fast(1, 100), |t| t.monitor_fail_hold_up = ms(5000)),
        fast(2, 110),
    );
    let at = pair.now;
    pair.inject(A, Event::DataplaneDown);
    assert_eq!(pair.state(A), State::NonFunctional);
    assert_eq!(pair.entered(A, State::NonFunctional), Some(at));
    pair.run_for(ms(10));
    assert_eq!(pair.states(), [State::NonFunctional, State::Active]);
    pair.inject(A, Event::DataplaneUp);
    assert_eq!(pair.state(A), State::Passive);
}

/// Input: preemptive pair, a's monitor fails and recovers again and again. Output: the 4th
/// departure from active within 15 minutes is the 3rd flap: a suspends itself ("too many flaps")
/// and b takes over. Operator "functional" clears the count and a takes the role back by
/// preemption.
#[test]
fn flap_limit_leads_to_suspended() {
    let [a, b] = preemptive_fast_pair();
    let mut pair = settled(a, b);
    for round in 0..4 {
        assert_eq!(pair.state(A), State::Active, "round {round}");
        pair.inject(
            A,
            Event::MonitorFailed {
                reason: "flaky".into(),
            },
        );
        pair.run_for(ms(10));
        pair.inject(A, Event::MonitorRecovered);
        pair.run_for(Duration::from_secs(11));
    }
    assert_eq!(pair.states(), [State::Suspended, State::Active]);
    let last = pair.transitions(A).last().expect("transition");
    assert_eq!(last.reason, Reason::TooManyFlaps { flaps: 3 });
    assert!(last.reason.to_string().starts_with("too many flaps"));
    assert_eq!((last.from, last.to), (State::Active, State::Suspended));
    assert_eq!(pair.core(A).status().flaps, 3);
    assert_eq!(
        pair.core(B).status().flaps,
        0,
        "b was preempted three times: handing over is not a flap"
    );

    // Stays suspended on its own.
    pair.run_for(Duration::from_secs(600));
    assert_eq!(pair.state(A), State::Suspended);

    pair.inject(A, Event::OperatorFunctional);
    assert_eq!(pair.core(A).status().flaps, 0);
    assert_eq!(pair.state(A), State::Passive);
    pair.run_for(Duration::from_secs(11));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
}

/// Input: preemptive pair, fast profile (preemption hold 10 s); a, the preferred node, is frozen
/// for 100 ms again and again (an overloaded host), each time after it took the role back by
/// preemption. Output: each stall hands the role to b and a yields when it runs again; the 4th
/// such departure within 15 minutes is the 3rd flap: a suspends itself ("too many flaps"), b keeps
/// the role and counts no flap. Without counting these departures, the pair swapped roles every
/// preemption hold for as long as a kept stalling.
#[test]
fn a_node_that_keeps_stalling_suspends_itself_at_the_flap_limit() {
    let [a, b] = preemptive_fast_pair();
    let mut pair = settled(a, b);
    for round in 0..4 {
        assert_eq!(
            pair.states(),
            [State::Active, State::Passive],
            "round {round}"
        );
        pair.freeze(A);
        pair.run_for(ms(100));
        pair.thaw(A);
        pair.run_for(Duration::from_secs(11));
    }
    assert_eq!(pair.states(), [State::Suspended, State::Active]);
    let last = pair.transitions(A).last().expect("transition");
    assert_eq!(
        (last.from, last.to, last.reason.clone()),
        (
            State::Active,
            State::Suspended,
            Reason::TooManyFlaps { flaps: 3 }
        )
    );
    let stalls = pair
        .transitions(A)
        .iter()
        .filter(|t| matches!(t.reason, Reason::Stalled { .. }))
        .count();
    assert_eq!(stalls, 3, "the first three stalls made a passive");
    assert_eq!(pair.core(B).status().flaps, 0);
    pair.run_for(Duration::from_secs(600));
    assert_eq!(pair.states(), [State::Suspended, State::Active]);
}

/// Input: leaving active twice, 16 minutes apart. Output: no flap counted.
#[test]
fn departures_further_apart_than_the_window_are_not_flaps() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    for _ in 0..5 {
        pair.inject(A, Event::DataplaneDown);
        pair.inject(A, Event::DataplaneUp);
        // b is active now; hand the role back to a.
        pair.run_for(ms(10));
        pair.inject(B, Event::DataplaneDown);
        pair.inject(B, Event::DataplaneUp);
        pair.run_for(Duration::from_secs(16 * 60));
        assert_eq!(pair.states(), [State::Active, State::Passive]);
    }
    assert_eq!(pair.core(A).status().flaps, 0);
}

/// Input: operator suspends the active a, later makes it functional. Output: a suspended at once, b
/// active one delay later; functional -> a passive (no preemption configured), b stays active.
#[test]
fn operator_suspend_and_functional() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    let at = pair.now;
    pair.inject(A, Event::OperatorSuspend);
    pair.run_for(ms(10));
    assert_eq!(pair.states(), [State::Suspended, State::Active]);
    assert_eq!(pair.entered(B, State::Active), Some(at + pair.wire.delay));
    assert_eq!(pair.core(A).status().local.reason, Reason::OperatorSuspend);
    assert!(
        pair.actions_matching(A, |a| *a == Action::EnterSuspended)
            .contains(&at)
    );
    // Suspended ignores monitors and elections.
    pair.inject(A, Event::MonitorFailed { reason: "x".into() });
    pair.inject(A, Event::MonitorRecovered);
    pair.run_for(Duration::from_secs(60));
    assert_eq!(pair.state(A), State::Suspended);

    pair.inject(A, Event::OperatorFunctional);
    pair.run_for(Duration::from_secs(60));
    assert_eq!(pair.states(), [State::Passive, State::Active]);
    assert_eq!(
        pair.entered(A, State::Passive).map(|t| t - at),
        Some(Duration::from_secs(60) + ms(10))
    );
}

/// Input: suspended while its dataplane is down, then made functional. Output: non-functional (with
/// the dataplane as reason), not passive.
#[test]
fn functional_while_unhealthy_goes_non_functional() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    pair.inject(B, Event::OperatorSuspend);
    pair.inject(B, Event::DataplaneDown);
    pair.inject(B, Event::OperatorFunctional);
    assert_eq!(pair.state(B), State::NonFunctional);
    assert_eq!(pair.core(B).status().local.reason, Reason::DataplaneDown);
}

/// Input: only HA1 configured; the shell reports it down on the passive. Output: the peer is
/// declared dead at once (cause: all links down) and b becomes active after the promotion hold
/// only.
#[test]
fn all_links_down_declares_the_peer_dead_at_once() {
    let hold = |config| with_timers(config, |t| t.promotion_hold = ms(250));
    let mut pair = settled(hold(fast(1, 100)), hold(fast(2, 110)));
    pair.cut_all();
    let at = pair.now;
    pair.inject(B, Event::LinkDown(Link::Ha1));
    pair.run_for(ms(300));
    assert_eq!(pair.entered(B, State::Active), Some(at + ms(250)));
    assert_eq!(
        pair.transitions(B).last().map(|t| t.reason.clone()),
        Some(Reason::PeerLost {
            cause: PeerLossCause::AllLinksDown
        })
    );
}

/// Input: HA1 reported down while the heartbeat backup is configured and not reported down.
/// Output: the peer stays alive.
#[test]
fn one_link_down_of_several_keeps_the_peer() {
    let mut a = fast(1, 100);
    a.heartbeat_backup = true;
    let mut b = fast(2, 110);
    b.heartbeat_backup = true;
    let mut pair = settled(a, b);
    pair.cut(Link::Ha1);
    pair.inject(B, Event::LinkDown(Link::Ha1));
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
}

/// Input: the pair forms; then the active fails. Output: HA2 hooks follow the roles: a starts
/// sending, b requests a bulk sync; after failover a stops and b stops receiving and starts sending
/// once a is passive again.
#[test]
fn session_sync_hooks_follow_the_roles() {
    let mut pair = settled(fast(1, 100), fast(2, 110));
    let sync_actions = |pair: &Pair, i: usize| -> Vec<Action> {
        pair.nodes[i]
            .actions
            .iter()
            .map(|(_, a)| a.clone())
            .filter(|a| {
                matches!(
                    a,
                    Action::StartSessionSync | Action::RequestBulkSync | Action::StopSessionSync
                )
            })
            .collect()
    };
    assert_eq!(sync_actions(&pair, A), [Action::StartSessionSync]);
    assert_eq!(sync_actions(&pair, B), [Action::RequestBulkSync]);
    pair.inject(A, Event::DataplaneDown);
    pair.run_for(ms(10));
    pair.inject(A, Event::DataplaneUp);
    pair.run_for(ms(10));
    assert_eq!(
        sync_actions(&pair, A),
        [
            Action::StartSessionSync,
            Action::StopSessionSync,
            Action::RequestBulkSync
        ]
    );
    assert_eq!(
        sync_actions(&pair, B),
        [
            Action::RequestBulkSync,
            Action::StopSessionSync,
            Action::StartSessionSync
        ]
    );
}

/// Input: an active node pairs with a peer that says initial, then a heartbeat says the peer is
/// passive, then hellos the peer sent before that (queued on HA1 while it connected) arrive.
/// Output: they are stale, the peer stays passive and session sync is started once. Control: the
/// same hellos taken as fresh flip the peer back to initial and restart sync (a second bulk sync
/// of the whole table), so the test can fail.
#[test]
fn a_stale_hello_does_not_take_the_peer_state_back() {
    for stale in [true, false] {
        let mut core = Core::new(fast(1, 100), Timestamp::ZERO).expect("valid");
        let mut now = Timestamp::ZERO;
        while core.state() != State::Active {
            now = now + ms(10);
            core.handle_timeout(now);
        }
        let from_peer = |hello_state: Option<State>, stale: bool| match hello_state {
            Some(state) => Event::PeerHello {
                via: Link::Ha1,
                hello: hello(state),
                stale,
            },
            None => Event::PeerHeartbeat {
                via: Link::Ha1,
                heartbeat: hafw_ha::Heartbeat {
                    group_id: 1,
                    node_id: 2,
                    state: State::Passive,
                    priority: 110,
                    resuming: false,
                },
            },
        };
        core.handle(from_peer(Some(State::Initial), false), now);
        core.handle(from_peer(None, false), now);
        core.handle(from_peer(Some(State::Initial), stale), now);
        core.handle(from_peer(Some(State::Passive), false), now);
        let sync: Vec<Action> = std::iter::from_fn(|| core.poll_action())
            .filter(|a| matches!(a, Action::StartSessionSync | Action::StopSessionSync))
            .collect();
        if stale {
            assert_eq!(sync, [Action::StartSessionSync]);
        } else {
            assert_eq!(
                sync,
                [
                    Action::StartSessionSync,
                    Action::StopSessionSync,
                    Action::StartSessionSync
                ]
            );
        }
        assert_eq!(core.status().peer.state, PeerState::Passive);
    }
}

/// Input: heartbeat backup configured, 5% loss on every link for 10 simulated minutes.
/// Output: no failover: a heartbeat interval is lost only if both links lose it, and three in a
/// row.
#[test]
fn moderate_loss_with_two_links_does_not_fail_over() {
    let mut a = fast(1, 100);
    a.heartbeat_backup = true;
    let mut b = fast(2, 110);
    b.heartbeat_backup = true;
    let mut pair = settled(a, b);
    pair.seed(42);
    pair.wire.loss_ppm = 50_000;
    pair.run_for(Duration::from_secs(600));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
    assert_eq!(pair.transitions(A).len() + pair.transitions(B).len(), 2);
}

/// Input: for 24 seeds, random heavy loss and random partitions of random links, with and without
/// preemption; then the network heals. Output: every run converges to exactly one active and one
/// passive node within 5 s, and never leaves a node stuck in initial.
#[test]
fn chaos_converges_to_one_active() {
    for seed in 1..=24u64 {
        let preemptive = seed % 2 == 0;
        let mut a = fast(1, 100);
        a.preemptive = preemptive;
        a.heartbeat_backup = seed % 3 == 0;
        let mut b = fast(2, 110);
        b.preemptive = preemptive;
        b.heartbeat_backup = a.heartbeat_backup;
        let (a, b) = (
            with_timers(a, |t| t.max_flaps = 0),
            with_timers(b, |t| t.max_flaps = 0),
        );
        let mut pair = Pair::new(a, b);
        pair.seed(seed);
        let mut rng = sim::XorShift::new(seed * 7919);
        for _ in 0..40 {
            pair.wire.loss_ppm = (rng.next_u64() % 600_000) as u32;
            for link in Link::ALL {
                if rng.chance(300_000) {
                    pair.cut(link);
                } else {
                    pair.heal(link);
                }
            }
            pair.run_for(ms(rng.next_u64() % 500));
        }
        pair.heal_all();
        pair.wire.loss_ppm = 0;
        pair.run_for(Duration::from_secs(15));
        let mut states = pair.states();
        states.sort_by_key(|s| s.as_str());
        assert_eq!(states, [State::Active, State::Passive], "seed {seed}");
        if preemptive {
            assert_eq!(pair.state(A), State::Active, "seed {seed}: preemption");
        }
    }
}

/// Input: a pair running for a while. Output: the status snapshot has the fields `show
/// high-availability all` needs, and its history is bounded.
#[test]
fn status_snapshot_and_bounded_history() {
    let mut a = fast(1, 100);
    a.ha1_backup = true;
    let mut b = fast(2, 110);
    b.ha1_backup = true;
    let (a, b) = (
        with_timers(a, |t| t.max_flaps = 0),
        with_timers(b, |t| t.max_flaps = 0),
    );
    let mut pair = settled(a, b);
    pair.inject(A, Event::LinkUp(Link::Ha1));
    pair.inject(A, Event::LinkDown(Link::Ha1Backup));
    // A link that is not configured is ignored.
    pair.inject(A, Event::LinkDown(Link::HeartbeatBackup));
    for _ in 0..40 {
        pair.inject(A, Event::DataplaneDown);
        pair.inject(A, Event::DataplaneUp);
        pair.run_for(ms(10));
        pair.inject(B, Event::DataplaneDown);
        pair.inject(B, Event::DataplaneUp);
        pair.run_for(ms(10));
    }
    let status = pair.core(A).status();
    assert_eq!(status.local.state, State::Active);
    assert_eq!(status.local.priority, 100);
    assert_eq!(status.peer.priority, Some(110));
    assert_eq!(status.peer.node_id, Some(2));
    assert_eq!(status.peer.state, PeerState::Passive);
    assert_eq!(status.peer.pairing, Pairing::Paired);
    assert_eq!(status.timer_profile, "advanced");
    assert_eq!(status.timers.heartbeat_interval, ms(5));
    assert_eq!(status.as_of, pair.now);
    let links: Vec<_> = status.links.iter().map(|l| (l.link, l.state)).collect();
    use hafw_ha::LinkState::*;
    assert_eq!(
        links,
        [
            (Link::Ha1, Up),
            (Link::Ha1Backup, Down),
            (Link::HeartbeatBackup, NotConfigured)
        ]
    );
    assert!(status.links[1].last_heard.is_some(), "heard on HA1 backup");
    assert_eq!(status.transitions.len(), hafw_ha::HISTORY_LEN);
    assert!(status.transitions.windows(2).all(|w| w[0].at <= w[1].at));
    let pending: Vec<_> = status.pending_timers.iter().map(|p| p.timer).collect();
    assert!(pending.contains(&hafw_ha::Timer::PeerDead));
    assert!(status.pending_timers.windows(2).all(|w| w[0].at <= w[1].at));
}

/// Input: the active a crashes and reboots 5 s later; once without preemption, once with it.
/// Output: b takes over; rebooted a finds b active and becomes passive ("peer is already active")
/// and asks for a bulk sync; with preemption on both, a takes the role back one preemption hold
/// later.
#[test]
fn rebooted_node_rejoins_as_passive() {
    for preemptive in [false, true] {
        let mut a = fast(1, 100);
        a.preemptive = preemptive;
        let mut b = fast(2, 110);
        b.preemptive = preemptive;
        let mut pair = settled(a, b);
        pair.crash(A);
        pair.run_for(Duration::from_secs(5));
        assert_eq!(pair.state(B), State::Active);
        let booted = pair.now;
        pair.nodes[A].actions.clear();
        pair.nodes[A].transitions.clear();
        pair.boot(A);
        pair.run_for(ms(10));
        assert_eq!(pair.states(), [State::Passive, State::Active]);
        assert_eq!(pair.transitions(A)[0].reason, Reason::PeerActive);
        assert_eq!(
            pair.entered(A, State::Passive),
            Some(booted + 2 * pair.wire.delay),
            "paired within one round trip thanks to the boot hello asking for a reply"
        );
        assert_eq!(
            pair.actions_matching(A, |a| *a == Action::RequestBulkSync)
                .len(),
            1
        );
        pair.run_for(Duration::from_secs(11));
        let expected = if preemptive {
            [State::Active, State::Passive]
        } else {
            [State::Passive, State::Active]
        };
        assert_eq!(pair.states(), expected, "preemptive {preemptive}");
    }
}

/// Input: both boot while HA1 is cut; only the heartbeat backup delivers. Output: heartbeats alone
/// do not form a pair, so neither node elects itself active beside a peer it has not validated:
/// both stay initial. Once HA1 heals, the hello exchange pairs them and the election runs.
#[test]
fn heartbeat_only_peer_at_boot_waits_for_a_hello() {
    let mut a = fast(1, 100);
    a.heartbeat_backup = true;
    let mut b = fast(2, 110);
    b.heartbeat_backup = true;
    let mut pair = Pair::unbooted(a, b);
    pair.cut(Link::Ha1);
    pair.boot(A);
    pair.boot(B);
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.states(), [State::Initial, State::Initial]);
    assert!(pair.core(A).status().peer.alive);
    assert_eq!(pair.core(A).status().peer.pairing, Pairing::NotPaired);
    pair.heal(Link::Ha1);
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.states(), [State::Active, State::Passive]);
}

/// Input: preemptive on a only, equal priorities. Output: both warnings reported once each.
#[test]
fn pairing_warnings_are_reported() {
    let mut a = fast(1, 100);
    a.preemptive = true;
    let mut pair = Pair::new(a, fast(2, 100));
    pair.run_for(Duration::from_secs(5));
    let warnings: Vec<_> = pair.nodes[A]
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Notice(Notice::Warning(w)) => Some(w.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        warnings,
        [
            Warning::SamePriority { priority: 100 },
            Warning::PreemptionOneSided {
                local: true,
                peer: false
            }
        ]
    );
}

/// Input: an input stamped earlier than the previous one. Output: the core's time does not go back.
#[test]
fn time_never_goes_backwards() {
    let mut core = Core::new(fast(1, 100), Timestamp::from_millis(500)).expect("valid");
    core.handle(Event::LinkUp(Link::Ha1), Timestamp::from_millis(100));
    assert_eq!(core.status().as_of, Timestamp::from_millis(500));
    core.handle_timeout(Timestamp::from_millis(1499));
    assert_eq!(core.state(), State::Initial);
    core.handle_timeout(Timestamp::from_millis(1500));
    assert_eq!(core.state(), State::Active);
    assert_eq!(core.status().local.since, Timestamp::from_millis(1500));
}

/// Input: `Core::new` with a bad config. Output: the validation error, no core.
#[test]
fn core_refuses_an_invalid_config() {
    let mut config = fast(1, 100);
    config.group_id = 64;
    assert_eq!(
        Core::new(config, Timestamp::ZERO).err(),
        Some(hafw_ha::ConfigError::GroupIdOutOfRange { group_id: 64 })
    );
}

/// Input: each `tests/golden/<case>/script.txt`. Output: its trace equals `trace.txt` in the same
/// folder. `HAFW_BLESS=1 cargo test -p hafw-ha --test pair golden` rewrites the expected traces.
#[test]
fn golden_scenarios() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("HAFW_BLESS").is_some_and(|v| v == "1");
    let mut cases: Vec<_> = fs::read_dir(&root)
        .expect("tests/golden exists")
        .map(|entry| entry.expect("readable dir entry").path())
        .filter(|path| path.join("script.txt").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", root.display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let script = fs::read_to_string(case.join("script.txt")).expect("readable script");
        let trace = match run_script(&script) {
            Ok(trace) => trace,
            Err(error) => {
                failures.push(format!("{name}: {error}"));
                continue;
            }
        };
        let expected_path = case.join("trace.txt");
        if bless {
            fs::write(&expected_path, &trace).expect("writable trace");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if let Some(diff) = first_difference(&expected, &trace) {
            failures.push(format!(
                "{name}: {diff}\n(HAFW_BLESS=1 rewrites the expected trace)"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn first_difference(expected: &str, actual: &str) -> Option<String> {
    let (mut e, mut a) = (expected.lines(), actual.lines());
    for line in 1.. {
        match (e.next(), a.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                return Some(format!(
                    "line {line} differs\n  expected: {}\n  actual:   {}",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                ));
            }
        }
    }
    None
}

/// The trace time format is stable (golden files depend on it).
#[test]
fn trace_time_format() {
    assert_eq!(
        fmt_time(Timestamp::from_nanos(1_234_567_891)),
        "     1234.567ms"
    );
}
