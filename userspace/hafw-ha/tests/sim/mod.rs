//! A simulated HA pair (in the style of quinn-proto's `tests/util.rs` `Pair` and smoltcp's netsim):
//! two [`Core`]s, a virtual clock, and a wire that carries their hellos and heartbeats to each
//! other per HA link with a fixed delay, seeded random loss and per-link partitions. The driver
//! always steps to the next wakeup (a delivery or a core timer), so simulated time is exact and
//! runs are replayable.
//!
//! Also home of the tiny script language of the golden scenario tests
//! (`tests/golden/*/script.txt`).

use std::{fmt::Write as _, time::Duration};

use hafw_ha::{
    Action, Config, Core, Event, Link, State, TimerProfile, Timers, Timestamp, Transition,
};

/// Index of node `a`.
pub const A: usize = 0;
/// Index of node `b`.
pub const B: usize = 1;

const NAMES: [&str; 2] = ["a", "b"];

/// Bound on steps in one `run_*` call: far above any scenario here, low enough to stop a runaway.
const MAX_STEPS: u64 = 20_000_000;
/// Bound on steps without time advancing: a core that keeps asking for a wakeup at the same
/// instant.
const MAX_STEPS_AT_ONE_INSTANT: u64 = 10_000;

/// xorshift64 (Marsaglia 2003): enough randomness for loss decisions, and replayable from its seed.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability `ppm` / 1 000 000.
    pub fn chance(&mut self, ppm: u32) -> bool {
        self.next_u64() % 1_000_000 < u64::from(ppm)
    }
}

#[derive(Clone, Debug)]
struct Packet {
    at: Timestamp,
    seq: u64,
    to: usize,
    event: Event,
}

/// The links between the two nodes.
#[derive(Clone, Debug)]
pub struct Wire {
    /// One-way delay of every message.
    pub delay: Duration,
    /// Loss probability per message, in parts per million.
    pub loss_ppm: u32,
    cut: [bool; 3],
    in_flight: Vec<Packet>,
    seq: u64,
}

/// One node: its config (kept so it can be rebooted) and its core while it runs.
#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub core: Option<Core>,
    /// Every action the core emitted, with its time.
    pub actions: Vec<(Timestamp, Action)>,
    /// Every transition the core logged.
    pub transitions: Vec<Transition>,
    /// Frozen since then (see [`Pair::freeze`]): neither timers nor deliveries run.
    frozen_since: Option<Timestamp>,
    /// Time spent frozen, taken out of the core's clock as the shell's pause accounting does.
    paused: Duration,
}

