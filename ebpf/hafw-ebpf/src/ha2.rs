//! The HA2 ingest program (`hafw_ha2`), attached to the HA2 interface: classifies HA2 messages
//! (see `hafw_common::ha2` for the format), checks them, and writes session records straight into
//! the session map, with no userspace hop.
//!
//! Verdicts: anything that is not HA2 passes to the kernel (HA1 may share the link in lite mode),
//! and so do retransmit and resync requests and the passive node's keep-alives (sequence 0),
//! which travel the other way and are the active controller's to check; session records, bulk-sync markers (stamped in `HA2_STATE`) and keep-alives (counted) are
//! consumed here; neighbour entries are passed to the kernel, where the controller installs them.
//! Every rejected message is dropped and counted by reason, and leaves the session map as it was.
//! A session record whose key names no session table is skipped and counted (`bad_records`), and
//! the rest of its message applied (see `names_a_table`).

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_load_bytes, programs::XdpContext,
};
use hafw_common::{
    ha,
    ha2::{
        HA2_BULK_END, HA2_BULK_START, HA2_HEADER_LEN, HA2_KEEPALIVE, HA2_MAGIC, HA2_NEIGHBOUR,
        HA2_RESYNC_REQUEST, HA2_RETRANSMIT_REQUEST, HA2_SESSION_DELETE, HA2_SESSION_UPDATE,
        HA2_VERSION, Ha2Counters, Ha2Header, Ha2State, MAX_SESSION_RECORDS, RECORD_F_NEW,
        SEQ_WINDOW, SEQ_WINDOW_WORDS, SessionRecord,
    },
    session::{
        FAMILY_IPV4, FAMILY_IPV6, SESSION_F_SYNCED, SESSION_F_UNCONFIRMED, SessionKey, SessionValue,
    },
};

use crate::{
    counters::{Clock, now_ns},
    maps::{CONFIG, HA2_CONFIG, HA2_COUNTERS, HA2_RECORDS, HA2_STATE, RecordBlock},
    parse::ptr_at,
    session,
    table::Writers,
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const RECORD_LEN: usize = core::mem::size_of::<SessionRecord>();

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; unaligned because messages sit at any offset.
    ptr_at::<T>(ctx, offset)
        .ok()
        .map(|p| unsafe { p.read_unaligned() })
}

/// Where the HA2 message starts, for each transport; `None` when the frame is not HA2.
#[inline(always)]
fn message_offset(ctx: &XdpContext) -> Option<usize> {
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    if ethertype == ha::HA2_ETHERTYPE {
        return Some(ETH_HLEN);
    }
    if ethertype != ETH_P_IP {
        return None;
    }
    let ver_ihl = read::<u8>(ctx, ETH_HLEN)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let proto = read::<u8>(ctx, ETH_HLEN + 9)?;
    if proto == ha::HA2_IP_PROTO {
        return Some(ETH_HLEN + ihl);
    }
    // UDP (17) to the HA2 port.
    if proto == 17 && u16::from_be(read::<u16>(ctx, ETH_HLEN + ihl + 2)?) == ha::HA2_UDP_PORT {
        return Some(ETH_HLEN + ihl + 8);
    }
    None
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    // SAFETY: per-CPU array entry; XDP runs with preemption disabled, so no other writer exists.
    let Some(c) = HA2_COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return PASS;
    };
    c.rx_frames += 1;
    let Some(offset) = message_offset(ctx) else {
        c.pass_not_ha2 += 1;
        return PASS;
    };
    match ingest(ctx, c, offset) {
        Ok(verdict) => {
            c.accepted += 1;
            verdict
        }
        Err(()) => DROP,
    }
}

