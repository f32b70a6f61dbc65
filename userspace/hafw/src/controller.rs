//! `hafw run`: the tokio shell around the dataplane. It loads and attaches the XDP programs,
//! commits the policy, ages sessions, drains session events, and serves the control socket.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use hafw_common::{
    config::{CONFIG_F_SESSION_EVENTS, DataplaneConfig, Role},
    ha2::{Ha2Config, RECORD_F_NEW},
    session::{EVENT_CLOSED, EVENT_CREATED, EVENT_STATE_CHANGED, SessionEvent},
};
use hafw_config::{CompiledPolicy, Config};
use hafw_ha::secure::{NodeKey, PublicKey};
use log::{error, info, warn};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    aging::{self, Timeouts},
    control::{Request, Response, socket_path},
    dataplane::{AttachMode, Dataplane, FibGeneration, LoadOptions, ifindex, pin_dir},
    ha::{self, HaHandle, OperatorRequest, SyncCommand},
    session_tables::FamilyCounts,
    sync, view,
};

/// How often the session table is swept for expired sessions.
const AGING_INTERVAL: Duration = Duration::from_secs(1);

/// Session events received from the ring buffer, by kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct EventCounters {
    pub created: u64,
    pub state_changed: u64,
    pub closed: u64,
}

/// Everything the control socket and background tasks share.
struct Node {
    dp: Dataplane,
    running: Config,
    compiled: CompiledPolicy,
    config_path: PathBuf,
    ifindexes: BTreeMap<String, u32>,
    events: EventCounters,
    aged_out: u64,
    table: TableFill,
    sync: SyncState,
}

/// HA2 session sync as the controller runs it.
#[derive(Default)]
struct SyncState {
    plan: Option<Ha2Plan>,
    /// Open while this node is the active one sending to a passive peer.
    sender: Option<sync::Sender>,
    /// Stops the thread that receives what the peer's ingest program passes up (requests on
    /// the active node, neighbour entries on the passive one).
    listener_stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Neighbour entries sent to the current peer (port, family, address) -> MAC.
    neighbours_sent: std::collections::HashMap<hafw_common::ha2::NeighbourPlace, [u8; 6]>,
    /// Woken when a new peer needs every neighbour entry (see [`sync_neighbours_on_change`]).
    neighbours_wanted: Arc<tokio::sync::Notify>,
    /// Neighbour entries of the peer installed in this node's kernel.
    neighbours_installed: u64,
    /// On the passive node: the peer's entries it holds, until the peer stops sending them.
    neighbour_leases: sync::NeighbourLeases,
    /// On the active node: when every neighbour entry was last sent (see
    /// [`sync::NEIGHBOUR_REFRESH`]).
    neighbours_refreshed: Option<std::time::Instant>,
    /// The fast path's count of session events lost to a full ring buffer, last seen.
    events_lost: u64,
    /// On the passive node: the ingest program's count of synced records a full table refused,
    /// as last logged, and when.
    writes_refused: u64,
    writes_refused_logged: Option<std::time::Instant>,
    /// On the passive node: sessions removed because the active peer's last complete bulk sync
    /// showed it no longer has them (see `Ha2State::current_since`).
    outdated_removed: u64,
    /// On the active node: the passive peer's keep-alives, counted and watched.
    peer_keepalives: u64,
    peer_keepalive: Option<sync::KeepaliveWatch>,
    /// Open while this node is the passive one receiving: asks for what is missing.
    requester: Option<sync::Requester>,
    receiving: bool,
    /// Totals survive the sender and the requester (each is reopened for each peer).
    sent: sync::SyncStats,
    gaps: sync::GapStats,
}

impl SyncState {
    /// Closes the sender and the requester, keeping their totals.
    fn close(&mut self) {
        if let Some(old) = self.sender.take() {
            add_stats(&mut self.sent, &old.stats);
        }
        if let Some(stop) = self.listener_stop.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(old) = self.requester.take() {
            add_gap_stats(&mut self.gaps, &old.tracker.stats);
        }
    }
}

/// The HA2 link from the config.
#[derive(Clone, Debug)]
struct Ha2Plan {
    link: sync::Endpoint,
    /// The HA2 backup link: used while the HA2 link has no carrier.
    backup: Option<sync::Endpoint>,
    group_id: u8,
    node_id: u64,
    keepalive: Duration,
    keepalive_threshold: Duration,
}

type Shared = Arc<Mutex<Node>>;

/// Reads, parses and compiles a config file; nothing is applied here.
pub fn load_config(path: &Path) -> Result<(Config, CompiledPolicy)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let config = Config::parse(&text, &name).map_err(|e| anyhow!("{e}"))?;
    let compiled = hafw_config::compile(&config).map_err(|e| anyhow!("{e}"))?;
    Ok((config, compiled))
}