impl Node {
    /// The core's clock at simulated time `at`.
    fn clock(&self, at: Timestamp) -> Timestamp {
        Timestamp::from_nanos(at.as_nanos() - self.paused.as_nanos() as u64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Deliver(usize),
    Timeout(usize),
}

/// Two nodes and a wire, in virtual time starting at zero.
#[derive(Debug)]
pub struct Pair {
    pub now: Timestamp,
    pub nodes: [Node; 2],
    pub wire: Wire,
    rng: XorShift,
    /// Human-readable story: transitions, notices, HA2 hooks, split-brain announcements, script
    /// steps.
    pub trace: Vec<String>,
}

impl Pair {
    /// Both nodes boot at time zero; 1 ms one-way delay, no loss.
    pub fn new(a: Config, b: Config) -> Self {
        let mut pair = Self::unbooted(a, b);
        pair.boot(A);
        pair.boot(B);
        pair
    }

    /// Neither node runs yet; see [`Pair::boot`].
    pub fn unbooted(a: Config, b: Config) -> Self {
        let node = |config| Node {
            config,
            core: None,
            actions: Vec::new(),
            transitions: Vec::new(),
            frozen_since: None,
            paused: Duration::ZERO,
        };
        Self {
            now: Timestamp::ZERO,
            nodes: [node(a), node(b)],
            wire: Wire {
                delay: Duration::from_millis(1),
                loss_ppm: 0,
                cut: [false; 3],
                in_flight: Vec::new(),
                seq: 0,
            },
            rng: XorShift::new(0x5eed),
            trace: Vec::new(),
        }
    }

    pub fn seed(&mut self, seed: u64) {
        self.rng = XorShift::new(seed);
    }

    /// Starts (or restarts) node `i` now with its config.
    pub fn boot(&mut self, i: usize) {
        self.nodes[i].frozen_since = None;
        self.nodes[i].paused = Duration::ZERO;
        let core = match Core::new(self.nodes[i].config.clone(), self.now) {
            Ok(core) => core,
            Err(error) => panic!("node {}: invalid config: {error}", NAMES[i]),
        };
        self.nodes[i].core = Some(core);
        self.note(i, "boot");
        self.drain(i);
    }

    /// Node `i` dies silently: no more messages from it, messages to it are lost.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.note(i, "crash");
    }

    /// Node `i` stops running (a SIGSTOP, a paused virtual machine): no timers, and messages to
    /// it wait, as they wait in its sockets.
    pub fn freeze(&mut self, i: usize) {
        self.nodes[i].frozen_since = Some(self.now);
        self.note(i, "freeze");
    }

    /// Node `i` runs again. As the shell does, it takes the pause out of the core's clock and
    /// reports the stall before anything that waited for it is delivered. The shell's pause
    /// accounting only takes out the time beyond the latest it should have woken up (its next
    /// timer, or its next carrier poll, every quarter heartbeat interval within 2 to 100 ms), so
    /// the core's clock resumes there, and timers due by then are due at the thaw.
    pub fn thaw(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(since) = node.frozen_since.take() else {
            panic!("node {} is not frozen", NAMES[i]);
        };
        let heartbeat = node.config.timers.timers().heartbeat_interval;
        let carrier_poll =
            (heartbeat / 4).clamp(Duration::from_millis(2), Duration::from_millis(100));
        let next_timer = node
            .core
            .as_ref()
            .and_then(Core::poll_timeout)
            .map(|t| t + node.paused);
        let wake = next_timer
            .map_or(since + carrier_poll, |t| t.min(since + carrier_poll))
            .max(since);
        node.paused += self.now.saturating_duration_since(wake);
        let stalled = self.now - since;
        self.note(i, &format!("thaw after {} ms", stalled.as_millis()));
        self.inject(i, Event::Stalled { paused: stalled });
    }

    pub fn core(&self, i: usize) -> &Core {
        match &self.nodes[i].core {
            Some(core) => core,
            None => panic!("node {} is not running", NAMES[i]),
        }
    }

    pub fn state(&self, i: usize) -> State {
        self.core(i).state()
    }

    pub fn states(&self) -> [State; 2] {
        [self.state(A), self.state(B)]
    }

    pub fn transitions(&self, i: usize) -> &[Transition] {
        &self.nodes[i].transitions
    }

    /// Time of node `i`'s last transition into `state`.
    pub fn entered(&self, i: usize, state: State) -> Option<Timestamp> {
        self.transitions(i)
            .iter()
            .rev()
            .find(|t| t.to == state && t.from != state)
            .map(|t| t.at)
    }

    /// Actions of node `i` matching `pred`, with their times.
    pub fn actions_matching(&self, i: usize, pred: impl Fn(&Action) -> bool) -> Vec<Timestamp> {
        self.nodes[i]
            .actions
            .iter()
            .filter(|(_, action)| pred(action))
            .map(|(at, _)| *at)
            .collect()
    }

    /// Feeds `event` to node `i` now.
    pub fn inject(&mut self, i: usize, event: Event) {
        let now = self.nodes[i].clock(self.now);
        match &mut self.nodes[i].core {
            Some(core) => core.handle(event, now),
            None => panic!("node {} is not running", NAMES[i]),
        }
        self.drain(i);
    }

    /// Silently partitions `link` (no link-down event: a switch in the middle failed).
    pub fn cut(&mut self, link: Link) {
        self.wire.cut[link as usize] = true;
    }

    pub fn heal(&mut self, link: Link) {
        self.wire.cut[link as usize] = false;
    }

    pub fn cut_all(&mut self) {
        Link::ALL.into_iter().for_each(|link| self.cut(link));
    }

    pub fn heal_all(&mut self) {
        Link::ALL.into_iter().for_each(|link| self.heal(link));
    }

    /// Advances virtual time by `duration`, processing every wakeup on the way.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_until_time(end, |_| false);
        self.now = end;
    }

