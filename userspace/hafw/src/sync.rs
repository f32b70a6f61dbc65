//! HA2 session sync, userspace half: the active node turns the fast path's session events into HA2
//! messages (see `hafw_common::ha2` for the format) and sends them on the HA2 link; a peer that
//! joins or rejoins gets a bulk sync of the whole table. The passive node's half is the XDP ingest
//! program; its controller only switches it on and off and watches the markers it passes up
//! (bulk start and end: `state sync complete`).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use hafw_common::{
    ha::{HA2_ETHERTYPE, HA2_IP_PROTO, HA2_UDP_PORT},
    ha2::{
        HA2_BULK_END, HA2_BULK_START, HA2_HEADER_LEN, HA2_KEEPALIVE, HA2_MAGIC, HA2_SESSION_DELETE,
        HA2_SESSION_UPDATE, HA2_VERSION, Ha2Header, MAX_SESSION_RECORDS, SessionRecord,
    },
    session::{SESSION_F_SYNCED, SessionKey, SessionValue},
};
use hafw_ha::Ha2Transport;
use serde::Serialize;

/// Session record of `value` at `now` (the program's clock): ages, never timestamps.
pub fn record(key: &SessionKey, value: &SessionValue, now_ns: u64) -> SessionRecord {
    let ms = |t: u64| (now_ns.saturating_sub(t) / 1_000_000).min(u64::from(u32::MAX)) as u32;
    SessionRecord {
        key: *key,
        rule_id: value.rule_id,
        idle_ms: ms(value.last_seen_ns),
        age_ms: ms(value.created_ns),
        state: value.state,
        // A session this node learned from its peer goes back as its own.
        flags: value.flags & !SESSION_F_SYNCED,
        ingress_zone: value.ingress_zone,
        egress_zone: value.egress_zone,
        packets_orig: value.packets_orig.min(u64::from(u32::MAX)) as u32,
        packets_reply: value.packets_reply.min(u64::from(u32::MAX)) as u32,
        bytes_orig: value.bytes_orig,
        bytes_reply: value.bytes_reply,
    }
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `T` is one of the `#[repr(C)]` integer-only wire structs (explicit padding), so
    // every byte is initialized.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Builds HA2 messages (header + records) for one sender epoch.
#[derive(Debug)]
pub struct MessageWriter {
    pub group_id: u8,
    pub sender: u32,
    pub epoch: u32,
    pub sequence: u32,
}

impl MessageWriter {
    /// A writer for a new epoch (random, never 0: 0 is the receiver's initial state).
    pub fn new(group_id: u8, sender: u32) -> Self {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        Self {
            group_id,
            sender,
            epoch: u32::from_le_bytes(b).max(1),
            sequence: 0,
        }
    }

    /// One message; the sequence advances.
    pub fn message(&mut self, msg_type: u8, records: &[SessionRecord]) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        let header = Ha2Header {
            magic: HA2_MAGIC,
            version: HA2_VERSION,
            group_id: self.group_id,
            msg_type,
            count: records.len() as u8,
            sequence: self.sequence.to_le(),
            epoch: self.epoch.to_le(),
            sender: self.sender.to_le(),
            _reserved: 0,
        };
        let mut out = Vec::with_capacity(HA2_HEADER_LEN + records.len() * 80);
        out.extend_from_slice(bytes_of(&header));
        for r in records {
            out.extend_from_slice(bytes_of(r));
        }
        out
    }
}

/// Parses a message header (little-endian fields converted).
pub fn parse_header(msg: &[u8]) -> Option<Ha2Header> {
    if msg.len() < HA2_HEADER_LEN {
        return None;
    }
    // SAFETY: length checked; unaligned read of a plain integer struct.
    let mut h: Ha2Header = unsafe { std::ptr::read_unaligned(msg.as_ptr().cast()) };
    if h.magic != HA2_MAGIC {
        return None;
    }
    h.sequence = u32::from_le(h.sequence);
    h.epoch = u32::from_le(h.epoch);
    h.sender = u32::from_le(h.sender);
    Some(h)
}