pub async fn run(config_path: PathBuf) -> Result<()> {
    let (config, compiled) = load_config(&config_path)?;
    let instance = config.instance.clone();
    let pins = pin_dir(&instance);
    let mut dp = Dataplane::load(&LoadOptions {
        session_table_size: config.session_table_size,
        pin_dir: Some(pins.clone()),
    })?;
    info!("maps pinned under {}", pins.display());
    let mut ifindexes = BTreeMap::new();
    for (name, _) in &compiled.interfaces {
        ifindexes.insert(name.clone(), ifindex(name)?);
    }
    // Policy first, then attach: the program never sees an interface without a zone.
    dp.commit_policy(&compiled, &ifindexes)?;
    let ha_plan = ha_plan(&config, &compiled)?;
    // With HA the node starts passive: it forwards only once the election makes it active.
    let role = if ha_plan.is_some() {
        Role::Passive
    } else {
        Role::Standalone
    };
    dp.set_config(DataplaneConfig {
        role: role as u32,
        flags: CONFIG_F_SESSION_EVENTS,
        ..Default::default()
    })?;
    for name in ifindexes.keys() {
        if dp.attach(name)? == AttachMode::Generic {
            warn!("{name}: running in generic XDP mode");
        }
    }

    let ha2 = ha2_plan(&config);
    let (sync_tx, sync_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(p) = &ha2 {
        dp.attach_ha2(&p.link.interface)?;
        if let Some(b) = &p.backup {
            dp.attach_ha2(&b.interface)?;
        }
        dp.set_ha2(Ha2Config::default())?;
    }
    let ha = match ha_plan {
        Some(mut plan) => {
            if ha2.is_some() {
                plan.sync = Some(sync_tx);
            }
            Some(ha::spawn(plan, dp.config_handle())?)
        }
        None => {
            claim_standalone_addresses(&config)?;
            None
        }
    };

    let events = dp.take_events();
    let node: Shared = Arc::new(Mutex::new(Node {
        dp,
        running: config,
        compiled,
        config_path,
        ifindexes,
        events: EventCounters::default(),
        aged_out: 0,
        table: TableFill::default(),
        sync: SyncState {
            plan: ha2,
            ..Default::default()
        },
    }));
    tokio::spawn(run_sync(node.clone(), sync_rx));
    let (neighbour_tx, neighbour_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(sync_neighbours_on_change(node.clone(), neighbour_rx));

    let sock = socket_path(&instance);
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    info!("instance {instance}: control socket {}", sock.display());

    tokio::spawn(age_sessions(node.clone()));
    if let Ok(n) = node.lock() {
        tokio::spawn(watch_fib(n.dp.fib_generation(), neighbour_tx));
    }
    if let Some(ring) = events {
        tokio::spawn(drain_events(node.clone(), ring));
    }
    let serve = {
        let node = node.clone();
        let ha = ha.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_client(node.clone(), ha.clone(), stream));
                    }
                    Err(e) => warn!("control socket accept: {e}"),
                }
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
        _ = term.recv() => info!("terminated; shutting down"),
    }
    if let Some(ha) = &ha {
        info!("handing the HA role over before stopping");
        ha.shutdown().await;
    }
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir_all(&pins);
    // Dropping the node detaches the programs (their links close with the process).
    drop(node);
    Ok(())
}

/// Keeps the fast path's cached next hops honest: `ip monitor` reports every route, neighbour
/// and link change in this namespace, and each report starts a new FIB generation.
/// A generation also ends every [`FIB_REFRESH`], in case a report was lost (a netlink socket
/// overrun drops them). While the monitor is not running the cache is off.
/// The neighbour entries it reports go to `neighbours` (for HA2 neighbour sync).
async fn watch_fib(generation: FibGeneration, neighbours: NeighbourReports) {
    loop {
        if let Err(e) = monitor_fib(&generation, &neighbours).await {
            warn!("watching routes and neighbours: {e:#}; next-hop cache off");
        }
        let _ = generation.disable();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// At most this long between FIB generations.
const FIB_REFRESH: Duration = Duration::from_secs(5);

/// The kernel's neighbour entries as `ip monitor` reports them, new or changed.
type NeighbourReports = tokio::sync::mpsc::UnboundedSender<ha::host::NeighbourEntry>;

async fn monitor_fib(generation: &FibGeneration, neighbours: &NeighbourReports) -> Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    // `label` starts each line with its object ("[NEIGH]10.0.0.1 dev eth1 lladdr ... REACHABLE").
    let mut monitor = tokio::process::Command::new("ip")
        .args(["-o", "monitor", "label", "route", "neigh", "link"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("running ip monitor (iproute2)")?;
    let mut lines = tokio::io::BufReader::new(
        monitor
            .stdout
            .take()
            .ok_or_else(|| anyhow!("ip monitor has no stdout"))?,
    )
    .lines();
    // The cache stays off until the monitor has surely subscribed: a change before that would
    // otherwise go unseen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    generation.bump()?;
    let mut refresh = tokio::time::interval(FIB_REFRESH);
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    generation.bump()?;
                    if let Some(entry) = ha::host::NeighbourEntry::from_monitor_line(&line) {
                        let _ = neighbours.send(entry);
                    }
                }
                None => bail!("ip monitor exited"),
            },
            _ = refresh.tick() => {
                generation.bump()?;
            }
        }
    }
}

