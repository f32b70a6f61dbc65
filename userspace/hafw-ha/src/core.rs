//! The election state machine: [`Core`], its inputs ([`Event`]) and outputs ([`Action`]).
//!
//! Structure, so the rules can be read in one place:
//! - event and timer handlers only update *facts* (peer heard, monitor failed, hold elapsed, ...);
//! - [`Core::reconcile`] then derives the transition from the facts ([`Core::next_transition`]),
//!   arms or stops the hold timers whose condition changed, and updates the HA2 sync role;
//! - every state change goes through [`Core::change_state`], the one door that counts flaps,
//!   records the reason, and queues the entry actions.

use std::{collections::VecDeque, fmt, time::Duration};

use crate::{
    config::{Config, ConfigError, Mode, Timers},
    message::{Heartbeat, Hello, PROTOCOL_VERSION},
    state::{Link, Mismatch, PeerLossCause, PeerState, Reason, State, Transition, Warning},
    status::{
        LinkState, LinkStatus, LocalStatus, Pairing, PeerStatus, PendingTimer, Status, SyncRole,
    },
    time::Timestamp,
    timer::{Timer, TimerTable},
};

/// Leaving the active state because of a failure within this long of the previous such departure
/// counts as a flap (HA-SPEC; the crate docs say which departures count).
pub const FLAP_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Number of transitions kept for [`Status::transitions`].
pub const HISTORY_LEN: usize = 64;

/// Bound on transitions chained by one input. The longest legitimate chain is two (non-functional
/// -> passive -> active when the peer is not active); the bound only guards against a rule cycle.
const MAX_CHAINED_TRANSITIONS: usize = 8;

/// Bound on timers fired by one [`Core::handle_timeout`] call. Timers re-armed with a zero duration
/// fire again in the same call; anything left over stays expired and is reported by `poll_timeout`,
/// so the bound can delay work but never lose it.
const MAX_TIMER_ROUNDS: usize = 64;

/// An input to the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A hello from the peer arrived (normally on HA1 or HA1 backup).
    PeerHello {
        /// Link it arrived on.
        via: Link,
        /// Its content.
        hello: Hello,
        /// A newer message of the peer was already heard (a heartbeat that overtook hellos
        /// queued on HA1 while it connected): the hello still pairs and identifies the peer, but
        /// the state it reports may have been left since and is not taken.
        stale: bool,
    },
    /// A heartbeat from the peer arrived on `via`.
    PeerHeartbeat {
        /// Link it arrived on.
        via: Link,
        /// Its content.
        heartbeat: Heartbeat,
    },
    /// The shell saw an HA link come up (carrier, HA1 connection established).
    LinkUp(Link),
    /// The HA1 (or HA1 backup) connection was (re)established. A hello goes out at once, asking
    /// for one back, so a node that boots or reconnects learns its peer's state in one round trip
    /// instead of at the next hello interval.
    Ha1Connected(Link),
    /// The shell saw an HA link go down. When every configured link is down the peer is declared
    /// dead at once instead of after the peer-dead time.
    LinkDown(Link),
    /// Link or path monitoring (already combined with its any/all rules) reports a failure.
    MonitorFailed {
        /// What failed, for the reason shown to the operator.
        reason: String,
    },
    /// Link and path monitoring are healthy again.
    MonitorRecovered,
    /// The dataplane cannot forward (XDP program detached, crashed, ...).
    DataplaneDown,
    /// The dataplane forwards again.
    DataplaneUp,
    /// Operator: `request high-availability state suspend`.
    OperatorSuspend,
    /// Operator: `request high-availability state functional`. Also clears the flap count.
    OperatorFunctional,
    /// This node did not run for `paused` (the shell's thread was stopped: a frozen process or
    /// virtual machine, a host that did not schedule it), measured by the shell when it runs
    /// again and reported before anything it received meanwhile. Unlike other inputs it fires no
    /// timer: what waited in the sockets during the stall must be fed first, or a peer-dead
    /// timer due now would declare the peer dead on a silence that was this node's. What an
    /// active node that stalled for its lease ([`Core::lease`]) or longer does is in the crate
    /// docs.
    Stalled {
        /// How long the node did not run.
        paused: Duration,
    },
}