/// Checks one message and applies it. `Err` means dropped (the reason is already counted).
#[inline(always)]
fn ingest(ctx: &XdpContext, c: &mut Ha2Counters, offset: usize) -> Result<u32, ()> {
    if let Some(h) = read::<Ha2Header>(ctx, offset)
        && h.magic == HA2_MAGIC
        && (matches!(h.msg_type, HA2_RETRANSMIT_REQUEST | HA2_RESYNC_REQUEST)
            // The passive node's keep-alives are not sequenced (the active node's are).
            || (h.msg_type == HA2_KEEPALIVE && h.sequence == 0))
    {
        c.requests_passed += 1;
        return Ok(PASS);
    }
    let Some(cfg) = HA2_CONFIG.get(0) else {
        c.drop_not_receiving += 1;
        return Err(());
    };
    if cfg.receiving == 0 {
        c.drop_not_receiving += 1;
        return Err(());
    }
    let Some(h) = read::<Ha2Header>(ctx, offset) else {
        c.drop_truncated += 1;
        return Err(());
    };
    if h.magic != HA2_MAGIC {
        c.drop_bad_magic += 1;
        return Err(());
    }
    if h.version != HA2_VERSION {
        c.drop_bad_version += 1;
        return Err(());
    }
    if h.group_id != cfg.group_id {
        c.drop_wrong_group += 1;
        return Err(());
    }
    if u32::from_le(h.sender) != cfg.peer {
        c.drop_wrong_peer += 1;
        return Err(());
    }
    let count = usize::from(h.count);
    let record_len = match h.msg_type {
        HA2_SESSION_UPDATE | HA2_SESSION_DELETE => RECORD_LEN,
        HA2_NEIGHBOUR => core::mem::size_of::<hafw_common::ha2::NeighbourRecord>(),
        HA2_BULK_START | HA2_BULK_END | HA2_KEEPALIVE => 0,
        _ => {
            c.drop_unknown_type += 1;
            return Err(());
        }
    };
    let records = offset + HA2_HEADER_LEN;
    let frame_len = ctx.data_end() - ctx.data();
    if (record_len == RECORD_LEN && count > MAX_SESSION_RECORDS)
        || records + count * record_len > frame_len
    {
        c.drop_count_beyond_frame += 1;
        return Err(());
    }
    let sequence = u32::from_le(h.sequence);
    let epoch = u32::from_le(h.epoch);
    accept_sequence(c, epoch, sequence)?;
    match h.msg_type {
        HA2_SESSION_UPDATE => {
            let Some(block) = copy_records(ctx, records, count) else {
                return Ok(DROP);
            };
            let now = CONFIG
                .get(0)
                .map(|cfg| now_ns(cfg, Clock::Tick))
                .unwrap_or(0);
            // Bounded by MAX_SESSION_RECORDS so the verifier sees a finite loop.
            for (i, r) in block.records.iter().enumerate() {
                if i >= count {
                    break;
                }
                if !names_a_table(&r.key) {
                    c.bad_records += 1;
                    continue;
                }
                write_session(c, r, now, (epoch as u16, sequence));
            }
            Ok(DROP)
        }
        HA2_SESSION_DELETE => {
            let Some(block) = copy_records(ctx, records, count) else {
                return Ok(DROP);
            };
            for (i, r) in block.records.iter().enumerate() {
                if i >= count {
                    break;
                }
                if !names_a_table(&r.key) {
                    c.bad_records += 1;
                    continue;
                }
                // A delete retransmitted after a newer message re-created the session (its
                // tuple reused) is older than that session: leave it, as `write_session` leaves
                // a newer record.
                if let Some(held) = session::get(&r.key) {
                    // SAFETY: a pointer from a successful lookup, valid for this program run.
                    if written_later(unsafe { &*held }, (epoch as u16, sequence)) {
                        c.stale_records += 1;
                        continue;
                    }
                }
                let _ = session::remove(&r.key);
                c.session_deletes += 1;
            }
            Ok(DROP)
        }
        HA2_NEIGHBOUR => {
            c.neighbours += count as u64;
            Ok(PASS)
        }
        HA2_BULK_START => {
            c.bulk_starts += 1;
            stamp(true, sequence);
            Ok(DROP)
        }
        HA2_BULK_END => {
            c.bulk_ends += 1;
            stamp(false, sequence);
            Ok(DROP)
        }
        _ => {
            c.keepalives += 1;
            Ok(DROP)
        }
    }
}

/// Whether a record's key names a session of one of the tables: `session::{get, insert, remove}`
/// pick the IPv4 table for [`FAMILY_IPV4`] and the IPv6 one for anything else, and the IPv4 table
/// keeps only address word 0, so another family would land in the IPv6 table and an IPv4 key with
/// other words set would alias (write over, or delete) the IPv4 session of its word 0; a key with
/// a non-zero pad octet would be stored where no lookup finds it.
///
/// Such a record is skipped and counted (`bad_records`), and the rest of its message applied. Not
/// the whole message dropped: its sequence number is already taken when the records are read
/// (`accept_sequence`), and dropping the message with its number taken would lose its good records
/// for good, the sender believing them delivered. Checking every record before taking the number,
/// and leaving it missing, would not help either: the controller asks for the message again, the
/// sender resends it unchanged, bad record included, and the number stays missing, `contiguous`
/// stuck below it (no `state sync complete`, a resync once the window overflows). A bad record is
/// not a transport fault a retransmission repairs, so the message counts as received.
#[inline(always)]
fn names_a_table(key: &SessionKey) -> bool {
    // The pad octets must be zero too: the IPv6 table hashes and stores the key's memory as it
    // is, and the last pad octet is where a table slot keeps its state.
    if key._pad != [0; 2] {
        return false;
    }
    match key.family {
        FAMILY_IPV4 => {
            let (lo, hi) = (&key.addr_lo, &key.addr_hi);
            (lo[1] | lo[2] | lo[3] | hi[1] | hi[2] | hi[3]) == 0
        }
        FAMILY_IPV6 => true,
        _ => false,
    }
}