async fn age_sessions(node: Shared) {
    let sessions = match node
        .lock()
        .map_err(|_| anyhow!("node lock poisoned"))
        .map(|n| n.dp.sessions_handle())
    {
        Ok(map) => Arc::new(Mutex::new(map)),
        Err(e) => {
            error!("session aging: {e:#}");
            return;
        }
    };
    let mut tick = tokio::time::interval(AGING_INTERVAL);
    loop {
        tick.tick().await;
        let (node, sessions) = (node.clone(), sessions.clone());
        // A walk of every session: keep it off the async workers, and off the node lock (session
        // events and HA2 sync need it meanwhile).
        let res = tokio::task::spawn_blocking(move || -> Result<u64> {
            let (role, active_since, syncing, current_since, timeouts, capacity) = {
                let n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
                let (role, active_since) = n.dp.role();
                (
                    role,
                    active_since,
                    n.sync.sender.is_some(),
                    last_complete_bulk_sync(&n),
                    Timeouts::from(&n.running.timeouts),
                    n.running.session_table_size,
                )
            };
            let mut map = sessions
                .lock()
                .map_err(|_| anyhow!("session map lock poisoned"))?;
            let passive = role == Role::Passive;
            let now = aging::monotonic_now_ns();
            let mut live = FamilyCounts::default();
            let mut expired = Vec::new();
            let mut outdated = Vec::new();
            let mut refresh = Vec::new();
            for (k, v) in map.iter() {
                // A passive node never ages synced sessions on its own: the active peer syncs
                // their deletes, and after a takeover they age here from the takeover until they
                // see a packet here. What the last complete bulk sync did not write, the active
                // node no longer has.
                if !passive && aging::expired(&timeouts, &k, &v, now, active_since) {
                    expired.push(k);
                    continue;
                }
                if current_since.is_some_and(|bulk| !bulk.wrote(&v)) {
                    outdated.push(k);
                    continue;
                }
                live.count(&k);
                if syncing && aging::refresh_due(&timeouts, &k, &v, now, AGING_INTERVAL) {
                    refresh.push(sync::record(&k, &v, now));
                }
            }
            // Removed after the walk, while packets (and, on a passive node, synced records) go
            // on: one may have revived an entry since the walk read it, and removing it then would
            // drop a live session. Each is read again and removed only if still due. A packet
            // between that read and the removal still loses its session (a removal compares the
            // slot's key, not its value): the race is narrowed from the rest of the walk to one
            // lookup.
            expired.retain(|k| {
                map.get(k)
                    .is_some_and(|v| aging::expired(&timeouts, k, &v, now, active_since))
                    && map.remove(k).is_ok()
            });
            // And only while the bulk sync that marked them is still the last complete one: a
            // new sender epoch's bulk sync may have rewritten them meanwhile.
            let still_current = {
                let n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
                last_complete_bulk_sync(&n) == current_since
            };
            if !still_current {
                outdated.clear();
            }
            outdated.retain(|k| {
                map.get(k)
                    .is_some_and(|v| current_since.is_some_and(|bulk| !bulk.wrote(&v)))
                    && map.remove(k).is_ok()
            });
            drop(map);
            let mut n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
            if let Some(sender) = n.sync.sender.as_mut() {
                sender.stats.age_refreshes_sent += refresh.len() as u64;
                for r in refresh {
                    sender.update(r);
                }
                // The passive peer never ages what it holds: each session aged out here is
                // deleted there.
                for k in &expired {
                    sender.delete(*k);
                }
                sender.flush();
            }
            if !outdated.is_empty() {
                info!(
                    "HA2: removed {} sessions the active peer no longer has (not written by its \
                     last bulk sync or since)",
                    outdated.len()
                );
                n.sync.outdated_removed += outdated.len() as u64;
            }
            n.aged_out += expired.len() as u64;
            n.table.observe(live, u64::from(capacity));
            Ok(expired.len() as u64)
        })
        .await;
        match res {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => log::debug!("aged out {n} sessions"),
            Ok(Err(e)) => error!("session aging: {e:#}"),
            Err(e) => error!("session aging task: {e}"),
        }
    }
}

/// How full the session tables are, watched by the aging walk: a table holds at least its size
/// and may refuse new sessions beyond it (new flows are dropped; on a passive node, synced
/// sessions are not stored), so a table (IPv4 or IPv6, each of size `capacity`) crossing 90% is
/// logged, as is the return below 80%.
#[derive(Default)]
struct TableFill {
    sessions: FamilyCounts,
    capacity: u64,
    high: bool,
}

impl TableFill {
    fn observe(&mut self, sessions: FamilyCounts, capacity: u64) {
        (self.sessions, self.capacity) = (sessions, capacity);
        let (family, fullest) = if sessions.ipv4 >= sessions.ipv6 {
            ("IPv4", sessions.ipv4)
        } else {
            ("IPv6", sessions.ipv6)
        };
        if !self.high && fullest * 10 >= capacity * 9 {
            self.high = true;
            warn!(
                "{family} session table {fullest} of {capacity} (90% or more): beyond its size, \
                 new sessions may be refused; raise session_table_size"
            );
        } else if self.high && fullest * 10 < capacity * 8 {
            self.high = false;
            info!("session tables back below 80% ({fullest} of {capacity})");
        }
    }
}

/// Session events per ring-buffer drain above which partial HA2 messages are held back.
const COALESCE_ABOVE: usize = 8;

async fn drain_events(node: Shared, ring: aya::maps::RingBuf<aya::maps::MapData>) {
    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd until both drop.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            error!("session events: {e}");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!("session events: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut counts = EventCounters::default();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<SessionEvent>() {
                continue;
            }
            // SAFETY: the program submits whole SessionEvent records; read unaligned.
            let ev: SessionEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match ev.kind {
                EVENT_CREATED => counts.created += 1,
                EVENT_STATE_CHANGED => counts.state_changed += 1,
                EVENT_CLOSED => counts.closed += 1,
                _ => {}
            }
            batch.push(ev);
        }
        guard.clear_ready();
        if let Ok(mut n) = node.lock() {
            n.events.created += counts.created;
            n.events.state_changed += counts.state_changed;
            n.events.closed += counts.closed;
            if let Some(sender) = n.sync.sender.as_mut() {
                let now = aging::monotonic_now_ns();
                for ev in &batch {
                    if ev.kind == EVENT_CLOSED {
                        sender.delete(ev.key);
                    } else {
                        let mut record = sync::record(&ev.key, &ev.value(), now);
                        if ev.kind == EVENT_CREATED {
                            record.flags |= RECORD_F_NEW;
                        }
                        sender.update(record);
                    }
                }
                // A light load sends at once (latency); under a heavy one a partly filled
                // message waits for the next drain, so messages go out full (one send per 18
                // sessions, not per wake-up), and the tail probe sends what is left.
                if batch.len() < COALESCE_ABOVE {
                    sender.flush();
                }
            }
        }
    }
}