/// An Ethernet frame carrying `msg` (transport `ethernet`).
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + msg.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&HA2_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Where messages go.
enum Link {
    Ethernet(crate::ha::host::FrameSocket),
    Udp {
        socket: UdpSocket,
        peer: SocketAddr,
    },
    Ip {
        socket: socket2::Socket,
        peer: socket2::SockAddr,
    },
}

/// Sent and received HA2 traffic, for `show high-availability state-synchronization`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncStats {
    pub messages_sent: u64,
    pub session_updates_sent: u64,
    pub session_deletes_sent: u64,
    pub bulk_syncs_sent: u64,
    pub keepalives_sent: u64,
    pub send_errors: u64,
    /// Duration of the last bulk sync this node sent, and how many sessions it carried.
    pub last_bulk_sent_ms: Option<f64>,
    pub last_bulk_sent_sessions: Option<u64>,
}

/// The active node's HA2 sender.
pub struct Sender {
    link: Link,
    writer: MessageWriter,
    updates: Vec<SessionRecord>,
    deletes: Vec<SessionRecord>,
    pub stats: SyncStats,
}

impl Sender {
    /// Opens the HA2 link for `transport` (`peer` needed for `ip` and `udp`).
    pub fn open(
        interface: &str,
        transport: Ha2Transport,
        local: Option<IpAddr>,
        peer: Option<IpAddr>,
        writer: MessageWriter,
    ) -> Result<Sender> {
        let link = match transport {
            Ha2Transport::Ethernet => {
                Link::Ethernet(crate::ha::host::FrameSocket::open(interface)?)
            }
            Ha2Transport::Udp => {
                let peer = peer.context("HA2 udp transport needs the peer address")?;
                let local = local.context("HA2 udp transport needs a local address")?;
                Link::Udp {
                    socket: UdpSocket::bind((local, 0))?,
                    peer: SocketAddr::new(peer, HA2_UDP_PORT),
                }
            }
            Ha2Transport::Ip => {
                let peer = peer.context("HA2 ip transport needs the peer address")?;
                Link::Ip {
                    socket: socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::RAW,
                        Some(socket2::Protocol::from(i32::from(HA2_IP_PROTO))),
                    )
                    .context("raw IP socket for HA2 (protocol 99)")?,
                    peer: SocketAddr::new(peer, 0).into(),
                }
            }
        };
        Ok(Sender {
            link,
            writer,
            updates: Vec::with_capacity(MAX_SESSION_RECORDS),
            deletes: Vec::with_capacity(MAX_SESSION_RECORDS),
            stats: SyncStats::default(),
        })
    }

    fn send(&mut self, msg_type: u8, records: &[SessionRecord]) {
        let msg = self.writer.message(msg_type, records);
        let ok = match &mut self.link {
            Link::Ethernet(socket) => {
                // The HA2 link is point to point: broadcast reaches the peer without knowing its
                // MAC (MACs are per host and never configured).
                let frame = ethernet_frame([0xff; 6], socket.mac, &msg);
                socket.send(&frame).is_ok()
            }
            Link::Udp { socket, peer } => socket.send_to(&msg, *peer).is_ok(),
            Link::Ip { socket, peer } => socket.send_to(&msg, peer).is_ok(),
        };
        if ok {
            self.stats.messages_sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
    }

    /// Queues a created or changed session; a full message goes out at once.
    pub fn update(&mut self, r: SessionRecord) {
        self.updates.push(r);
        if self.updates.len() == MAX_SESSION_RECORDS {
            self.flush_updates();
        }
    }

    /// Queues a closed session.
    pub fn delete(&mut self, key: SessionKey) {
        self.deletes.push(SessionRecord {
            key,
            ..Default::default()
        });
        if self.deletes.len() == MAX_SESSION_RECORDS {
            self.flush_deletes();
        }
    }

    fn flush_updates(&mut self) {
        if !self.updates.is_empty() {
            let records = std::mem::take(&mut self.updates);
            self.stats.session_updates_sent += records.len() as u64;
            self.send(HA2_SESSION_UPDATE, &records);
            self.updates = records;
            self.updates.clear();
        }
    }

    fn flush_deletes(&mut self) {
        if !self.deletes.is_empty() {
            let records = std::mem::take(&mut self.deletes);
            self.stats.session_deletes_sent += records.len() as u64;
            self.send(HA2_SESSION_DELETE, &records);
            self.deletes = records;
            self.deletes.clear();
        }
    }

    /// Sends whatever is queued (end of one ring-buffer drain: latency stays one wake-up).
    pub fn flush(&mut self) {
        self.flush_updates();
        self.flush_deletes();
    }

    /// The whole table, between bulk-start and bulk-end markers.
    pub fn bulk(&mut self, sessions: &[(SessionKey, SessionValue)], now_ns: u64) {
        let started = Instant::now();
        self.flush();
        self.send(HA2_BULK_START, &[]);
        for (k, v) in sessions {
            self.update(record(k, v, now_ns));
        }
        self.flush();
        self.send(HA2_BULK_END, &[]);
        self.stats.bulk_syncs_sent += 1;
        self.stats.last_bulk_sent_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        self.stats.last_bulk_sent_sessions = Some(sessions.len() as u64);
    }

    pub fn keepalive(&mut self) {
        self.stats.keepalives_sent += 1;
        self.send(HA2_KEEPALIVE, &[]);
    }
}

