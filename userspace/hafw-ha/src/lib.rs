//! hafw HA1 election core: decides whether this node is `initial`, `active`, `passive`,
//! `non-functional` or `suspended`, as users of PAN-OS HA expect (see `shared/HA-SPEC.md`).
//!
//! The core is pure: no I/O, no sockets, no threads, no clock. It is a plain struct driven by
//! inputs and an injected time, in the style of quinn-proto and smoltcp, so the tokio shell only
//! moves bytes and performs actions, and tests can run a whole pair in virtual time.
//!
//! # Driving it
//!
//! ```
//! use hafw_ha::{Action, Config, Core, Event, Link, TimerProfile, Timestamp};
//!
//! let mut config = Config::new(1, 0x0200_0000_0001);
//! config.device_priority = 100;
//! config.timers = TimerProfile::Fast;
//! let mut core = Core::new(config, Timestamp::ZERO).expect("valid config");
//! // Shell loop: perform actions, sleep until `poll_timeout` or an input, feed it, repeat.
//! while let Some(action) = core.poll_action() {
//!     match action {
//!         Action::SendHello(_hello) => { /* encode, send on HA1 (+ HA1 backup) */ }
//!         Action::SendHeartbeat(_hb) => { /* send on every configured HA link */ }
//!         _ => { /* claim/release VIPs, GARPs, HA2 hooks, logs */ }
//!     }
//! }
//! let deadline = core.poll_timeout().expect("hello and heartbeat are always armed");
//! core.handle_timeout(deadline);
//! core.handle(Event::LinkUp(Link::Ha1), deadline);
//! ```
//!
//! - Time: [`Timestamp`] is nanoseconds on the caller's monotonic clock, e.g. `Timestamp::ZERO +
//!   start.elapsed()`. Durations are [`std::time::Duration`].
//! - Inputs: [`Core::handle`] with an [`Event`] (peer hello/heartbeat with the link it came on, HA
//!   link up/down, monitor failed/recovered, dataplane down/up, operator suspend/functional), and
//!   [`Core::handle_timeout`] at [`Core::poll_timeout`].
//! - Outputs: [`Core::poll_action`] until `None`, performing each [`Action`] in order.
//! - Display: [`Core::status`], serializable, for `show high-availability all`.
//!
//! # Behaviour, and the choices HA-SPEC leaves open
//!
//! - **Election**: lower device priority wins; equal priorities are broken by the lower
//!   [`Config::node_id`] (and reported as a [`Warning`]). Both at boot: the winner becomes active
//!   at once, the loser passive. A booting node that finds an active peer becomes passive.
//! - **Initial**: a node that hears nobody for [`Timers::initial_wait`] becomes active with peer
//!   `unknown`.
//! - **Liveness**: the peer is alive while anything (hello or heartbeat) arrives on *any* link
//!   within heartbeat interval * loss threshold. Losing HA1 while the heartbeat backup still
//!   delivers changes nothing. When the shell reports every configured link down, the peer is
//!   declared dead at once.
//! - **Promotion hold**: a passive node whose peer died becomes active after the promotion hold. A
//!   peer that *announces* it cannot serve (non-functional, suspended) is replaced at once.
//! - **Preemption** needs `preemptive` on both nodes. The hold runs on the active node that will
//!   give up the role: once it has heard the better peer passive for the preemption hold, it goes
//!   passive, and the better peer, seeing nobody active, takes over. Handover is passive-first: no
//!   two actives.
//! - **Monitors**: a failure makes a node non-functional after the monitor-fail hold-up, plus the
//!   additional master hold-up on the active node. Dataplane down is immediate. Recovery -> passive
//!   (then active by the usual rules: preemption, peer gone, nobody active).
//! - **Flaps**: leaving active because this node failed (active -> non-functional, or -> passive
//!   after a stall the peer took over in) within [`FLAP_WINDOW`] of the previous such departure
//!   counts one flap; when the count reaches `max_flaps` (0 = no limit) the node goes `suspended`
//!   ("too many flaps") instead. A preemptive node on an overloaded host that keeps stalling
//!   would otherwise take the role back and lose it again every preemption hold. Handing the
//!   role over to a better peer (preemption, split brain) or to the operator is not a flap:
//!   counting it would suspend the *healthy* node of a pair whose other node keeps failing and
//!   being preempted back. Operator "functional" clears the count.
//! - **Split brain** (both active after a full partition): when they hear each other again, the
//!   election loser goes passive, the winner stays and emits [`Action::AnnounceAgain`] (GARPs
//!   again). An active node also re-announces whenever it starts hearing its peer (for the first
//!   time or after losing it), because the peer may have been active meanwhile and may yield before
//!   we ever see it active; extra gratuitous ARPs are harmless.
//! - **Mismatch** (group id, mode, HA2 transport, protocol version, same node id): the pair is not
//!   formed and the reason is in [`Status`] and a [`Notice`]. The node never becomes active
//!   *because of* such a peer: an active node stays active, a passive one stays passive (it still
//!   takes over if the peer dies), and an initial node stays initial while the mismatched peer is
//!   alive, even past the initial wait. Two mismatched nodes booting together therefore both stay
//!   initial: an explicit outage with a reason beats two nodes fighting over the same floating IPs.
//! - **Stall** (the shell reports [`Event::Stalled`] when its thread did not run, e.g. a frozen
//!   process or virtual machine): an active node that stalled for its lease ([`Core::lease`])
//!   or longer stopped forwarding meanwhile, and the peer may have taken over. It emits
//!   [`Action::HoldForwarding`] and says in its messages that it is resuming; hearing the peer
//!   active and not resuming itself, it yields (whatever the election says, and the peer keeps
//!   the role: winning that split brain would end the sessions created on the peer meanwhile;
//!   a peer that says it is resuming was active from before its own stall, took nothing over,
//!   and is not yielded to; the yield counts as a flap); otherwise, after
//!   [`Timers::stall_hold`] (two heartbeat intervals, time for the peer's current state to
//!   arrive), [`Action::ResumeForwarding`], and no state changed.
//! - **Lease**: an active node's dataplane forwards only while the shell keeps refreshing its
//!   lease, [`Core::lease`]: two thirds of the shorter of this node's and the peer's takeover
//!   times (each hello carries its sender's, [`Timers::takeover_after`]), so that a node that
//!   stops running stops forwarding before its peer starts, even when the peers' timers differ
//!   (which is reported as a [`Warning`]).
//! - **Pairing** needs a hello; heartbeats alone keep the peer alive and can settle split brain,
//!   but an initial node does not elect against a peer it has only heard heartbeats from.

mod config;
mod core;
mod message;
pub mod secure;
mod state;
mod status;
mod time;
mod timer;
pub mod wire;

pub use crate::{
    config::{
        Config, ConfigError, Ha2Transport, MAX_FLAPS_LIMIT, MAX_TIMER,
        MIN_HEARTBEAT_LOSS_THRESHOLD, Mode, TimerProfile, Timers, default_initial_wait,
    },
    core::{Action, Core, Event, FLAP_WINDOW, HISTORY_LEN, Notice},
    message::{Heartbeat, Hello, PROTOCOL_VERSION},
    state::{Link, Mismatch, PeerLossCause, PeerState, Reason, State, Transition, Warning},
    status::{
        LinkState, LinkStatus, LocalStatus, Pairing, PeerStatus, PendingTimer, Status, SyncRole,
    },
    time::Timestamp,
    timer::Timer,
};
