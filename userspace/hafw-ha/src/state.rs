//! HA states, the reasons for moving between them, and the record of each move.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use crate::{
    config::{Ha2Transport, Mode},
    time::Timestamp,
};

/// The HA state of a node (HA-SPEC "Identity and election").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Booting, looking for the peer.
    Initial,
    /// Owns the virtual MACs and floating IPs and forwards traffic.
    Active,
    /// Healthy standby: receives state sync, does not forward.
    Passive,
    /// A link or path monitor failed, or the dataplane is down.
    NonFunctional,
    /// Suspended by the operator or after too many flaps; only the operator brings it back.
    Suspended,
}

impl State {
    /// The name in `show` output and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Active => "active",
            Self::Passive => "passive",
            Self::NonFunctional => "non-functional",
            Self::Suspended => "suspended",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The peer's state as last heard, or `Unknown` when it has never been heard or was declared dead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Never heard, or declared dead.
    #[default]
    Unknown,
    /// See [`State::Initial`].
    Initial,
    /// See [`State::Active`].
    Active,
    /// See [`State::Passive`].
    Passive,
    /// See [`State::NonFunctional`].
    NonFunctional,
    /// See [`State::Suspended`].
    Suspended,
}

impl From<State> for PeerState {
    fn from(state: State) -> Self {
        match state {
            State::Initial => Self::Initial,
            State::Active => Self::Active,
            State::Passive => Self::Passive,
            State::NonFunctional => Self::NonFunctional,
            State::Suspended => Self::Suspended,
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("unknown"),
            Self::Initial => State::Initial.fmt(f),
            Self::Active => State::Active.fmt(f),
            Self::Passive => State::Passive.fmt(f),
            Self::NonFunctional => State::NonFunctional.fmt(f),
            Self::Suspended => State::Suspended.fmt(f),
        }
    }
}

/// An HA link the peer can be heard on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// The HA1 control link: hellos and heartbeats.
    Ha1,
    /// The optional HA1 backup link: hellos and heartbeats.
    Ha1Backup,
    /// The optional heartbeat backup over the management interface: heartbeats only.
    HeartbeatBackup,
}

impl Link {
    /// Every link, in display order.
    pub const ALL: [Self; 3] = [Self::Ha1, Self::Ha1Backup, Self::HeartbeatBackup];

    /// The name in `show` output and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ha1 => "ha1",
            Self::Ha1Backup => "ha1-backup",
            Self::HeartbeatBackup => "heartbeat-backup",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the peer was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerLossCause {
    /// Nothing heard on any link for the peer-dead time.
    HeartbeatLoss,
    /// The shell reported every configured HA link down.
    AllLinksDown,
}

impl fmt::Display for PeerLossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HeartbeatLoss => "heartbeat loss",
            Self::AllLinksDown => "all HA links down",
        })
    }
}

/// Why a state change happened. Serialized as its human-readable text (the `Display` form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The node started; the state it starts in is `initial`.
    Boot,
    /// Initial -> active: no peer was heard within the initial wait.
    NoPeer,
    /// Initial -> passive: the peer is already active.
    PeerActive,
    /// Nobody is active and this node wins the election.
    ElectionWon {
        /// The peer's device priority.
        peer_priority: u8,
    },
    /// Initial -> passive: nobody is active and the peer wins the election.
    ElectionLost {
        /// The peer's device priority.
        peer_priority: u8,
    },
    /// The peer announced it cannot be active (non-functional or suspended).
    PeerUnavailable {
        /// What the peer announced.
        peer_state: PeerState,
    },
    /// Passive -> active: the peer was lost and the promotion hold elapsed.
    PeerLost {
        /// How it was lost.
        cause: PeerLossCause,
    },
    /// Active -> passive: a better, preemptive peer is available and the preemption hold elapsed.
    Preempted {
        /// The peer's device priority.
        peer_priority: u8,
    },
    /// Active -> passive: both nodes were active; the peer has the better priority and stays.
    SplitBrain {
        /// The peer's device priority.
        peer_priority: u8,
    },
    /// A link or path monitor failed and its hold-up times elapsed.
    MonitorFailed {
        /// What the monitor reported.
        reason: String,
    },
    /// The dataplane is down.
    DataplaneDown,
    /// Monitors and dataplane are healthy again.
    Recovered,
    /// The operator suspended the node.
    OperatorSuspend,
    /// The operator made the node functional again.
    OperatorFunctional,
    /// Active -> passive: this node stalled for its dataplane lease or longer, and the peer took
    /// over meanwhile (see [`crate::Event::Stalled`]).
    Stalled {
        /// How long the node did not run.
        paused_ms: u64,
    },
    /// Leaving active too often; the node suspended itself.
    TooManyFlaps {
        /// Flaps counted.
        flaps: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boot => f.write_str("booting"),
            Self::NoPeer => f.write_str("no peer heard within the initial wait"),
            Self::PeerActive => f.write_str("peer is already active"),
            Self::ElectionWon { peer_priority } => {
                write!(f, "election won against peer priority {peer_priority}")
            }
            Self::ElectionLost { peer_priority } => {
                write!(f, "election lost to peer priority {peer_priority}")
            }
            Self::PeerUnavailable { peer_state } => write!(f, "peer is {peer_state}"),
            Self::PeerLost { cause } => write!(f, "peer lost ({cause}), promotion hold elapsed"),
            Self::Preempted { peer_priority } => {
                write!(f, "preempted by peer priority {peer_priority}")
            }
            Self::SplitBrain { peer_priority } => {
                write!(f, "split brain: peer priority {peer_priority} stays active")
            }
            Self::MonitorFailed { reason } => write!(f, "monitor failed: {reason}"),
            Self::DataplaneDown => f.write_str("dataplane down"),
            Self::Recovered => f.write_str("monitors and dataplane recovered"),
            Self::OperatorSuspend => f.write_str("suspended by operator"),
            Self::OperatorFunctional => f.write_str("made functional by operator"),
            Self::Stalled { paused_ms } => write!(
                f,
                "stalled for {paused_ms} ms; the peer took over meanwhile"
            ),
            Self::TooManyFlaps { flaps } => {
                write!(
                    f,
                    "too many flaps ({flaps} within 15 minutes of each other)"
                )
            }
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One recorded state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// When it happened.
    pub at: Timestamp,
    /// State before. Equal to `to` when only the reason changed (a non-functional node whose cause
    /// changed, e.g. from dataplane down to a monitor failure).
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.reason)
    }
}

