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
pub fn expired(timeouts: &Timeouts, key: &SessionKey, value: &SessionValue, now_ns: u64) -> bool {
    let idle = now_ns.saturating_sub(value.last_seen_ns);
    u128::from(idle) >= timeouts.for_session(key, value).as_nanos()
}

/// How often the active node re-syncs a busy session's ages: a third of its timeout, between
/// 2 s and 60 s. Session records carry ages only at creation and state changes; without a refresh
/// a long-lived session (an hour-old SSH connection) would reach the passive node with the idle
/// age of its last state change, and after a takeover be aged out before its next packet.
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
                expired(&t, &k, &v, (100 + idle) * S),
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
        assert!(!expired(&Timeouts::default(), &k, &v, 50 * S));
    }
}
