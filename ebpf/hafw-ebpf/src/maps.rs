//! Every map of the data-port program, with its layout. Keys and values are defined in
//! `hafw-common`; sizes here are defaults the loader may override (`set_max_entries`).
//!
//! All maps are BTF maps (`#[btf_map]`), so `bpftool map dump` prints named fields.

use crate::{
    counters::TickClock,
    table::{Keys, Values},
};
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf},
    macros::btf_map,
};
use hafw_common::{
    config::DataplaneConfig,
    counters::Counters,
    ha2::{Ha2Config, Ha2Counters, Ha2State, MAX_SESSION_RECORDS, SessionRecord},
    policy::{
        IfaceInfo, IfaceKey, MAX_POLICY_PREFIXES, MAX_RULES, MAX_SERVICE_CLASSES, MAX_ZONES,
        POLICY_SLOTS, PORTS, PROTO_CLASSES, PolicyAddrKey, RuleAction, RuleBitmap,
    },
    session::{SessionEvent, SessionValue},
    table::TableShape,
};

/// Global configuration, one entry (`CONFIG_INDEX`).
#[btf_map]
pub static CONFIG: Array<DataplaneConfig, 1> = Array::new();

/// Packet counters, one entry per CPU.
#[btf_map]
pub static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// `BPF_F_MMAPABLE`: the controller maps the session tables to walk them (see `hafw_common::table`).
pub const MMAPABLE: usize = 1 << 10;

/// The session tables' geometry and hash seed (one entry, written at load).
#[btf_map]
pub static SESSION_TABLE_SHAPE: Array<TableShape, 1> = Array::new();

/// The IPv4 session table's keys (see "Two tables" in `hafw_common::session` and the layout in
/// `hafw_common::table`): open addressing of our own, not a kernel hash map (why: see there). A
/// full table refuses new sessions (their packets are dropped and counted as
/// `drop_session_table_full`, a synced record as `session_write_failed`) and never evicts an
/// established one, on the passive node a synced one included; it has room for at least the
/// configured `session_table_size`. Userspace ages sessions out by their state's timeout.
/// Reach the tables through `session::{get, insert, remove}`.
#[btf_map]
pub static SESSION_KEYS_V4: Keys<2> = Array::new();

/// The IPv4 session table's values, one per key slot.
#[btf_map]
pub static SESSION_VALUES_V4: Values = Array::new();

/// The IPv6 session table's keys, as [`SESSION_KEYS_V4`].
#[btf_map]
pub static SESSION_KEYS_V6: Keys<5> = Array::new();

/// The IPv6 session table's values.
#[btf_map]
pub static SESSION_VALUES_V6: Values = Array::new();

/// This CPU's last reading of the session clock and the `jiffies` it was taken at (see
/// `counters::TickClock`).
#[btf_map]
pub static TICK_CLOCK: PerCpuArray<TickClock, 1> = PerCpuArray::new();

/// Per-CPU scratch for `bpf_fib_lookup`'s parameters (see `forward::lookup`).
#[btf_map]
pub static FIB_PARAMS: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup, 1> = PerCpuArray::new();

/// Per-CPU scratch where a new session's value is built (see `session::create`).
#[btf_map]
pub static NEW_SESSION: PerCpuArray<SessionValue, 1> = PerCpuArray::new();

/// The FIB generation (one entry): the controller bumps it on every route, neighbour and link
/// change, and a session's cached next hop is valid only while its generation equals this one.
/// 0 turns the cache off (the controller's watch of the kernel is not running).
#[btf_map]
pub static FIB_GENERATION: Array<u32, 1> = Array::new();

/// Session created / state changed / closed events for userspace (HA2 sync). 16 MiB: about
/// 140,000 events (120 octets each with the ring's record header); events lost to a full buffer
/// are counted and make the active node resync.
#[btf_map]
pub static SESSION_EVENTS: RingBuf<SessionEvent, { 16 << 20 }> = RingBuf::new();

/// Egress data ports by ifindex, for `bpf_redirect_map`.
#[btf_map]
pub static DEVMAP: DevMapHash<256> = DevMapHash::new();

/// Zone of each data port, per policy slot.
#[btf_map]
pub static IFACES: HashMap<IfaceKey, IfaceInfo, 1024> = HashMap::new();

/// Rule bitmap per (slot, from zone, to zone).
#[btf_map]
pub static ZONE_PAIRS: Array<RuleBitmap, { (POLICY_SLOTS * MAX_ZONES * MAX_ZONES) as usize }> =
    Array::new();

/// Rule bitmap per source prefix (longest match carries every covering prefix's rules).
#[btf_map]
pub static SRC_ADDRS: LpmTrie<PolicyAddrKey, RuleBitmap, { MAX_POLICY_PREFIXES as usize }> =
    LpmTrie::new();

/// Rule bitmap per destination prefix.
#[btf_map]
pub static DST_ADDRS: LpmTrie<PolicyAddrKey, RuleBitmap, { MAX_POLICY_PREFIXES as usize }> =
    LpmTrie::new();

/// Service class id per (slot, protocol class, destination port).
#[btf_map]
pub static PORT_CLASSES: Array<u32, { (POLICY_SLOTS * PROTO_CLASSES * PORTS) as usize }> =
    Array::new();

/// Rule bitmap per (slot, service class).
#[btf_map]
pub static SERVICE_BITMAPS: Array<RuleBitmap, { (POLICY_SLOTS * MAX_SERVICE_CLASSES) as usize }> =
    Array::new();

/// Rule id and action per (slot, rule index).
#[btf_map]
pub static RULES: Array<RuleAction, { (POLICY_SLOTS * MAX_RULES) as usize }> = Array::new();

/// HA2 ingest configuration (`hafw_common::ha2::Ha2Config`), written by the controller.
#[btf_map]
pub static HA2_CONFIG: Array<Ha2Config, 1> = Array::new();

/// HA2 sequence tracking of the current sender epoch, read by the controller to detect gaps.
#[btf_map]
pub static HA2_STATE: Array<Ha2State, 1> = Array::new();

/// HA2 ingest counters, per CPU; userspace sums them.
#[btf_map]
pub static HA2_COUNTERS: PerCpuArray<Ha2Counters, 1> = PerCpuArray::new();

/// One message's session records, copied out of the frame so they are read with aligned loads
/// (see `ha2::copy_records`).
#[repr(C)]
pub struct RecordBlock {
    pub records: [SessionRecord; MAX_SESSION_RECORDS],
}

/// Per-CPU scratch for [`RecordBlock`]: 1,440 octets, far beyond the 512-octet stack.
#[btf_map]
pub static HA2_RECORDS: PerCpuArray<RecordBlock, 1> = PerCpuArray::new();