    /// Runs until `pred` holds (checked after every step) or `limit` elapses; returns when it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Pair) -> bool,
    ) -> Option<Timestamp> {
        if pred(self) {
            return Some(self.now);
        }
        let end = self.now + limit;
        let hit = self.run_until_time(end, pred);
        if hit.is_none() {
            self.now = end;
        }
        hit
    }

    fn run_until_time(
        &mut self,
        end: Timestamp,
        pred: impl Fn(&Pair) -> bool,
    ) -> Option<Timestamp> {
        let mut steps = 0u64;
        let mut at_instant = 0u64;
        while let Some((at, wake)) = self.next_wakeup() {
            if at > end {
                return None;
            }
            at_instant = if at == self.now { at_instant + 1 } else { 0 };
            assert!(
                at_instant < MAX_STEPS_AT_ONE_INSTANT,
                "livelock at {}",
                self.now
            );
            steps += 1;
            assert!(steps < MAX_STEPS, "runaway simulation at {}", self.now);
            self.step_to(at, wake);
            if pred(self) {
                return Some(self.now);
            }
        }
        None
    }

    fn next_wakeup(&self) -> Option<(Timestamp, Wake)> {
        // Ties: deliveries (in send order) before timers, node a before node b. Fixed, so
        // replayable.
        // Messages that waited for a frozen node are delivered at once when it thaws.
        let delivery = self
            .wire
            .in_flight
            .iter()
            .enumerate()
            .filter(|(_, p)| self.nodes[p.to].frozen_since.is_none())
            .min_by_key(|(_, p)| (p.at, p.seq))
            .map(|(index, p)| (p.at.max(self.now), 0, Wake::Deliver(index)));
        let timeouts = (0..2).filter_map(|i| {
            let node = &self.nodes[i];
            if node.frozen_since.is_some() {
                return None;
            }
            // A timer that fell due while the node was frozen fires after what waited for it.
            let at = (node.core.as_ref()?.poll_timeout()? + node.paused).max(self.now);
            Some((at, 1 + i, Wake::Timeout(i)))
        });
        delivery
            .into_iter()
            .chain(timeouts)
            .min_by_key(|&(at, order, _)| (at, order))
            .map(|(at, _, wake)| (at, wake))
    }

    fn step_to(&mut self, at: Timestamp, wake: Wake) {
        self.now = at;
        match wake {
            Wake::Deliver(index) => {
                let packet = self.wire.in_flight.swap_remove(index);
                let clock = self.nodes[packet.to].clock(at);
                if let Some(core) = &mut self.nodes[packet.to].core {
                    core.handle(packet.event, clock);
                    self.drain(packet.to);
                }
            }
            Wake::Timeout(i) => {
                let clock = self.nodes[i].clock(at);
                if let Some(core) = &mut self.nodes[i].core {
                    core.handle_timeout(clock);
                    self.drain(i);
                }
            }
        }
    }

    /// Performs node `i`'s actions: sends go on the wire, the rest is recorded.
    fn drain(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].core.as_mut().and_then(Core::poll_action) {
            let config = &self.nodes[i].config;
            let (ha1_backup, hb_backup) = (config.ha1_backup, config.heartbeat_backup);
            match &action {
                Action::SendHello(hello) => {
                    // The shell sends hellos on HA1 and HA1 backup.
                    for link in [Link::Ha1, Link::Ha1Backup] {
                        if link != Link::Ha1Backup || ha1_backup {
                            let event = Event::PeerHello {
                                via: link,
                                hello: hello.clone(),
                                stale: false,
                            };
                            self.send(i, link, event);
                        }
                    }
                }
                Action::SendHeartbeat(heartbeat) => {
                    for link in Link::ALL {
                        let configured = match link {
                            Link::Ha1 => true,
                            Link::Ha1Backup => ha1_backup,
                            Link::HeartbeatBackup => hb_backup,
                        };
                        if configured {
                            let event = Event::PeerHeartbeat {
                                via: link,
                                heartbeat: heartbeat.clone(),
                            };
                            self.send(i, link, event);
                        }
                    }
                }
                Action::Log(transition) => {
                    self.nodes[i].transitions.push(transition.clone());
                    self.note(i, &transition.to_string());
                }
                Action::Notice(notice) => self.note(i, &format!("notice: {notice}")),
                Action::AnnounceAgain => self.note(i, "announce again (GARP)"),
                Action::StartSessionSync => self.note(i, "ha2: start session sync"),
                Action::RequestBulkSync => self.note(i, "ha2: request bulk sync"),
                Action::StopSessionSync => self.note(i, "ha2: stop session sync"),
                Action::HoldForwarding => self.note(i, "hold forwarding"),
                Action::ResumeForwarding => self.note(i, "resume forwarding"),
                Action::BecomeActive
                | Action::BecomePassive
                | Action::EnterNonFunctional
                | Action::EnterSuspended => {}
            }
            self.nodes[i].actions.push((self.now, action));
        }
    }

    fn send(&mut self, from: usize, link: Link, event: Event) {
        if self.wire.cut[link as usize] || self.rng.chance(self.wire.loss_ppm) {
            return;
        }
        self.wire.seq += 1;
        self.wire.in_flight.push(Packet {
            at: self.now + self.wire.delay,
            seq: self.wire.seq,
            to: 1 - from,
            event,
        });
    }

    fn note(&mut self, i: usize, text: &str) {
        let line = format!("{} {} {text}", fmt_time(self.now), NAMES[i]);
        self.trace.push(line);
    }

    fn note_script(&mut self, text: &str) {
        let line = format!("{} -- {text}", fmt_time(self.now));
        self.trace.push(line);
    }
}

