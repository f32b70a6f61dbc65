//! The HA1 shell: drives the pure election core ([`hafw_ha::Core`]) with real sockets, a real
//! clock and the host's interfaces. It decides nothing itself: it turns frames, carrier changes
//! and operator requests into core events, and performs the core's actions.
//!
//! - **Thread**: the shell runs on its own OS thread with a single-threaded tokio runtime, at a
//!   real-time priority when the host allows it. Heartbeats and the dataplane lease must not wait
//!   behind session sweeps or a busy CPU: scheduling stalls are the classic cause of split brain.
//! - **HA1 TCP** (port [`HA1_TCP_PORT`]) on HA1 and HA1 backup carries hellos. The node with the
//!   lower HA1 address connects, the other accepts only its peer's address. A (re)connection feeds
//!   [`Event::Ha1Connected`], so hellos are exchanged at once.
//! - **Heartbeats** are UDP datagrams (port [`HA1_HEARTBEAT_UDP_PORT`]) on every configured link,
//!   HA1, HA1 backup and the heartbeat backup, accepted only from the peer's address on that link.
//!   A stuck TCP session cannot delay them.
//! - **Link state** is the carrier of the link's interface, polled every few milliseconds: a cut
//!   cable (or a peer that downs its links) is seen at once, and when every link is down the core
//!   declares the peer dead without waiting for the heartbeat timeout.
//! - **Role**: active sets the dataplane role to `Active` with a lease the shell keeps refreshing
//!   (see [`hafw_ha::Core::lease`]: it shortens when the peer's hello says it takes over
//!   sooner), announces the virtual MACs and floating IPs at once, and has the host worker claim
//!   them (the fast path forwards meanwhile by the standby routes);
//!   passive, non-functional and suspended set the role to `Passive` first, then release (on
//!   the same worker, so a release never overtakes a claim).

pub mod host;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use hafw_common::{
    config::Role,
    ha::{HA1_HEARTBEAT_UDP_PORT, HA1_TCP_PORT},
};
use hafw_ha::{
    Action, Core, Event, Link, Timestamp,
    secure::{
        Channel, DatagramOpener, DatagramSealer, Initiator, NodeKey, PublicKey, Responder,
        SecureError,
    },
    wire::{Frame, HEADER_LEN, Header, HeartbeatFrame, HelloFrame},
};
use ipnet::IpNet;
use log::{debug, info, warn};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    sync::{mpsc, oneshot},
};

use self::host::DataPort;
use crate::{aging::monotonic_now_ns, dataplane::ConfigHandle};

/// The software version carried in hellos.
pub const SOFTWARE_VERSION: &str = concat!("hafw ", env!("CARGO_PKG_VERSION"));

/// One HA link's addressing.
#[derive(Clone, Debug)]
pub struct LinkPlan {
    pub interface: String,
    /// Local address and prefix (added to the interface if missing).
    pub local: IpNet,
    pub peer: IpAddr,
    /// Next hop to the peer when it is on another subnet (a host route is added).
    pub gateway: Option<IpAddr>,
}

/// Everything the shell needs, resolved from the config and the host.
#[derive(Clone, Debug)]
pub struct HaPlan {
    pub election: hafw_ha::Config,
    pub ha1: LinkPlan,
    pub ha1_backup: Option<LinkPlan>,
    pub heartbeat_backup: Option<LinkPlan>,
    pub ports: Vec<DataPort>,
    /// Passive link state `shutdown`: data links are down while not active.
    pub shutdown_passive: bool,
    /// HA1 encryption: this node's key and the peer's imported public key.
    pub secure: Option<SecureKeys>,
    /// Where the HA2 hooks go (the controller's session sync), when session sync is on.
    pub sync: Option<mpsc::UnboundedSender<SyncCommand>>,
}

/// What the election asks of HA2 session sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncCommand {
    /// Active with a passive peer (node id given): bulk-sync the table, then stream changes and
    /// serve the peer's retransmit requests.
    Send { peer_node_id: u64 },
    /// Passive with an active peer (node id given): accept its sync.
    Receive { peer_node_id: u64 },
    /// Neither.
    Stop,
}

/// Keys for HA1 encryption with mutual authentication (see [`hafw_ha::secure`]).
#[derive(Clone, Debug)]
pub struct SecureKeys {
    pub local: NodeKey,
    pub peer: PublicKey,
}

impl HaPlan {
    fn links(&self) -> impl Iterator<Item = (Link, &LinkPlan)> {
        [
            Some((Link::Ha1, &self.ha1)),
            self.ha1_backup.as_ref().map(|l| (Link::Ha1Backup, l)),
            self.heartbeat_backup
                .as_ref()
                .map(|l| (Link::HeartbeatBackup, l)),
        ]
        .into_iter()
        .flatten()
    }
}

/// What woke the HA thread.
enum Wake {
    Input(Option<Input>),
    Lease,
    Deadline,
    Carrier,
    /// The input that woke the thread was fed already (after a stall, with the backlog).
    Fed,
}

/// The latest instant a running HA thread that went to sleep at `sleep_from` wakes up: at its
/// core's deadline or at the next carrier poll (due within `carrier_every`), whichever is first.
/// A deadline already past when the sleep began fires at once: only the time beyond the sleep's
/// start counts. Every wake-up is measured against this, not only the deadline's: a thread that
/// was not running wakes to whatever became ready first, often a queued input, and a pause
/// measured only on the deadline's branch went unnoticed there, so the timeout that followed
/// counted it against the peer.
fn latest_wake(sleep_from: Instant, deadline: Instant, carrier_every: Duration) -> Instant {
    deadline.min(sleep_from + carrier_every).max(sleep_from)
}

/// Refreshes four times per lease: a wake-up late by up to three quarters of a lease does not
/// let it lapse (a later one is a stall, see `Shell::stall`).
fn refresh_interval(lease: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval((lease / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// What the operator asks of the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorRequest {
    Suspend,
    Functional,
}

/// Per-link traffic, for `show high-availability all`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkCounters {
    pub interface: String,
    pub local: String,
    pub peer: String,
    pub carrier: bool,
    /// HA1 TCP connection up (HA1 and HA1 backup only).
    pub connected: Option<bool>,
    pub connects: u64,
    pub hellos_sent: u64,
    pub hellos_received: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Frames that did not decode.
    pub dropped_malformed: u64,
    /// Frames from an address other than the peer's on this link.
    pub dropped_wrong_source: u64,
    /// Heartbeats of another peer boot than its last hello's, older than the newest frame heard
    /// from the peer (delayed in a neighbour queue, trailing on a slower link, replayed), or
    /// already accepted on this link (replayed).
    pub dropped_stale: u64,
    /// Longest time between two heartbeats accepted on this link (ms): how close the link came
    /// to the peer-dead time (scheduling stalls, softirq backlog).
    pub max_heartbeat_gap_ms: f64,
    #[serde(skip)]
    pub last_heartbeat_at: Option<Instant>,
    /// Encryption on: datagrams or HA1 connections that did not prove the peer's key.
    pub refused_unauthenticated: u64,
    /// Why the last HA1 connection was refused, if it was.
    pub last_refusal: Option<String>,
}

/// What `show high-availability all` shows besides the core's status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShellView {
    pub software_version: &'static str,
    pub peer_software_version: Option<String>,
    pub boot_id: String,
    pub lease_ms: u64,
    pub passive_link_state: &'static str,
    pub encryption: &'static str,
    /// Fingerprints of this node's public key and of the peer's imported one.
    pub local_key: Option<String>,
    pub peer_key: Option<String>,
    pub virtual_macs: BTreeMap<String, String>,
    pub links: BTreeMap<&'static str, LinkCounters>,
    pub announcements_sent: u64,
    pub session_sync: &'static str,
    /// Times this node's HA thread noticed it had not been running (see pause detection).
    pub pauses: u64,
    pub longest_pause_ms: f64,
}