async fn serve_client(node: Shared, ha: Option<HaHandle>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(
            req @ (Request::ShowHighAvailability | Request::RequestHighAvailabilityState { .. }),
        ) = serde_json::from_str::<Request>(&line)
        {
            let response = match handle_ha(ha.as_ref(), req).await {
                Ok(data) => Response::Ok { data },
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            };
            let mut out = serde_json::to_string(&response).unwrap_or_default();
            out.push('\n');
            if write.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let node = node.clone();
        let response =
            tokio::task::spawn_blocking(move || match serde_json::from_str::<Request>(&line) {
                Ok(req) => match handle(&node, req) {
                    Ok(data) => Response::Ok { data },
                    Err(e) => Response::Error {
                        message: format!("{e:#}"),
                    },
                },
                Err(e) => Response::Error {
                    message: format!("malformed request: {e}"),
                },
            })
            .await
            .unwrap_or_else(|e| Response::Error {
                message: format!("internal error: {e}"),
            });
        let mut out = serde_json::to_string(&response).unwrap_or_default();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn handle_ha(ha: Option<&HaHandle>, req: Request) -> Result<serde_json::Value> {
    let ha = ha.ok_or_else(|| anyhow!("high availability is not configured on this node"))?;
    match req {
        Request::ShowHighAvailability => Ok(ha.show()),
        Request::RequestHighAvailabilityState { functional } => {
            let req = if functional {
                OperatorRequest::Functional
            } else {
                OperatorRequest::Suspend
            };
            ha.request(req).await?;
            Ok(ha.show())
        }
        _ => bail!("not an HA request"),
    }
}

fn handle(node: &Shared, req: Request) -> Result<serde_json::Value> {
    let mut n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
    let json = match req {
        Request::ShowSessions => {
            let now = aging::monotonic_now_ns();
            let rules: Vec<String> = n
                .running
                .rules
                .iter()
                .map(|r| r.name.get_ref().clone())
                .collect();
            let zones = n.compiled.zones.clone();
            let mut sessions: Vec<_> =
                n.dp.sessions()
                    .iter()
                    .map(|(k, v)| {
                        view::session_view(
                            k,
                            v,
                            now,
                            |id| {
                                rules
                                    .get(id as usize - 1)
                                    .cloned()
                                    .unwrap_or_else(|| format!("rule#{id}"))
                            },
                            |z| {
                                zones
                                    .get(z as usize)
                                    .cloned()
                                    .unwrap_or_else(|| format!("zone#{z}"))
                            },
                        )
                    })
                    .collect();
            sessions.sort_by_key(|s| (s.source, s.source_port));
            serde_json::to_value(sessions)?
        }
        Request::ShowCounters => {
            let c = n.dp.counters()?;
            let mut fields: Vec<(String, u64)> = c
                .fields()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect();
            fields.push(("events_created".into(), n.events.created));
            fields.push(("events_state_changed".into(), n.events.state_changed));
            fields.push(("events_closed".into(), n.events.closed));
            fields.push(("sessions_aged_out".into(), n.aged_out));
            fields.push(("session_table_entries".into(), n.table.sessions.total()));
            fields.push(("session_table_entries_ipv4".into(), n.table.sessions.ipv4));
            fields.push(("session_table_entries_ipv6".into(), n.table.sessions.ipv6));
            fields.push(("session_table_size".into(), n.table.capacity));
            serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k, v.into())).collect())
        }
        Request::ShowRunningConfig => serde_json::to_value(&n.running)?,
        Request::ShowInterfaces => {
            let attached: BTreeMap<_, _> =
                n.dp.attached().map(|(k, m)| (k.to_owned(), m)).collect();
            serde_json::to_value(attached)?
        }
        Request::Commit { path } => {
            let path = path.unwrap_or_else(|| n.config_path.clone());
            let (config, compiled) = load_config(&path)?;
            if config.instance != n.running.instance {
                bail!(
                    "instance is a per-device setting and cannot change on commit (restart hafw)"
                );
            }
            let mut ifindexes = BTreeMap::new();
            for (name, _) in &compiled.interfaces {
                if !n.ifindexes.contains_key(name) {
                    bail!("interface {name} is not attached; adding data ports needs a restart");
                }
                ifindexes.insert(name.clone(), n.ifindexes[name]);
            }
            n.dp.commit_policy(&compiled, &ifindexes)?;
            let slot = n.dp.live_slot();
            info!(
                "commit from {}: {} rules, live slot {slot}",
                path.display(),
                config.rules.len()
            );
            n.running = config;
            n.compiled = compiled;
            n.config_path = path;
            serde_json::json!({ "result": "OK", "policy_slot": slot, "rules": n.running.rules.len() })
        }
        Request::ShowStateSync => state_sync_view(&n)?,
        Request::ShowHighAvailability | Request::RequestHighAvailabilityState { .. } => {
            bail!("HA requests are served by the HA shell")
        }
    };
    Ok(json)
}

/// The HA shell's plan from the config's `[high_availability]` and the host's interfaces, or
/// `None` when HA is off.
fn ha_plan(config: &Config, compiled: &CompiledPolicy) -> Result<Option<ha::HaPlan>> {
    let Some(settings) = config.high_availability.as_ref().filter(|h| h.enabled) else {
        return Ok(None);
    };
    let link = |l: &hafw_config::HaLink| ha::LinkPlan {
        interface: l.interface.clone(),
        local: l.local(),
        peer: l.peer_addr(),
        gateway: l.gateway.as_ref().and_then(|g| g.parse().ok()),
    };
    let mut ports = Vec::new();
    for (name, _) in &compiled.interfaces {
        let iface = config
            .interfaces
            .iter()
            .find(|i| i.name.get_ref() == name)
            .ok_or_else(|| anyhow!("interface {name} missing from the config"))?;
        let virtual_mac = config
            .virtual_mac_of(name)
            .ok_or_else(|| anyhow!("no virtual MAC for {name}"))?;
        ports.push(ha::host::DataPort {
            name: name.clone(),
            virtual_mac,
            own_mac: own_mac(&config.instance, name, virtual_mac)?,
            addresses: iface.addresses(),
        });
    }
    let secure = match settings.encryption.as_ref().filter(|e| e.enabled) {
        None => None,
        Some(e) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let local = NodeKey::from_text(&read(&e.key_file)?)
                .with_context(|| format!("key file {}", e.key_file.display()))?;
            let peer = PublicKey::from_text(&read(&e.peer_key_file)?)
                .with_context(|| format!("peer key file {}", e.peer_key_file.display()))?;
            Some(ha::SecureKeys { local, peer })
        }
    };
    Ok(Some(ha::HaPlan {
        election: settings.election_config(),
        ha1: link(settings.ha1.get_ref()),
        ha1_backup: settings.ha1_backup.as_ref().map(|l| link(l.get_ref())),
        heartbeat_backup: settings
            .heartbeat_backup
            .as_ref()
            .map(|l| link(l.get_ref())),
        ports,
        shutdown_passive: settings.passive_link_state == hafw_config::PassiveLinkState::Shutdown,
        secure,
        sync: None,
    }))
}

