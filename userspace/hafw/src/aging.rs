//! Session aging: which sessions have outlived their state's timeout.
//!
//! Pure code: the caller passes the current time on the clock the dataplane stamps sessions with
//! (`CLOCK_MONOTONIC`), so tests drive it with any clock they like.

use std::time::Duration;

use hafw_common::session::{PROTO_TCP, PROTO_UDP, SessionKey, SessionState, SessionValue};

/// Idle timeouts by protocol and state, from the config's `[timeouts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Timeouts {
    /// TCP before the handshake completes.
    pub tcp_init: Duration,
    pub tcp_established: Duration,
    /// After one side's FIN.
    pub tcp_half_closed: Duration,
    /// After both FINs or a RST.
    pub tcp_time_wait: Duration,
    pub udp: Duration,
    pub icmp: Duration,
    /// Any other protocol that holds a session.
    pub other: Duration,
}

impl From<&hafw_config::Timeouts> for Timeouts {
    fn from(t: &hafw_config::Timeouts) -> Self {
        Timeouts {
            tcp_init: t.tcp_init(),
            tcp_established: t.tcp(),
            tcp_half_closed: t.tcp_half_closed(),
            tcp_time_wait: t.tcp_time_wait(),
            udp: t.udp(),
            icmp: t.icmp(),
            // Protocols other than TCP/UDP/ICMP hold sessions like UDP does.
            other: t.udp(),
        }
    }
}

/// The configuration's defaults (one place defines the numbers: `hafw_config::Timeouts`).
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::from(&hafw_config::Timeouts::default())
    }
}

impl Timeouts {
    /// The idle timeout that applies to a session now.
    pub fn for_session(&self, key: &SessionKey, value: &SessionValue) -> Duration {
        let state = SessionState::from_u8(value.state);
        match key.proto {
            PROTO_TCP => match state {
                SessionState::New | SessionState::SynRecv => self.tcp_init,
                SessionState::Established => self.tcp_established,
                SessionState::FinWait => self.tcp_half_closed,
                SessionState::TimeWait | SessionState::Closed => self.tcp_time_wait,
            },
            PROTO_UDP => self.udp,
            hafw_common::session::PROTO_ICMP | hafw_common::session::PROTO_ICMPV6 => self.icmp,
            _ => self.other,
        }
    }
}

/// Whether a session is idle past its timeout at `now_ns` (CLOCK_MONOTONIC; the fast path stamps
/// `last_seen_ns` on the coarse variant of it, up to a few ms behind, which ages a session that
/// much early).
///
/// `active_since_ns`: when this node last became active, if it is active by the HA election
/// (None on a standalone node). A session with no packet on this node since then holds the ages
/// its peer last synced, as they were up to one refresh period and a walk before the takeover
/// (see [`refresh_due`]): a packet on the peer after that is unknown here, however long the
/// session had been idle before it. Such a session ages from the takeover: it could have had a
/// packet just before it, and then its real idle is no more than the time since. Allowing only
/// for the refresh period (aging it from its synced `last_seen_ns` plus one period and a walk)
/// would remove a session that was idle for a long time, had a packet after its last refresh,
/// and then none for longer than the slack; or a UDP flow with a packet every 25 s against its
/// 30 s timeout. The price is that a session dead at the takeover is kept until one timeout after
/// it: up to one timeout longer than on a node that saw all its packets, the side to err on (a
/// table entry held longer, against a live connection dropped). Sessions with a packet here since
/// the takeover age by their own `last_seen_ns`, exactly. (The coarse stamp of a packet in the
/// first milliseconds after the takeover can fall just before it: that session ages from the
/// takeover, a few ms later.)
pub fn expired(
    timeouts: &Timeouts,
    key: &SessionKey,
    value: &SessionValue,
    now_ns: u64,
    active_since_ns: Option<u64>,
) -> bool {
    let last_seen = value.last_seen_ns.max(active_since_ns.unwrap_or(0));
    let idle = now_ns.saturating_sub(last_seen);
    u128::from(idle) >= timeouts.for_session(key, value).as_nanos()
}