/// An output of the core. The shell performs these in order and never decides anything itself.
///
/// The role actions are idempotent from the shell's point of view: `BecomePassive` on a node that
/// holds nothing must simply make sure it holds nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this hello on HA1, and on HA1 backup when configured.
    SendHello(Hello),
    /// Send this heartbeat on every configured HA link (HA1, HA1 backup, heartbeat backup).
    SendHeartbeat(Heartbeat),
    /// Take the active role: claim the virtual MACs and floating IPs, send gratuitous ARPs and
    /// unsolicited neighbour advertisements on every data interface, set the dataplane role to
    /// active.
    BecomeActive,
    /// Take the passive role: release virtual MACs and floating IPs, set the dataplane to drop data
    /// traffic (or bring data links down, per the passive link state setting).
    BecomePassive,
    /// Same release as `BecomePassive`; the node cannot serve until it recovers.
    EnterNonFunctional,
    /// Same release as `BecomePassive`; the node stays out until the operator makes it functional.
    EnterSuspended,
    /// Still active after split brain, or starting to hear the peer (again): send the gratuitous
    /// ARPs / neighbour advertisements again so that switches and hosts that followed the other
    /// node come back.
    AnnounceAgain,
    /// This node, active, stalled for its lease or longer: its dataplane lease lapsed meanwhile.
    /// Refresh it no more until [`Action::ResumeForwarding`] (or another role action): the peer
    /// may have taken over.
    HoldForwarding,
    /// The stall hold ended and the peer did not take over: refresh the lease again, now.
    ResumeForwarding,
    /// HA2: this node is active and the peer passive; start streaming session updates to it.
    StartSessionSync,
    /// HA2: this node is passive and the peer active; ask it for a bulk sync, then receive updates.
    RequestBulkSync,
    /// HA2: stop sending or receiving session sync.
    StopSessionSync,
    /// A state change, for the log.
    Log(Transition),
    /// Something about the peer worth a log line; no state changed.
    Notice(Notice),
}

/// Peer news for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The peer is heard again (or for the first time).
    PeerUp {
        /// Link it was heard on.
        via: Link,
    },
    /// The peer was declared dead.
    PeerDown {
        /// How.
        cause: PeerLossCause,
    },
    /// The pair is formed: the peer's hello agrees with our config.
    Paired {
        /// Peer node id.
        node_id: u64,
        /// Peer device priority.
        priority: u8,
    },
    /// The peer disagrees with our config; the pair is not formed.
    Mismatch(Mismatch),
    /// The pairing works but is probably not what was meant.
    Warning(Warning),
    /// Both nodes are active and this one stays (its priority is better); see
    /// [`Action::AnnounceAgain`].
    SplitBrain {
        /// Peer device priority.
        peer_priority: u8,
    },
    /// This node, active, stalled for its lease or longer and holds forwarding until it knows
    /// whether the peer took over (see [`Event::Stalled`]).
    Stalled {
        /// How long the node did not run.
        paused_ms: u64,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerUp { via } => write!(f, "peer up (heard on {via})"),
            Self::PeerDown { cause } => write!(f, "peer down ({cause})"),
            Self::Paired { node_id, priority } => {
                write!(f, "paired with node {node_id} priority {priority}")
            }
            Self::Mismatch(mismatch) => write!(f, "pair not formed: {mismatch}"),
            Self::Warning(warning) => write!(f, "warning: {warning}"),
            Self::SplitBrain { peer_priority } => write!(
                f,
                "split brain: peer priority {peer_priority} is active too; staying active"
            ),
            Self::Stalled { paused_ms } => write!(
                f,
                "stalled for {paused_ms} ms while active: forwarding held until the peer's state \
                 is known"
            ),
        }
    }
}

/// What we know about the peer.
#[derive(Clone, Debug, Default)]
struct Peer {
    alive: bool,
    state: PeerState,
    pairing: Pairing,
    node_id: Option<u64>,
    priority: Option<u8>,
    preemptive: Option<bool>,
    /// The peer's takeover time, from its hellos (absent from older peers).
    takeover_after: Option<Duration>,
    /// The peer says it stalled and holds forwarding (see [`Event::Stalled`]).
    resuming: bool,
    last_heard: Option<Timestamp>,
    lost: Option<PeerLossCause>,
    warnings: Vec<Warning>,
}

#[derive(Clone, Copy, Debug)]
struct LinkInfo {
    state: LinkState,
    last_heard: Option<Timestamp>,
}

/// The HA1 election core of one node. See the crate docs for how to drive it.
#[derive(Clone, Debug)]
pub struct Core {
    config: Config,
    timers: Timers,
    state: State,
    reason: Reason,
    since: Timestamp,
    /// Latest time given by the caller; earlier times passed later are clamped to it.
    now: Timestamp,
    table: TimerTable,
    peer: Peer,
    links: [LinkInfo; Link::ALL.len()],
    dataplane_up: bool,
    monitor_failure: Option<String>,
    /// The monitor failure outlasted its hold-up times (or arrived while the node was not
    /// serving).
    monitor_confirmed: bool,
    /// The initial wait elapsed; an initial node alone now becomes active.
    initial_expired: bool,
    flaps: u32,
    last_left_active: Option<Timestamp>,
    /// This node stays active through the current split brain and has announced it.
    split_brain_won: bool,
    /// This node, active, stalled this many milliseconds (its lease or longer) and holds
    /// forwarding until the stall hold ends or the peer shows it took over.
    resuming: Option<u64>,
    /// The peer was heard again while this node was active: re-announce once the input is
    /// processed.
    announce_due: bool,
    sync: SyncRole,
    history: VecDeque<Transition>,
    actions: VecDeque<Action>,
}