/// The port's own MAC, to give back when the node stops being active. Recorded under
/// `/run/hafw/<instance>/` the first time, because a previous run that died while active leaves
/// the virtual MAC on the port and the own one would otherwise be lost (veths have no permanent
/// address to fall back on).
fn own_mac(instance: &str, port: &str, virtual_mac: [u8; 6]) -> Result<[u8; 6]> {
    let dir = PathBuf::from(format!("/run/hafw/{instance}"));
    let file = dir.join(format!("{port}.mac"));
    if let Some(mac) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| hafw_config::parse_mac(s.trim()))
    {
        return Ok(mac);
    }
    let mac = ha::host::current_mac(port)?;
    if mac == virtual_mac {
        bail!(
            "{port} carries its virtual MAC and its own MAC is not recorded in {}; set the port's \
             MAC back by hand",
            file.display()
        );
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&file, ha::host::format_mac(mac))?;
    Ok(mac)
}

/// Without HA a data port's `addresses` are simply the interface's addresses.
fn claim_standalone_addresses(config: &Config) -> Result<()> {
    let ports: Vec<ha::host::DataPort> = config
        .interfaces
        .iter()
        .filter(|i| i.addresses.is_some())
        .map(|i| -> Result<_> {
            let name = i.name.get_ref().clone();
            let mac = ha::host::current_mac(&name)?;
            Ok(ha::host::DataPort {
                name,
                virtual_mac: mac,
                own_mac: mac,
                addresses: i.addresses(),
            })
        })
        .collect::<Result<_>>()?;
    ha::host::claim(&ports, false)
}

/// The HA2 link of the config, when HA and session sync are on.
fn ha2_plan(config: &Config) -> Option<Ha2Plan> {
    let ha = config.high_availability.as_ref().filter(|h| h.enabled)?;
    let link = ha.ha2.as_ref()?.get_ref();
    if !link.session_sync {
        info!("HA2 session sync is off: established sessions will not survive a failover");
        return None;
    }
    let endpoint = |l: &hafw_config::Ha2Link| sync::Endpoint {
        interface: l.interface.clone(),
        transport: l.transport,
        local: l
            .address
            .as_ref()
            .and_then(|a| a.parse::<ipnet::IpNet>().ok())
            .map(|n| n.addr()),
        peer: l.peer.as_ref().and_then(|p| p.parse().ok()),
    };
    Some(Ha2Plan {
        link: endpoint(link),
        backup: ha.ha2_backup.as_ref().map(|b| endpoint(b.get_ref())),
        group_id: *ha.group_id.get_ref() as u8,
        node_id: ha.node_id(),
        keepalive: Duration::from_millis(link.keepalive_interval_ms),
        keepalive_threshold: Duration::from_millis(link.keepalive_threshold_ms),
    })
}

/// How often the passive node reads the ingest program's sequence window.
const GAP_POLL: Duration = Duration::from_millis(5);
/// How soon after a burst the active node sends a tail-loss probe.
const TAIL_PROBE: Duration = Duration::from_millis(10);
/// How often the active node looks at its neighbour table and at lost session events. New
/// neighbours are sent as soon as the kernel reports them; this catches a report lost to a
/// netlink overrun.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Carries out the election's HA2 hooks; while sending, keep-alives, tail probes and the
/// passive peer's requests; while receiving, the watch for gaps.
async fn run_sync(node: Shared, mut commands: tokio::sync::mpsc::UnboundedReceiver<SyncCommand>) {
    let keepalive = node
        .lock()
        .ok()
        .and_then(|n| n.sync.plan.as_ref().map(|p| p.keepalive))
        .unwrap_or(Duration::from_secs(1));
    let mut keepalive_tick = tokio::time::interval(keepalive);
    let mut probe_tick = tokio::time::interval(TAIL_PROBE);
    let mut gap_tick = tokio::time::interval(GAP_POLL);
    let mut housekeeping_tick = tokio::time::interval(HOUSEKEEPING);
    for tick in [
        &mut keepalive_tick,
        &mut probe_tick,
        &mut gap_tick,
        &mut housekeeping_tick,
    ] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let (request_tx, mut inbound) = tokio::sync::mpsc::unbounded_channel();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                let (node, request_tx) = (node.clone(), request_tx.clone());
                blocking("HA2 session sync", move || sync_command(&node, command, request_tx)).await;
            }
            Some(msg) = inbound.recv() => {
                let node = node.clone();
                blocking("HA2 from the peer", move || match msg {
                    sync::Inbound::Request(request) => serve_request(&node, &request),
                    sync::Inbound::Neighbours(records) => install_neighbours(&node, &records),
                    sync::Inbound::Keepalive => {
                        if let Ok(mut n) = node.lock() {
                            n.sync.peer_keepalives += 1;
                        }
                        Ok(())
                    }
                }).await;
            }
            _ = housekeeping_tick.tick() => {
                let node = node.clone();
                blocking("HA2 housekeeping", move || housekeeping(&node)).await;
            }
            _ = keepalive_tick.tick() => {
                if let Ok(mut n) = node.lock() {
                    keepalive_both_ways(&mut n);
                }
            }
            _ = probe_tick.tick() => {
                if let Ok(mut n) = node.lock()
                    && let Some(sender) = n.sync.sender.as_mut()
                {
                    sender.check_links();
                    sender.probe_tail();
                }
            }
            _ = gap_tick.tick() => {
                if let Ok(mut n) = node.lock() {
                    watch_receiving(&mut n);
                }
            }
        }
    }
}