/// The shared picture of the HA state, refreshed by the shell after every input.
#[derive(Default)]
struct View {
    status: serde_json::Value,
    shell: ShellView,
}

enum Input {
    Frame { via: Link, frame: Frame },
    Malformed { via: Link },
    WrongSource { via: Link },
    Refused { via: Link, reason: String },
    Connected(Link),
    Disconnected(Link),
    Operator(OperatorRequest, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The control side of a running shell.
#[derive(Clone)]
pub struct HaHandle {
    tx: mpsc::UnboundedSender<Input>,
    view: Arc<Mutex<View>>,
}

impl HaHandle {
    /// `show high-availability all`: the core's status and the shell's view.
    pub fn show(&self) -> serde_json::Value {
        let view = self.view.lock().expect("HA view lock");
        serde_json::json!({ "status": view.status, "shell": view.shell })
    }

    /// `request high-availability state suspend|functional`.
    pub async fn request(&self, req: OperatorRequest) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Input::Operator(req, done))
            .map_err(|_| anyhow!("the HA shell is not running"))?;
        wait.await.map_err(|_| anyhow!("the HA shell stopped"))
    }

    /// Planned shutdown: hand the active role over (suspend, tell the peer, release), then stop.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Input::Shutdown(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }
}

/// Starts the shell on its own thread. The dataplane role is `Passive` and the data ports hold
/// nothing until the core decides otherwise.
pub fn spawn(plan: HaPlan, dataplane: ConfigHandle) -> Result<HaHandle> {
    plan.election.validate().map_err(|e| anyhow!("{e}"))?;
    // Whatever a previous run left (it may have died active): give it back before anything else.
    dataplane.update(|c| {
        c.role = Role::Passive as u32;
        c.active_lease_expires_ns = 0;
    })?;
    host::release(&plan.ports, plan.shutdown_passive)?;
    ensure_link_addresses(&plan)?;

    let (tx, rx) = mpsc::unbounded_channel();
    let view = Arc::new(Mutex::new(View::default()));
    let handle = HaHandle {
        tx: tx.clone(),
        view: view.clone(),
    };
    std::thread::Builder::new()
        .name("hafw-ha".into())
        .spawn(move || {
            raise_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("HA shell runtime: {e}");
                    return;
                }
            };
            if let Err(e) = rt.block_on(Shell::run(plan, dataplane, tx, rx, view)) {
                log::error!("HA shell stopped: {e:#}");
            }
        })
        .context("starting the HA thread")?;
    Ok(handle)
}

