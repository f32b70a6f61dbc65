//! The loaded XDP dataplane: loading the object, typed access to every map, attaching to data
//! ports, pinning for `bpftool`, and atomic policy commits.
//!
//! Every interaction with the kernel's BPF objects goes through this module, so tests can build a
//! `Dataplane` without attaching it and drive the program with `BPF_PROG_TEST_RUN`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use hafw_common::{
    LAYOUT_VERSION,
    config::{CONFIG_INDEX, DataplaneConfig, Role},
    counters::Counters,
    ha2::{Ha2Config, Ha2Counters, Ha2State},
    policy::{
        IfaceInfo, IfaceKey, MAX_ZONES, POLICY_ADDR_HEADER_BITS, PORTS, PROTO_CLASSES,
        PolicyAddrKey, RuleAction, RuleBitmap, port_class_index, rule_index, service_bitmap_index,
        zone_pair_index,
    },
    session::{SessionKey, SessionValue},
};
use hafw_config::CompiledPolicy;

use crate::session_tables::{self, SessionTables};
use log::{info, warn};

/// The XDP object built by `build.rs` from `ebpf/hafw-ebpf`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hafw"));

/// Name of the data-port program in the object.
pub const FAST_PATH_PROGRAM: &str = "hafw_fw";
/// Name of the pass-through program in the object.
pub const PASS_PROGRAM: &str = "hafw_pass";
/// Name of the drop-all-but-ARP program in the object (the forwarding benchmark's receiver).
pub const SINK_PROGRAM: &str = "hafw_sink";
/// Name of the program that transmits every frame (the forwarding benchmark's sender).
pub const BENCH_TX_PROGRAM: &str = "hafw_bench_tx";
/// Name of the fast path that makes every run a new flow (the new-flow benchmark's program).
pub const NEW_FLOWS_BENCH_PROGRAM: &str = "hafw_bench_new_flows";
/// Name of the program that only looks a session up (the benchmark's calibration).
pub const LOOKUP_BENCH_PROGRAM: &str = "hafw_bench_lookup";
/// Name of the program that only inserts a new session (the sync benchmark's calibration).
pub const INSERT_BENCH_PROGRAM: &str = "hafw_bench_insert";
/// Length of the frame `hafw_bench_tx` sends: a minimum Ethernet frame without its FCS.
pub const BENCH_FRAME_LEN: usize = 60;

/// The XDP object with one program loaded on its own: the lab's and the benchmark's helpers
/// (pass-through, sink). The object's maps are created and unused, so the session tables are
/// kept small.
pub fn load_alone(program: &str) -> Result<Ebpf> {
    load_alone_with(program, &mut EbpfLoader::new())
}

fn load_alone_with(program: &str, loader: &mut EbpfLoader) -> Result<Ebpf> {
    let mut ebpf = load_object(loader, 1024)?;
    load_xdp(&mut ebpf, program)?;
    Ok(ebpf)
}

/// Loads the XDP object (no program yet) with session tables for `session_table_size` sessions
/// per family, their shape written before any program can run.
fn load_object(loader: &mut EbpfLoader, session_table_size: u32) -> Result<Ebpf> {
    session_tables::size_maps(loader, session_table_size);
    let mut ebpf = loader.load(XDP_OBJECT).context("loading the XDP object")?;
    session_tables::write_shape(&mut ebpf, session_table_size)?;
    Ok(ebpf)
}