/// On a receiving node, where the last complete bulk sync started (see
/// `Ha2State::current_since`): what it and later messages did not write is outdated.
fn last_complete_bulk_sync(n: &Node) -> Option<hafw_common::ha2::BulkMark> {
    let st = n.sync.receiving.then(|| n.dp.ha2_state().ok()).flatten()?;
    st.current_since()
}

/// Runs `work` on the blocking pool (it takes the node lock and makes syscalls) and logs its
/// failure as `what`.
async fn blocking(what: &str, work: impl FnOnce() -> Result<()> + Send + 'static) {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("{what}: {e:#}"),
        Err(e) => error!("{what} task: {e}"),
    }
}

/// Logs a change of the HA2 keep-alive status of `peer` (who is silent or heard again).
fn log_keepalive(event: Option<sync::KeepaliveEvent>, threshold: Duration, peer: &str) {
    match event {
        Some(sync::KeepaliveEvent::Lost { silent }) => warn!(
            "HA2 keep-alive: nothing from the {peer} for {} ms (threshold {} ms); session sync \
             may not be getting through",
            silent.as_millis(),
            threshold.as_millis()
        ),
        Some(sync::KeepaliveEvent::Restored) => {
            info!("HA2 keep-alive: the {peer} is heard again")
        }
        None => {}
    }
}

/// Keep-alives every interval, both ways: the active node sends its own (sequenced) and watches
/// the passive's; the passive node sends one back about the epoch it receives.
fn keepalive_both_ways(n: &mut Node) {
    if let Some(sender) = n.sync.sender.as_mut()
        && sender.epoch_used_up()
    {
        sender.renew_epoch();
        if let Err(e) = resync(
            n,
            "the epoch used its sequence numbers up; a new one starts",
        ) {
            warn!("HA2: {e:#}");
        }
    }
    if let Some(sender) = n.sync.sender.as_mut() {
        sender.keepalive();
        let heard = n.sync.peer_keepalives;
        let threshold = n
            .sync
            .plan
            .as_ref()
            .map_or(Duration::from_secs(10), |p| p.keepalive_threshold);
        let watch = n
            .sync
            .peer_keepalive
            .get_or_insert_with(|| sync::KeepaliveWatch::new(threshold, std::time::Instant::now()));
        let event = watch.poll(heard, std::time::Instant::now());
        log_keepalive(event, threshold, "passive peer");
    }
    if let Some(requester) = n.sync.requester.as_mut() {
        requester.keepalive();
    }
}

/// The passive node's periodic look at HA2: gaps to ask for, keep-alive silence to log.
fn watch_receiving(n: &mut Node) {
    if n.sync.requester.is_none() {
        return;
    }
    let (Ok(st), Ok(counters)) = (n.dp.ha2_state(), n.dp.ha2_counters()) else {
        return;
    };
    let Some(requester) = n.sync.requester.as_mut() else {
        return;
    };
    let now = std::time::Instant::now();
    requester.check_links();
    requester.poll(&st, now);
    let event = requester.keepalive.poll(counters.accepted, now);
    log_keepalive(event, requester.keepalive.threshold(), "active peer");
    // This runs every few milliseconds: at most one line per REFUSALS_LOG_INTERVAL.
    let refused = counters
        .session_write_failed
        .saturating_sub(n.sync.writes_refused);
    let quiet = n
        .sync
        .writes_refused_logged
        .is_some_and(|at| now.duration_since(at) < REFUSALS_LOG_INTERVAL);
    if refused > 0 && !quiet {
        warn!(
            "HA2: {refused} synced session records refused by a full session table (of {} per \
             family): those sessions will not survive a failover; raise session_table_size",
            n.running.session_table_size
        );
        n.sync.writes_refused = counters.session_write_failed;
        n.sync.writes_refused_logged = Some(now);
    }
}

/// How often, at most, the passive node logs synced records refused by a full table.
const REFUSALS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves one request of the passive peer: retransmission from the buffer, else a resync.
fn serve_request(node: &Shared, request: &sync::PeerRequest) -> Result<()> {
    let mut n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
    let Some(sender) = n.sync.sender.as_mut() else {
        return Ok(());
    };
    if sender.serve(request) == sync::Served::NeedsResync {
        resync(
            &mut n,
            &format!("{request:?} could not be served from the resend buffer"),
        )?;
    }
    Ok(())
}

/// Sends the whole table again to the passive peer.
fn resync(n: &mut Node, why: &str) -> Result<()> {
    let sessions = n.dp.sessions();
    let Some(sender) = n.sync.sender.as_mut() else {
        return Ok(());
    };
    sender.bulk(&sessions, aging::monotonic_now_ns());
    sender.stats.resyncs_sent += 1;
    info!(
        "HA2: resync of {} sessions sent in {:.1} ms ({why})",
        sessions.len(),
        sender.stats.last_bulk_sent_ms.unwrap_or(0.0)
    );
    Ok(())
}

/// Data ports by config position (1-based, as neighbour records name them) and name.
fn data_ports(config: &Config) -> Vec<(u16, String)> {
    config
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| (i as u16 + 1, iface.name.get_ref().clone()))
        .collect()
}

