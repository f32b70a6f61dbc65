//! HA2 wire format: state sync from the active node to the passive one. One definition, shared by
//! the passive node's XDP ingest program and the active node's sender.
//!
//! # Transports
//!
//! The HA2 message starts right after the Ethernet header (`ethernet`, ethertype
//! [`crate::ha::HA2_ETHERTYPE`]), after the IPv4 header (`ip`, protocol [`crate::ha::HA2_IP_PROTO`])
//! or after the UDP header (`udp`, destination port [`crate::ha::HA2_UDP_PORT`]).
//!
//! # Message
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      'h'      |      'a'      |      '2'      |      's'      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |    Version    |   Group id    |     Type      | Record count  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence number                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         Sender epoch                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      Sender (node id, low 32 bits)            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           Reserved                            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Records (count x record size) ...
//! ```
//!
//! Multi-byte fields are **little-endian**, in the header and in the records: both ends are hafw
//! on little-endian hosts (x86-64, arm64), and the passive node's XDP program then stores a record
//! into the session map without swapping a field. `Version` is [`HA2_VERSION`]; a receiver drops
//! other versions. The sequence number counts messages per sender epoch; the epoch is random per
//! sender start, and a new epoch resets the receiver's sequence tracking.
//!
//! # Types and records
//!
//! | type | name | record |
//! |---|---|---|
//! | 1 | session update | [`SessionRecord`], 80 octets: add or replace ([`RECORD_F_NEW`] marks an add) |
//! | 2 | session delete | [`SessionRecord`] (only the key is used) |
//! | 3 | neighbour | [`NeighbourRecord`], 32 octets |
//! | 4 | bulk-sync start | none |
//! | 5 | bulk-sync end | none |
//! | 6 | keep-alive | none |
//! | 7 | retransmit request | [`RetransmitRange`], 8 octets |
//! | 8 | resync request | none |
//!
//! The ingest program consumes session records, bulk markers (it stamps their arrival in
//! `HA2_STATE`, so the controller reports `state sync complete` and the duration) and
//! keep-alives (counted); neighbour records go up to the controller, which installs them.
//!
//! # Reliability
//!
//! Types 1 to 6 are sequenced: the sender numbers them 1, 2, ... in its epoch (so a receiver
//! whose first message of an epoch is number 5 knows that 1 to 4 are missing). The receiver
//! marks each arrival in a window of [`SEQ_WINDOW`] sequence numbers above the highest
//! contiguous one (`HA2_STATE`); its controller reads the window, and a number still missing one
//! poll later is asked for again with a **retransmit request** (type 7, sent back on the HA2
//! link, `sequence` 0, `epoch` = the epoch asked about, records = ranges of sequence numbers).
//! The sender keeps a bounded buffer of what it sent and sends those messages again, unchanged
//! (same sequence number); a bulk sync stays in that buffer whole until as many messages again
//! have followed it. When the receiver lost more than its window holds, or the sender no
//! longer has a message asked for, the remedy is a **resync**: the receiver sends a resync
//! request (type 8, again each second until a bulk sync starts), or the sender decides on its
//! own, and a bulk sync of the whole table follows. A bulk-sync start marker supersedes every
//! number before it: the receiver stops waiting for those, and the sender ignores requests for
//! them. A loss at the end of a burst is revealed by the keep-alive the sender sends shortly
//! after every burst (a tail probe). The passive node sends keep-alives back, unsequenced
//! (`sequence` 0), so the active node monitors the HA2 link too.
//!
//! Sequence numbers never wrap: the receiver compares them as plain integers, and a sender that
//! reaches `hafw::sync::LAST_SEQUENCE` moves to the next epoch (its number plus one) and sends a
//! bulk sync.
//!
//! A session record carries the session's **ages** (time since the last packet, since creation)
//! in milliseconds, never a timestamp: each node's clock is its own. Interface indexes and MACs
//! are not synced; the node that takes over resolves the next hops from its own tables.
//!
//! With a 1,500-octet MTU a message carries [`MAX_SESSION_RECORDS`] session records over every
//! transport: (1500 - 20 IPv4 - 8 UDP - 24 header) / 80 = 18.