/// [`load_alone`] for `hafw_bench_tx`, set at load to send `frame` (its `BENCH_FRAME`): the
/// forwarding benchmark's sender.
pub fn load_bench_sender(frame: &[u8]) -> Result<Ebpf> {
    if frame.len() != BENCH_FRAME_LEN {
        bail!(
            "the sender's frame is {} octets, not {BENCH_FRAME_LEN}",
            frame.len()
        );
    }
    let mut words = [0u32; BENCH_FRAME_LEN / 4];
    for (word, chunk) in words.iter_mut().zip(frame.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    load_alone_with(
        BENCH_TX_PROGRAM,
        EbpfLoader::new().override_global("BENCH_FRAME", &words, true),
    )
}

/// Name of the HA2 ingest program in the object.
pub const HA2_PROGRAM: &str = "hafw_ha2";
/// Name of the data ports' tc egress program in the object.
pub const EGRESS_PROGRAM: &str = "hafw_egress";

/// Where an instance pins its maps: `/sys/fs/bpf/hafw/<instance>/v<LAYOUT_VERSION>/`.
pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/hafw/{instance}/v{LAYOUT_VERSION}"))
}

/// Maps pinned for operators (`bpftool map dump pinned <dir>/<name>`).
const PINNED_MAPS: [(&str, &str); 4] = [
    ("COUNTERS", "counters"),
    ("CONFIG", "config"),
    ("HA2_COUNTERS", "ha2_counters"),
    ("HA2_STATE", "ha2_state"),
];

/// How long a policy slot must stay idle after it was live before it is rewritten. XDP programs
/// run to completion in microseconds inside an RCU read section, so a packet that read the old
/// slot number has long finished by then.
const SLOT_QUIESCE: Duration = Duration::from_millis(20);

/// Options for loading the dataplane.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub session_table_size: u32,
    /// Pin the operator-facing maps here (`None` in tests).
    pub pin_dir: Option<PathBuf>,
}

/// How a program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP: the driver lacks native support.
    Generic,
    /// Taken over from the link a previous run pinned, in whatever mode that run attached.
    Inherited,
}

/// What one policy slot holds, so the next commit into it clears exactly what is stale.
#[derive(Default)]
struct SlotShadow {
    ifaces: BTreeSet<u32>,
    zone_pairs: BTreeSet<u32>,
    src_prefixes: Vec<Key<PolicyAddrKey>>,
    dst_prefixes: Vec<Key<PolicyAddrKey>>,
    /// Class id of every (protocol class, port), `None` until the slot is first written.
    port_classes: Option<Vec<u32>>,
    service_classes: u32,
    rules: u32,
    /// When the slot stopped being live.
    retired_at: Option<Instant>,
}

/// The `CONFIG` entry, shared by the commit path (policy slot) and the HA shell (role and
/// lease). Each update is a read-modify-write of the whole entry under one lock, so neither
/// writer can undo the other's field; the lock is held for one map write, so the HA shell's
/// lease refresh never waits behind a long operation such as a session sweep.
#[derive(Clone)]
pub struct ConfigHandle(Arc<Mutex<ConfigCell>>);

struct ConfigCell {
    map: Array<MapData, DataplaneConfig>,
    value: DataplaneConfig,
    /// While the role is `Active`: when it became so (CLOCK_MONOTONIC, read right after the
    /// write that made it so; before it the fast path forwarded nothing, so no packet on this
    /// node is stamped earlier, bar the coarse clock's few ms).
    active_since_ns: Option<u64>,
}

impl ConfigHandle {
    /// The entry as last written.
    pub fn get(&self) -> DataplaneConfig {
        self.0.lock().map(|c| c.value).unwrap_or_default()
    }

    /// Applies `change` to the entry and writes it to the map.
    pub fn update(&self, change: impl FnOnce(&mut DataplaneConfig)) -> Result<()> {
        let mut cell = self.0.lock().map_err(|_| anyhow!("CONFIG lock poisoned"))?;
        let mut value = cell.value;
        change(&mut value);
        cell.map
            .set(CONFIG_INDEX, value, 0)
            .context("writing the CONFIG map")?;
        let active = Role::Active as u32;
        if value.role != active {
            cell.active_since_ns = None;
        } else if cell.value.role != active {
            cell.active_since_ns = Some(crate::aging::monotonic_now_ns());
        }
        cell.value = value;
        Ok(())
    }