/// The periodic HA2 chores. Active node: session events the fast path lost to a full ring
/// buffer were never synced, so the table is sent again; neighbour entries that are new or
/// changed go to the peer, and all of them every [`sync::NEIGHBOUR_REFRESH`]. Passive node: the
/// peer's neighbour entries it stopped sending are removed.
fn housekeeping(node: &Shared) -> Result<()> {
    {
        let mut n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
        let now = std::time::Instant::now();
        if n.sync.receiving {
            let ports = data_ports(&n.running);
            if n.sync.neighbour_leases.needs_seed() {
                drop(n);
                // Outside the lock: it runs a process.
                let found = ha::host::synced_neighbours(&ports)?;
                n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
                n.sync.neighbour_leases.seed(&found, now);
            }
            let expired = n.sync.neighbour_leases.expire(now);
            drop(n);
            return ha::host::remove_neighbours(&expired, &ports);
        }
        if n.sync.sender.is_none() {
            return Ok(());
        }
        let lost = n.dp.counters()?.event_ringbuf_full;
        if lost > n.sync.events_lost {
            n.sync.events_lost = lost;
            resync(&mut n, "session events were lost to a full ring buffer")?;
        }
        if n.sync
            .neighbours_refreshed
            .is_none_or(|at| now.duration_since(at) >= sync::NEIGHBOUR_REFRESH)
        {
            n.sync.neighbours_sent.clear();
            n.sync.neighbours_refreshed = Some(now);
        }
    }
    sync_neighbours(node)
}

/// Active node: sends the passive peer each neighbour entry the kernel reports new or changed
/// (without reading the whole table: a busy one changes all the time), and the whole table when
/// a new peer needs it.
async fn sync_neighbours_on_change(
    node: Shared,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<ha::host::NeighbourEntry>,
) {
    let Some(wanted) = node.lock().ok().map(|n| n.sync.neighbours_wanted.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else { return };
                let mut batch = vec![report];
                while let Ok(more) = reports.try_recv() {
                    batch.push(more);
                }
                if let Ok(mut n) = node.lock()
                    && n.sync.sender.is_some()
                {
                    let ports = data_ports(&n.running);
                    let records = batch.iter().filter_map(|e| e.record(&ports)).collect();
                    send_new_neighbours(&mut n, records);
                }
            }
            _ = wanted.notified() => {
                let node = node.clone();
                blocking("HA2 neighbour sync", move || sync_neighbours(&node)).await;
            }
        }
    }
}

/// Active node: reads the kernel's neighbour table and sends the peer the entries of the data
/// ports that are new or changed since it last sent them.
fn sync_neighbours(node: &Shared) -> Result<()> {
    let ports = {
        let n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
        if n.sync.sender.is_none() {
            return Ok(());
        }
        data_ports(&n.running)
    };
    // Outside the lock: it runs a process.
    let neighbours = ha::host::resolved_neighbours(&ports)?;
    let mut n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
    send_new_neighbours(&mut n, neighbours);
    Ok(())
}

/// Sends the peer those of `neighbours` it was not sent yet, or with another MAC.
fn send_new_neighbours(n: &mut Node, neighbours: Vec<hafw_common::ha2::NeighbourRecord>) {
    let fresh: Vec<_> = neighbours
        .into_iter()
        .filter(|r| n.sync.neighbours_sent.get(&r.place()) != Some(&r.mac))
        .collect();
    if fresh.is_empty() {
        return;
    }
    for r in &fresh {
        n.sync.neighbours_sent.insert(r.place(), r.mac);
    }
    if let Some(sender) = n.sync.sender.as_mut() {
        sender.neighbours(&fresh);
        sender.flush();
    }
}

/// Installs the active peer's neighbour entries (passive node).
fn install_neighbours(node: &Shared, records: &[hafw_common::ha2::NeighbourRecord]) -> Result<()> {
    let ports = {
        let n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
        if !n.sync.receiving {
            return Ok(());
        }
        data_ports(&n.running)
    };
    let installed = ha::host::install_neighbours(records, &ports)?;
    if let Ok(mut n) = node.lock()
        && n.sync.receiving
    {
        n.sync.neighbours_installed += installed as u64;
        n.sync
            .neighbour_leases
            .renew(records, std::time::Instant::now());
    }
    Ok(())
}

fn sync_command(
    node: &Shared,
    command: SyncCommand,
    inbound: tokio::sync::mpsc::UnboundedSender<sync::Inbound>,
) -> Result<()> {
    let mut n = node.lock().map_err(|_| anyhow!("node lock poisoned"))?;
    let Some(plan) = n.sync.plan.clone() else {
        return Ok(());
    };
    n.sync.close();
    let link = || sync::Link::open(&plan.link, plan.backup.as_ref());
    let listen = |peer_node_id: u64| -> Result<Arc<std::sync::atomic::AtomicBool>> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for endpoint in std::iter::once(&plan.link).chain(&plan.backup) {
            sync::spawn_listener(
                endpoint,
                plan.group_id,
                peer_node_id as u32,
                stop.clone(),
                inbound.clone(),
            )?;
        }
        Ok(stop)
    };
    match command {
        SyncCommand::Send { peer_node_id } => {
            n.dp.set_ha2(Ha2Config::default())?;
            n.sync.receiving = false;
            n.sync.neighbour_leases.clear();
            n.sync.listener_stop = Some(listen(peer_node_id)?);
            n.sync.neighbours_sent.clear();
            n.sync.neighbours_refreshed = Some(std::time::Instant::now());
            n.sync.neighbours_wanted.notify_one();
            n.sync.peer_keepalive = None;
            n.sync.events_lost = n.dp.counters()?.event_ringbuf_full;
            let writer = sync::MessageWriter::new(plan.group_id, plan.node_id as u32);
            let mut sender = sync::Sender::new(link()?, writer);
            let sessions = n.dp.sessions();
            sender.bulk(&sessions, aging::monotonic_now_ns());
            info!(
                "HA2: bulk sync of {} sessions sent to the peer in {:.1} ms; streaming changes",
                sessions.len(),
                sender.stats.last_bulk_sent_ms.unwrap_or(0.0)
            );
            n.sync.sender = Some(sender);
        }
        SyncCommand::Receive { peer_node_id } => {
            // A completed bulk sync of an earlier sender must not mark this node's sessions
            // outdated (the aging walk removes what the last one did not write): the new
            // sender's bulk sync decides. Reset while nothing is received yet.
            n.dp.reset_ha2_state()?;
            n.dp.set_ha2(Ha2Config {
                receiving: 1,
                peer: peer_node_id as u32,
                group_id: plan.group_id,
                _pad: [0; 7],
            })?;
            n.sync.receiving = true;
            n.sync.listener_stop = Some(listen(peer_node_id)?);
            let writer = sync::MessageWriter::new(plan.group_id, plan.node_id as u32);
            n.sync.requester = Some(sync::Requester::new(
                link()?,
                writer,
                plan.keepalive_threshold,
            ));
            info!("HA2: receiving session sync from the peer");
        }
        SyncCommand::Stop => {
            n.dp.set_ha2(Ha2Config::default())?;
            n.sync.receiving = false;
            n.sync.neighbour_leases.clear();
        }
    }
    Ok(())
}