use crate::{
    impl_pod,
    session::{SessionKey, SessionValue},
};

/// Magic octets that open every HA2 message.
pub const HA2_MAGIC: [u8; 4] = *b"ha2s";
/// Version of this format.
pub const HA2_VERSION: u8 = 1;
/// Length of [`Ha2Header`].
pub const HA2_HEADER_LEN: usize = 24;
/// Session records per message (1,500-octet MTU, any transport).
pub const MAX_SESSION_RECORDS: usize = 18;

pub const HA2_SESSION_UPDATE: u8 = 1;
pub const HA2_SESSION_DELETE: u8 = 2;
pub const HA2_NEIGHBOUR: u8 = 3;
pub const HA2_BULK_START: u8 = 4;
pub const HA2_BULK_END: u8 = 5;
pub const HA2_KEEPALIVE: u8 = 6;
pub const HA2_RETRANSMIT_REQUEST: u8 = 7;
pub const HA2_RESYNC_REQUEST: u8 = 8;

/// Ranges per retransmit request (fits any transport's 1,500-octet MTU).
pub const MAX_RETRANSMIT_RANGES: usize = 128;
/// Sequence numbers the receiver can track above the highest contiguous one.
pub const SEQ_WINDOW: u32 = SEQ_WINDOW_WORDS as u32 * 64;
/// 64-bit words of the window bitmap in [`Ha2State`].
pub const SEQ_WINDOW_WORDS: usize = 1024;

/// The message header (see the module docs for the layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ha2Header {
    pub magic: [u8; 4],
    pub version: u8,
    pub group_id: u8,
    pub msg_type: u8,
    pub count: u8,
    pub sequence: u32,
    pub epoch: u32,
    pub sender: u32,
    pub _reserved: u32,
}
impl_pod!(Ha2Header);

/// One synced session: the normalized key and what the fast path needs to continue it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: SessionKey,
    pub rule_id: u32,
    /// Milliseconds since the session's last packet on the sender.
    pub idle_ms: u32,
    /// Milliseconds since the session was created on the sender.
    pub age_ms: u32,
    pub state: u8,
    /// `SESSION_F_*` bits of the sender (the receiver adds `SESSION_F_SYNCED`), and
    /// [`RECORD_F_NEW`].
    pub flags: u8,
    pub ingress_zone: u8,
    pub egress_zone: u8,
    pub packets_orig: u32,
    pub packets_reply: u32,
    pub bytes_orig: u64,
    pub bytes_reply: u64,
}
impl_pod!(SessionRecord);

/// Record flag (never stored): the sender just created this session. Information only: the
/// ingest applies every record the same way (an insert into the session table finds an older
/// copy, from a retransmission or a rejoin, in the same pass, and overwrites it in place).
pub const RECORD_F_NEW: u8 = 1 << 7;

/// One ARP or IPv6 neighbour entry the active node uses, so the first packets after a failover
/// are forwarded, not queued behind address resolution. The interface is named by its data port
/// position in the config (1-based), which both peers share; ifindexes are not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighbourRecord {
    pub addr: [u8; 16],
    pub mac: [u8; 6],
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 7],
}
impl_pod!(NeighbourRecord);

/// Which neighbour entry a [`NeighbourRecord`] is about: its port, family and address.
pub type NeighbourPlace = (u16, u8, [u8; 16]);

impl NeighbourRecord {
    /// The entry this record is about (its MAC is what it says of it).
    pub const fn place(&self) -> NeighbourPlace {
        (self.port, self.family, self.addr)
    }
}