impl Core {
    /// A node booting at `now`, in `initial`. Queues a hello asking for a reply and a heartbeat.
    ///
    /// The dataplane and the monitors are assumed healthy until the shell reports otherwise.
    pub fn new(config: Config, now: Timestamp) -> Result<Self, ConfigError> {
        config.validate()?;
        let timers = config.timers.timers();
        let links = Link::ALL.map(|link| LinkInfo {
            state: if link_configured(&config, link) {
                LinkState::Unknown
            } else {
                LinkState::NotConfigured
            },
            last_heard: None,
        });
        let mut core = Self {
            config,
            timers,
            state: State::Initial,
            reason: Reason::Boot,
            since: now,
            now,
            table: TimerTable::default(),
            peer: Peer::default(),
            links,
            dataplane_up: true,
            monitor_failure: None,
            monitor_confirmed: false,
            initial_expired: false,
            flaps: 0,
            last_left_active: None,
            split_brain_won: false,
            resuming: None,
            announce_due: false,
            sync: SyncRole::None,
            history: VecDeque::with_capacity(HISTORY_LEN),
            actions: VecDeque::new(),
        };
        core.table.set(Timer::Initial, now + timers.initial_wait);
        // Ask for a hello back so a running peer pairs with us within a round trip, not a hello
        // interval.
        core.send_hello(true, now);
        core.send_heartbeat(now);
        Ok(core)
    }

    /// Feeds one input. Queued actions are then available from [`Core::poll_action`].
    pub fn handle(&mut self, event: Event, now: Timestamp) {
        let now = self.advance(now);
        match event {
            Event::PeerHello { via, hello, stale } => self.on_hello(via, hello, stale, now),
            Event::PeerHeartbeat { via, heartbeat } => self.on_heartbeat(via, heartbeat, now),
            Event::LinkUp(link) => self.on_link(link, true),
            Event::LinkDown(link) => self.on_link(link, false),
            Event::Ha1Connected(_) => self.send_hello(true, now),
            Event::MonitorFailed { reason } => self.on_monitor_failed(reason, now),
            Event::MonitorRecovered => {
                self.monitor_failure = None;
                self.monitor_confirmed = false;
                self.table.stop(Timer::MonitorFailHoldUp);
                self.table.stop(Timer::AdditionalMasterHoldUp);
            }
            Event::DataplaneDown => self.dataplane_up = false,
            Event::DataplaneUp => self.dataplane_up = true,
            Event::OperatorSuspend => {
                if self.state != State::Suspended {
                    self.change_state(State::Suspended, Reason::OperatorSuspend, now);
                }
            }
            Event::OperatorFunctional => self.on_operator_functional(now),
            Event::Stalled { paused } => {
                self.on_stalled(paused, now);
                self.reconcile(now);
                return;
            }
        }
        self.reconcile(now);
        // Holds of zero length armed by this input are due right now: fire them before the caller
        // polls.
        self.handle_timeout(now);
    }