/// How often the active node re-syncs a busy session's ages: a third of its timeout, between
/// 2 s and 60 s. Session records carry ages only at creation and state changes; without a refresh
/// a long-lived session (an hour-old SSH connection) would show on the passive node the idle age
/// of its last state change.
///
/// Whether a session survives a takeover does not hang on the period: the new active node ages
/// every session without a packet since the takeover from the takeover ([`expired`]), since no
/// period is short enough to carry the packets just before it. The period bounds how stale the
/// ages on the passive node are (`show session` there), and each session with traffic costs one
/// record per period (a million busy established TCP sessions: about 17,000 records a second). A
/// finer period would show fresher ages for more HA2 traffic and change nothing after a takeover:
/// a third stays.
pub fn refresh_period(timeouts: &Timeouts, key: &SessionKey, value: &SessionValue) -> Duration {
    (timeouts.for_session(key, value) / 3).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

/// Whether the aging walk at `now_ns` (one walk every `walk`) re-syncs this session: its turn has
/// come and it had traffic since its previous turn (idle ones are re-synced by nothing, they just
/// age alike on both nodes). Turns are spread by creation time, so each session with traffic is
/// sent once per [`refresh_period`] and a walk sends an even share of them, with no state kept
/// per session.
///
/// A walk lands anywhere in its turn's one-walk slot, so the walk that took the previous turn ran
/// less than one period plus one walk ago: traffic within that is due (a packet just before the
/// previous turn may be sent twice, none is missed). The first turn's previous one is the
/// creation, whose record the peer has: a session with no packet after its first is not due.
/// With every turn taken, the passive node's copy of a session's ages is the active node's as they
/// were less than one period plus one walk ago (state changes are synced at once; a record carries
/// ages, which the passive node counts back from when it writes it, so HA2 latency makes the copy
/// younger, never older). Packets after that are unknown there. (Requiring a packet since the last
/// walk instead, as this once did, missed sparse sessions at almost every turn, an SSH connection
/// with a keepalive every 300 s or a UDP flow with a packet every 20 s against its 30 s timeout:
/// the passive node kept the ages of their last state change, however long ago.)
pub fn refresh_due(
    timeouts: &Timeouts,
    key: &SessionKey,
    value: &SessionValue,
    now_ns: u64,
    walk: Duration,
) -> bool {
    let walk_ns = walk.as_nanos().max(1) as u64;
    let walks_per_period =
        (refresh_period(timeouts, key, value).as_nanos() as u64 / walk_ns).max(1);
    // Turn 0 is the session's creation, which the peer has just been sent: never due.
    let turn = now_ns.saturating_sub(value.created_ns) / walk_ns;
    if turn == 0 || !turn.is_multiple_of(walks_per_period) {
        return false;
    }
    let since_previous_turn = (walks_per_period + 1) * walk_ns;
    value.last_seen_ns > value.created_ns
        && now_ns.saturating_sub(value.last_seen_ns) < since_previous_turn
}

/// `CLOCK_MONOTONIC` in ns: the timeline of the program's clocks (`bpf_ktime_get_ns` reads it,
/// `bpf_ktime_get_coarse_ns` its coarse variant).
pub fn monotonic_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use hafw_common::session::FAMILY_IPV4;

    fn session(proto: u8, state: SessionState, last_seen_ns: u64) -> (SessionKey, SessionValue) {
        let key = SessionKey {
            proto,
            family: FAMILY_IPV4,
            ..Default::default()
        };
        let value = SessionValue {
            state: state as u8,
            last_seen_ns,
            ..Default::default()
        };
        (key, value)
    }

    const S: u64 = 1_000_000_000;
    const WALK: Duration = Duration::from_secs(1);

    #[test]
    fn each_state_ages_by_its_own_timeout() {
        let t = Timeouts::default();
        // (proto, state, idle seconds, expired?)
        let table = [
            (PROTO_TCP, SessionState::New, 4, false),
            (PROTO_TCP, SessionState::New, 5, true),
            (PROTO_TCP, SessionState::Established, 3599, false),
            (PROTO_TCP, SessionState::Established, 3600, true),
            (PROTO_TCP, SessionState::FinWait, 119, false),
            (PROTO_TCP, SessionState::FinWait, 120, true),
            (PROTO_TCP, SessionState::Closed, 15, true),
            (PROTO_UDP, SessionState::Established, 29, false),
            (PROTO_UDP, SessionState::Established, 30, true),
            (hafw_common::session::PROTO_ICMP, SessionState::New, 6, true),
        ];
        for (proto, state, idle, want) in table {
            let (k, v) = session(proto, state, 100 * S);
            assert_eq!(
                expired(&t, &k, &v, (100 + idle) * S, None),
                want,
                "{proto} {state:?} idle {idle}s"
            );
        }
    }

    #[test]
    fn busy_sessions_are_refreshed_once_per_period_and_idle_ones_never() {
        const S: u64 = 1_000_000_000;
        let t = Timeouts::default();
        let walk = Duration::from_secs(1);
        // Established TCP (1 h): every 60 s; UDP (30 s): every 10 s.
        for (proto, state, period) in [
            (PROTO_TCP, SessionState::Established, 60),
            (PROTO_UDP, SessionState::New, 10),
        ] {
            let (k, mut v) = session(proto, state, 0);
            v.created_ns = 1_000 * S;
            let mut sent_at = Vec::new();
            for walk_no in 0..180u64 {
                let now = v.created_ns + walk_no * S + S / 2;
                v.last_seen_ns = now - S / 4; // a packet since the last walk
                if refresh_due(&t, &k, &v, now, walk) {
                    sent_at.push(walk_no);
                }
            }
            // Not at creation (just synced), then once per period.
            let expected: Vec<u64> = (period..180).step_by(period as usize).collect();
            assert_eq!(sent_at, expected, "proto {proto}");
            // Idle since its previous turn (a packet after creation, none in the last 119 s):
            // nothing to refresh, whatever the turn.
            v.last_seen_ns = v.created_ns + S;
            assert!(!refresh_due(&t, &k, &v, v.created_ns + 120 * S, walk));
        }
    }

    #[test]
    fn a_session_with_a_packet_since_its_previous_turn_is_due_at_its_turn() {
        let t = Timeouts::default();
        let walk = Duration::from_secs(1);
        // UDP: 30 s timeout, a turn every 10 s. The walk of turn 20 runs 20.5 s after creation.
        let (k, mut v) = session(PROTO_UDP, SessionState::New, 0);
        v.created_ns = 1_000 * S;
        let now = v.created_ns + 20 * S + S / 2;
        // (seconds before the walk of the last packet, due?)
        for (before, due) in [
            (0, true),
            (5, true),
            // The previous turn's walk ran 10 s ago; a walk lands anywhere in its one-second
            // slot, so the previous one may have run up to 11 s ago.
            (10, true),
            (11, false),
            (15, false),
        ] {
            v.last_seen_ns = now - before * S;
            assert_eq!(refresh_due(&t, &k, &v, now, walk), due, "{before} s before");
        }
        // Not at other walks, however recent the packet.
        v.last_seen_ns = now - S / 2;
        assert!(!refresh_due(&t, &k, &v, now + S, walk));
        // No packet after the one that created it: the peer has its ages from the creation.
        let (k, mut v) = session(PROTO_UDP, SessionState::New, 0);
        v.created_ns = 1_000 * S;
        v.last_seen_ns = v.created_ns;
        assert!(!refresh_due(
            &t,
            &k,
            &v,
            v.created_ns + 10 * S + S / 2,
            walk
        ));
    }

    #[test]
    fn a_clock_behind_last_seen_never_expires() {
        let (k, v) = session(PROTO_UDP, SessionState::New, 100 * S);
        let t = Timeouts::default();
        assert!(!expired(&t, &k, &v, 50 * S, None));
        assert!(!expired(&t, &k, &v, 50 * S, Some(40 * S)));
    }

    #[test]
    fn after_a_takeover_a_session_without_a_packet_here_ages_from_the_takeover() {
        let t = Timeouts::default();
        // UDP (30 s), last seen at 100 s on the peer; this node active since 120 s.
        let (k, v) = session(PROTO_UDP, SessionState::New, 100 * S);
        let since = Some(120 * S);
        assert!(!expired(&t, &k, &v, 130 * S, since,));
        assert!(!expired(&t, &k, &v, 150 * S - 1, since));
        assert!(expired(&t, &k, &v, 150 * S, since));
        // Not active by the election (standalone): its own last_seen.
        assert!(!expired(&t, &k, &v, 130 * S - 1, None));
        assert!(expired(&t, &k, &v, 130 * S, None));
        // A packet here at or after the takeover: its own last_seen, exactly.
        for last_seen in [120 * S, 125 * S] {
            let (k, v) = session(PROTO_UDP, SessionState::New, last_seen);
            assert!(!expired(&t, &k, &v, last_seen + 30 * S - 1, since));
            assert!(expired(&t, &k, &v, last_seen + 30 * S, since));
        }
        // Established TCP (1 h), synced with 50 min of idle: one hour after the takeover.
        let (k, v) = session(PROTO_TCP, SessionState::Established, 100 * S);
        let since = Some((100 + 3000) * S);
        assert!(!expired(&t, &k, &v, (100 + 3000 + 3600) * S - 1, since));
        assert!(expired(&t, &k, &v, (100 + 3000 + 3600) * S, since));
    }

    /// A session's packets: the one that creates it at `created`, then one `first` after it and
    /// one every `every` after that.
    struct Traffic {
        created: u64,
        first: u64,
        every: u64,
    }

    impl Traffic {
        /// The last packet at or before `t`.
        fn last_by(&self, t: u64) -> u64 {
            let start = self.created + self.first;
            if t < start {
                self.created
            } else {
                start + (t - start) / self.every * self.every
            }
        }

        /// The first packet after `t`.
        fn next_after(&self, t: u64) -> u64 {
            let start = self.created + self.first;
            if t < start {
                start
            } else {
                self.last_by(t) + self.every
            }
        }
    }

    /// Where in its second each clock falls (ns past a whole second), for one replay.
    #[derive(Clone, Copy, Debug)]
    struct Phase {
        created: u64,
        /// The first packet after the one that creates the session, in thousandths of the
        /// interval between packets after it.
        first: u64,
        active_walk: u64,
        new_active_walk: u64,
        takeover: u64,
    }

    const PHASES: [Phase; 3] = [
        Phase {
            created: S / 10,
            first: 11,
            active_walk: S / 2,
            new_active_walk: 9 * S / 10,
            takeover: S / 4,
        },
        Phase {
            created: 7 * S / 10,
            first: 137,
            active_walk: S / 5,
            new_active_walk: 3 * S / 10,
            takeover: 95 * S / 100,
        },
        // Packets on the turns' own grid, each walk at the start of its slot.
        Phase {
            created: 0,
            first: 1000,
            active_walk: 0,
            new_active_walk: S - 1,
            takeover: S / 2,
        },
    ];

    /// Replays one session on a pair over simulated time, taking over at every second of a
    /// window of twice its timeout plus its packet interval. Before the takeover the active node
    /// walks once a second and, when `refresh_due` says so, re-syncs the session into the passive
    /// node's copy of its `last_seen_ns` (its creation was synced). After it the new active node
    /// walks once a second and ages that copy by `expired`, active since the takeover, while the
    /// packets go on, now to it. Checks that the passive node's copy is never older than one
    /// refresh period plus one walk; that the new active node never ages the session out while
    /// its real idle (from its last packet on either node) is below its timeout; and, with the
    /// packets stopping at the takeover instead, that it ages it out one timeout after the
    /// takeover. Returns the number of refreshes sent, or everything that went wrong.
    fn replay(proto: u8, state: SessionState, every_s: u64, phase: Phase) -> Result<u64, String> {
        let t = Timeouts::default();
        let (key, mut active) = session(proto, state, 0);
        let created = 10_000 * S + phase.created;
        active.created_ns = created;
        let timeout = t.for_session(&key, &active).as_nanos() as u64;
        let lag = (refresh_period(&t, &key, &active) + WALK).as_nanos() as u64;
        let traffic = Traffic {
            created,
            first: every_s * S / 1000 * phase.first,
            every: every_s * S,
        };
        let secs = |ns: u64| ns as f64 / S as f64;
        let case = format!("proto {proto} {state:?}, a packet every {every_s} s, {phase:?}");
        // The first walk at or after `t` of a node walking at `offset` past each second.
        let walk_from = |t: u64, offset: u64| {
            let w = t / S * S + offset;
            if w < t { w + S } else { w }
        };
        // What went wrong, the first two of each kind.
        let mut errors: [Vec<String>; 3] = Default::default();
        let mut error = |kind: usize, e: String| {
            if errors[kind].len() < 2 {
                errors[kind].push(e);
            }
        };
        // The passive node's copy, and the active node's walk at which it was last current.
        let mut passive_last_seen = created;
        let mut current_at = created;
        let mut active_walk = walk_from(created + 1, phase.active_walk);
        let mut refreshes = 0;
        for second in 1..=(2 * timeout / S + every_s) {
            let takeover = created + second * S - phase.created + phase.takeover;
            while active_walk <= takeover {
                active.last_seen_ns = traffic.last_by(active_walk);
                if refresh_due(&t, &key, &active, active_walk, WALK) {
                    passive_last_seen = active.last_seen_ns;
                    refreshes += 1;
                }
                if passive_last_seen == active.last_seen_ns {
                    current_at = active_walk;
                } else if active_walk - current_at >= lag {
                    error(
                        0,
                        format!(
                            "{case}: at {:.2} s the passive copy is as of {:.2} s",
                            secs(active_walk - created),
                            secs(current_at - created)
                        ),
                    );
                }
                active_walk += S;
            }
            let after = |w: u64| {
                format!(
                    "{case}: takeover at {:.2} s, walk at {:.2} s",
                    secs(takeover - created),
                    secs(w - created)
                )
            };
            // Packets go on, now to the new active node: walk until it has seen one.
            let mut new_active = active;
            new_active.last_seen_ns = passive_last_seen;
            let next_packet = traffic.next_after(takeover);
            let mut walk = walk_from(takeover, phase.new_active_walk);
            while walk <= next_packet + S {
                let real_last_seen = traffic.last_by(walk);
                if real_last_seen > takeover {
                    new_active.last_seen_ns = real_last_seen;
                }
                let real_idle = walk - real_last_seen;
                if expired(&t, &key, &new_active, walk, Some(takeover)) && real_idle < timeout {
                    error(
                        1,
                        format!(
                            "{}: aged out, real idle {:.2} s, passive copy {:.2} s idle at the \
                         takeover",
                            after(walk),
                            secs(real_idle),
                            secs(takeover - passive_last_seen)
                        ),
                    );
                    break;
                }
                walk += S;
            }
            // Packets stop at the takeover: nothing changes any more and aging only grows with
            // time, so two walks decide: the last one before the real idle reaches the timeout
            // keeps the session, the first one a timeout after the takeover has aged it out.
            let mut new_active = active;
            new_active.last_seen_ns = passive_last_seen;
            let last_packet = traffic.last_by(takeover);
            let keeps = walk_from(last_packet + timeout, phase.new_active_walk) - S;
            if keeps > takeover && expired(&t, &key, &new_active, keeps, Some(takeover)) {
                error(
                    1,
                    format!(
                        "{}: aged out, real idle {:.2} s (no packet after the takeover)",
                        after(keeps),
                        secs(keeps - last_packet)
                    ),
                );
            }
            let ages = walk_from(takeover + timeout, phase.new_active_walk);
            if !expired(&t, &key, &new_active, ages, Some(takeover)) {
                error(
                    2,
                    format!(
                        "{}: still kept, real idle {:.2} s (no packet after the takeover)",
                        after(ages),
                        secs(ages - last_packet)
                    ),
                );
            }
        }
        let errors = errors.concat();
        if errors.is_empty() {
            Ok(refreshes)
        } else {
            Err(errors.join("\n"))
        }
    }

    #[test]
    fn sparse_sessions_survive_a_takeover_at_any_second() {
        // (proto, state, seconds between packets): an SSH connection with a keepalive every
        // 300 s, a UDP flow with a packet every 20 s against its 30 s timeout, WireGuard's 25 s
        // keepalive, and both protocols with a packet just inside the timeout.
        let cases = [
            (PROTO_TCP, SessionState::Established, 300),
            (PROTO_TCP, SessionState::Established, 3599),
            (PROTO_UDP, SessionState::New, 20),
            (PROTO_UDP, SessionState::New, 25),
            (PROTO_UDP, SessionState::New, 29),
        ];
        let mut failures = Vec::new();
        for (proto, state, every) in cases {
            for phase in PHASES {
                match replay(proto, state, every, phase) {
                    // No more than one refresh per period (one per turn in the window).
                    Ok(refreshes) => {
                        let (k, v) = session(proto, state, 0);
                        let t = Timeouts::default();
                        let window = 2 * t.for_session(&k, &v).as_secs() + every;
                        let turns = window / refresh_period(&t, &k, &v).as_secs() + 1;
                        if refreshes > turns {
                            failures.push(format!(
                                "proto {proto}, every {every} s, {phase:?}: {refreshes} refreshes \
                                 in {turns} turns"
                            ));
                        }
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