/// One run of sequence numbers asked for again: `first`, `first + 1`, ... (`count` of them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitRange {
    pub first: u32,
    pub count: u32,
}
impl_pod!(RetransmitRange);

/// Ingest program configuration (map `HA2_CONFIG`, array of one), written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ha2Config {
    /// Non-zero: accept sync messages. Zero: every HA2 message is dropped (`drop_not_receiving`).
    pub receiving: u32,
    /// Expected sender (the peer's node id, low 32 bits).
    pub peer: u32,
    pub group_id: u8,
    pub _pad: [u8; 7],
}
impl_pod!(Ha2Config);

/// Sequence tracking of the current sender epoch (map `HA2_STATE`, array of one), written by the
/// ingest program, read by the controller to detect gaps.
///
/// The window is a ring bitmap indexed by sequence number modulo [`SEQ_WINDOW`]: a set bit is a
/// message above `contiguous` that arrived. Bits are cleared as `contiguous` passes them, so
/// every set bit stands for exactly one number in `contiguous + 1 ..= contiguous + SEQ_WINDOW`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ha2State {
    pub epoch: u32,
    /// Every message up to this sequence number arrived (or was given up, see `skipped`).
    pub contiguous: u32,
    /// Highest sequence number seen.
    pub highest: u32,
    /// Messages given up because one arrived beyond the window: only a resync recovers them.
    pub skipped: u32,
    /// Sequence number of the last bulk-sync end marker: the bulk sync is complete once
    /// `contiguous` reaches it.
    pub bulk_end_sequence: u32,
    /// Sequence number of the last bulk-sync start marker.
    pub bulk_start_sequence: u32,
    /// Non-zero once messages were given up (see `skipped`) and until the next bulk-sync start
    /// marker arrives: this node lacks what they carried, the last bulk sync is no longer
    /// complete, and the controller asks for a resync until one starts.
    pub resync_needed: u32,
    pub _pad: u32,
    /// The program's clock when the last bulk-sync start and end markers arrived (0: never).
    pub bulk_started_ns: u64,
    pub bulk_ended_ns: u64,
    pub seen: [u64; SEQ_WINDOW_WORDS],
}
impl_pod!(Ha2State);

impl Default for Ha2State {
    fn default() -> Self {
        Self {
            epoch: 0,
            contiguous: 0,
            highest: 0,
            skipped: 0,
            bulk_end_sequence: 0,
            bulk_start_sequence: 0,
            resync_needed: 0,
            _pad: 0,
            bulk_started_ns: 0,
            bulk_ended_ns: 0,
            seen: [0; SEQ_WINDOW_WORDS],
        }
    }
}

impl Ha2State {
    /// Word and bit of sequence number `seq` in `seen`.
    #[inline(always)]
    pub const fn slot(seq: u32) -> (usize, u64) {
        (
            (seq as usize / 64) & (SEQ_WINDOW_WORDS - 1),
            1u64 << (seq % 64),
        )
    }

    /// Whether message `seq` (above `contiguous`) arrived.
    pub const fn has(&self, seq: u32) -> bool {
        let (word, bit) = Self::slot(seq);
        self.seen[word] & bit != 0
    }