    /// Fires every timer whose deadline is at or before `now`. Call it when [`Core::poll_timeout`]
    /// is reached; calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.advance(now);
        for _ in 0..MAX_TIMER_ROUNDS {
            let Some(timer) = self.table.next_expired(now) else {
                return;
            };
            self.table.stop(timer);
            self.on_timer(timer, now);
            self.reconcile(now);
        }
    }

    /// When [`Core::handle_timeout`] must be called next. Always `Some` in practice (the periodic
    /// hello and heartbeat are always armed).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.table.next_timeout()
    }

    /// The next action to perform, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// How long this node's dataplane may forward as active without a refresh by the shell: two
    /// thirds of the time after which the peer takes over (peer-dead time plus promotion hold),
    /// so a node that stops running stops forwarding before the peer starts. That time is the
    /// peer's as its hellos say, bounded by this node's own (the same, when the timers match);
    /// this node's own until the peer has said it.
    pub fn lease(&self) -> Duration {
        let own = self.timers.takeover_after();
        let takeover = self.peer.takeover_after.map_or(own, |peer| peer.min(own));
        takeover * 2 / 3
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration the core runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Snapshot for `show high-availability all`.
    pub fn status(&self) -> Status {
        Status {
            as_of: self.now,
            group_id: self.config.group_id,
            node_id: self.config.node_id,
            mode: self.config.mode,
            ha2_transport: self.config.ha2_transport,
            local: LocalStatus {
                state: self.state,
                reason: self.reason.clone(),
                since: self.since,
                priority: self.config.device_priority,
                preemptive: self.config.preemptive,
                monitor_failure: self.monitor_failure.clone(),
                dataplane_up: self.dataplane_up,
                forwarding_held: self.resuming.is_some(),
            },
            peer: PeerStatus {
                state: self.peer.state,
                alive: self.peer.alive,
                pairing: self.peer.pairing.clone(),
                priority: self.peer.priority,
                node_id: self.peer.node_id,
                preemptive: self.peer.preemptive,
                last_heard: self.peer.last_heard,
                lost: if self.peer.alive {
                    None
                } else {
                    self.peer.lost
                },
                warnings: self.peer.warnings.clone(),
            },
            timer_profile: self.config.timers.name(),
            timers: self.timers,
            links: Link::ALL
                .into_iter()
                .map(|link| LinkStatus {
                    link,
                    state: self.links[link.index()].state,
                    last_heard: self.links[link.index()].last_heard,
                })
                .collect(),
            flaps: self.flaps,
            session_sync: self.sync,
            pending_timers: {
                let mut pending: Vec<_> = self
                    .table
                    .iter()
                    .map(|(timer, at)| PendingTimer { timer, at })
                    .collect();
                pending.sort_by_key(|p| p.at);
                pending
            },
            transitions: self.history.iter().cloned().collect(),
        }
    }

    fn advance(&mut self, now: Timestamp) -> Timestamp {
        // A caller whose clock steps back must not make timers fire in the past or history go
        // backwards: the core's time never decreases.
        self.now = self.now.max(now);
        self.now
    }

    // ---- Inputs: update facts ----

    fn on_hello(&mut self, via: Link, hello: Hello, stale: bool, now: Timestamp) {
        let revived = self.heard(via, now);
        let check = self.check_hello(&hello);
        // With another protocol version nothing else in the hello can be trusted.
        if !matches!(check, Err(Mismatch::ProtocolVersion { .. })) {
            self.peer.node_id = Some(hello.node_id);
            self.peer.priority = Some(hello.priority);
            self.peer.preemptive = Some(hello.preemptive);
            self.peer.takeover_after =
                (!hello.takeover_after.is_zero()).then_some(hello.takeover_after);
            if !stale {
                self.peer.state = hello.state.into();
                self.peer.resuming = hello.resuming;
            }
        }
        match check {
            Ok(()) => {
                self.set_pairing(Pairing::Paired);
                self.update_warnings(&hello);
            }
            Err(mismatch) => self.set_pairing(Pairing::Mismatch(mismatch)),
        }
        // A peer we just heard again, without a valid pairing, gets our hello now and is asked for
        // one back. Replies never ask for a reply themselves, so two mismatched peers cannot
        // ping-pong.
        let solicit = revived && !self.paired();
        if hello.wants_reply || solicit {
            self.send_hello(solicit, now);
        }
    }

    fn on_heartbeat(&mut self, via: Link, heartbeat: Heartbeat, now: Timestamp) {
        let revived = self.heard(via, now);
        // Heartbeats can arrive alone (HA1 down, heartbeat backup up), so they carry enough
        // identity to refuse a peer of another group and to settle split brain.
        if heartbeat.group_id != self.config.group_id {
            self.set_pairing(Pairing::Mismatch(Mismatch::GroupId {
                local: self.config.group_id,
                peer: heartbeat.group_id,
            }));
        } else if heartbeat.node_id == self.config.node_id {
            self.set_pairing(Pairing::Mismatch(Mismatch::SameNodeId {
                node_id: heartbeat.node_id,
            }));
        }
        self.peer.node_id = Some(heartbeat.node_id);
        self.peer.priority = Some(heartbeat.priority);
        self.peer.state = heartbeat.state.into();
        self.peer.resuming = heartbeat.resuming;
        if revived && !self.paired() {
            self.send_hello(true, now);
        }
    }

    /// Records that the peer was heard; returns whether it was considered dead until now.
    fn heard(&mut self, via: Link, now: Timestamp) -> bool {
        let revived = !self.peer.alive;
        self.peer.alive = true;
        self.peer.last_heard = Some(now);
        self.links[via.index()].last_heard = Some(now);
        self.table
            .set(Timer::PeerDead, now + self.timers.peer_dead());
        if revived {
            self.notice(Notice::PeerUp { via });
            // While we could not hear the peer it may have taken over and pulled the switches' MAC
            // tables to itself, and it may yield before we ever see it active. Re-announcing is
            // cheap and idempotent, so an active node does it whenever the peer comes back.
            self.announce_due = self.state == State::Active;
        }
        revived
    }

    fn check_hello(&self, hello: &Hello) -> Result<(), Mismatch> {
        let config = &self.config;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Mismatch::ProtocolVersion {
                local: PROTOCOL_VERSION,
                peer: hello.protocol_version,
            });
        }
        if hello.group_id != config.group_id {
            return Err(Mismatch::GroupId {
                local: config.group_id,
                peer: hello.group_id,
            });
        }
        if hello.mode != config.mode {
            return Err(Mismatch::Mode {
                local: config.mode,
                peer: hello.mode,
            });
        }
        // HA lite has no HA2 link, so its transport setting is meaningless.
        if config.mode == Mode::ActivePassive && hello.ha2_transport != config.ha2_transport {
            return Err(Mismatch::Ha2Transport {
                local: config.ha2_transport,
                peer: hello.ha2_transport,
            });
        }
        if hello.node_id == config.node_id {
            return Err(Mismatch::SameNodeId {
                node_id: hello.node_id,
            });
        }
        Ok(())
    }

    fn set_pairing(&mut self, pairing: Pairing) {
        if self.peer.pairing == pairing {
            return;
        }
        match &pairing {
            Pairing::Paired => {
                if let (Some(node_id), Some(priority)) = (self.peer.node_id, self.peer.priority) {
                    self.notice(Notice::Paired { node_id, priority });
                }
            }
            Pairing::Mismatch(mismatch) => self.notice(Notice::Mismatch(mismatch.clone())),
            Pairing::NotPaired => {}
        }
        self.peer.pairing = pairing;
    }

    fn update_warnings(&mut self, hello: &Hello) {
        let mut warnings = Vec::new();
        if hello.priority == self.config.device_priority {
            warnings.push(Warning::SamePriority {
                priority: hello.priority,
            });
        }
        if hello.preemptive != self.config.preemptive {
            warnings.push(Warning::PreemptionOneSided {
                local: self.config.preemptive,
                peer: hello.preemptive,
            });
        }
        let own = self.timers.takeover_after();
        if !hello.takeover_after.is_zero() && hello.takeover_after != own {
            warnings.push(Warning::TakeoverTimesDiffer {
                local_ms: own.as_millis().try_into().unwrap_or(u64::MAX),
                peer_ms: hello
                    .takeover_after
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            });
        }
        for warning in &warnings {
            if !self.peer.warnings.contains(warning) {
                self.notice(Notice::Warning(warning.clone()));
            }
        }
        self.peer.warnings = warnings;
    }

    fn on_link(&mut self, link: Link, up: bool) {
        let info = &mut self.links[link.index()];
        // A report about a link we do not have is a shell bug; there is nothing to track.
        if info.state == LinkState::NotConfigured {
            return;
        }
        info.state = if up { LinkState::Up } else { LinkState::Down };
        let all_down = self
            .links
            .iter()
            .all(|info| matches!(info.state, LinkState::NotConfigured | LinkState::Down));
        if all_down {
            // Nothing can reach us: waiting out the peer-dead time would only delay the takeover.
            self.peer_lost(PeerLossCause::AllLinksDown);
        }
    }

    fn peer_lost(&mut self, cause: PeerLossCause) {
        if !self.peer.alive {
            return;
        }
        self.peer.alive = false;
        self.peer.state = PeerState::Unknown;
        // A peer that comes back may have been reconfigured: it has to pair again with a fresh
        // hello.
        self.peer.pairing = Pairing::NotPaired;
        self.peer.warnings.clear();
        // The peer's takeover time stays: a peer this node cannot hear may still hear it, and
        // take over as quickly as it said.
        self.peer.resuming = false;
        self.peer.lost = Some(cause);
        self.table.stop(Timer::PeerDead);
        self.notice(Notice::PeerDown { cause });
    }

    fn on_monitor_failed(&mut self, reason: String, now: Timestamp) {
        let first = self.monitor_failure.is_none();
        self.monitor_failure = Some(reason);
        if !first {
            // Already failing: the hold-up runs from the first failure, only the text changes.
            return;
        }
        if matches!(self.state, State::Initial | State::Passive | State::Active) {
            self.monitor_confirmed = false;
            self.table.set(
                Timer::MonitorFailHoldUp,
                now + self.timers.monitor_fail_hold_up,
            );
        } else {
            // Not serving: holding up would only hide the real cause from `show`.
            self.monitor_confirmed = true;
        }
    }

    fn on_operator_functional(&mut self, now: Timestamp) {
        if self.state != State::Suspended {
            return;
        }
        // The operator has looked at the flapping; start counting afresh.
        self.flaps = 0;
        self.last_left_active = None;
        match self.health_problem() {
            Some(problem) => self.change_state(State::NonFunctional, problem, now),
            // Passive first; the rules then promote it if nobody else is active.
            None => self.change_state(State::Passive, Reason::OperatorFunctional, now),
        }
    }

    /// An active node that stalled for its lease or longer stopped forwarding meanwhile, and the
    /// peer may have declared it dead and taken over; but the core's clock does not count the
    /// stall (the shell takes pauses out of it, so a pause of this node is never mistaken for the
    /// death of the peer), and what it heard of the peer may be from before. Refreshing the lease
    /// at once, it would forward beside a peer that took over, and then settle that split brain by
    /// the election, which it may win: the sessions created meanwhile, all on the peer, would end
    /// with the peer's yielding. So it holds forwarding for the stall hold, and says so in its
    /// messages: a peer that took over keeps the role, and this node yields as soon as it hears
    /// the peer active (see [`Core::active_rule`]). A peer that did not take over (both nodes
    /// stalled together, as on one overloaded host) costs no state change: the hold ends and the
    /// node forwards again.
    /// A second stall during the hold starts the hold again: what the node heard before it may be
    /// old news again.
    fn on_stalled(&mut self, paused: Duration, now: Timestamp) {
        if self.state != State::Active || paused < self.lease() {
            return;
        }
        let paused_ms = paused.as_millis().try_into().unwrap_or(u64::MAX);
        self.table
            .set(Timer::StallHold, now + self.timers.stall_hold());
        if let Some(longest) = &mut self.resuming {
            *longest = (*longest).max(paused_ms);
            return;
        }
        self.resuming = Some(paused_ms);
        self.actions.push_back(Action::HoldForwarding);
        self.notice(Notice::Stalled { paused_ms });
        // A peer that took over learns at once that it keeps the role.
        self.tell_peer(now);
    }

    fn on_timer(&mut self, timer: Timer, now: Timestamp) {
        match timer {
            Timer::PeerDead => self.peer_lost(PeerLossCause::HeartbeatLoss),
            Timer::Initial => self.initial_expired = true,
            Timer::MonitorFailHoldUp => {
                if self.monitor_failure.is_some() {
                    let extra = self.timers.additional_master_hold_up;
                    // PAN-OS: the additional master hold-up applies to the active node only.
                    if self.state == State::Active && !extra.is_zero() {
                        self.table.set(Timer::AdditionalMasterHoldUp, now + extra);
                    } else {
                        self.monitor_confirmed = true;
                    }
                }
            }
            Timer::AdditionalMasterHoldUp => {
                if self.monitor_failure.is_some() {
                    self.monitor_confirmed = true;
                }
            }
            Timer::PromotionHold => {
                if self.promotion_due() {
                    let cause = self.peer.lost.unwrap_or(PeerLossCause::HeartbeatLoss);
                    self.change_state(State::Active, Reason::PeerLost { cause }, now);
                }
            }
            Timer::PreemptionHold => {
                if let (true, Some(peer_priority)) = (self.preemption_due(), self.peer.priority) {
                    self.change_state(State::Passive, Reason::Preempted { peer_priority }, now);
                }
            }
            Timer::StallHold => {
                if self.resuming.take().is_some() && self.state == State::Active {
                    self.actions.push_back(Action::ResumeForwarding);
                    self.tell_peer(now);
                }
            }
            Timer::Hello => self.send_hello(false, now),
            Timer::Heartbeat => self.send_heartbeat(now),
        }
    }

    // ---- Rules: facts -> transitions, holds, sync role ----

    fn reconcile(&mut self, now: Timestamp) {
        for _ in 0..MAX_CHAINED_TRANSITIONS {
            let Some((state, reason)) = self.next_transition() else {
                break;
            };
            self.change_state(state, reason, now);
        }
        self.check_announce();
        let promote = self.promotion_due();
        self.arm_while(
            Timer::PromotionHold,
            promote,
            now + self.timers.promotion_hold,
        );
        let preempt = self.preemption_due();
        self.arm_while(
            Timer::PreemptionHold,
            preempt,
            now + self.timers.preemption_hold,
        );
        self.update_sync_role();
    }

    /// The transition the current facts call for right now (holds are timers, not rules).
    fn next_transition(&self) -> Option<(State, Reason)> {
        match (self.state, self.health_problem()) {
            (State::Suspended, _) => None,
            (State::NonFunctional, None) => Some((State::Passive, Reason::Recovered)),
            (State::NonFunctional, Some(problem)) => {
                (problem != self.reason).then_some((State::NonFunctional, problem))
            }
            (_, Some(problem)) => Some((State::NonFunctional, problem)),
            (State::Initial, None) => self.initial_rule(),
            (State::Passive, None) => self.passive_rule(),
            (State::Active, None) => self.active_rule(),
        }
    }

    /// Booting. With a paired peer, decide at once from its state; alone, wait out the initial
    /// wait. A peer that is alive but not paired (mismatch, or no hello yet) keeps us in
    /// initial: becoming active beside a peer we cannot agree with risks two actives.
    fn initial_rule(&self) -> Option<(State, Reason)> {
        if !self.paired() {
            return (self.initial_expired && !self.peer.alive)
                .then_some((State::Active, Reason::NoPeer));
        }
        let peer_priority = self.peer.priority?;
        match self.peer.state {
            PeerState::Active => Some((State::Passive, Reason::PeerActive)),
            PeerState::Initial | PeerState::Passive => Some(if self.wins()? {
                (State::Active, Reason::ElectionWon { peer_priority })
            } else {
                (State::Passive, Reason::ElectionLost { peer_priority })
            }),
            PeerState::NonFunctional | PeerState::Suspended => Some((
                State::Active,
                Reason::PeerUnavailable {
                    peer_state: self.peer.state,
                },
            )),
            PeerState::Unknown => None,
        }
    }

    /// Standby. Nobody active and we win, or the peer announced it cannot serve: take over now.
    /// A lost peer is handled by the promotion hold; an active peer by preemption on *its* side.
    fn passive_rule(&self) -> Option<(State, Reason)> {
        if !self.paired() {
            return None;
        }
        match self.peer.state {
            PeerState::Initial | PeerState::Passive => {
                let peer_priority = self.peer.priority?;
                self.wins()?
                    .then_some((State::Active, Reason::ElectionWon { peer_priority }))
            }
            PeerState::NonFunctional | PeerState::Suspended => Some((
                State::Active,
                Reason::PeerUnavailable {
                    peer_state: self.peer.state,
                },
            )),
            PeerState::Active | PeerState::Unknown => None,
        }
    }

    /// Active. The only immediate rule is split brain: the loser yields (see
    /// [`Core::split_brain_loss`]). Yielding is always safe, so a heartbeat is enough evidence (no
    /// pairing needed), unless the peer mismatches.
    fn active_rule(&self) -> Option<(State, Reason)> {
        if !self.split_brain() {
            return None;
        }
        Some((State::Passive, self.split_brain_loss()??))
    }

    /// Who yields in a split brain: `Some(Some(reason))` this node, `Some(None)` the peer, `None`
    /// not known yet (the peer's priority unheard). After a stall (see [`Core::on_stalled`]) a
    /// peer active, and not resuming itself, took over meanwhile: the node that stalled yields,
    /// whatever the election says. A peer that says it is resuming is active from before its own
    /// stall, so it took nothing over: this node keeps the role, also while it holds itself
    /// (the node that took over, stalled in turn, hears the node it replaced come back). When
    /// neither stalled, the election decides. When both did, the node whose hold ends first
    /// keeps the role and the other yields, with the stall as its reason (a flap), whichever of
    /// them had taken over: a rare case (a takeover, then a stall of the new active node before
    /// the old one runs again), and both may forward for one message delay if the holds end
    /// together.
    fn split_brain_loss(&self) -> Option<Option<Reason>> {
        match (self.resuming, self.peer.resuming) {
            (Some(paused_ms), false) => Some(Some(Reason::Stalled { paused_ms })),
            (_, true) => Some(None),
            (None, false) => {
                let peer_priority = self.peer.priority?;
                Some((!self.wins()?).then_some(Reason::SplitBrain { peer_priority }))
            }
        }
    }

    fn split_brain(&self) -> bool {
        self.state == State::Active
            && self.peer.alive
            && self.peer.state == PeerState::Active
            && !matches!(self.peer.pairing, Pairing::Mismatch(_))
    }

    /// The winner of a split brain stays active and re-announces itself, once per episode; so does
    /// an active node that hears its peer again (see [`Core::heard`]). One announcement covers
    /// both when they coincide.
    fn check_announce(&mut self) {
        // A node holding announces nothing: it does not forward.
        let won =
            self.split_brain() && self.resuming.is_none() && self.split_brain_loss() == Some(None);
        let new_split_brain = won && !self.split_brain_won;
        if new_split_brain && let Some(peer_priority) = self.peer.priority {
            self.notice(Notice::SplitBrain { peer_priority });
        }
        let revived_while_active =
            std::mem::take(&mut self.announce_due) && self.state == State::Active;
        if new_split_brain || revived_while_active {
            self.actions.push_back(Action::AnnounceAgain);
        }
        self.split_brain_won = won;
    }

    /// Passive with a dead peer: take over after the promotion hold. Also covers a node that
    /// becomes passive (recovery, operator) while the peer is already gone.
    fn promotion_due(&self) -> bool {
        self.state == State::Passive && !self.peer.alive
    }

    /// Active, with a better paired passive peer, both preemptive: give the role up after the
    /// preemption hold. The hold runs on the node that yields, so the handover is passive-first:
    /// for one message delay nobody is active, instead of both being active.
    fn preemption_due(&self) -> bool {
        self.state == State::Active
            && self.paired()
            && self.peer.state == PeerState::Passive
            && self.wins() == Some(false)
            && self.config.preemptive
            && self.peer.preemptive == Some(true)
    }

    fn arm_while(&mut self, timer: Timer, condition: bool, deadline: Timestamp) {
        if !condition {
            self.table.stop(timer);
        } else if !self.table.is_armed(timer) {
            self.table.set(timer, deadline);
        }
    }

    fn update_sync_role(&mut self) {
        let paired = self.paired();
        let role = match (self.state, self.peer.state) {
            (State::Active, PeerState::Passive) if paired => SyncRole::Sender,
            (State::Passive, PeerState::Active) if paired => SyncRole::Receiver,
            _ => SyncRole::None,
        };
        if role == self.sync {
            return;
        }
        if self.sync != SyncRole::None {
            self.actions.push_back(Action::StopSessionSync);
        }
        match role {
            SyncRole::Sender => self.actions.push_back(Action::StartSessionSync),
            SyncRole::Receiver => self.actions.push_back(Action::RequestBulkSync),
            SyncRole::None => {}
        }
        self.sync = role;
    }

    /// Why this node cannot serve, if it cannot.
    fn health_problem(&self) -> Option<Reason> {
        if !self.dataplane_up {
            return Some(Reason::DataplaneDown);
        }
        match &self.monitor_failure {
            Some(reason) if self.monitor_confirmed => Some(Reason::MonitorFailed {
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    fn paired(&self) -> bool {
        self.peer.alive && self.peer.pairing == Pairing::Paired
    }

    /// Election: the lower (device priority, node id) wins. Node ids differ between paired peers
    /// (equal ones are a mismatch), so exactly one side wins.
    fn wins(&self) -> Option<bool> {
        let peer = (self.peer.priority?, self.peer.node_id?);
        Some((self.config.device_priority, self.config.node_id) < peer)
    }

    // ---- The one door ----

    /// Every state change goes through here: flap accounting, exit and entry actions by (old, new),
    /// the recorded reason and time, and an immediate hello and heartbeat so the peer learns the
    /// new state within one message delay instead of one interval.
    fn change_state(&mut self, new: State, reason: Reason, now: Timestamp) {
        let old = self.state;
        if old == new {
            // Only the cause changed (non-functional: dataplane down -> monitor failed).
            if self.reason != reason {
                self.reason = reason.clone();
                self.record(old, new, reason, now);
            }
            return;
        }
        // A flap is leaving active because this node failed: it cannot serve, or it stalled so
        // long that the peer took over. Handing the role to a better peer (preemption, split
        // brain) or to the operator is not instability of this node: counting it would suspend
        // the healthy node of a pair whose other node flaps. At the limit the node suspends
        // itself instead.
        let failed = new == State::NonFunctional || matches!(reason, Reason::Stalled { .. });
        let limit_reached = old == State::Active && failed && self.count_flap(now);
        let (new, reason) = if limit_reached {
            (State::Suspended, Reason::TooManyFlaps { flaps: self.flaps })
        } else {
            (new, reason)
        };

        match (old, new) {
            (State::Initial, _) => self.table.stop(Timer::Initial),
            (State::Active, _) => {
                self.table.stop(Timer::PreemptionHold);
                self.table.stop(Timer::StallHold);
                self.split_brain_won = false;
                self.resuming = None;
            }
            (State::Passive, _) => self.table.stop(Timer::PromotionHold),
            (State::NonFunctional | State::Suspended, _) => {}
        }

        self.state = new;
        self.reason = reason.clone();
        self.since = now;
        self.record(old, new, reason, now);

        let entry = match new {
            State::Active => Some(Action::BecomeActive),
            State::Passive => Some(Action::BecomePassive),
            State::NonFunctional => Some(Action::EnterNonFunctional),
            State::Suspended => Some(Action::EnterSuspended),
            // The core starts in initial and no rule leads back there.
            State::Initial => None,
        };
        self.actions.extend(entry);
        self.tell_peer(now);
    }

    /// Counts a failure departure from active at `now`; returns whether the flap limit is reached.
    fn count_flap(&mut self, now: Timestamp) -> bool {
        self.flaps = match self.last_left_active {
            Some(last) if now - last <= FLAP_WINDOW => self.flaps + 1,
            _ => 0,
        };
        self.last_left_active = Some(now);
        self.timers.max_flaps != 0 && self.flaps >= self.timers.max_flaps
    }

    fn record(&mut self, from: State, to: State, reason: Reason, at: Timestamp) {
        let transition = Transition {
            at,
            from,
            to,
            reason,
        };
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(transition.clone());
        self.actions.push_back(Action::Log(transition));
    }

    // ---- Outputs ----

    /// A hello and a heartbeat now, so the peer learns of a change within one message delay
    /// instead of one interval.
    fn tell_peer(&mut self, now: Timestamp) {
        self.send_hello(false, now);
        self.send_heartbeat(now);
    }

    fn send_hello(&mut self, wants_reply: bool, now: Timestamp) {
        let config = &self.config;
        self.actions.push_back(Action::SendHello(Hello {
            group_id: config.group_id,
            node_id: config.node_id,
            priority: config.device_priority,
            preemptive: config.preemptive,
            state: self.state,
            protocol_version: PROTOCOL_VERSION,
            mode: config.mode,
            ha2_transport: config.ha2_transport,
            takeover_after: self.timers.takeover_after(),
            wants_reply,
            resuming: self.resuming.is_some(),
        }));
        self.table
            .set(Timer::Hello, now + self.timers.hello_interval);
    }

    fn send_heartbeat(&mut self, now: Timestamp) {
        self.actions.push_back(Action::SendHeartbeat(Heartbeat {
            group_id: self.config.group_id,
            node_id: self.config.node_id,
            state: self.state,
            priority: self.config.device_priority,
            resuming: self.resuming.is_some(),
        }));
        self.table
            .set(Timer::Heartbeat, now + self.timers.heartbeat_interval);
    }

    fn notice(&mut self, notice: Notice) {
        self.actions.push_back(Action::Notice(notice));
    }
}

fn link_configured(config: &Config, link: Link) -> bool {
    match link {
        Link::Ha1 => true,
        Link::Ha1Backup => config.ha1_backup,
        Link::HeartbeatBackup => config.heartbeat_backup,
    }
}