/// Adds each HA link's local address to its interface when missing, and a host route to the
/// peer through the link's gateway when it has one (HA addressing is part of the per-device HA
/// config, as on commercial pairs).
fn ensure_link_addresses(plan: &HaPlan) -> Result<()> {
    for (_, l) in plan.links() {
        let local = l.local.to_string();
        let peer = IpNet::from(l.peer).to_string();
        let mut commands = vec![vec!["addr", "replace", &local, "dev", &l.interface]];
        let gateway = l.gateway.map(|g| g.to_string());
        if let Some(g) = &gateway {
            commands.push(vec![
                "route",
                "replace",
                &peer,
                "via",
                g,
                "dev",
                &l.interface,
            ]);
        }
        for args in commands {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .context("running ip")?;
            if !out.status.success() {
                anyhow::bail!(
                    "HA link {}: ip {} failed: {}",
                    l.interface,
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(())
}

/// SCHED_FIFO for the HA thread, and every page of the process locked in memory, best effort:
/// heartbeats then preempt any ordinary load and never wait for a page fault (memory compaction
/// or reclaim can stall a faulting thread for tens of milliseconds, longer than the `fast`
/// profile's peer-dead time).
fn raise_priority() {
    // SAFETY: plain syscall; failure only leaves memory pageable.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        warn!(
            "HA: cannot lock memory ({}); page faults may delay heartbeats",
            std::io::Error::last_os_error()
        );
    }
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        warn!(
            "HA thread: real-time priority unavailable ({}); heartbeats may be delayed under load",
            std::io::Error::last_os_error()
        );
    }
}

/// What the shell knows of the peer's frames: its boot, learned from its hellos (or its
/// heartbeats, until a hello came), the highest sequence heard from it, and per link the last
/// heartbeat accepted there.
#[derive(Debug, Default)]
struct PeerFrames {
    boot: Option<u64>,
    sequence: u64,
    heartbeats: BTreeMap<Link, u64>,
}

impl PeerFrames {
    /// A hello of `boot` numbered `sequence`: whether it is stale. Hellos (TCP) and heartbeats
    /// (UDP) travel apart, and a hello can arrive after a heartbeat the peer sent later, from the
    /// state it moved on to: such a hello still pairs, but its state would flip the peer's back
    /// (and restart session sync, a bulk sync of the whole table each time). A hello of another
    /// boot (authenticated and fresh when HA1 is encrypted) replaces the boot.
    fn hello(&mut self, boot: u64, sequence: u64) -> bool {
        let stale = self.boot == Some(boot) && sequence < self.sequence;
        if self.boot != Some(boot) {
            self.boot = Some(boot);
            self.sequence = sequence;
            self.heartbeats.clear();
        }
        self.sequence = self.sequence.max(sequence);
        stale
    }

    /// A heartbeat of `boot` numbered `sequence` on `via`: whether to accept it.
    ///
    /// Frames from one boot share one sequence, so a heartbeat older than the newest frame heard
    /// (on any link) describes a state the peer may have left since: a heartbeat queued in the
    /// kernel while the peer's address was unresolved arrives seconds late, and one on a slower
    /// link can trail a hello that announced a state change. Either would flip the peer's state
    /// back. Heartbeats of another boot than the last hello's are stale too. The newest frame
    /// itself is accepted, as each heartbeat goes out on every link (one sealed frame for all),
    /// but only once per link: one captured and sent again (every 100 ms, say) would otherwise
    /// keep a dead peer alive forever, encrypted or not.
    fn heartbeat(&mut self, via: Link, boot: u64, sequence: u64) -> bool {
        let other_boot = self.boot.is_some_and(|b| b != boot);
        let replayed = self
            .heartbeats
            .get(&via)
            .is_some_and(|&last| sequence <= last);
        if other_boot || replayed || sequence < self.sequence {
            return false;
        }
        self.boot = Some(boot);
        self.sequence = self.sequence.max(sequence);
        self.heartbeats.insert(via, sequence);
        true
    }
}

struct Shell {
    core: Core,
    plan: HaPlan,
    dataplane: ConfigHandle,
    start: Instant,
    boot_id: u64,
    /// One sequence for every frame this boot sends, hellos and heartbeats alike, so that a
    /// receiver can order what arrives on TCP (hellos) and UDP (heartbeats) against each other.
    sequence: u64,
    /// The peer's boot and sequences, to drop stale and replayed frames.
    peer: PeerFrames,

    lease: Duration,
    /// When the lease was last refreshed (see [`Shell::stall`]).
    lease_refreshed: Instant,
    /// After a stall, the core holds forwarding ([`Action::HoldForwarding`]): no refreshes.
    lease_held: bool,
    active: bool,
    view: Arc<Mutex<View>>,
    shell_view: ShellView,
    /// Outgoing HA1 TCP frames, per link.
    tcp_out: BTreeMap<Link, mpsc::Sender<Vec<u8>>>,
    udp: BTreeMap<Link, (Arc<UdpSocket>, SocketAddr)>,
    sealer: Option<DatagramSealer>,
    /// Pauses taken out of the core's clock (see `account_for_pause`).
    paused: Duration,
    pause_threshold: Duration,
    heartbeat_sockets: Vec<HeartbeatSocket>,
    /// One packet socket per data port (same order as `plan.ports`), opened at start.
    announce_sockets: Vec<Option<host::FrameSocket>>,
    /// Announcements sent in first rounds, wherever they were sent from.
    announced: Arc<AtomicU64>,
    /// Ended by every `give_up`: announcement rounds of an ended term are not sent.
    terms: Terms,
    /// Claims and releases, in order, off this thread.
    host: HostWorker,
    /// Test hook (`HAFW_TEST_CLAIM_DELAY_MS`): holds every claim back, standing in for a kernel
    /// that takes tens of milliseconds to apply `ip` changes in the middle of a failure.
    claim_delay: Option<Duration>,
    carrier: BTreeMap<Link, bool>,
    /// Peer state in the last heartbeat, to log changes only.
    last_peer_state: Option<hafw_ha::State>,
    /// A shutdown request, from the queue or found by [`Shell::drain_pending`], for the loop.
    shutdown: Option<oneshot::Sender<()>>,
    tx: mpsc::UnboundedSender<Input>,
}

impl Shell {
    async fn run(
        plan: HaPlan,
        dataplane: ConfigHandle,
        tx: mpsc::UnboundedSender<Input>,
        mut rx: mpsc::UnboundedReceiver<Input>,
        view: Arc<Mutex<View>>,
    ) -> Result<()> {
        let start = Instant::now();
        let core = Core::new(plan.election.clone(), Timestamp::ZERO).map_err(|e| anyhow!("{e}"))?;
        let timers = core.status().timers;
        let lease = core.lease();
        let mut boot = [0u8; 8];
        getrandom::fill(&mut boot).map_err(|e| anyhow!("random boot id: {e}"))?;
        let mut shell = Shell {
            core,
            dataplane,
            start,
            boot_id: u64::from_be_bytes(boot),
            sequence: 0,
            peer: PeerFrames::default(),

            lease,
            lease_refreshed: start,
            lease_held: false,
            active: false,
            view,
            shell_view: ShellView {
                software_version: SOFTWARE_VERSION,
                boot_id: format!("{:016x}", u64::from_be_bytes(boot)),
                lease_ms: lease.as_millis() as u64,
                passive_link_state: if plan.shutdown_passive {
                    "shutdown"
                } else {
                    "auto"
                },
                encryption: if plan.secure.is_some() { "on" } else { "off" },
                local_key: plan.secure.as_ref().map(|s| s.local.public().fingerprint()),
                peer_key: plan.secure.as_ref().map(|s| s.peer.fingerprint()),
                session_sync: "none",
                virtual_macs: plan
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), host::format_mac(p.virtual_mac)))
                    .collect(),
                ..Default::default()
            },
            plan,
            tcp_out: BTreeMap::new(),
            udp: BTreeMap::new(),
            sealer: None,
            paused: Duration::ZERO,
            // Tokio's timers are millisecond-grained: a wake-up up to a few ms late is normal.
            pause_threshold: (timers.heartbeat_interval).max(Duration::from_millis(4)),
            heartbeat_sockets: Vec::new(),
            announce_sockets: Vec::new(),
            announced: Arc::new(AtomicU64::new(0)),
            terms: Terms::default(),
            host: HostWorker::start()?,
            claim_delay: std::env::var("HAFW_TEST_CLAIM_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            carrier: BTreeMap::new(),
            last_peer_state: None,
            shutdown: None,
            tx,
        };
        shell.open_links().await?;
        shell.announce_sockets = shell
            .plan
            .ports
            .iter()
            .map(|p| {
                host::FrameSocket::open(&p.name)
                    .map_err(|e| warn!("HA: {}: no announcements possible: {e:#}", p.name))
                    .ok()
            })
            .collect();
        // Poll carrier well inside one heartbeat interval, but not busier than every 2 ms.
        let carrier_every = (timers.heartbeat_interval / 4)
            .clamp(Duration::from_millis(2), Duration::from_millis(100));
        let mut carrier_tick = tokio::time::interval(carrier_every);
        carrier_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_tick = refresh_interval(lease);
        loop {
            shell.perform_actions();
            if shell.follow_lease() {
                lease_tick = refresh_interval(shell.lease);
            }
            shell.publish();
            let sleep_from = Instant::now();
            let deadline = shell
                .core
                .poll_timeout()
                .map(|t| shell.instant_of(t))
                .unwrap_or_else(|| sleep_from + Duration::from_secs(1));
            let mut wake = tokio::select! {
                biased;
                input = rx.recv() => Wake::Input(input),
                _ = lease_tick.tick(), if shell.active => Wake::Lease,
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Deadline,
                _ = carrier_tick.tick() => Wake::Carrier,
            };
            // Whatever woke the thread, it should have been awake by the deadline or the next
            // carrier poll; before anything reads the core's clock, time beyond that is a pause.
            let paused = shell.account_for_pause(latest_wake(sleep_from, deadline, carrier_every));
            if let Some(stalled) = shell.stall(paused) {
                // The input that woke the thread is older than the backlog.
                let woken = match wake {
                    Wake::Input(Some(input)) if !matches!(input, Input::Shutdown(_)) => {
                        wake = Wake::Fed;
                        Some(input)
                    }
                    other => {
                        wake = other;
                        None
                    }
                };
                shell.after_stall(stalled, woken, &mut rx);
            }
            match wake {
                Wake::Input(Some(Input::Shutdown(done))) => shell.shutdown = Some(done),
                Wake::Input(Some(input)) => shell.on_input(input),
                Wake::Input(None) => return Ok(()),
                Wake::Lease => shell.refresh_lease(),
                Wake::Deadline => {
                    // Heartbeats that arrived with the deadline are read before any timer can
                    // declare the peer dead (after a stall, `after_stall` read them already).
                    shell.drain_pending(None, &mut rx);
                    let now = shell.now();
                    shell.core.handle_timeout(now);
                }
                Wake::Carrier => shell.poll_carrier(),
                Wake::Fed => {}
            }
            if let Some(done) = shell.shutdown.take() {
                shell.hand_over().await;
                let _ = done.send(());
                return Ok(());
            }
        }
    }

    /// Feeds everything already received from the peer, oldest first: `earlier` (an input taken
    /// off the queue before), what the receive tasks queued, then what is still in the heartbeat
    /// sockets. Operator requests found on the way follow, in their order: they do not change
    /// what the peer said, and handling one fires due timers, which must see the peer's frames
    /// first. A shutdown request is kept for the loop, which hands the role over.
    fn drain_pending(&mut self, earlier: Option<Input>, rx: &mut mpsc::UnboundedReceiver<Input>) {
        let mut requests = Vec::new();
        let queued = std::iter::from_fn(|| rx.try_recv().ok());
        for input in earlier.into_iter().chain(queued) {
            match input {
                Input::Operator(..) => requests.push(input),
                Input::Shutdown(done) => self.shutdown = Some(done),
                input => self.on_input(input),
            }
        }
        let mut buf = [0u8; 2048];
        for hb in self.heartbeat_sockets.clone() {
            while let Ok((len, from)) = hb.sock.try_recv_from(&mut buf) {
                let input =
                    heartbeat_input(hb.via, from, &buf[..len], hb.peer, hb.opener.as_deref());
                self.on_input(input);
            }
        }
        for request in requests {
            self.on_input(request);
        }
    }

    /// The core's clock: monotonic time minus the pauses this thread has noticed.
    fn now(&self) -> Timestamp {
        Timestamp::ZERO + self.start.elapsed().saturating_sub(self.paused)
    }

    /// The monotonic instant at which the core's clock reads `t` (the inverse of [`Self::now`]).
    fn instant_of(&self, t: Timestamp) -> Instant {
        self.start + self.paused + Duration::from_nanos(t.as_nanos())
    }

    /// Pause detection, as corosync does it: when this thread wakes up well after the latest time
    /// it should have (see [`latest_wake`]), it was not running (host preemption of the virtual
    /// CPU, a kernel that does not preempt), and neither the peer's heartbeats nor its own could
    /// be processed meanwhile. That time is taken out of the core's clock, so a pause of this node
    /// is never mistaken for the death of the peer. A real peer failure during the pause is
    /// detected that much later.
    /// Returns the pause, zero if there was none.
    fn account_for_pause(&mut self, deadline: Instant) -> Duration {
        let late = Instant::now().saturating_duration_since(deadline);
        if late <= self.pause_threshold {
            return Duration::ZERO;
        }
        self.paused += late;
        self.shell_view.pauses += 1;
        let ms = late.as_secs_f64() * 1e3;
        self.shell_view.longest_pause_ms = self.shell_view.longest_pause_ms.max(ms);
        warn!("HA: this thread was paused for {ms:.1} ms; not counted against the peer");
        late
    }

    /// How long this node stalled, if it did: a pause the accounting saw (the thread woke up
    /// late), or a lease that lapsed since its last refresh (the thread was stopped in the
    /// middle of work, where the accounting does not see it; [`Shell::refresh_lease`] never
    /// extends a lapsed lease). A lapse counts whole, also when the pause alone was shorter than
    /// the lease: the dataplane stopped forwarding either way, and the hold that follows costs
    /// two heartbeat intervals.
    fn stall(&self, paused: Duration) -> Option<Duration> {
        let lapsed = self.keeps_lease() && !self.lease_runs();
        let stalled = if lapsed {
            paused.max(self.lease_refreshed.elapsed())
        } else {
            paused
        };
        (!stalled.is_zero()).then_some(stalled)
    }

    /// After a stall, before anything else of this wake-up: tells the core ([`Event::Stalled`]:
    /// an active node that stalled for its lease holds forwarding, and says so in its next
    /// messages), then feeds what waited meanwhile ([`Shell::drain_pending`], `woken` first: the
    /// input that woke the thread), and only then lets timers fire, so that a
    /// peer-dead timer due now never declares the peer dead on a silence that was this node's.
    /// Narrow windows stay open: a stop after a turn queued a heartbeat or a lease write
    /// (resuming, taking the role) and before the next turn performs it is seen only after
    /// they are performed.
    fn after_stall(
        &mut self,
        stalled: Duration,
        woken: Option<Input>,
        rx: &mut mpsc::UnboundedReceiver<Input>,
    ) {
        let now = self.now();
        self.core.handle(Event::Stalled { paused: stalled }, now);
        self.drain_pending(woken, rx);
        self.perform_actions();
    }

    /// Binds the heartbeat sockets and starts the HA1 TCP link tasks.
    async fn open_links(&mut self) -> Result<()> {
        let group = self.plan.election.group_id;
        self.sealer = self
            .plan
            .secure
            .as_ref()
            .map(|k| DatagramSealer::new(&k.local, &k.peer, group));
        let secure = self.plan.secure.clone().map(|k| Arc::new((k, group)));
        let links: Vec<(Link, LinkPlan)> = self.plan.links().map(|(l, p)| (l, p.clone())).collect();
        for (link, lp) in links {
            let local = lp.local.addr();
            let sock = bind_udp(SocketAddr::new(local, HA1_HEARTBEAT_UDP_PORT))
                .await
                .with_context(|| format!("{link}: heartbeat socket on {local}"))?;
            let sock = Arc::new(sock);
            self.udp.insert(
                link,
                (
                    sock.clone(),
                    SocketAddr::new(lp.peer, HA1_HEARTBEAT_UDP_PORT),
                ),
            );
            let hb = HeartbeatSocket {
                via: link,
                sock,
                peer: lp.peer,
                opener: secure
                    .as_ref()
                    .map(|k| Arc::new(DatagramOpener::new(&k.0.local, &k.0.peer, k.1))),
            };
            self.heartbeat_sockets.push(hb.clone());
            tokio::spawn(receive_heartbeats(hb, self.tx.clone()));
            let counters = LinkCounters {
                interface: lp.interface.clone(),
                local: lp.local.to_string(),
                peer: lp.peer.to_string(),
                connected: (link != Link::HeartbeatBackup).then_some(false),
                ..Default::default()
            };
            self.shell_view.links.insert(link.as_str(), counters);
            if link != Link::HeartbeatBackup {
                let (out_tx, out_rx) = mpsc::channel(64);
                self.tcp_out.insert(link, out_tx);
                tokio::spawn(tcp_link(
                    link,
                    local,
                    lp.peer,
                    secure.clone(),
                    out_rx,
                    self.tx.clone(),
                ));
            }
        }
        self.poll_carrier();
        Ok(())
    }

    fn counters(&mut self, link: Link) -> &mut LinkCounters {
        self.shell_view.links.entry(link.as_str()).or_default()
    }

    fn on_input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Frame { via, frame } => match frame {
                Frame::Hello(h) => {
                    debug!("{via}: hello {:?}", h.hello);
                    self.counters(via).hellos_received += 1;
                    let stale = self.peer.hello(h.boot_id, h.sequence);
                    self.shell_view.peer_software_version = Some(h.software_version);
                    self.core.handle(
                        Event::PeerHello {
                            via,
                            hello: h.hello,
                            stale,
                        },
                        now,
                    );
                }
                Frame::Heartbeat(h) => {
                    if !self.peer.heartbeat(via, h.boot_id, h.sequence) {
                        self.counters(via).dropped_stale += 1;
                        return;
                    }
                    let at = Instant::now();
                    let c = self.counters(via);
                    if let Some(prev) = c.last_heartbeat_at.replace(at) {
                        let gap = at.duration_since(prev).as_secs_f64() * 1e3;
                        c.max_heartbeat_gap_ms = c.max_heartbeat_gap_ms.max(gap);
                    }
                    if self.last_peer_state != Some(h.heartbeat.state) {
                        debug!("{via}: heartbeat says the peer is {}", h.heartbeat.state);
                        self.last_peer_state = Some(h.heartbeat.state);
                    }
                    self.counters(via).heartbeats_received += 1;
                    self.core.handle(
                        Event::PeerHeartbeat {
                            via,
                            heartbeat: h.heartbeat,
                        },
                        now,
                    );
                }
                Frame::Unknown(t) => debug!("{via}: skipped HA1 frame of unknown type {t}"),
            },
            Input::Malformed { via } => self.counters(via).dropped_malformed += 1,
            Input::WrongSource { via } => self.counters(via).dropped_wrong_source += 1,
            Input::Refused { via, reason } => {
                let c = self.counters(via);
                c.refused_unauthenticated += 1;
                c.last_refusal = Some(reason);
            }
            Input::Connected(link) => {
                let c = self.counters(link);
                c.connected = Some(true);
                c.connects += 1;
                self.core.handle(Event::Ha1Connected(link), now);
            }
            Input::Disconnected(link) => self.counters(link).connected = Some(false),
            Input::Operator(req, done) => {
                let event = match req {
                    OperatorRequest::Suspend => Event::OperatorSuspend,
                    OperatorRequest::Functional => Event::OperatorFunctional,
                };
                self.core.handle(event, now);
                let _ = done.send(());
            }
            Input::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    fn poll_carrier(&mut self) {
        let links: Vec<(Link, String)> = self
            .plan
            .links()
            .map(|(l, p)| (l, p.interface.clone()))
            .collect();
        for (link, iface) in links {
            let up = host::has_carrier(&iface);
            if self.carrier.get(&link) != Some(&up) {
                self.carrier.insert(link, up);
                self.counters(link).carrier = up;
                info!(
                    "HA link {link} ({iface}): carrier {}",
                    if up { "up" } else { "down" }
                );
                let now = self.now();
                let event = if up {
                    Event::LinkUp(link)
                } else {
                    Event::LinkDown(link)
                };
                self.core.handle(event, now);
            }
        }
    }

    fn perform_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::SendHello(hello) => {
                    self.sequence += 1;
                    let bytes = Frame::Hello(HelloFrame {
                        hello,
                        boot_id: self.boot_id,
                        sequence: self.sequence,
                        software_version: SOFTWARE_VERSION.into(),
                    })
                    .to_bytes();
                    let links: Vec<Link> = self.tcp_out.keys().copied().collect();
                    for link in links {
                        if self.tcp_out[&link].try_send(bytes.clone()).is_ok() {
                            self.counters(link).hellos_sent += 1;
                        }
                    }
                }
                Action::SendHeartbeat(heartbeat) => {
                    self.sequence += 1;
                    let mut bytes = Frame::Heartbeat(HeartbeatFrame {
                        heartbeat,
                        boot_id: self.boot_id,
                        sequence: self.sequence,
                    })
                    .to_bytes();
                    if let Some(sealer) = &self.sealer {
                        // Sealed once for every link: the same frame goes everywhere.
                        match sealer.seal(&bytes) {
                            Ok(sealed) => bytes = sealed,
                            Err(e) => {
                                warn!("HA: sealing a heartbeat: {e}");
                                continue;
                            }
                        }
                    }
                    let links: Vec<Link> = self.udp.keys().copied().collect();
                    for link in links {
                        let (sock, peer) = &self.udp[&link];
                        // Non-blocking: a full socket buffer loses this heartbeat, never delays
                        // the loop.
                        if sock.try_send_to(&bytes, *peer).is_ok() {
                            self.counters(link).heartbeats_sent += 1;
                        }
                    }
                }
                Action::BecomeActive => self.become_active(),
                Action::BecomePassive | Action::EnterNonFunctional | Action::EnterSuspended => {
                    self.give_up()
                }
                Action::AnnounceAgain => self.announce(),
                Action::HoldForwarding => {
                    self.lease_held = true;
                    // Lapsed already (the stall was at least the lease); made sure of.
                    self.terms.set_lease(1);
                    if let Err(e) = self.dataplane.update(|c| c.active_lease_expires_ns = 1) {
                        warn!("HA: holding the dataplane: {e:#}");
                    }
                    warn!("HA: forwarding held after a stall until the peer's state is known");
                }
                Action::ResumeForwarding => {
                    self.lease_held = false;
                    self.write_lease();
                    info!("HA: forwarding again: the peer did not take over during the stall");
                }
                Action::StartSessionSync => {
                    self.shell_view.session_sync = "sender";
                    let peer_node_id = self.core.status().peer.node_id.unwrap_or(0);
                    self.sync(SyncCommand::Send { peer_node_id });
                }
                Action::RequestBulkSync => {
                    self.shell_view.session_sync = "receiver";
                    let peer_node_id = self.core.status().peer.node_id.unwrap_or(0);
                    self.sync(SyncCommand::Receive { peer_node_id });
                }
                Action::StopSessionSync => {
                    self.shell_view.session_sync = "none";
                    self.sync(SyncCommand::Stop);
                }
                Action::Log(t) => info!(
                    "HA state {} -> {}: {}",
                    t.from.as_str(),
                    t.to.as_str(),
                    t.reason
                ),
                Action::Notice(n) => info!("HA: {n:?}"),
            }
        }
    }

    fn sync(&self, command: SyncCommand) {
        if let Some(tx) = &self.plan.sync {
            let _ = tx.send(command);
        }
    }

    fn become_active(&mut self) {
        let started = Instant::now();
        self.active = true;
        self.lease_held = false;
        self.write_lease();
        if let Err(e) = self.dataplane.update(|c| c.role = Role::Active as u32) {
            warn!("HA: setting the dataplane active: {e:#}");
        }
        let forwarding = started.elapsed();
        // Announce first: switches move the virtual MACs to this node's ports on the first
        // announcement, and the fast path forwards what arrives at once (by the standby routes,
        // see `host::release`). Setting MACs and addresses is an `ip` run that takes 3 ms, and
        // tens on a kernel busy with the failure: it runs on the host worker, so this thread
        // goes on refreshing the lease and sending heartbeats. Announcing needs no local MAC
        // (the frames carry the virtual one) but needs the links up: with passive link state
        // `shutdown` the claim brings them up first, and the announcements follow it.
        let ports = self.plan.ports.clone();
        let delay = self.claim_delay;
        if self.plan.shutdown_passive {
            let targets = self.announce_targets();
            let announced = self.announced.clone();
            // Taken here, not on the worker: a give-up queued behind the claim ends this term.
            let term = self.terms.current();
            self.host.run(move || {
                claim(&ports, true, delay, started);
                announce_rounds(targets, &announced, term);
            });
            info!(
                "HA: active: dataplane forwarding after {:.2} ms; links coming up",
                forwarding.as_secs_f64() * 1e3
            );
        } else {
            self.announce();
            info!(
                "HA: active: dataplane forwarding after {:.2} ms, first announcements after {:.2} ms",
                forwarding.as_secs_f64() * 1e3,
                started.elapsed().as_secs_f64() * 1e3
            );
            self.host.run(move || claim(&ports, false, delay, started));
        }
    }

    fn give_up(&mut self) {
        let was_active = self.active;
        self.active = false;
        self.lease_held = false;
        // Announcement rounds still to come would send from the virtual MACs and pull the
        // switches' entries back to this node, away from the active one.
        self.terms.end();
        self.terms.set_lease(0);
        if let Err(e) = self.dataplane.update(|c| {
            c.role = Role::Passive as u32;
            c.active_lease_expires_ns = 0;
        }) {
            warn!("HA: setting the dataplane passive: {e:#}");
        }
        if was_active || self.plan.shutdown_passive {
            let ports = self.plan.ports.clone();
            let shut_down = self.plan.shutdown_passive;
            self.host.run(move || {
                if let Err(e) = host::release(&ports, shut_down) {
                    warn!("HA: releasing virtual MACs and addresses: {e:#}");
                }
            });
        }
    }

    /// Every data port with an announcement socket.
    fn announce_targets(&self) -> Vec<(DataPort, host::FrameSocket)> {
        self.plan
            .ports
            .iter()
            .zip(&self.announce_sockets)
            .filter_map(|(p, s)| s.clone().map(|s| (p.clone(), s)))
            .collect()
    }

    fn announce(&mut self) {
        announce_rounds(
            self.announce_targets(),
            &self.announced,
            self.terms.current(),
        );
    }

    /// Takes the core's lease when it changed (the peer's hello said when it takes over); a
    /// shorter one applies to the dataplane at once. Returns whether it changed.
    fn follow_lease(&mut self) -> bool {
        let lease = self.core.lease();
        if lease == self.lease {
            return false;
        }
        info!(
            "HA: dataplane lease {} ms (was {} ms)",
            lease.as_millis(),
            self.lease.as_millis()
        );
        // Judged by the lease it was refreshed for: one that ran, shortened, is written anew at
        // once; one that lapsed is the stall check's.
        let running = self.lease_runs();
        self.lease = lease;
        self.shell_view.lease_ms = lease.as_millis() as u64;
        if self.keeps_lease() && running {
            self.write_lease();
        }
        true
    }

    /// Extends the lease while it runs. Neither a node that has just given up the role nor one
    /// holding after a stall may forward again, and a lapsed lease is never extended here: the
    /// thread stalled since the last refresh and the peer may have taken over, which is the
    /// core's to judge ([`Shell::stall`], at the next wake-up).
    fn refresh_lease(&mut self) {
        if self.keeps_lease() && self.lease_runs() {
            self.write_lease();
        }
    }

    /// Whether the lease is this node's to keep: it is active and not holding after a stall.
    fn keeps_lease(&self) -> bool {
        self.active && !self.lease_held
    }

    /// Whether the lease last written has not ended yet.
    fn lease_runs(&self) -> bool {
        self.lease_refreshed.elapsed() < self.lease
    }

    /// Sets the lease to end one lease from now: on taking the role, on resuming after a hold,
    /// and on every refresh.
    fn write_lease(&mut self) {
        self.lease_refreshed = Instant::now();
        let expires = monotonic_now_ns() + self.lease.as_nanos() as u64;
        match self
            .dataplane
            .update(|c| c.active_lease_expires_ns = expires)
        {
            // After the dataplane: a round must not go while the egress program still drops.
            Ok(()) => self.terms.set_lease(expires),
            Err(e) => warn!("HA: refreshing the dataplane lease: {e:#}"),
        }
    }

    /// Planned shutdown: suspend (the peer sees our hello and takes over at once), release, and
    /// give the hello a moment to leave.
    async fn hand_over(&mut self) {
        let now = self.now();
        self.core.handle(Event::OperatorSuspend, now);
        self.perform_actions();
        // The release must be done before the process ends.
        self.host.finish(Duration::from_secs(2));
        self.publish();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn publish(&mut self) {
        self.shell_view.announcements_sent = self.announced.load(Ordering::Relaxed);
        let status = serde_json::to_value(self.core.status()).unwrap_or_default();
        if let Ok(mut v) = self.view.lock() {
            v.status = status;
            v.shell = self.shell_view.clone();
        }
    }
}