    /// The numbers above `contiguous`, up to `highest`, that have not arrived.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (self.contiguous.saturating_add(1)..=self.highest).filter(|&seq| !self.has(seq))
    }

    /// The last bulk sync's start and end markers both arrived, in either order: the end
    /// marker held is later in the sequence than the start marker held. (A start marker lost and
    /// sent again arrives after its end marker.)
    pub const fn bulk_ended(&self) -> bool {
        self.bulk_started_ns != 0
            && self.bulk_ended_ns != 0
            && self.bulk_end_sequence > self.bulk_start_sequence
    }

    /// The last bulk sync ended, every message up to its end arrived and none since was given
    /// up: this node holds every session the sender had.
    pub const fn bulk_complete(&self) -> bool {
        self.bulk_ended() && self.contiguous >= self.bulk_end_sequence && self.resync_needed == 0
    }

    /// How long the last complete bulk sync took to arrive, from its start marker to its end
    /// marker; unknown when the start marker came last (lost and sent again).
    pub const fn bulk_duration_ns(&self) -> Option<u64> {
        if self.bulk_complete() {
            self.bulk_ended_ns.checked_sub(self.bulk_started_ns)
        } else {
            None
        }
    }

    /// Once the last bulk sync is complete, where it started: the bulk sync wrote every session
    /// the sender had, and every message since writes with a later stamp, so a session it did not
    /// write is one the sender no longer has (deleted while this node was away, or its delete was
    /// lost in a gap a resync filled).
    pub const fn current_since(&self) -> Option<BulkMark> {
        if self.bulk_complete() {
            Some(BulkMark {
                epoch: self.epoch as u16,
                sequence: self.bulk_start_sequence,
            })
        } else {
            None
        }
    }
}

/// Where a complete bulk sync started (see [`Ha2State::current_since`]): its sender epoch (low 16
/// bits) and start marker's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkMark {
    pub epoch: u16,
    pub sequence: u32,
}

impl BulkMark {
    /// `value` was written by the bulk sync or a later message of its sender epoch (the stamp
    /// `SessionValue::sync_epoch`/`sync_sequence`).
    pub const fn wrote(&self, value: &SessionValue) -> bool {
        value.sync_epoch == self.epoch && value.sync_sequence >= self.sequence
    }
}

/// Index of the single entry of `HA2_CONFIG`, `HA2_STATE` and `HA2_COUNTERS`.
pub const HA2_INDEX: u32 = 0;

/// Ingest counters (map `HA2_COUNTERS`, per-CPU array of one; pinned as `ha2_counters`).
///
/// Every frame the ingest program sees increments `rx_frames` and exactly one of `pass_not_ha2`,
/// `accepted` or a `drop_*` counter; the record counters count records, not frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ha2Counters {
    pub rx_frames: u64,
    /// Not an HA2 message (ARP, HA1, anything else): handed to the kernel.
    pub pass_not_ha2: u64,
    /// A valid message, processed.
    pub accepted: u64,
    pub session_updates: u64,
    pub session_deletes: u64,
    pub neighbours: u64,
    pub bulk_starts: u64,
    pub bulk_ends: u64,
    pub keepalives: u64,
    /// The session map refused a synced entry.
    pub session_write_failed: u64,
    /// Session records (updates and deletes) skipped because a newer message of the same sender
    /// epoch already wrote their session (a retransmission that filled its gap after the
    /// messages that followed it).
    pub stale_records: u64,
    /// Session records whose key names no session table (a family other than IPv4 and IPv6, or
    /// an IPv4 key with address words 1 to 3 not zero), skipped; the rest of their message is
    /// applied (see `names_a_table` in the ingest program).
    pub bad_records: u64,
    /// Messages that arrived after a gap in the sequence (the gap itself is in `HA2_STATE`).
    pub out_of_order: u64,
    pub drop_bad_magic: u64,
    pub drop_bad_version: u64,
    pub drop_wrong_group: u64,
    pub drop_wrong_peer: u64,
    pub drop_truncated: u64,
    pub drop_count_beyond_frame: u64,
    /// Sequence number already seen in this epoch (replay or duplicate).
    pub drop_old_sequence: u64,
    pub drop_unknown_type: u64,
    /// HA2 arrived while this node does not receive sync (active, or sync off).
    pub drop_not_receiving: u64,
    /// Retransmit and resync requests and keep-alives from the passive peer, passed to the
    /// controller.
    pub requests_passed: u64,
}
impl_pod!(Ha2Counters);