/// Whether a newer message of the same sender epoch than `by` (low 16 bits of the epoch, sequence
/// number) already wrote session `held`: a record of `by` is then older than what it holds.
#[inline(always)]
fn written_later(held: &SessionValue, by: (u16, u32)) -> bool {
    held.sync_epoch == by.0 && held.sync_sequence > by.1
}

/// Records when a bulk sync started or ended, on the program's clock.
#[inline(always)]
fn stamp(start: bool, sequence: u32) {
    let now = CONFIG
        .get(0)
        .map(|cfg| now_ns(cfg, Clock::Exact))
        .unwrap_or(0);
    if let Some(st) = HA2_STATE.get_ptr_mut(0) {
        // SAFETY: array entry, see `accept_sequence`.
        let st = unsafe { &mut *st };
        if start {
            if sequence < st.bulk_end_sequence {
                // The end marker came first: this start marker was lost and sent again. It is
                // that bulk sync's if newer than the start held (a sender's first bulk sync holds
                // none), and it must not reopen it (the end marker will not come again) nor
                // supersede the bulk sync's messages that arrived before it.
                if sequence > st.bulk_start_sequence {
                    st.bulk_start_sequence = sequence;
                    st.bulk_started_ns = now;
                }
                return;
            }
            // The bulk sync carries every session as the sender has it now, read after whatever
            // it numbered before the marker: messages still missing below the marker are
            // superseded (the neighbour records among them come again with the sender's
            // periodic refresh). They are no longer waited for, nor asked for; else a loss the
            // sender could no longer serve would be asked for, and resynced, again and again.
            // A message above the marker that came early loses its mark and is asked for again,
            // harmlessly.
            if sequence > st.contiguous {
                st.contiguous = sequence;
                clear_window(st);
            }
            st.resync_needed = 0;
            st.bulk_started_ns = now;
            st.bulk_ended_ns = 0;
            st.bulk_start_sequence = sequence;
        } else {
            st.bulk_ended_ns = now;
            st.bulk_end_sequence = sequence;
        }
    }
}

/// Sequence tracking per sender epoch, in the ring-bitmap window of [`Ha2State`]: retransmitted
/// or reordered messages fill gaps, duplicates are refused, and the controller reads which numbers
/// are still missing.
#[inline(always)]
fn accept_sequence(c: &mut Ha2Counters, epoch: u32, seq: u32) -> Result<(), ()> {
    let Some(st) = HA2_STATE.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: array entry; concurrent writers only exist with multi-queue HA2 NICs, where a lost
    // update costs at most a spurious retransmit request.
    let st: &mut Ha2State = unsafe { &mut *st };
    if epoch != st.epoch {
        // A new sender epoch (senders never use 0, the map's initial value). Its numbers start
        // at 1, so whatever was lost before the first message that arrives is a visible gap
        // (a bulk sync lost whole on a link that just failed, say). Field by field: the state
        // is 8 KiB, far beyond the stack.
        st.epoch = epoch;
        st.contiguous = 0;
        st.highest = 0;
        st.skipped = 0;
        st.bulk_end_sequence = 0;
        st.bulk_start_sequence = 0;
        st.resync_needed = 0;
        st.bulk_started_ns = 0;
        st.bulk_ended_ns = 0;
        clear_window(st);
    }
    if seq <= st.contiguous {
        c.drop_old_sequence += 1;
        return Err(());
    }
    let ahead = seq - st.contiguous - 1;
    if ahead >= SEQ_WINDOW {
        // Too far ahead for the window: what lies between is given up, and the controller asks
        // for a resync until a bulk sync starts (`resync_needed`).
        st.skipped = st.skipped.wrapping_add(ahead);
        st.resync_needed = 1;
        st.contiguous = seq;
        clear_window(st);
        c.out_of_order += 1;
    } else {
        let (word, bit) = Ha2State::slot(seq);
        if st.seen[word] & bit != 0 {
            c.drop_old_sequence += 1;
            return Err(());
        }
        st.seen[word] |= bit;
        if ahead > 0 {
            c.out_of_order += 1;
        }
        consume_arrived(st);
    }
    if seq > st.highest {
        st.highest = seq;
    }
    Ok(())
}