/// `t` as milliseconds with microseconds, right-aligned, e.g. `    1002.000ms`.
pub fn fmt_time(t: Timestamp) -> String {
    let micros = t.as_nanos() / 1_000;
    format!("{:>9}.{:03}ms", micros / 1_000, micros % 1_000)
}

/// Config with the `fast` profile, the given node id and priority, group 1.
pub fn fast(node_id: u64, priority: u8) -> Config {
    let mut config = Config::new(1, node_id);
    config.device_priority = priority;
    config.timers = TimerProfile::Fast;
    config
}

/// `config` with its timers edited (switching it to the `advanced` profile).
pub fn with_timers(mut config: Config, edit: impl FnOnce(&mut Timers)) -> Config {
    let mut timers = config.timers.timers();
    edit(&mut timers);
    config.timers = TimerProfile::Advanced(timers);
    config
}

// ---- Script language of the golden tests ----
//
// One command per line, `#` starts a comment:
//   node a|b [group=N] [node-id=N] [priority=N] [preemptive=yes|no] [profile=NAME]
//            [ha1-backup=yes|no] [hb-backup=yes|no] [<timer>=DURATION ...] [max-flaps=N]
//   wire [delay=DURATION] [loss-ppm=N] [seed=N]
//   boot a|b|all        crash a|b
//   freeze a|b          thaw a|b   (stop running, as SIGSTOP; run again, reporting the stall)
//   run DURATION        (DURATION: 250ms, 2s, 3min)
//   cut LINK|all        heal LINK|all      (LINK: ha1, ha1-backup, heartbeat-backup)
//   a|b EVENT           (monitor-failed TEXT..., monitor-recovered, dataplane-down, dataplane-up,
//                        suspend, functional, link-down LINK, link-up LINK)
//   expect a|b STATE    (the run fails unless the node is in STATE)