/// What the passive node saw of the peer's bulk syncs (from the markers XDP passes up).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReceiveStatus {
    /// `state sync complete` once a bulk sync ended in this role.
    pub state: &'static str,
    pub bulk_started: Option<String>,
    pub last_bulk_ms: Option<f64>,
    pub keepalives_received: u64,
    #[serde(skip)]
    pub bulk_started_at: Option<Instant>,
}

impl ReceiveStatus {
    /// Feeds one marker message.
    pub fn on_marker(&mut self, h: &Ha2Header) {
        match h.msg_type {
            HA2_BULK_START => {
                self.state = "bulk sync in progress";
                self.bulk_started_at = Some(Instant::now());
            }
            HA2_BULK_END => {
                self.state = "state sync complete";
                self.last_bulk_ms = self
                    .bulk_started_at
                    .map(|t| t.elapsed().as_secs_f64() * 1e3);
            }
            HA2_KEEPALIVE => self.keepalives_received += 1,
            _ => {}
        }
    }
}

/// Bounded wait helper for callers polling the ingest state.
pub const SYNC_POLL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_header_and_records_little_endian() {
        let mut w = MessageWriter::new(7, 0x0102_0304);
        w.epoch = 9;
        let r = SessionRecord {
            rule_id: 5,
            idle_ms: 6,
            ..Default::default()
        };
        let m = w.message(HA2_SESSION_UPDATE, &[r, r]);
        assert_eq!(m.len(), 24 + 2 * 80);
        assert_eq!(&m[..8], &[b'h', b'a', b'2', b's', 1, 7, 1, 2]);
        assert_eq!(&m[8..20], &[1, 0, 0, 0, 9, 0, 0, 0, 4, 3, 2, 1]);
        let h = parse_header(&m).unwrap();
        assert_eq!((h.sequence, h.epoch, h.sender), (1, 9, 0x0102_0304));
        assert_eq!(w.message(HA2_KEEPALIVE, &[]).len(), 24);
        assert_eq!(w.sequence, 2);
    }

    #[test]
    fn records_carry_ages_not_clocks() {
        let v = SessionValue {
            created_ns: 1_000_000_000,
            last_seen_ns: 9_000_000_000,
            flags: SESSION_F_SYNCED | 1,
            ..Default::default()
        };
        let r = record(&SessionKey::default(), &v, 10_000_000_000);
        assert_eq!((r.age_ms, r.idle_ms, r.flags), (9000, 1000, 1));
    }
}