/// Why the pair cannot form with the heard peer: its hello or heartbeat disagrees with our config.
///
/// While a mismatch stands the node never becomes active against that peer (see the crate docs).
/// Serialized as its text.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Mismatch {
    /// The peers speak different HA1 protocol versions; nothing else in the hello is trusted.
    #[error("protocol version mismatch: local {local}, peer {peer}")]
    ProtocolVersion {
        /// Ours.
        local: u16,
        /// The peer's.
        peer: u16,
    },
    /// The peers are configured in different HA groups.
    #[error("group id mismatch: local {local}, peer {peer}")]
    GroupId {
        /// Ours.
        local: u8,
        /// The peer's.
        peer: u8,
    },
    /// The peers run different HA modes.
    #[error("mode mismatch: local {local}, peer {peer}")]
    Mode {
        /// Ours.
        local: Mode,
        /// The peer's.
        peer: Mode,
    },
    /// The peers use different HA2 transports.
    #[error("HA2 transport mismatch: local {local}, peer {peer}")]
    Ha2Transport {
        /// Ours.
        local: Ha2Transport,
        /// The peer's.
        peer: Ha2Transport,
    },
    /// Both peers have the same node id, so election ties cannot be broken.
    #[error("peer has our node id {node_id}")]
    SameNodeId {
        /// The shared node id.
        node_id: u64,
    },
}

impl Serialize for Mismatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A pairing that works but is probably not what the operator meant. Serialized as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// Equal device priorities: the lower node id wins, which is rarely a deliberate choice.
    SamePriority {
        /// The shared priority.
        priority: u8,
    },
    /// Preemption is enabled on one node only, so it has no effect.
    PreemptionOneSided {
        /// Ours.
        local: bool,
        /// The peer's.
        peer: bool,
    },
    /// The peers take over after different silences (peer-dead time plus promotion hold): each
    /// node's lease follows the shorter, but failure detection is as slow as the slower node's
    /// on one side and as quick as the quicker node's on the other.
    TakeoverTimesDiffer {
        /// Ours, in milliseconds.
        local_ms: u64,
        /// The peer's, in milliseconds.
        peer_ms: u64,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SamePriority { priority } => write!(
                f,
                "both peers have device priority {priority}; the lower node id wins the election"
            ),
            Self::PreemptionOneSided { local, peer } => write!(
                f,
                "preemptive is {} locally and {} on the peer; preemption needs both",
                on_off(*local),
                on_off(*peer)
            ),
            Self::TakeoverTimesDiffer { local_ms, peer_ms } => write!(
                f,
                "this node takes over {local_ms} ms after losing its peer, the peer after \
                 {peer_ms} ms; the dataplane leases follow the shorter"
            ),
        }
    }
}

fn on_off(value: bool) -> &'static str {
    if value { "on" } else { "off" }
}

impl Serialize for Warning {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use serde::de::{IntoDeserializer, value::Error};

    use super::*;

    fn parse<'de, T: Deserialize<'de>>(name: &'de str) -> T {
        match T::deserialize(IntoDeserializer::<Error>::into_deserializer(name)) {
            Ok(value) => value,
            Err(error) => panic!("{name}: {error}"),
        }
    }

    /// Input: every state and link. Output: serde names equal the `show` names (`non-functional`,
    /// ...).
    #[test]
    fn serde_names_are_the_show_names() {
        for state in [
            State::Initial,
            State::Active,
            State::Passive,
            State::NonFunctional,
            State::Suspended,
        ] {
            assert_eq!(parse::<State>(state.as_str()), state);
            assert_eq!(parse::<PeerState>(state.as_str()), PeerState::from(state));
        }
        assert_eq!(parse::<PeerState>("unknown"), PeerState::Unknown);
        for link in Link::ALL {
            assert_eq!(parse::<Link>(link.as_str()), link);
        }
        assert_eq!(parse::<Mode>("active-passive"), Mode::ActivePassive);
        assert_eq!(State::NonFunctional.to_string(), "non-functional");
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            Reason::TooManyFlaps { flaps: 3 }.to_string(),
            "too many flaps (3 within 15 minutes of each other)"
        );
        assert_eq!(
            Mismatch::GroupId { local: 1, peer: 2 }.to_string(),
            "group id mismatch: local 1, peer 2"
        );
        let t = Transition {
            at: Timestamp::ZERO,
            from: State::Passive,
            to: State::Active,
            reason: Reason::PeerLost {
                cause: PeerLossCause::HeartbeatLoss,
            },
        };
        assert_eq!(
            t.to_string(),
            "passive -> active: peer lost (heartbeat loss), promotion hold elapsed"
        );
    }
}
