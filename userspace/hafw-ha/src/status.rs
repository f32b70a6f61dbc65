//! Snapshot of the core for `show high-availability all` and its JSON form.
//!
//! Timestamps are nanoseconds on the core's clock ([`crate::Timestamp`]); `as_of` is the latest
//! time the core was given, so a renderer computes durations ("active for 3 min") as `as_of -
//! since` or with its own clock mapped the same way. Timer durations are milliseconds.

use serde::Serialize;

use crate::{
    config::{Ha2Transport, Mode, Timers},
    state::{Link, Mismatch, PeerLossCause, PeerState, Reason, State, Transition, Warning},
    time::Timestamp,
    timer::Timer,
};

/// Everything `show high-availability all` prints about the election.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Latest time the core was given.
    pub as_of: Timestamp,
    /// Configured group id.
    pub group_id: u8,
    /// Configured node id.
    pub node_id: u64,
    /// Configured HA mode.
    pub mode: Mode,
    /// Configured HA2 transport.
    pub ha2_transport: Ha2Transport,
    /// This node.
    pub local: LocalStatus,
    /// The peer as last heard.
    pub peer: PeerStatus,
    /// Name of the timer profile (`recommended`, `aggressive`, `fast`, `advanced`).
    pub timer_profile: &'static str,
    /// Resolved timers.
    pub timers: Timers,
    /// Each HA link.
    pub links: Vec<LinkStatus>,
    /// Flaps counted in the current chain of failure departures (see [`crate::FLAP_WINDOW`]).
    pub flaps: u32,
    /// Role of this node in HA2 session sync, as last requested from the shell.
    pub session_sync: SyncRole,
    /// Armed timers, earliest first: what the node is waiting for (e.g. a preemption hold).
    pub pending_timers: Vec<PendingTimer>,
    /// Latest state changes, oldest first, at most [`crate::HISTORY_LEN`].
    pub transitions: Vec<Transition>,
}

/// This node's part of [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalStatus {
    /// Current state.
    pub state: State,
    /// Why it is in that state.
    pub reason: Reason,
    /// Since when.
    pub since: Timestamp,
    /// Device priority.
    pub priority: u8,
    /// Preemptive setting.
    pub preemptive: bool,
    /// The failure a monitor reported, while it stands (held up or not).
    pub monitor_failure: Option<String>,
    /// Whether the shell reports the dataplane up.
    pub dataplane_up: bool,
    /// Active, but holding forwarding after a stall until the peer's state is known (see
    /// [`crate::Event::Stalled`]).
    pub forwarding_held: bool,
}

/// The peer's part of [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// State as last heard; `unknown` when never heard or declared dead.
    pub state: PeerState,
    /// Heard on some link within the peer-dead time.
    pub alive: bool,
    /// Whether the pair is formed, and if not because of a mismatch, why.
    pub pairing: Pairing,
    /// Device priority as last heard.
    pub priority: Option<u8>,
    /// Node id as last heard.
    pub node_id: Option<u64>,
    /// Preemptive setting as last heard in a hello.
    pub preemptive: Option<bool>,
    /// When the peer was last heard on any link.
    pub last_heard: Option<Timestamp>,
    /// How the peer was lost, if it is not alive and was heard before.
    pub lost: Option<PeerLossCause>,
    /// Pairing warnings (same priority, one-sided preemption, different takeover times).
    pub warnings: Vec<Warning>,
}

/// Whether this node and the peer form a pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// No valid hello from the live peer yet (or the peer is dead).
    #[default]
    NotPaired,
    /// The peer's hello agrees with our config.
    Paired,
    /// The peer disagrees with our config; the pair is not formed.
    Mismatch(Mismatch),
}

/// Role in HA2 session sync, driven by [`crate::Action::StartSessionSync`],
/// [`crate::Action::RequestBulkSync`] and [`crate::Action::StopSessionSync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncRole {
    /// Not syncing.
    #[default]
    None,
    /// Active, streaming sessions to the passive peer.
    Sender,
    /// Passive, receiving sessions from the active peer.
    Receiver,
}

/// One HA link in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// Which link.
    pub link: Link,
    /// As reported by the shell.
    pub state: LinkState,
    /// When the peer was last heard on it.
    pub last_heard: Option<Timestamp>,
}

/// State of an HA link as reported by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Not configured.
    NotConfigured,
    /// Configured, not reported yet.
    Unknown,
    /// Reported up.
    Up,
    /// Reported down.
    Down,
}

/// An armed timer in [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PendingTimer {
    /// Which timer.
    pub timer: Timer,
    /// Its deadline.
    pub at: Timestamp,
}