/// Every field of [`Ha2Counters`], in order.
macro_rules! for_each_ha2_counter {
    ($m:ident) => {
        $m!(
            rx_frames,
            pass_not_ha2,
            accepted,
            session_updates,
            session_deletes,
            neighbours,
            bulk_starts,
            bulk_ends,
            keepalives,
            session_write_failed,
            stale_records,
            bad_records,
            out_of_order,
            drop_bad_magic,
            drop_bad_version,
            drop_wrong_group,
            drop_wrong_peer,
            drop_truncated,
            drop_count_beyond_frame,
            drop_old_sequence,
            drop_unknown_type,
            drop_not_receiving,
            requests_passed
        )
    };
}

/// Number of fields in [`Ha2Counters`].
pub const HA2_COUNTER_FIELDS: usize = core::mem::size_of::<Ha2Counters>() / 8;

impl Ha2Counters {
    /// Adds `other` into `self`, field by field (summing per-CPU values).
    pub fn accumulate(&mut self, other: &Ha2Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f = self.$f.wrapping_add(other.$f); )* };
        }
        for_each_ha2_counter!(add);
    }

    /// `(name, value)` of every field, in struct order.
    pub fn fields(&self) -> [(&'static str, u64); HA2_COUNTER_FIELDS] {
        macro_rules! list {
            ($($f:ident),*) => { [ $( (stringify!($f), self.$f) ),* ] };
        }
        for_each_ha2_counter!(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input: the bulk-sync facts of the ingest state. Output: a mark only once the bulk sync is
    /// complete, and it covers exactly the sessions written by the bulk sync or after it.
    #[test]
    fn a_complete_bulk_sync_marks_what_it_did_not_write_as_outdated() {
        let st = |started, ended, start, end, contiguous| Ha2State {
            epoch: 0x1_0007,
            contiguous,
            bulk_start_sequence: start,
            bulk_end_sequence: end,
            bulk_started_ns: started,
            bulk_ended_ns: ended,
            ..Default::default()
        };
        assert_eq!(st(0, 0, 0, 0, 0).current_since(), None, "no bulk sync yet");
        assert_eq!(st(5, 0, 10, 0, 12).current_since(), None, "in progress");
        assert_eq!(
            st(5, 9, 10, 20, 19).current_since(),
            None,
            "a message missing"
        );
        assert_eq!(
            Ha2State {
                resync_needed: 1,
                ..st(5, 9, 10, 20, 30)
            }
            .current_since(),
            None,
            "messages given up since"
        );
        let mark = st(5, 9, 10, 20, 20).current_since();
        assert_eq!(
            mark,
            Some(BulkMark {
                epoch: 7,
                sequence: 10
            })
        );
        let stamped = |epoch, sequence| SessionValue {
            sync_epoch: epoch,
            sync_sequence: sequence,
            ..Default::default()
        };
        let mark = mark.unwrap();
        assert!(mark.wrote(&stamped(7, 10)));
        assert!(mark.wrote(&stamped(7, 500)));
        assert!(!mark.wrote(&stamped(7, 9)), "before the bulk sync");
        assert!(!mark.wrote(&stamped(6, 500)), "another sender epoch");
        assert!(!mark.wrote(&stamped(0, 0)), "never synced");
    }

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<Ha2Header>(), HA2_HEADER_LEN);
        assert_eq!(core::mem::size_of::<SessionRecord>(), 80);
        assert_eq!(core::mem::size_of::<NeighbourRecord>(), 32);
        assert_eq!(core::mem::size_of::<Ha2State>(), 48 + 8 * SEQ_WINDOW_WORDS);
        assert!(SEQ_WINDOW_WORDS.is_power_of_two());
        const { assert!(HA2_HEADER_LEN + MAX_RETRANSMIT_RANGES * 8 <= 1500 - 28) };
        const { assert!(20 + 8 + HA2_HEADER_LEN + MAX_SESSION_RECORDS * 80 <= 1500) };
        const { assert!(20 + 8 + HA2_HEADER_LEN + (MAX_SESSION_RECORDS + 1) * 80 > 1500) };
    }
}
