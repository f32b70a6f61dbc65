//! The content of HA1 messages. The core decides what to send and interprets what arrives; the
//! shell owns the wire encoding (and the authentication of HA1), so these are plain values.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    config::{Ha2Transport, Mode},
    state::State,
};

/// Version of the HA1 election protocol spoken by this core. Peers with another version are refused
/// ([`crate::Mismatch::ProtocolVersion`]) because the rest of their hello cannot be trusted.
pub const PROTOCOL_VERSION: u16 = 1;

/// A hello: identity, compatibility and state. Sent on HA1 (and HA1 backup) every hello interval,
/// on every state change, and as an answer to a hello with `wants_reply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Sender's group id.
    pub group_id: u8,
    /// Sender's node id (election tie-breaker).
    pub node_id: u64,
    /// Sender's device priority.
    pub priority: u8,
    /// Sender's preemptive setting.
    pub preemptive: bool,
    /// Sender's state.
    pub state: State,
    /// Sender's protocol version, [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Sender's HA mode.
    pub mode: Mode,
    /// Sender's HA2 transport.
    pub ha2_transport: Ha2Transport,
    /// How long after last hearing its peer the sender takes over: its peer-dead time plus its
    /// promotion hold ([`crate::Timers::takeover_after`]). The receiver's dataplane lease must
    /// end before that (see [`crate::Core::lease`]). Zero: not said (an older peer).
    pub takeover_after: Duration,
    /// The sender has no valid pairing with us (it booted, or just heard us again after declaring
    /// us dead) and asks for a hello back at once instead of at our next hello interval.
    pub wants_reply: bool,
    /// The sender is active but stalled and holds forwarding until it knows whether we took over
    /// meanwhile (see [`crate::Event::Stalled`]): if we are active, we keep the role.
    pub resuming: bool,
}

/// A heartbeat: liveness plus the little needed to act on it without a hello (state, priority and
/// identity, so split brain can be resolved even when only the heartbeat backup carries traffic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's group id.
    pub group_id: u8,
    /// Sender's node id.
    pub node_id: u64,
    /// Sender's state.
    pub state: State,
    /// Sender's device priority.
    pub priority: u8,
    /// As [`Hello::resuming`].
    pub resuming: bool,
}