/// Runs a scenario script and returns its trace (one line per entry).
pub fn run_script(script: &str) -> Result<String, String> {
    let mut configs = [fast(1, 100), fast(2, 110)];
    let mut pair: Option<Pair> = None;
    for (number, raw) in script.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let context = |error: String| format!("line {}: `{line}`: {error}", number + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "node" => {
                let i = node_index(words.get(1).copied()).map_err(context)?;
                configure(&mut configs[i], &words[2..]).map_err(context)?;
            }
            _ => {
                let pair = pair
                    .get_or_insert_with(|| Pair::unbooted(configs[A].clone(), configs[B].clone()));
                pair.note_script(line);
                command(pair, &words).map_err(context)?;
            }
        }
    }
    let pair = pair.ok_or("script has no commands")?;
    let mut out = String::new();
    for line in &pair.trace {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

fn command(pair: &mut Pair, words: &[&str]) -> Result<(), String> {
    let arg = |n: usize| {
        words
            .get(n)
            .copied()
            .ok_or_else(|| format!("missing argument {n}"))
    };
    match words[0] {
        "wire" => {
            for setting in &words[1..] {
                let (key, value) = setting.split_once('=').ok_or("expected key=value")?;
                match key {
                    "delay" => pair.wire.delay = duration(value)?,
                    "loss-ppm" => pair.wire.loss_ppm = number(value)?,
                    "seed" => pair.seed(number(value)?),
                    _ => return Err(format!("unknown wire setting {key}")),
                }
            }
        }
        "boot" => match arg(1)? {
            "all" => {
                pair.boot(A);
                pair.boot(B);
            }
            name => pair.boot(node_index(Some(name))?),
        },
        "crash" => pair.crash(node_index(Some(arg(1)?))?),
        "freeze" => pair.freeze(node_index(Some(arg(1)?))?),
        "thaw" => pair.thaw(node_index(Some(arg(1)?))?),
        "run" => pair.run_for(duration(arg(1)?)?),
        "cut" | "heal" => {
            let links = match arg(1)? {
                "all" => Link::ALL.to_vec(),
                name => vec![link(name)?],
            };
            for l in links {
                if words[0] == "cut" {
                    pair.cut(l);
                } else {
                    pair.heal(l);
                }
            }
        }
        "expect" => {
            let i = node_index(Some(arg(1)?))?;
            let want = arg(2)?;
            let got = pair.state(i);
            if got.as_str() != want {
                return Err(format!("node {} is {got}, expected {want}", NAMES[i]));
            }
        }
        "a" | "b" => {
            let i = node_index(Some(words[0]))?;
            let event = match arg(1)? {
                "monitor-failed" => Event::MonitorFailed {
                    reason: words[2..].join(" "),
                },
                "monitor-recovered" => Event::MonitorRecovered,
                "dataplane-down" => Event::DataplaneDown,
                "dataplane-up" => Event::DataplaneUp,
                "suspend" => Event::OperatorSuspend,
                "functional" => Event::OperatorFunctional,
                "link-down" => Event::LinkDown(link(arg(2)?)?),
                "link-up" => Event::LinkUp(link(arg(2)?)?),
                other => return Err(format!("unknown event {other}")),
            };
            pair.inject(i, event);
        }
        other => return Err(format!("unknown command {other}")),
    }
    Ok(())
}

fn configure(config: &mut Config, settings: &[&str]) -> Result<(), String> {
    for setting in settings {
        let (key, value) = setting.split_once('=').ok_or("expected key=value")?;
        match key {
            "group" => config.group_id = number(value)?,
            "node-id" => config.node_id = number(value)?,
            "priority" => config.device_priority = number(value)?,
            "preemptive" => config.preemptive = yes_no(value)?,
            "ha1-backup" => config.ha1_backup = yes_no(value)?,
            "hb-backup" => config.heartbeat_backup = yes_no(value)?,
            "profile" => {
                config.timers = match value {
                    "recommended" => TimerProfile::Recommended,
                    "aggressive" => TimerProfile::Aggressive,
                    "fast" => TimerProfile::Fast,
                    _ => return Err(format!("unknown profile {value}")),
                }
            }
            // Any timer setting turns the profile into `advanced`, starting from the current
            // values.
            timer => {
                let mut timers = config.timers.timers();
                match timer {
                    "promotion-hold" => timers.promotion_hold = duration(value)?,
                    "preemption-hold" => timers.preemption_hold = duration(value)?,
                    "monitor-fail-hold-up" => timers.monitor_fail_hold_up = duration(value)?,
                    "additional-master-hold-up" => {
                        timers.additional_master_hold_up = duration(value)?
                    }
                    "max-flaps" => timers.max_flaps = number(value)?,
                    _ => return Err(format!("unknown node setting {key}")),
                }
                config.timers = TimerProfile::Advanced(timers);
            }
        }
    }
    Ok(())
}

fn node_index(name: Option<&str>) -> Result<usize, String> {
    match name {
        Some("a") => Ok(A),
        Some("b") => Ok(B),
        other => Err(format!("expected node a or b, got {other:?}")),
    }
}

fn link(name: &str) -> Result<Link, String> {
    Link::ALL
        .into_iter()
        .find(|l| l.as_str() == name)
        .ok_or_else(|| format!("unknown link {name}"))
}

fn yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("expected yes or no, got {value}")),
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("bad number {value}"))
}

fn duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {value} needs a unit (ms, s, min)"))?;
    let (amount, unit) = value.split_at(split);
    let amount: u64 = number(amount)?;
    match unit {
        "ms" => Ok(Duration::from_millis(amount)),
        "s" => Ok(Duration::from_secs(amount)),
        "min" => Ok(Duration::from_secs(amount * 60)),
        _ => Err(format!("unknown duration unit {unit}")),
    }
}