    /// The role as last written and, while it is `Active`, since when (CLOCK_MONOTONIC): the
    /// HA shell sets it on a takeover, and the aging walk ages the sessions without a packet
    /// since from then (`aging::expired`).
    pub fn role(&self) -> (Role, Option<u64>) {
        self.0
            .lock()
            .map(|c| (Role::from_u32(c.value.role), c.active_since_ns))
            .unwrap_or((Role::Standalone, None))
    }
}

/// The FIB generation the fast path checks cached next hops against (see
/// `hafw_common::session::NextHop`): 0 (the cache off) until someone watches the kernel's routes
/// and neighbours and calls [`FibGeneration::bump`] on every change.
#[derive(Clone)]
pub struct FibGeneration(Arc<Mutex<(Array<MapData, u32>, u32)>>);

impl FibGeneration {
    /// Starts a new generation: every cached next hop is looked up again. Never 0.
    pub fn bump(&self) -> Result<u32> {
        self.store(|current| current.wrapping_add(1).max(1))
    }

    /// Turns the cache off: nothing watches the kernel.
    pub fn disable(&self) -> Result<()> {
        self.store(|_| 0).map(drop)
    }

    /// Writes `next(current)` to the map and remembers it.
    fn store(&self, next: impl FnOnce(u32) -> u32) -> Result<u32> {
        let mut cell = self
            .0
            .lock()
            .map_err(|_| anyhow!("FIB generation lock poisoned"))?;
        let value = next(cell.1);
        cell.0.set(0, value, 0).context("writing FIB_GENERATION")?;
        cell.1 = value;
        Ok(value)
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    config: ConfigHandle,
    /// Where links and maps are pinned, when they are.
    pin_dir: Option<PathBuf>,
    counters: PerCpuArray<MapData, Counters>,
    sessions: SessionTables,
    devmap: DevMapHash<MapData>,
    ifaces: HashMap<MapData, IfaceKey, IfaceInfo>,
    zone_pairs: Array<MapData, RuleBitmap>,
    src_addrs: LpmTrie<MapData, PolicyAddrKey, RuleBitmap>,
    dst_addrs: LpmTrie<MapData, PolicyAddrKey, RuleBitmap>,
    port_classes: Array<MapData, u32>,
    service_bitmaps: Array<MapData, RuleBitmap>,
    rules: Array<MapData, RuleAction>,
    events: Option<RingBuf<MapData>>,
    ha2_config: Array<MapData, Ha2Config>,
    ha2_state: Array<MapData, Ha2State>,
    ha2_counters: PerCpuArray<MapData, Ha2Counters>,
    fib_generation: FibGeneration,
    shadows: [SlotShadow; 2],
    links: BTreeMap<String, (PortLink, AttachMode)>,
    /// tc egress attachments of the data ports, pinned (unpinned ones belong to the program).
    egress_links: Vec<PinnedLink>,
}

/// The attachment of the fast path to one port: owned by the process, or pinned so that it
/// outlives it (see [`Dataplane::attach`]).
enum PortLink {
    Owned(#[expect(dead_code, reason = "held so the program stays attached")] XdpLinkId),
    Pinned(#[expect(dead_code, reason = "held so the program stays attached")] PinnedLink),
}

macro_rules! take {
    ($ebpf:expr, $name:literal) => {
        $ebpf
            .take_map($name)
            .ok_or_else(|| anyhow!(concat!("map ", $name, " missing from the XDP object")))?
            .try_into()
            .context(concat!("map ", $name))?
    };
}

/// Loads (verifies) the XDP program `name` of the object.
fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the XDP object"))?
        .try_into()?;
    load_retrying(|| prog.load()).with_context(|| format!("loading program {name} (verifier)"))
}

/// Runs `load` with every signal blocked on the calling thread, retrying when the verifier was
/// interrupted all the same (it gives up with EAGAIN when a signal is pending for the loading
/// thread; libbpf retries a few times too).
///
/// Why block: a signal sent to the process goes to any thread that does not block it, and the
/// verifier of a large program runs for milliseconds. A child's SIGCHLD is such a signal when the
/// process handles it (the controller does, through tokio's process support), and even when it
/// does not, while the thread that started the child has signals blocked (as it has for a moment
/// while it starts the next one): tests that start `ip` beside a load lost all six attempts that
/// way. Blocked on this thread, such signals go to another one, or wait until the load returns.
fn load_retrying(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut previous = SigSet::empty();
    let blocked = pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )
    .is_ok();
    let mut attempts = 0;
    let result = loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 =>
            {
                attempts += 1;
            }
            other => break other,
        }
    };
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    }
    result
}