/// Consumes the arrived numbers above `contiguous`, clearing their bits for reuse: one by one up
/// to the end of a word of the bitmap, then whole words of 64 arrived numbers, up to 32. Bounded
/// loops keep the verifier's walk short. (One by one only, 64 per message, a gap filled late
/// left a backlog that only the following messages consumed: after a bulk sync under loss, with
/// keep-alives once a second, `state sync complete` came late enough to fail a lab test.)
#[inline(always)]
fn consume_arrived(st: &mut Ha2State) {
    const WORD: u32 = 64;
    for _ in 0..WORD {
        let next = st.contiguous.wrapping_add(1);
        let (word, bit) = Ha2State::slot(next);
        if st.seen[word] & bit == 0 {
            break;
        }
        st.seen[word] &= !bit;
        st.contiguous = next;
        if next % WORD == WORD - 1 {
            break;
        }
    }
    for _ in 0..32 {
        let next = st.contiguous.wrapping_add(1);
        let (word, _) = Ha2State::slot(next);
        if !next.is_multiple_of(WORD) || st.seen[word] != u64::MAX {
            break;
        }
        st.seen[word] = 0;
        st.contiguous = st.contiguous.wrapping_add(WORD);
    }
}

/// Empties the window bitmap.
#[inline(always)]
fn clear_window(st: &mut Ha2State) {
    for word in 0..SEQ_WINDOW_WORDS {
        // Volatile, so LLVM keeps a bounded loop instead of a memset call BPF cannot make.
        // SAFETY: in-bounds pointer into the map value.
        unsafe { core::ptr::write_volatile(&mut st.seen[word], 0) };
    }
}

/// Copies a message's session records into this CPU's aligned scratch block, in one helper call.
///
/// Why not read them in place: a message sits 14, 34 or 42 octets into the frame, so its records
/// are never 8-aligned, and the BPF backend turns every unaligned load into single-octet loads,
/// shifts and ors: about 400 instructions per 80-octet record, a third of the ingest time. The
/// kernel's memcpy behind `bpf_xdp_load_bytes` does the same in a few nanoseconds.
#[inline(always)]
fn copy_records(ctx: &XdpContext, offset: usize, count: usize) -> Option<&'static RecordBlock> {
    let block = HA2_RECORDS.get_ptr_mut(0)?;
    let len = count * RECORD_LEN;
    // The verifier must see the length bounded by the destination's size on this very register
    // (and the helper refuses a zero length; a message without records yields no block).
    if len == 0 || len > core::mem::size_of::<RecordBlock>() {
        return None;
    }
    // SAFETY: `block` is this CPU's map value, `len` fits it; XDP runs with preemption disabled,
    // so nothing else uses the scratch until the program returns.
    let copied = unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, block.cast(), len as u32) };
    if copied != 0 {
        return None;
    }
    // SAFETY: as above; records past `count` are stale and never read.
    Some(unsafe { &*block })
}

/// Stores one synced session, converting its ages to this node's clock, unless a newer message of
/// the same sender epoch already wrote it. A retransmitted message fills its gap after the
/// messages that followed it were applied, and its records are older than theirs: a session's
/// creation applied after its handshake completed would leave it half-open here, and after the
/// next failover it would age out as a handshake (`tcp_init`) if idle. `written_by`: this
/// message's sender epoch (low 16 bits) and sequence number, kept in the session.
#[inline(always)]
fn write_session(c: &mut Ha2Counters, r: &SessionRecord, now: u64, written_by: (u16, u32)) {
    let (epoch, sequence) = written_by;
    let value = SessionValue {
        created_ns: now.saturating_sub(u64::from(r.age_ms) * 1_000_000),
        last_seen_ns: now.saturating_sub(u64::from(r.idle_ms) * 1_000_000),
        packets_orig: u64::from(r.packets_orig),
        packets_reply: u64::from(r.packets_reply),
        bytes_orig: r.bytes_orig,
        bytes_reply: r.bytes_reply,
        rule_id: r.rule_id,
        state: r.state,
        flags: (r.flags & !RECORD_F_NEW) | SESSION_F_SYNCED | SESSION_F_UNCONFIRMED,
        ingress_zone: r.ingress_zone,
        egress_zone: r.egress_zone,
        policy_slot: 0,
        _pad: 0,
        sync_epoch: epoch,
        sync_sequence: sequence,
        next_hop: Default::default(),
    };
    let status = session::insert(&r.key, &value, Writers::One);
    if status == 0 {
        c.session_updates += 1;
        return;
    }
    let Some(existing) = session::present(&r.key, status) else {
        c.session_write_failed += 1;
        return;
    };
    // SAFETY: a pointer into the map's element, valid for this program run (RCU). On a passive
    // node nothing else writes the session; a torn read by the aging walk sees fields of the old
    // or the new record, each of them whole.
    if written_later(unsafe { &*existing }, written_by) {
        c.stale_records += 1;
        return;
    }
    // SAFETY: as above.
    unsafe { existing.write(value) };
    c.session_updates += 1;
}