fn add_gap_stats(total: &mut sync::GapStats, s: &sync::GapStats) {
    total.gaps_detected += s.gaps_detected;
    total.retransmit_requests_sent += s.retransmit_requests_sent;
    total.messages_requested += s.messages_requested;
    total.resync_requests_sent += s.resync_requests_sent;
    total.messages_skipped += s.messages_skipped;
}

fn add_stats(total: &mut sync::SyncStats, s: &sync::SyncStats) {
    total.messages_sent += s.messages_sent;
    total.session_updates_sent += s.session_updates_sent;
    total.session_deletes_sent += s.session_deletes_sent;
    total.age_refreshes_sent += s.age_refreshes_sent;
    total.bulk_syncs_sent += s.bulk_syncs_sent;
    total.keepalives_sent += s.keepalives_sent;
    total.neighbours_sent += s.neighbours_sent;
    total.send_errors += s.send_errors;
    total.retransmit_requests_received += s.retransmit_requests_received;
    total.messages_retransmitted += s.messages_retransmitted;
    total.resyncs_sent += s.resyncs_sent;
    total.retransmit_records_withheld += s.retransmit_records_withheld;
    total.requests_superseded += s.requests_superseded;
    total.last_bulk_sent_ms = s.last_bulk_sent_ms.or(total.last_bulk_sent_ms);
    total.last_bulk_sent_sessions = s.last_bulk_sent_sessions.or(total.last_bulk_sent_sessions);
}

/// `show high-availability state-synchronization`.
fn state_sync_view(n: &Node) -> Result<serde_json::Value> {
    let Some(plan) = &n.sync.plan else {
        bail!("HA2 session sync is not configured on this node");
    };
    let mut sent = n.sync.sent.clone();
    if let Some(s) = &n.sync.sender {
        add_stats(&mut sent, &s.stats);
    }
    let received = n.dp.ha2_counters()?;
    let st = n.dp.ha2_state()?;
    let role = if n.sync.sender.is_some() {
        "sending"
    } else if n.sync.receiving {
        "receiving"
    } else {
        "idle"
    };
    // The ingest state describes receiving; on a node that no longer receives (it took over) it
    // is what it last received, not its status now.
    let receiving = n.sync.receiving;
    let status = if n.sync.sender.is_some() {
        "sending: bulk sync sent, changes streamed"
    } else if !receiving {
        "-"
    } else if st.resync_needed != 0 {
        "messages lost, resync requested"
    } else if st.bulk_complete() {
        "state sync complete"
    } else if st.bulk_ended_ns != 0 {
        // Its end marker arrived: what is missing is retransmitted (its start marker too).
        "bulk sync recovering losses"
    } else if st.bulk_started_ns != 0 {
        "bulk sync in progress"
    } else {
        "waiting for bulk sync"
    };
    let missing = st.missing().count();
    let mut gaps = n.sync.gaps.clone();
    if let Some(r) = &n.sync.requester {
        add_gap_stats(&mut gaps, &r.tracker.stats);
    }
    let bulk_ms = st
        .bulk_duration_ns()
        .filter(|_| receiving)
        .map(|ns| ns as f64 / 1e6);
    Ok(serde_json::json!({
        "interface": plan.link.interface,
        "transport": plan.link.transport.as_str(),
        "backup_interface": plan.backup.as_ref().map(|b| b.interface.clone()),
        "link_in_use": n.sync.sender.as_ref().map(|s| s.link_in_use())
            .or_else(|| n.sync.requester.as_ref().map(|r| r.link_in_use())),
        "role": role,
        "status": status,
        "last_bulk_sync_received_ms": bulk_ms,
        "sent": sent,
        "received": received.fields().iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
        "sequence": {
            "epoch": st.epoch,
            "contiguous": st.contiguous,
            "highest": st.highest,
            "missing": missing,
            "skipped": st.skipped,
        },
        "recovery": gaps,
        "neighbours_installed": n.sync.neighbours_installed,
        "neighbours_held": n.sync.neighbour_leases.len(),
        "outdated_sessions_removed": n.sync.outdated_removed,
        "keepalive": n.sync.requester.as_ref().map(|r| &r.keepalive)
            .or(n.sync.sender.as_ref().and(n.sync.peer_keepalive.as_ref()))
            .map(|k| serde_json::json!({
                "status": if k.down { "down" } else { "up" },
                "threshold_failures": k.failures,
            })),
        "keepalives_from_passive_peer": n.sync.peer_keepalives,
    }))
}

#[cfg(test)]
mod tests {
    use super::TableFill;
    use crate::session_tables::FamilyCounts;

    #[test]
    fn table_fill_warns_at_90_percent_of_either_table_and_clears_below_80() {
        let counts = |ipv4, ipv6| FamilyCounts { ipv4, ipv6 };
        let mut t = TableFill::default();
        t.observe(counts(899, 899), 1000);
        assert!(!t.high, "each table holds 1000");
        t.observe(counts(900, 10), 1000);
        assert!(t.high);
        t.observe(counts(10, 800), 1000);
        assert!(t.high, "hysteresis");
        t.observe(counts(799, 10), 1000);
        assert!(!t.high);
        t.observe(counts(10, 900), 1000);
        assert!(t.high, "the IPv6 table");
        assert_eq!((t.sessions.total(), t.capacity), (910, 1000));
    }
}