impl Dataplane {
    /// Loads the object and its maps; attaches nothing.
    pub fn load(opts: &LoadOptions) -> Result<Dataplane> {
        raise_memlock_limit();
        let mut ebpf = load_object(&mut EbpfLoader::new(), opts.session_table_size)?;
        if let Some(dir) = &opts.pin_dir {
            pin_maps(&mut ebpf, dir)?;
        }
        for name in [FAST_PATH_PROGRAM, PASS_PROGRAM, HA2_PROGRAM] {
            load_xdp(&mut ebpf, name)?;
        }
        let egress: &mut SchedClassifier = ebpf
            .program_mut(EGRESS_PROGRAM)
            .ok_or_else(|| anyhow!("program {EGRESS_PROGRAM} missing from the XDP object"))?
            .try_into()?;
        load_retrying(|| egress.load())
            .with_context(|| format!("loading program {EGRESS_PROGRAM} (verifier)"))?;
        let mut dp = Dataplane {
            config: ConfigHandle(Arc::new(Mutex::new(ConfigCell {
                map: take!(ebpf, "CONFIG"),
                value: DataplaneConfig::default(),
                active_since_ns: None,
            }))),
            pin_dir: opts.pin_dir.clone(),
            counters: take!(ebpf, "COUNTERS"),
            sessions: SessionTables::take(&mut ebpf)?,
            devmap: take!(ebpf, "DEVMAP"),
            ifaces: take!(ebpf, "IFACES"),
            zone_pairs: take!(ebpf, "ZONE_PAIRS"),
            src_addrs: take!(ebpf, "SRC_ADDRS"),
            dst_addrs: take!(ebpf, "DST_ADDRS"),
            port_classes: take!(ebpf, "PORT_CLASSES"),
            service_bitmaps: take!(ebpf, "SERVICE_BITMAPS"),
            rules: take!(ebpf, "RULES"),
            events: Some(take!(ebpf, "SESSION_EVENTS")),
            ha2_config: take!(ebpf, "HA2_CONFIG"),
            ha2_state: take!(ebpf, "HA2_STATE"),
            ha2_counters: take!(ebpf, "HA2_COUNTERS"),
            fib_generation: FibGeneration(Arc::new(Mutex::new((take!(ebpf, "FIB_GENERATION"), 0)))),
            ebpf,
            shadows: [SlotShadow::default(), SlotShadow::default()],
            links: BTreeMap::new(),
            egress_links: Vec::new(),
        };
        // Slot 0 is live (and empty: it denies) until the first commit writes slot 1 and flips.
        dp.shadows[0].retired_at = None;
        dp.shadows[1].retired_at = Some(Instant::now() - SLOT_QUIESCE);
        dp.config.update(|c| *c = DataplaneConfig::default())?;
        Ok(dp)
    }

    /// The data-port program, for `BPF_PROG_TEST_RUN`.
    pub fn fast_path(&self) -> Result<&Xdp> {
        self.xdp_program(FAST_PATH_PROGRAM)
    }

    /// The pass-through program (the benchmark floor).
    pub fn pass_program(&self) -> Result<&Xdp> {
        self.xdp_program(PASS_PROGRAM)
    }