/// Takes the virtual MACs and floating addresses (on the host worker).
fn claim(ports: &[DataPort], bring_up: bool, delay: Option<Duration>, takeover: Instant) {
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    match host::claim(ports, bring_up) {
        Ok(()) => info!(
            "HA: active: virtual MACs and addresses after {:.2} ms",
            takeover.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => warn!("HA: claiming virtual MACs and addresses: {e:#}"),
    }
}

/// The node's terms as active node, counted: [`Terms::end`] (every give-up) ends the current one.
/// Beside the count, the dataplane lease as last written (CLOCK_MONOTONIC ns; 0 or 1: none).
#[derive(Clone, Default)]
struct Terms {
    ended: Arc<AtomicU64>,
    lease_expires_ns: Arc<AtomicU64>,
}

impl Terms {
    /// The term now under way.
    fn current(&self) -> ActiveTerm {
        ActiveTerm {
            term: self.ended.load(Ordering::SeqCst),
            terms: self.clone(),
        }
    }

    fn end(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    fn set_lease(&self, expires_ns: u64) {
        self.lease_expires_ns.store(expires_ns, Ordering::SeqCst);
    }
}

/// One term as active node, as announcement rounds begun in it see it.
struct ActiveTerm {
    terms: Terms,
    term: u64,
}

impl ActiveTerm {
    /// Whether the node has not given up the active role since the term was taken.
    fn lasts(&self) -> bool {
        self.terms.ended.load(Ordering::SeqCst) == self.term
    }

    /// Whether the node's lease runs at `now_ns`: the dataplane forwards, and its egress program
    /// lets what the host sends on the data ports out. A node that stalled past its lease (and
    /// holds until it knows whether the peer took over) would only see its frames dropped.
    fn forwards_at(&self, now_ns: u64) -> bool {
        now_ns < self.terms.lease_expires_ns.load(Ordering::SeqCst)
    }
}

/// Sends the first announcement round on every port at once, on the calling thread (switches
/// must learn the virtual MACs' new place before anything else; it is one `send` per address),
/// and the later rounds from a helper thread, each only while `term` lasts.
fn announce_rounds(
    targets: Vec<(DataPort, host::FrameSocket)>,
    announced: &AtomicU64,
    term: ActiveTerm,
) {
    if !term.lasts() {
        return;
    }
    // Skipped if the lease lapsed before this (a claim on the worker, or an announcement asked
    // for again, while the process was frozen); the later rounds look for themselves.
    if term.forwards_at(monotonic_now_ns()) {
        for (p, s) in &targets {
            announced.fetch_add(host::announce(p, s) as u64, Ordering::Relaxed);
        }
    }
    std::thread::spawn(move || {
        later_rounds(&term, std::thread::sleep, monotonic_now_ns, || {
            for (p, s) in &targets {
                host::announce(p, s);
            }
        })
    });
}

/// The announcement rounds after the first, each at its delay (`sleep` waits), while `term`
/// lasts: a node that gave up the active role (a split brain healed 50 ms after it took over)
/// must not send from the virtual MACs, which would move the switches' entries to it, the
/// passive node. A round due while the lease has lapsed (`now_ns`: CLOCK_MONOTONIC) is skipped:
/// the process was frozen past its lease and the peer may have taken over, which the HA thread
/// settles when it runs (the rounds go on if the node forwards again).
fn later_rounds(
    term: &ActiveTerm,
    mut sleep: impl FnMut(Duration),
    now_ns: impl Fn() -> u64,
    mut round: impl FnMut(),
) {
    let mut waited = Duration::ZERO;
    for delay in host::ANNOUNCE_DELAYS.into_iter().skip(1) {
        sleep(delay.saturating_sub(waited));
        waited = delay;
        if !term.lasts() {
            return;
        }
        if term.forwards_at(now_ns()) {
            round();
        }
    }
}

/// Changes to the host's interfaces (claims, releases), one after another in the order given,
/// on a thread of their own: an `ip` run can take tens of milliseconds while the kernel is busy
/// with a failure, and the HA thread must not stop refreshing the lease meanwhile. One thread,
/// so a release can never overtake the claim before it.
struct HostWorker {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl HostWorker {
    fn start() -> Result<HostWorker> {
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("hafw-ha-host".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .context("starting the HA host worker")?;
        Ok(HostWorker { jobs })
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) {
        let _ = self.jobs.send(Box::new(job));
    }

    /// Waits (at most `timeout`) until every change handed over so far is done.
    fn finish(&self, timeout: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        self.run(move || {
            let _ = done.send(());
        });
        let _ = wait.recv_timeout(timeout);
    }
}

/// A UDP socket bound to `addr`, retrying briefly while the address is still tentative.
async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    let mut last = None;
    for _ in 0..50 {
        match UdpSocket::bind(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow!("bind")))
}

/// One received heartbeat datagram as the shell's input: checked source, opened when encryption
/// is on, decoded.
fn heartbeat_input(
    via: Link,
    from: SocketAddr,
    datagram: &[u8],
    peer: IpAddr,
    opener: Option<&DatagramOpener>,
) -> Input {
    if from.ip() != peer {
        return Input::WrongSource { via };
    }
    let plain = match opener {
        None => Ok(datagram.to_vec()),
        Some(o) => o.open(datagram),
    };
    match plain {
        Err(e) => Input::Refused {
            via,
            reason: format!("heartbeat from {from}: {e}"),
        },
        Ok(plain) => match Frame::parse(&plain) {
            Ok((frame, _)) => Input::Frame { via, frame },
            Err(_) => Input::Malformed { via },
        },
    }
}

/// A heartbeat socket and what is needed to read it.
#[derive(Clone)]
struct HeartbeatSocket {
    via: Link,
    sock: Arc<UdpSocket>,
    peer: IpAddr,
    opener: Option<Arc<DatagramOpener>>,
}

async fn receive_heartbeats(hb: HeartbeatSocket, tx: mpsc::UnboundedSender<Input>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, from) = match hb.sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!("{}: heartbeat socket: {e}", hb.via);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let input = heartbeat_input(hb.via, from, &buf[..len], hb.peer, hb.opener.as_deref());
        if tx.send(input).is_err() {
            return;
        }
    }
}

/// Keeps the HA1 TCP session of one link up: connects (lower address) or accepts the peer
/// (higher address), authenticates it when encryption is on, reads frames into the shell and
/// writes the shell's frames, forever.
///
/// With encryption every message on the stream is a 2-octet big-endian length followed by a Noise
/// message: first the two handshake messages, then one sealed HA1 frame each.
async fn tcp_link(
    via: Link,
    local: IpAddr,
    peer: IpAddr,
    secure: Option<Arc<(SecureKeys, u8)>>,
    mut out: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::UnboundedSender<Input>,
) {
    let initiator = local < peer;
    let listener = if initiator {
        None
    } else {
        loop {
            match TcpListener::bind(SocketAddr::new(local, HA1_TCP_PORT)).await {
                Ok(l) => break Some(l),
                Err(e) => {
                    debug!("{via}: listen on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    loop {
        let stream = match &listener {
            None => connect(local, peer).await,
            Some(l) => accept_peer(l, peer, via, &tx).await,
        };
        let Some(mut stream) = stream else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let channel = match &secure {
            None => None,
            Some(keys) => {
                let shake = handshake(&mut stream, &keys.0, keys.1, initiator);
                match tokio::time::timeout(Duration::from_secs(2), shake).await {
                    Ok(Ok(channel)) => Some(Arc::new(Mutex::new(channel))),
                    Ok(Err(e)) => {
                        warn!("{via}: HA1 peer {peer} refused: {e}");
                        let _ = tx.send(Input::Refused {
                            via,
                            reason: format!("HA1 connection with {peer}: {e}"),
                        });
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(_) => {
                        debug!("{via}: HA1 handshake with {peer} timed out");
                        continue;
                    }
                }
            }
        };
        // Frames queued while disconnected are stale: the connection starts with a fresh hello.
        while out.try_recv().is_ok() {}
        if tx.send(Input::Connected(via)).is_err() {
            return;
        }
        info!(
            "{via}: HA1 connection to {peer} established{}",
            if channel.is_some() {
                " (encrypted, peer authenticated)"
            } else {
                ""
            }
        );
        let (mut read, mut write) = stream.into_split();
        let reader = async {
            let mut buf = Vec::new();
            loop {
                let frame = match &channel {
                    Some(channel) => {
                        let sealed = read_message(&mut read).await?;
                        let opened = channel.lock().expect("channel lock").open(&sealed);
                        match opened {
                            Ok(plain) => plain,
                            Err(e) => return Err(anyhow!("{e}")),
                        }
                    }
                    None => {
                        let mut header = [0u8; HEADER_LEN];
                        read.read_exact(&mut header).await?;
                        let h = match Header::parse(&header) {
                            Ok(h) => h,
                            Err(e) => {
                                let _ = tx.send(Input::Malformed { via });
                                return Err(anyhow!("framing lost: {e}"));
                            }
                        };
                        buf.clear();
                        buf.extend_from_slice(&header);
                        buf.resize(h.frame_len(), 0);
                        read.read_exact(&mut buf[HEADER_LEN..]).await?;
                        std::mem::take(&mut buf)
                    }
                };
                let input = match Frame::parse(&frame) {
                    Ok((frame, _)) => Input::Frame { via, frame },
                    Err(_) => Input::Malformed { via },
                };
                if tx.send(input).is_err() {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        };
        let writer = async {
            while let Some(bytes) = out.recv().await {
                match &channel {
                    Some(channel) => {
                        let sealed = channel
                            .lock()
                            .expect("channel lock")
                            .seal(&bytes)
                            .map_err(|e| anyhow!("{e}"))?;
                        write_message(&mut write, &sealed).await?;
                    }
                    None => write.write_all(&bytes).await?,
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        let res = tokio::select! {
            r = reader => r,
            r = writer => r,
        };
        info!(
            "{via}: HA1 connection to {peer} closed{}",
            res.err().map(|e| format!(": {e}")).unwrap_or_default()
        );
        if tx.send(Input::Disconnected(via)).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Noise handshake on a fresh HA1 connection (see [`hafw_ha::secure`]).
async fn handshake(
    stream: &mut TcpStream,
    keys: &SecureKeys,
    group_id: u8,
    initiator: bool,
) -> Result<Channel, SecureError> {
    let io = |e: std::io::Error| {
        debug!("HA1 handshake: {e}");
        SecureError::Malformed("connection closed during the handshake")
    };
    if initiator {
        let (init, first) = Initiator::start(&keys.local, &keys.peer, group_id)?;
        write_message(stream, &first).await.map_err(io)?;
        let answer = read_message(stream).await.map_err(io)?;
        init.finish(&answer)
    } else {
        let first = read_message(stream).await.map_err(io)?;
        let (channel, answer) = Responder::respond(&keys.local, &keys.peer, group_id, &first)?;
        write_message(stream, &answer).await.map_err(io)?;
        Ok(channel)
    }
}

async fn read_message<R: tokio::io::AsyncRead + Unpin>(read: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    read.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_message<W: tokio::io::AsyncWrite + Unpin>(
    write: &mut W,
    msg: &[u8],
) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::other("message longer than 65535 octets"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    write.write_all(&out).await
}

async fn connect(local: IpAddr, peer: IpAddr) -> Option<TcpStream> {
    let sock = match local {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .ok()?;
    sock.bind(SocketAddr::new(local, 0)).ok()?;
    tokio::time::timeout(
        Duration::from_secs(1),
        sock.connect(SocketAddr::new(peer, HA1_TCP_PORT)),
    )
    .await
    .ok()?
    .ok()
}

async fn accept_peer(
    listener: &TcpListener,
    peer: IpAddr,
    via: Link,
    tx: &mpsc::UnboundedSender<Input>,
) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, from)) if from.ip() == peer => Some(stream),
        Ok((_, from)) => {
            warn!("{via}: refused HA1 connection from {from}: not the peer");
            let _ = tx.send(Input::WrongSource { via });
            None
        }
        Err(e) => {
            debug!("{via}: accept: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_wake_is_late_after_the_deadline_or_the_next_carrier_poll_whichever_is_first() {
        let t0 = Instant::now();
        let carrier = 3 * MS;
        // The deadline comes first.
        assert_eq!(latest_wake(t0, t0 + MS, carrier), t0 + MS);
        // The carrier poll comes first: a thread woken by a queued input 89 ms after it slept,
        // with its deadline 30 ms out, was not running for 86 ms of that.
        let woke = t0 + 89 * MS;
        let latest = latest_wake(t0, t0 + 30 * MS, carrier);
        assert_eq!(woke - latest, 86 * MS);
        // A deadline already past fires at once: only time after the sleep began counts.
        assert_eq!(latest_wake(t0 + 10 * MS, t0, carrier), t0 + 10 * MS);
    }

    /// Runs the later announcement rounds of a term on a simulated clock, the node giving up the
    /// active role at `give_up` after the first round, or its lease lapsing from the first of
    /// `held` until the second (a stall, the node holding until it knows the peer did not take
    /// over); returns the times of the rounds sent.
    fn rounds_sent(give_up: Option<Duration>, held: Option<(Duration, Duration)>) -> Vec<Duration> {
        let terms = Terms::default();
        terms.set_lease(held.map_or(u64::MAX, |(from, _)| from.as_nanos() as u64));
        let term = terms.current();
        let now = std::cell::Cell::new(Duration::ZERO);
        let mut sent = Vec::new();
        later_rounds(
            &term,
            |d| {
                let then = now.get() + d;
                let crosses = |at: Duration| now.get() < at && at <= then;
                if give_up.is_some_and(crosses) {
                    terms.end();
                }
                if held.is_some_and(|(_, until)| crosses(until)) {
                    terms.set_lease(u64::MAX);
                }
                now.set(then);
            },
            || now.get().as_nanos() as u64,
            || sent.push(now.get()),
        );
        sent
    }

    #[test]
    fn a_heartbeat_is_accepted_at_most_once_per_link() {
        let boot = 7;
        let mut peer = PeerFrames::default();
        assert!(!peer.hello(boot, 1));
        // One heartbeat, the same frame on every link: accepted once on each.
        assert!(peer.heartbeat(Link::Ha1, boot, 2));
        assert!(peer.heartbeat(Link::HeartbeatBackup, boot, 2));
        // The peer dies; its last heartbeat, captured and sent again, is refused on every link
        // it was heard on, however often it comes.
        for _ in 0..10 {
            assert!(!peer.heartbeat(Link::Ha1, boot, 2));
            assert!(!peer.heartbeat(Link::HeartbeatBackup, boot, 2));
        }
        // On a link that had not carried it, it counts once.
        assert!(peer.heartbeat(Link::Ha1Backup, boot, 2));
        assert!(!peer.heartbeat(Link::Ha1Backup, boot, 2));
        // Older than the newest frame heard, or of another boot: stale.
        assert!(peer.heartbeat(Link::Ha1, boot, 3));
        assert!(!peer.heartbeat(Link::HeartbeatBackup, boot, 2));
        assert!(!peer.heartbeat(Link::HeartbeatBackup, 8, 4));
        assert!(!peer.hello(boot, 4));
        assert!(peer.hello(boot, 1));
        // The peer restarts: its new boot's hello replaces the boot, and its heartbeats count
        // from their own sequence again.
        assert!(!peer.hello(9, 1));
        assert!(peer.heartbeat(Link::Ha1, 9, 2));
        assert!(!peer.heartbeat(Link::Ha1, 9, 2));
        assert!(!peer.heartbeat(Link::Ha1, boot, 5));
    }

    #[test]
    fn announcement_rounds_stop_once_the_node_gives_up_the_active_role() {
        // Still active: the rounds at 100 and 500 ms go.
        assert_eq!(rounds_sent(None, None), [100 * MS, 500 * MS]);
        // A split brain that heals at once: the node yields 50 ms after taking over and sends
        // nothing more from the virtual MACs.
        assert_eq!(rounds_sent(Some(50 * MS), None), Vec::<Duration>::new());
        // Yields between the rounds: the one at 100 ms went, the one at 500 ms does not.
        assert_eq!(rounds_sent(Some(300 * MS), None), [100 * MS]);
        // Frozen from 50 ms past its lease, found at 300 ms that the peer had not taken over:
        // the round due meanwhile is skipped (its frames would be dropped on the way out), the
        // next goes.
        assert_eq!(rounds_sent(None, Some((50 * MS, 300 * MS))), [500 * MS]);
        // A give-up queued behind the claim ends the term before its first round (which
        // `announce_rounds` checks too); the next term lasts.
        let terms = Terms::default();
        let old = terms.current();
        terms.end();
        let new = terms.current();
        assert!(!old.lasts() && new.lasts());
    }
}