    /// Attaches the fast path to a data port: native mode, or generic when the driver lacks it.
    ///
    /// With a pin directory the link is pinned at `<pin_dir>/links/<ifname>`: the program then
    /// outlives this process, so a controller that dies leaves a dataplane that enforces the
    /// policy and, once its HA lease lapses, stops forwarding (fail closed) instead of handing the
    /// port to the kernel's unfiltered forwarding. A link pinned by a previous run is taken over
    /// with an atomic program replacement: the port is never without a program.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode> {
        let mode = self.attach_program(FAST_PATH_PROGRAM, ifname)?;
        self.attach_egress(ifname)?;
        let ifindex = ifindex(ifname)?;
        self.register_port(ifindex)
            .with_context(|| format!("adding {ifname} to the devmap"))?;
        info!("{ifname} (ifindex {ifindex}): fast path attached, {mode:?} mode");
        Ok(mode)
    }

    /// Attaches the egress program to a data port (tc), pinned at `<pin_dir>/links/egress/<ifname>`
    /// so that it outlives this process: it is what silences the host once the lease lapses.
    /// A link pinned by a previous run is detached first; the moment without it is harmless, as
    /// the starting controller renews the lease anyway.
    fn attach_egress(&mut self, ifname: &str) -> Result<()> {
        let pin = self
            .pin_dir
            .as_ref()
            .map(|d| d.join("links").join("egress").join(ifname));
        if let Some(old) = pin
            .as_ref()
            .filter(|p| p.exists())
            .and_then(|p| PinnedLink::from_pin(p).ok())
        {
            // Unpinned and dropped: the last reference, so the kernel detaches it.
            drop(old.unpin());
        }
        // Only kernels before 6.6 (netlink tc, no TCX) need the clsact qdisc; it may exist.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(EGRESS_PROGRAM)
            .ok_or_else(|| anyhow!("no program {EGRESS_PROGRAM}"))?
            .try_into()?;
        let id = prog
            .attach(ifname, TcAttachType::Egress)
            .with_context(|| format!("attaching tc egress to {ifname}"))?;
        if let Some(path) = pin {
            std::fs::create_dir_all(path.parent().expect("egress links dir"))?;
            let fd_link = FdLink::try_from(prog.take_link(id)?)
                .context("tc egress link is not a bpf_link (kernel older than 6.6?)")?;
            self.egress_links.push(
                fd_link
                    .pin(&path)
                    .with_context(|| format!("pinning the tc link at {}", path.display()))?,
            );
        }
        Ok(())
    }

    /// Attaches the HA2 ingest program to the HA2 interface (pinned like the data ports).
    pub fn attach_ha2(&mut self, ifname: &str) -> Result<AttachMode> {
        let mode = self.attach_program(HA2_PROGRAM, ifname)?;
        info!("{ifname}: HA2 ingest attached, {mode:?} mode");
        Ok(mode)
    }

    fn attach_program(&mut self, program: &str, ifname: &str) -> Result<AttachMode> {
        let link_pin = self.pin_dir.as_ref().map(|d| d.join("links").join(ifname));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("no program {program}"))?
            .try_into()?;
        let previous = link_pin
            .as_ref()
            .filter(|p| p.exists())
            .and_then(|p| PinnedLink::from_pin(p).ok())
            .and_then(|pinned| pinned.unpin().ok())
            .and_then(|fd_link| XdpLink::try_from(fd_link).ok());
        let (link, mode) = match previous {
            Some(old) => {
                let link = prog
                    .attach_to_link(old)
                    .with_context(|| format!("replacing the program on {ifname}"))?;
                info!("{ifname}: took over the link pinned by a previous run");
                (link, AttachMode::Inherited)
            }
            None => match prog.attach(ifname, XdpMode::Driver) {
                Ok(link) => (link, AttachMode::Native),
                Err(native_err) => {
                    warn!(
                        "{ifname}: native XDP unavailable ({native_err}); falling back to generic \
                         XDP, which runs after the kernel allocates an skb and is much slower"
                    );
                    let link = prog
                        .attach(ifname, XdpMode::Skb)
                        .with_context(|| format!("attaching XDP to {ifname}"))?;
                    (link, AttachMode::Generic)
                }
            },
        };
        let port_link = match &link_pin {
            Some(path) => {
                std::fs::create_dir_all(path.parent().expect("links dir"))?;
                let fd_link = FdLink::try_from(prog.take_link(link)?)
                    .context("XDP link is not a bpf_link (kernel older than 5.9?)")?;
                PortLink::Pinned(
                    fd_link
                        .pin(path)
                        .with_context(|| format!("pinning the XDP link at {}", path.display()))?,
                )
            }
            None => PortLink::Owned(link),
        };
        self.links.insert(ifname.to_owned(), (port_link, mode));
        Ok(mode)
    }

    /// Test support: attaches the fast path, pass and HA2 programs to `idle_ports` (ports that
    /// stay down, so nothing ever arrives) to keep it in the kernel's XDP dispatcher. A
    /// BPF_PROG_TEST_RUN with repeat > 1 adds a program that is not there and removes it after,
    /// and each change waits for an RCU grace period (~16 ms on this kernel); with the programs
    /// resident a test run costs its runs only.
    pub fn stay_in_dispatcher(&mut self, idle_ports: [&str; 3]) -> Result<()> {
        for (program, port) in [FAST_PATH_PROGRAM, PASS_PROGRAM, HA2_PROGRAM]
            .into_iter()
            .zip(idle_ports)
        {
            self.attach_program(program, port)?;
        }
        Ok(())
    }

    /// Benchmark support: loads `program` of this object (so it shares this dataplane's maps) and
    /// keeps it in the XDP dispatcher on `idle_port` (see [`Dataplane::stay_in_dispatcher`]).
    pub fn load_bench_program(&mut self, program: &str, idle_port: &str) -> Result<()> {
        load_xdp(&mut self.ebpf, program)?;
        self.attach_program(program, idle_port).map(drop)
    }

    /// A program of the object loaded by [`Dataplane::load_bench_program`].
    pub fn bench_program(&self, program: &str) -> Result<&Xdp> {
        self.xdp_program(program)
    }

    /// A loaded XDP program of the object, for BPF_PROG_TEST_RUN.
    fn xdp_program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Makes `ifindex` a redirect target of the fast path (the devmap entry).
    pub fn register_port(&mut self, ifindex: u32) -> Result<()> {
        Ok(self.devmap.insert(ifindex, ifindex, None, 0)?)
    }

    /// Attached interfaces and their modes.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.links.iter().map(|(n, (_, m))| (n.as_str(), *m))
    }

    pub fn config(&self) -> DataplaneConfig {
        self.config.get()
    }

    /// See [`ConfigHandle::role`].
    pub fn role(&self) -> (Role, Option<u64>) {
        self.config.role()
    }

    /// A handle on the `CONFIG` entry for another task (the HA shell's role and lease).
    pub fn config_handle(&self) -> ConfigHandle {
        self.config.clone()
    }

    /// Replaces the global config, keeping the live policy slot (only commits change that).
    pub fn set_config(&mut self, cfg: DataplaneConfig) -> Result<()> {
        self.config.update(|c| {
            *c = DataplaneConfig {
                policy_slot: c.policy_slot,
                ..cfg
            }
        })
    }

    pub fn live_slot(&self) -> u32 {
        self.config.get().policy_slot
    }

    /// Writes `policy` into the idle slot, then makes it live with one 4-byte store. Packets see
    /// the old policy or the new one, never a mix. `ifindexes` maps interface names to ifindexes.
    pub fn commit_policy(
        &mut self,
        policy: &CompiledPolicy,
        ifindexes: &BTreeMap<String, u32>,
    ) -> Result<()> {
        let live = self.live_slot() & 1;
        let slot = live ^ 1;
        if let Some(retired) = self.shadows[slot as usize].retired_at {
            let idle = retired.elapsed();
            if idle < SLOT_QUIESCE {
                std::thread::sleep(SLOT_QUIESCE - idle);
            }
        }
        self.write_slot(slot, policy, ifindexes)
            .with_context(|| format!("writing policy slot {slot}"))?;
        self.config.update(|c| c.policy_slot = slot)?;
        self.shadows[live as usize].retired_at = Some(Instant::now());
        self.shadows[slot as usize].retired_at = None;
        Ok(())
    }

    fn write_slot(
        &mut self,
        slot: u32,
        p: &CompiledPolicy,
        ifindexes: &BTreeMap<String, u32>,
    ) -> Result<()> {
        let shadow = &mut self.shadows[slot as usize];

        // Interfaces -> zones.
        let mut ifaces = BTreeSet::new();
        for (name, zone) in &p.interfaces {
            let ifindex = *ifindexes
                .get(name)
                .ok_or_else(|| anyhow!("interface {name} has no ifindex"))?;
            self.ifaces.insert(
                IfaceKey { ifindex, slot },
                IfaceInfo {
                    zone: *zone,
                    flags: 0,
                },
                0,
            )?;
            ifaces.insert(ifindex);
        }
        for stale in shadow.ifaces.difference(&ifaces) {
            let _ = self.ifaces.remove(&IfaceKey {
                ifindex: *stale,
                slot,
            });
        }
        shadow.ifaces = ifaces;

        // Zone pairs.
        let mut pairs = BTreeSet::new();
        for ((from, to), bitmap) in &p.zone_pairs {
            if *from >= MAX_ZONES || *to >= MAX_ZONES {
                bail!("zone id out of range");
            }
            let idx = zone_pair_index(slot, *from, *to);
            self.zone_pairs.set(idx, bitmap, 0)?;
            pairs.insert(idx);
        }
        for stale in shadow.zone_pairs.difference(&pairs) {
            self.zone_pairs.set(*stale, RuleBitmap::default(), 0)?;
        }
        shadow.zone_pairs = pairs;

        // Address prefixes.
        for (trie, entries, old) in [
            (
                &mut self.src_addrs,
                &p.src_prefixes,
                &mut shadow.src_prefixes,
            ),
            (
                &mut self.dst_addrs,
                &p.dst_prefixes,
                &mut shadow.dst_prefixes,
            ),
        ] {
            let mut keys = Vec::with_capacity(entries.len());
            for e in entries {
                let key = Key::new(
                    POLICY_ADDR_HEADER_BITS + u32::from(e.prefix_len),
                    PolicyAddrKey {
                        slot: slot as u8,
                        family: e.family,
                        _pad: [0; 2],
                        addr: e.addr,
                        _tail: [0; 4],
                    },
                );
                trie.insert(&key, e.rules, 0)?;
                keys.push(key);
            }
            for stale in old.iter() {
                if !keys
                    .iter()
                    .any(|k| k.prefix_len() == stale.prefix_len() && k.data() == stale.data())
                {
                    let _ = trie.remove(stale);
                }
            }
            *old = keys;
        }

        // Port -> service class: only entries that differ from what the slot already holds.
        let mut classes = vec![0u32; (PROTO_CLASSES * PORTS) as usize];
        for (proto_class, ranges) in p.port_classes.iter().enumerate() {
            for &(first, last, class) in ranges {
                for port in u32::from(first)..=u32::from(last) {
                    classes[proto_class * PORTS as usize + port as usize] = class;
                }
            }
        }
        for (i, class) in classes.iter().enumerate() {
            let changed = match &shadow.port_classes {
                Some(old) => old[i] != *class,
                None => true,
            };
            if changed {
                let proto_class = i as u32 / PORTS;
                let port = i as u32 % PORTS;
                self.port_classes
                    .set(port_class_index(slot, proto_class, port), class, 0)?;
            }
        }
        shadow.port_classes = Some(classes);

        // Service class bitmaps and rules.
        let n_classes = p.service_bitmaps.len() as u32;
        for (class, bitmap) in p.service_bitmaps.iter().enumerate() {
            self.service_bitmaps
                .set(service_bitmap_index(slot, class as u32), bitmap, 0)?;
        }
        for stale in n_classes..shadow.service_classes {
            self.service_bitmaps.set(
                service_bitmap_index(slot, stale),
                RuleBitmap::default(),
                0,
            )?;
        }
        shadow.service_classes = n_classes;
        for (i, rule) in p.rules.iter().enumerate() {
            self.rules.set(rule_index(slot, i as u32), rule, 0)?;
        }
        shadow.rules = p.rules.len() as u32;
        Ok(())
    }

    /// Global counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self.counters.get(&0, 0).context("reading COUNTERS")?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            total.accumulate(c);
        }
        Ok(total)
    }

    /// Other handles on the session tables (the same mappings), for work that walks them whole
    /// (aging) without holding the dataplane, and so without stalling session events and HA2
    /// sync meanwhile.
    pub fn sessions_handle(&self) -> SessionTables {
        self.sessions.clone()
    }

    /// Every session of both tables.
    pub fn sessions(&self) -> Vec<(SessionKey, SessionValue)> {
        self.sessions.iter().collect()
    }

    pub fn session(&self, key: &SessionKey) -> Option<SessionValue> {
        self.sessions.get(key)
    }

    pub fn insert_session(&mut self, key: &SessionKey, value: &SessionValue) -> Result<()> {
        self.sessions.insert(key, value)
    }

    pub fn remove_session(&mut self, key: &SessionKey) -> Result<()> {
        self.sessions.remove(key)
    }

    /// The FIB generation, for the watcher of the kernel's tables (and tests).
    pub fn fib_generation(&self) -> FibGeneration {
        self.fib_generation.clone()
    }

    /// The HA2 ingest program, for `BPF_PROG_TEST_RUN`.
    pub fn ha2_program(&self) -> Result<&Xdp> {
        self.xdp_program(HA2_PROGRAM)
    }

    /// Whether (and from whom) the HA2 ingest program accepts session sync.
    pub fn set_ha2(&mut self, cfg: Ha2Config) -> Result<()> {
        self.ha2_config
            .set(0, cfg, 0)
            .context("writing the HA2_CONFIG map")
    }

    /// Forgets the ingest program's sequence tracking and last bulk sync: they belong to the
    /// sender this node received from before.
    pub fn reset_ha2_state(&mut self) -> Result<()> {
        self.ha2_state
            .set(0, Ha2State::default(), 0)
            .context("writing HA2_STATE")
    }

    /// The ingest program's sequence tracking.
    pub fn ha2_state(&self) -> Result<Ha2State> {
        self.ha2_state.get(&0, 0).context("reading HA2_STATE")
    }

    /// HA2 ingest counters summed over CPUs.
    pub fn ha2_counters(&self) -> Result<Ha2Counters> {
        let per_cpu = self
            .ha2_counters
            .get(&0, 0)
            .context("reading HA2_COUNTERS")?;
        let mut total = Ha2Counters::default();
        for c in per_cpu.iter() {
            total.accumulate(c);
        }
        Ok(total)
    }

    /// The session event ring buffer (taken once, by the event consumer).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// Pins the operator-facing maps under `dir`, replacing stale pins of a previous run.
fn pin_maps(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, file) in PINNED_MAPS.into_iter().chain(session_tables::MAPS) {
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        ebpf.map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?
            .pin(&path)
            .with_context(|| format!("pinning {name} at {}", path.display()))?;
    }
    Ok(())
}

/// The kernel's ifindex of an interface in this network namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface named {ifname}"))
}

/// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK; raising it is harmless elsewhere.
fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    if rc != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK (kernels since 5.11 charge BPF maps to the memory cgroup instead)"
        );
    }
}
