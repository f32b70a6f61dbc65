//! HA2 session sync, userspace half: the active node turns the fast path's session events into HA2
//! messages (see `hafw_common::ha2` for the format) and sends them on the HA2 link; a peer that
//! joins or rejoins gets a bulk sync of the whole table. The passive node's half is the XDP ingest
//! program; its controller switches it on and off, watches the markers it stamps (bulk start and
//! end: `state sync complete`) and its sequence window, and asks the active node to send again
//! what is missing ([`GapTracker`]); the active node serves those requests from its resend buffer
//! or with a resync ([`Sender::serve`]).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use hafw_common::{
    ha::{HA2_ETHERTYPE, HA2_IP_PROTO, HA2_UDP_PORT},
    ha2::{
        HA2_BULK_END, HA2_BULK_START, HA2_HEADER_LEN, HA2_KEEPALIVE, HA2_MAGIC, HA2_NEIGHBOUR,
        HA2_RESYNC_REQUEST, HA2_RETRANSMIT_REQUEST, HA2_SESSION_DELETE, HA2_SESSION_UPDATE,
        HA2_VERSION, Ha2Header, Ha2State, MAX_RETRANSMIT_RANGES, MAX_SESSION_RECORDS,
        NeighbourPlace, NeighbourRecord, RetransmitRange, SEQ_WINDOW, SessionRecord,
    },
    session::{SESSION_F_SYNCED, SESSION_F_UNCONFIRMED, SessionKey, SessionValue},
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
        flags: value.flags & !(SESSION_F_SYNCED | SESSION_F_UNCONFIRMED),
        ingress_zone: value.ingress_zone,
        egress_zone: value.egress_zone,
        packets_orig: value.packets_orig.min(u64::from(u32::MAX)) as u32,
        packets_reply: value.packets_reply.min(u64::from(u32::MAX)) as u32,
        bytes_orig: value.bytes_orig,
        bytes_reply: value.bytes_reply,
    }
}

/// The octets of a wire or map struct, in memory order.
pub(crate) fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `T` is one of the `#[repr(C)]` integer-only wire or map structs (explicit
    // padding), so every byte is initialized.
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

    /// One sequenced message; the sequence advances.
    pub fn message(&mut self, msg_type: u8, records: &[SessionRecord]) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        encode(self.header(msg_type, self.sequence, self.epoch), records)
    }

    /// One sequenced message of neighbour records.
    pub fn neighbour_message(&mut self, records: &[NeighbourRecord]) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        encode(
            self.header(HA2_NEIGHBOUR, self.sequence, self.epoch),
            records,
        )
    }

    /// A request about the peer's epoch `epoch` (not sequenced: requests are idempotent).
    pub fn request(&self, msg_type: u8, epoch: u32, ranges: &[RetransmitRange]) -> Vec<u8> {
        encode(self.header(msg_type, 0, epoch), ranges)
    }

    fn header(&self, msg_type: u8, sequence: u32, epoch: u32) -> Ha2Header {
        Ha2Header {
            magic: HA2_MAGIC,
            version: HA2_VERSION,
            group_id: self.group_id,
            msg_type,
            count: 0,
            sequence: sequence.to_le(),
            epoch: epoch.to_le(),
            sender: self.sender.to_le(),
            _reserved: 0,
        }
    }
}

fn encode<T: Copy>(mut header: Ha2Header, records: &[T]) -> Vec<u8> {
    header.count = records.len() as u8;
    let mut out = Vec::with_capacity(HA2_HEADER_LEN + size_of_val(records));
    out.extend_from_slice(bytes_of(&header));
    for r in records {
        out.extend_from_slice(bytes_of(r));
    }
    out
}

/// The session records of a message this node encoded, if it is of type `msg_type` (none
/// otherwise).
fn session_records(msg: &[u8], msg_type: u8) -> Vec<SessionRecord> {
    parse_header(msg)
        .filter(|h| h.msg_type == msg_type)
        .and_then(|h| records(msg, &h))
        .unwrap_or_default()
}

/// Update message `msg` (number `seq`) without the records of sessions that a later message
/// deleted, and how many it left out; other messages as they are.
fn without_deleted_later<'m>(
    msg: &'m [u8],
    seq: u32,
    deleted_in: &HashMap<SessionKey, u32>,
) -> (std::borrow::Cow<'m, [u8]>, u64) {
    // Numbers within the resend buffer are less than half the sequence space apart.
    let later = |deleted: u32| (deleted.wrapping_sub(seq) as i32) > 0;
    let header = match parse_header(msg) {
        Some(h) if h.msg_type == HA2_SESSION_UPDATE && !deleted_in.is_empty() => h,
        _ => return (msg.into(), 0),
    };
    let Some(records) = records::<SessionRecord>(msg, &header) else {
        return (msg.into(), 0);
    };
    let kept: Vec<SessionRecord> = records
        .iter()
        .filter(|r| !deleted_in.get(&r.key).is_some_and(|&d| later(d)))
        .copied()
        .collect();
    if kept.len() == records.len() {
        return (msg.into(), 0);
    }
    // Back to the wire's little-endian fields: the same header but for its record count.
    let header = Ha2Header {
        sequence: header.sequence.to_le(),
        epoch: header.epoch.to_le(),
        sender: header.sender.to_le(),
        ..header
    };
    let withheld = (records.len() - kept.len()) as u64;
    (encode(header, &kept).into(), withheld)
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

/// One HA2 link of the config.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub interface: String,
    pub transport: Ha2Transport,
    /// Local and peer addresses (`ip` and `udp` transports).
    pub local: Option<IpAddr>,
    pub peer: Option<IpAddr>,
}

/// Where messages go: the HA2 link, for either direction, and the HA2 backup link, used while
/// the HA2 link has no carrier.
pub struct Link {
    out: Out,
    interface: String,
    backup: Option<(Out, String)>,
    on_backup: bool,
}

enum Out {
    Ethernet(crate::ha::host::FrameSocket),
    Udp {
        socket: UdpSocket,
        peer: SocketAddr,
    },
    Ip {
        socket: socket2::Socket,
        peer: socket2::SockAddr,
    },
    /// Unit tests of the buffering logic: what would have been sent.
    #[cfg(test)]
    Recorded(Vec<Vec<u8>>),
}

/// The largest HA2 message: a full one of session records (a full one of neighbour records is
/// no larger).
const LARGEST_MESSAGE: usize = HA2_HEADER_LEN + MAX_SESSION_RECORDS * size_of::<SessionRecord>();

/// The MTU an HA2 link needs for the largest message over `transport` (its IPv4 and UDP headers
/// count against the MTU, the Ethernet header does not).
pub fn mtu_needed(transport: Ha2Transport) -> u32 {
    let headers = match transport {
        Ha2Transport::Ethernet => 0,
        Ha2Transport::Ip => 20,
        Ha2Transport::Udp => 28,
    };
    (LARGEST_MESSAGE + headers) as u32
}

/// Refuses an HA2 link whose MTU is too small for full messages: the kernel would refuse to send
/// them (or fragment them, which the ingest program does not reassemble), and sync would fail
/// with nothing but a growing error counter to show.
fn check_mtu(e: &Endpoint) -> Result<()> {
    let mtu = crate::ha::host::interface_mtu(&e.interface)
        .with_context(|| format!("HA2 interface {}: no such interface", e.interface))?;
    let needed = mtu_needed(e.transport);
    anyhow::ensure!(
        mtu >= needed,
        "HA2 interface {}: MTU {mtu} is below the {needed} octets the largest HA2 message needs \
         over the {} transport; raise its MTU (1500 is enough for every transport)",
        e.interface,
        e.transport.as_str()
    );
    Ok(())
}

impl Out {
    fn open(e: &Endpoint) -> Result<Out> {
        check_mtu(e)?;
        Ok(match e.transport {
            Ha2Transport::Ethernet => {
                Out::Ethernet(crate::ha::host::FrameSocket::open(&e.interface)?)
            }
            Ha2Transport::Udp => {
                let peer = e.peer.context("HA2 udp transport needs the peer address")?;
                let local = e.local.context("HA2 udp transport needs a local address")?;
                Out::Udp {
                    socket: UdpSocket::bind((local, 0))?,
                    peer: SocketAddr::new(peer, HA2_UDP_PORT),
                }
            }
            Ha2Transport::Ip => {
                let peer = e.peer.context("HA2 ip transport needs the peer address")?;
                Out::Ip {
                    socket: raw_ip_socket()?,
                    peer: SocketAddr::new(peer, 0).into(),
                }
            }
        })
    }

    fn send(&mut self, msg: &[u8]) -> bool {
        match self {
            Out::Ethernet(socket) => {
                // The HA2 link is point to point: broadcast reaches the peer without knowing its
                // MAC (MACs are per host and never configured).
                let frame = ethernet_frame([0xff; 6], socket.mac, msg);
                socket.send(&frame).is_ok()
            }
            Out::Udp { socket, peer } => socket.send_to(msg, *peer).is_ok(),
            Out::Ip { socket, peer } => socket.send_to(msg, &*peer).is_ok(),
            #[cfg(test)]
            Out::Recorded(sent) => {
                sent.push(msg.to_vec());
                true
            }
        }
    }
}

impl Link {
    /// Opens the HA2 link and, when configured, the HA2 backup link.
    pub fn open(link: &Endpoint, backup: Option<&Endpoint>) -> Result<Link> {
        let mut link = Link {
            out: Out::open(link)?,
            interface: link.interface.clone(),
            backup: backup
                .map(|b| Ok::<_, anyhow::Error>((Out::open(b)?, b.interface.clone())))
                .transpose()?,
            on_backup: false,
        };
        // The first messages (a bulk sync) must not go to a link already down.
        link.check_carrier();
        Ok(link)
    }

    /// Moves to the backup link while the HA2 link has no carrier, and back when it returns.
    pub fn check_carrier(&mut self) {
        let Some((_, backup)) = &self.backup else {
            return;
        };
        let on_backup = !crate::ha::host::has_carrier(&self.interface);
        if on_backup != self.on_backup {
            self.on_backup = on_backup;
            if on_backup {
                log::warn!(
                    "HA2: {} has no carrier; using the HA2 backup link {backup}",
                    self.interface
                );
            } else {
                log::info!(
                    "HA2: {} is back; leaving the HA2 backup link",
                    self.interface
                );
            }
        }
    }

    /// The interface messages go out on now.
    pub fn in_use(&self) -> &str {
        match &self.backup {
            Some((_, backup)) if self.on_backup => backup,
            _ => &self.interface,
        }
    }

    /// Sends one message; false when the kernel refused it.
    pub fn send(&mut self, msg: &[u8]) -> bool {
        match &mut self.backup {
            Some((out, _)) if self.on_backup => out.send(msg),
            _ => self.out.send(msg),
        }
    }

    #[cfg(test)]
    fn recorded() -> Link {
        Link {
            out: Out::Recorded(Vec::new()),
            interface: "test".into(),
            backup: None,
            on_backup: false,
        }
    }

    #[cfg(test)]
    fn sent_messages(&self) -> &[Vec<u8>] {
        match &self.out {
            Out::Recorded(sent) => sent,
            _ => &[],
        }
    }

    #[cfg(test)]
    fn sent(&self) -> Vec<u32> {
        match &self.out {
            Out::Recorded(sent) => sent
                .iter()
                .map(|m| parse_header(m).unwrap().sequence)
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn raw_ip_socket() -> Result<socket2::Socket> {
    socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(i32::from(HA2_IP_PROTO))),
    )
    .context("raw IP socket for HA2 (protocol 99)")
}

/// What the passive peer asks of the active node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    Retransmit {
        epoch: u32,
        ranges: Vec<RetransmitRange>,
    },
    Resync {
        epoch: u32,
    },
}

/// What the ingest program passes up to the controller from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// On the active node: the passive peer's request.
    Request(PeerRequest),
    /// On the passive node: the neighbour entries the active peer uses.
    Neighbours(Vec<NeighbourRecord>),
    /// On the active node: the passive peer's keep-alive.
    Keepalive,
}

/// Parses what arrives on the HA2 socket from `peer` in group `group_id`: requests, the passive
/// peer's (unsequenced) keep-alives and neighbour records; anything else is `None`.
pub fn parse_inbound(msg: &[u8], group_id: u8, peer: u32) -> Option<Inbound> {
    let h = parse_header(msg)?;
    if h.version != HA2_VERSION || h.group_id != group_id || h.sender != peer {
        return None;
    }
    Some(match h.msg_type {
        HA2_RESYNC_REQUEST => Inbound::Request(PeerRequest::Resync { epoch: h.epoch }),
        HA2_RETRANSMIT_REQUEST => Inbound::Request(PeerRequest::Retransmit {
            epoch: h.epoch,
            ranges: records(msg, &h)?,
        }),
        HA2_KEEPALIVE if h.sequence == 0 => Inbound::Keepalive,
        HA2_NEIGHBOUR => Inbound::Neighbours(records(msg, &h)?),
        _ => return None,
    })
}

/// The `h.count` records of type `T` that follow the header; `None` when the message is short.
fn records<T: Copy>(msg: &[u8], h: &Ha2Header) -> Option<Vec<T>> {
    let len = size_of::<T>();
    let body = msg.get(HA2_HEADER_LEN..HA2_HEADER_LEN + usize::from(h.count) * len)?;
    Some(
        body.chunks_exact(len)
            // SAFETY: exact chunks of a little-endian, integer-only wire struct (see the format);
            // unaligned read.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
            .collect(),
    )
}

/// Receives what the ingest program passes up from the peer on the HA2 link (requests on the
/// active node, neighbour entries on the passive one) in a thread of its own, until `stop` is
/// set.
pub fn spawn_listener(
    endpoint: &Endpoint,
    group_id: u8,
    peer: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    inbound: tokio::sync::mpsc::UnboundedSender<Inbound>,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    // Each socket hands over what arrives and where the HA2 message starts in it.
    let (socket, offset): (socket2::Socket, fn(&[u8]) -> usize) = match endpoint.transport {
        Ha2Transport::Ethernet => (
            crate::ha::host::FrameSocket::open_protocol(&endpoint.interface, HA2_ETHERTYPE)?
                .into_socket()
                .context("HA2 receive socket")?,
            |_| 14,
        ),
        Ha2Transport::Udp => {
            let local = endpoint
                .local
                .context("HA2 udp transport needs a local address")?;
            let socket = UdpSocket::bind((local, HA2_UDP_PORT))
                .with_context(|| format!("binding {local}:{HA2_UDP_PORT} for HA2"))?;
            (socket2::Socket::from(socket), |_| 0)
        }
        // Raw IPv4 sockets deliver the IP header too.
        Ha2Transport::Ip => (raw_ip_socket()?, |p| usize::from(p[0] & 0x0f) * 4),
    };
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let socket = std::net::UdpSocket::from(std::os::fd::OwnedFd::from(socket));
    std::thread::Builder::new()
        .name("ha2-inbound".into())
        .spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                // recv(2) through the std wrapper: any socket type, with the read timeout above.
                let Ok(len) = socket.recv(&mut buf) else {
                    continue;
                };
                let packet = &buf[..len];
                if packet.is_empty() {
                    continue;
                }
                let at = offset(packet).min(len);
                if let Some(msg) = parse_inbound(&packet[at..], group_id, peer)
                    && inbound.send(msg).is_err()
                {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Sent and received HA2 traffic, for `show high-availability state-synchronization`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncStats {
    pub messages_sent: u64,
    pub session_updates_sent: u64,
    pub session_deletes_sent: u64,
    /// Of the updates: busy sessions re-sent by the aging walk so their ages stay current on
    /// the peer (`aging::refresh_due`).
    pub age_refreshes_sent: u64,
    pub bulk_syncs_sent: u64,
    pub keepalives_sent: u64,
    pub neighbours_sent: u64,
    pub send_errors: u64,
    /// Requests from the passive peer, and what they cost.
    pub retransmit_requests_received: u64,
    pub messages_retransmitted: u64,
    /// Bulk syncs sent because a lost message was no longer in the resend buffer, or the peer
    /// asked for one.
    pub resyncs_sent: u64,
    /// Records left out of retransmitted messages because a later message deleted their
    /// session (see [`Sender::serve`]).
    pub retransmit_records_withheld: u64,
    /// Numbers asked for that a later bulk sync superseded (not sent again).
    pub requests_superseded: u64,
    /// Duration of the last bulk sync this node sent, and how many sessions it carried.
    pub last_bulk_sent_ms: Option<f64>,
    pub last_bulk_sent_sessions: Option<u64>,
}

/// Messages the active node keeps for retransmission (about 12 MiB), and beyond them those of
/// the last bulk sync until this many more were sent after it: a bulk sync of a large table is
/// sent in one go (1M sessions: 55,556 messages), the peer's requests are served after it, and a
/// message lost early in it must still be there (else each loss would cost the whole table again,
/// and the next bulk sync would lose another).
pub const RESEND_BUFFER: usize = 8192;

/// The last sequence number an epoch uses: past it the sender moves to a new epoch and sends the
/// table again, before the numbers wrap (the receiver compares them as plain integers). At the
/// fastest rate measured, a bulk sync's 62,000 messages/s, that is 19 hours; a busy node's
/// stream of changes gets there in days.
pub const LAST_SEQUENCE: u32 = u32::MAX - (1 << 24);

/// The active node's HA2 sender.
pub struct Sender {
    link: Link,
    writer: MessageWriter,
    updates: Vec<SessionRecord>,
    deletes: Vec<SessionRecord>,
    /// The last [`RESEND_BUFFER`] sequenced messages (more after a bulk sync, see there),
    /// oldest first, numbers contiguous.
    resend: VecDeque<(u32, Vec<u8>)>,
    /// Sequence numbers of the last bulk sync's start and end markers in this epoch (the end
    /// is `u32::MAX` while it is being sent).
    last_bulk: Option<(u32, u32)>,
    /// Each session deleted by a message still in the resend buffer, with that message's number.
    deleted_in: HashMap<SessionKey, u32>,
    /// Data went out since the last keep-alive (see [`Sender::probe_tail`]).
    unprobed: bool,
    pub stats: SyncStats,
}

/// What serving a request takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    Done,
    /// A message asked for is no longer buffered (or the peer asked for it): send the table.
    NeedsResync,
}

impl Sender {
    pub fn new(link: Link, writer: MessageWriter) -> Sender {
        Sender {
            link,
            writer,
            updates: Vec::with_capacity(MAX_SESSION_RECORDS),
            deletes: Vec::with_capacity(MAX_SESSION_RECORDS),
            resend: VecDeque::with_capacity(1024),
            last_bulk: None,
            deleted_in: HashMap::new(),
            unprobed: false,
            stats: SyncStats::default(),
        }
    }

    pub fn epoch(&self) -> u32 {
        self.writer.epoch
    }

    /// See [`Link::check_carrier`].
    pub fn check_links(&mut self) {
        self.link.check_carrier();
    }

    pub fn link_in_use(&self) -> String {
        self.link.in_use().to_owned()
    }

    fn send(&mut self, msg_type: u8, records: &[SessionRecord]) {
        let msg = self.writer.message(msg_type, records);
        self.send_sequenced(msg_type, msg);
    }

    /// Sends a message the writer just numbered, keeping it for retransmission.
    fn send_sequenced(&mut self, msg_type: u8, msg: Vec<u8>) {
        if self.link.send(&msg) {
            self.stats.messages_sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
        self.resend.push_back((self.writer.sequence, msg));
        self.unprobed = msg_type != HA2_KEEPALIVE;
        while self.resend.len() > RESEND_BUFFER
            && let Some(&(oldest, _)) = self.resend.front()
            && !self.keeps_for_bulk(oldest)
            && let Some((seq, old)) = self.resend.pop_front()
        {
            for r in session_records(&old, HA2_SESSION_DELETE) {
                if self.deleted_in.get(&r.key) == Some(&seq) {
                    self.deleted_in.remove(&r.key);
                }
            }
        }
    }

    /// Message `seq` belongs to the last bulk sync, which is kept whole until [`RESEND_BUFFER`]
    /// messages went out after it.
    fn keeps_for_bulk(&self, seq: u32) -> bool {
        self.last_bulk.is_some_and(|(start, end)| {
            seq >= start && self.writer.sequence < end.saturating_add(RESEND_BUFFER as u32)
        })
    }

    /// The epoch has used its sequence numbers up to [`LAST_SEQUENCE`]: the caller moves to a
    /// new one ([`Sender::renew_epoch`]) and sends the table again.
    pub fn epoch_used_up(&self) -> bool {
        self.writer.sequence >= LAST_SEQUENCE
    }

    /// Moves to the next epoch: numbering starts again at 1, and the receiver, seeing a new
    /// epoch, starts its tracking afresh. What is queued goes out first, in the old epoch; the
    /// resend buffer empties (requests about the old epoch are stale). The next epoch differs
    /// from this one in its low 16 bits, which synced sessions keep as their stamp, so no
    /// session written in this epoch looks newer than the next epoch's records.
    pub fn renew_epoch(&mut self) {
        self.flush();
        self.writer.epoch = self.writer.epoch.wrapping_add(1).max(1);
        self.writer.sequence = 0;
        self.resend.clear();
        self.deleted_in.clear();
        self.last_bulk = None;
    }

    /// Answers a request of the passive peer. Requests about another epoch (an earlier sender)
    /// are stale and ignored.
    ///
    /// A message is sent again without the records of sessions a later message deleted: the
    /// peer applied that delete already (or will have it sent again), and the old record would
    /// bring the session back there, for good: a passive node never ages synced sessions. (A
    /// message left without records still goes out, to fill the peer's gap.)
    pub fn serve(&mut self, request: &PeerRequest) -> Served {
        match request {
            PeerRequest::Resync { epoch } if *epoch == self.writer.epoch => Served::NeedsResync,
            PeerRequest::Retransmit { epoch, ranges } if *epoch == self.writer.epoch => {
                self.stats.retransmit_requests_received += 1;
                let Some(&(oldest, _)) = self.resend.front() else {
                    return Served::NeedsResync;
                };
                // Numbers before the last bulk sync are superseded by it (the peer gives them
                // up when its start marker arrives: a request made before that is moot).
                let superseded_below = self.last_bulk.map_or(0, |(start, _)| start);
                for r in ranges {
                    for seq in r.first..r.first.saturating_add(r.count.min(SEQ_WINDOW)) {
                        if seq > self.writer.sequence {
                            break;
                        }
                        if seq < superseded_below {
                            self.stats.requests_superseded += 1;
                            continue;
                        }
                        let Some((_, msg)) = seq
                            .checked_sub(oldest)
                            .and_then(|i| self.resend.get(i as usize))
                        else {
                            return Served::NeedsResync;
                        };
                        let (msg, withheld) = without_deleted_later(msg, seq, &self.deleted_in);
                        self.stats.retransmit_records_withheld += withheld;
                        if self.link.send(&msg) {
                            self.stats.messages_retransmitted += 1;
                        } else {
                            self.stats.send_errors += 1;
                        }
                    }
                }
                Served::Done
            }
            _ => Served::Done,
        }
    }

    /// Sends what is queued, then a keep-alive when data went out since the last one: a loss at
    /// the end of a burst shows up at the receiver as a gap below the keep-alive's number (a
    /// tail-loss probe).
    pub fn probe_tail(&mut self) {
        self.flush();
        if self.unprobed {
            self.keepalive();
        }
    }

    /// Queues a created or changed session; a full message goes out at once.
    ///
    /// Updates and deletes queue apart and [`Sender::flush`] sends updates first, so a session
    /// whose delete is queued goes out with that delete first: a tuple closed and reopened within
    /// one batch must reach the peer as delete-then-add, or the peer deletes the live session.
    /// (At most [`MAX_SESSION_RECORDS`] queued: a scan is cheap.)
    pub fn update(&mut self, r: SessionRecord) {
        if self.deletes.iter().any(|d| d.key == r.key) {
            self.flush_deletes();
        }
        self.updates.push(r);
        if self.updates.len() == MAX_SESSION_RECORDS {
            self.flush_updates();
        }
    }

    /// Queues a closed session; a queued update of it goes out first (see [`Sender::update`]).
    pub fn delete(&mut self, key: SessionKey) {
        if self.updates.iter().any(|u| u.key == key) {
            self.flush_updates();
        }
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
            for r in &records {
                self.deleted_in.insert(r.key, self.writer.sequence);
            }
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
        let start = self.writer.sequence;
        self.last_bulk = Some((start, u32::MAX));
        for (k, v) in sessions {
            self.update(record(k, v, now_ns));
        }
        self.flush();
        self.send(HA2_BULK_END, &[]);
        self.last_bulk = Some((start, self.writer.sequence));
        self.stats.bulk_syncs_sent += 1;
        self.stats.last_bulk_sent_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        self.stats.last_bulk_sent_sessions = Some(sessions.len() as u64);
    }

    pub fn keepalive(&mut self) {
        self.stats.keepalives_sent += 1;
        self.send(HA2_KEEPALIVE, &[]);
    }

    /// Neighbour entries, as many to a message as fit.
    pub fn neighbours(&mut self, records: &[NeighbourRecord]) {
        for chunk in records.chunks(MAX_NEIGHBOUR_RECORDS) {
            let msg = self.writer.neighbour_message(chunk);
            self.stats.neighbours_sent += chunk.len() as u64;
            self.send_sequenced(HA2_NEIGHBOUR, msg);
        }
    }
}

/// Neighbour records per message (1,500-octet MTU, any transport).
pub const MAX_NEIGHBOUR_RECORDS: usize =
    (1500 - 28 - HA2_HEADER_LEN) / size_of::<NeighbourRecord>();

/// How long a number may be missing before it is asked for: one poll of the window, so a message
/// merely reordered on the way is not requested.
pub const REORDER_GRACE: Duration = Duration::from_millis(2);
/// How long a request may go unanswered before the same number is asked for again.
pub const RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(20);
/// Least time between two resync requests (a bulk sync starts within milliseconds of the
/// request, its first message clears the need; a request lost on the way is made again).
pub const RESYNC_HOLDOFF: Duration = Duration::from_secs(1);
/// Missing numbers tracked at once; more are asked for once these arrive.
const MAX_TRACKED: usize = 4096;

/// The passive node's side of HA2 reliability, as pure logic: fed snapshots of the ingest
/// program's sequence window and the time, it says what to ask the active node for.
#[derive(Debug, Default)]
pub struct GapTracker {
    epoch: u32,
    skipped: u32,
    /// Missing numbers: when first seen missing, and when last asked for.
    missing: BTreeMap<u32, (Instant, Option<Instant>)>,
    last_resync: Option<Instant>,
    pub stats: GapStats,
}

/// The passive node's reliability counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GapStats {
    /// Sequence numbers found missing (each counted once).
    pub gaps_detected: u64,
    pub retransmit_requests_sent: u64,
    /// Numbers asked for, including repeated asks.
    pub messages_requested: u64,
    pub resync_requests_sent: u64,
    /// Messages given up by the window (only a resync recovers them).
    pub messages_skipped: u64,
}

impl GapTracker {
    /// Looks at the window `st` at `now`; returns the request to send, if any.
    pub fn poll(&mut self, st: &Ha2State, now: Instant) -> Option<PeerRequest> {
        if st.epoch != self.epoch {
            // A new sender: everything before it is moot.
            self.epoch = st.epoch;
            self.skipped = 0;
            self.missing.clear();
        }
        if st.epoch == 0 {
            return None;
        }
        if st.skipped != self.skipped {
            self.stats.messages_skipped += u64::from(st.skipped.wrapping_sub(self.skipped));
            self.skipped = st.skipped;
        }
        // Asked again each hold-off until a bulk sync starts (the program then clears the flag):
        // a request lost on the way must not leave this node short of what was given up.
        if st.resync_needed != 0
            && self
                .last_resync
                .is_none_or(|t| now.duration_since(t) >= RESYNC_HOLDOFF)
        {
            self.last_resync = Some(now);
            self.stats.resync_requests_sent += 1;
            self.missing.clear();
            return Some(PeerRequest::Resync { epoch: st.epoch });
        }
        // What is missing now; numbers that arrived meanwhile drop out.
        let mut still = BTreeMap::new();
        for seq in st.missing().take(MAX_TRACKED) {
            let entry = self.missing.get(&seq).copied().unwrap_or_else(|| {
                self.stats.gaps_detected += 1;
                (now, None)
            });
            still.insert(seq, entry);
        }
        self.missing = still;
        let mut ranges: Vec<RetransmitRange> = Vec::new();
        for (&seq, (first_missing, asked)) in self.missing.iter_mut() {
            let due = match asked {
                None => now.duration_since(*first_missing) >= REORDER_GRACE,
                Some(t) => now.duration_since(*t) >= RETRANSMIT_TIMEOUT,
            };
            if !due {
                continue;
            }
            let extends_last = ranges.last().is_some_and(|r| r.first + r.count == seq);
            if extends_last {
                if let Some(r) = ranges.last_mut() {
                    r.count += 1;
                }
            } else if ranges.len() == MAX_RETRANSMIT_RANGES {
                break;
            } else {
                ranges.push(RetransmitRange {
                    first: seq,
                    count: 1,
                });
            }
            *asked = Some(now);
            self.stats.messages_requested += 1;
        }
        if ranges.is_empty() {
            return None;
        }
        self.stats.retransmit_requests_sent += 1;
        Some(PeerRequest::Retransmit {
            epoch: st.epoch,
            ranges,
        })
    }
}

/// How often the active node sends the passive one every neighbour entry again, changed or not:
/// the passive node holds each for [`NEIGHBOUR_LEASE`] after it last came.
pub const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(20);
/// How long a passive node keeps a synced neighbour entry the active node stopped sending (it no
/// longer has it): three refreshes, so one or two lost messages lose nothing.
pub const NEIGHBOUR_LEASE: Duration = Duration::from_secs(60);

/// The neighbour entries a passive node installed for its active peer, each with when the peer
/// last sent it. The kernel never ages them out (they are installed `extern_learn`: a passive
/// node does not use them, and garbage collection would drop unused entries after a minute), so
/// the node removes itself those the peer stopped sending.
#[derive(Debug, Default)]
pub struct NeighbourLeases {
    held: HashMap<NeighbourPlace, (NeighbourRecord, Instant)>,
    seeded: bool,
}

impl NeighbourLeases {
    /// Whether the entries found in the kernel are still to be taken in (see [`Self::seed`]).
    pub fn needs_seed(&self) -> bool {
        !self.seeded
    }

    /// Takes in the synced entries the kernel holds when the node starts receiving: some may
    /// come from a peer (or a controller of this node) that ran before, and unless the peer
    /// sends them again they expire like the others.
    pub fn seed(&mut self, found: &[NeighbourRecord], now: Instant) {
        for r in found {
            self.held.entry(r.place()).or_insert((*r, now));
        }
        self.seeded = true;
    }

    /// The peer sent `records` at `now`.
    pub fn renew(&mut self, records: &[NeighbourRecord], now: Instant) {
        for r in records {
            self.held.insert(r.place(), (*r, now));
        }
    }

    /// Forgets and returns the entries not sent again within [`NEIGHBOUR_LEASE`] of `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<NeighbourRecord> {
        let mut expired = Vec::new();
        self.held.retain(|_, (record, renewed)| {
            let live = now.saturating_duration_since(*renewed) < NEIGHBOUR_LEASE;
            if !live {
                expired.push(*record);
            }
            live
        });
        expired
    }

    /// Forgets every entry (the node stopped receiving: a takeover made the entries its own).
    pub fn clear(&mut self) {
        self.held.clear();
        self.seeded = false;
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// HA2 keep-alive monitoring (PAN-OS "HA2 Keep-alive", action log), on either node: the peer
/// sends at least a keep-alive every interval, so silence longer than the threshold means the
/// HA2 link or the peer's sender failed; it is logged once, and so is the recovery.
#[derive(Debug)]
pub struct KeepaliveWatch {
    threshold: Duration,
    accepted: u64,
    last_heard: Instant,
    pub down: bool,
    /// Times the threshold was crossed.
    pub failures: u64,
}

/// A change of the HA2 keep-alive status.
#[derive(Debug, PartialEq, Eq)]
pub enum KeepaliveEvent {
    Lost { silent: Duration },
    Restored,
}

impl KeepaliveWatch {
    pub fn new(threshold: Duration, now: Instant) -> Self {
        Self {
            threshold,
            accepted: 0,
            last_heard: now,
            down: false,
            failures: 0,
        }
    }

    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// Feeds the count of messages heard from the peer so far, at `now`.
    pub fn poll(&mut self, accepted: u64, now: Instant) -> Option<KeepaliveEvent> {
        if accepted != self.accepted {
            self.accepted = accepted;
            self.last_heard = now;
            if self.down {
                self.down = false;
                return Some(KeepaliveEvent::Restored);
            }
            return None;
        }
        let silent = now.duration_since(self.last_heard);
        if !self.down && silent > self.threshold {
            self.down = true;
            self.failures += 1;
            return Some(KeepaliveEvent::Lost { silent });
        }
        None
    }
}

/// The passive node's request sender: the HA2 link back to the active node.
pub struct Requester {
    link: Link,
    writer: MessageWriter,
    pub tracker: GapTracker,
    pub keepalive: KeepaliveWatch,
    pub send_errors: u64,
}

impl Requester {
    pub fn new(link: Link, writer: MessageWriter, keepalive_threshold: Duration) -> Requester {
        Requester {
            link,
            writer,
            tracker: GapTracker::default(),
            keepalive: KeepaliveWatch::new(keepalive_threshold, Instant::now()),
            send_errors: 0,
        }
    }

    /// See [`Link::check_carrier`].
    pub fn check_links(&mut self) {
        self.link.check_carrier();
    }

    pub fn link_in_use(&self) -> String {
        self.link.in_use().to_owned()
    }

    /// A keep-alive back to the active node (unsequenced), about the epoch it is sending, once
    /// one was heard.
    pub fn keepalive(&mut self) {
        if self.tracker.epoch == 0 {
            return;
        }
        let msg = self.writer.request(HA2_KEEPALIVE, self.tracker.epoch, &[]);
        if !self.link.send(&msg) {
            self.send_errors += 1;
        }
    }

    /// Polls the tracker with `st` and sends what it asks for.
    pub fn poll(&mut self, st: &Ha2State, now: Instant) {
        let msg = match self.tracker.poll(st, now) {
            Some(PeerRequest::Retransmit { epoch, ranges }) => {
                self.writer.request(HA2_RETRANSMIT_REQUEST, epoch, &ranges)
            }
            Some(PeerRequest::Resync { epoch }) => {
                self.writer.request(HA2_RESYNC_REQUEST, epoch, &[])
            }
            None => return,
        };
        if !self.link.send(&msg) {
            self.send_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_leases_expire_the_entries_the_peer_stopped_sending() {
        let t0 = Instant::now();
        let entry = |last: u8| NeighbourRecord {
            addr: [198, 18, 2, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            mac: [2, 0, 0, 0, 0, last],
            port: 2,
            family: libc::AF_INET as u8,
            _pad: [0; 7],
        };
        let mut leases = NeighbourLeases::default();
        leases.renew(&[entry(1), entry(2)], t0);
        // Every refresh renews the entries the peer still has: entry 2 is gone from it.
        let mut now = t0;
        while now < t0 + NEIGHBOUR_LEASE - NEIGHBOUR_REFRESH {
            now += NEIGHBOUR_REFRESH;
            leases.renew(&[entry(1)], now);
            assert_eq!(leases.expire(now), vec![], "{:?}", now - t0);
        }
        assert_eq!(leases.len(), 2);
        assert_eq!(leases.expire(t0 + NEIGHBOUR_LEASE), vec![entry(2)]);
        assert_eq!(leases.len(), 1);
        // Entry 1, renewed last at `now`, lasts a lease from then.
        assert_eq!(
            leases.expire(now + NEIGHBOUR_LEASE - Duration::from_millis(1)),
            vec![]
        );
        assert_eq!(leases.expire(now + NEIGHBOUR_LEASE), vec![entry(1)]);
        assert!(leases.is_empty());
        // Entries found in the kernel when receiving starts expire unless the peer sends them.
        let mut leases = NeighbourLeases::default();
        assert!(leases.needs_seed());
        leases.renew(&[entry(1)], t0 + Duration::from_secs(5));
        leases.seed(&[entry(1), entry(3)], t0);
        assert!(!leases.needs_seed());
        assert_eq!(leases.expire(t0 + NEIGHBOUR_LEASE), vec![entry(3)]);
        assert_eq!(leases.len(), 1);
    }

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
            flags: SESSION_F_SYNCED | SESSION_F_UNCONFIRMED | 1,
            ..Default::default()
        };
        let r = record(&SessionKey::default(), &v, 10_000_000_000);
        assert_eq!((r.age_ms, r.idle_ms, r.flags), (9000, 1000, 1));
    }

    fn state(epoch: u32, contiguous: u32, arrived: &[u32]) -> Ha2State {
        let mut st = Ha2State {
            epoch,
            contiguous,
            highest: contiguous,
            ..Default::default()
        };
        for &seq in arrived {
            let (word, bit) = Ha2State::slot(seq);
            st.seen[word] |= bit;
            st.highest = st.highest.max(seq);
        }
        st
    }

    fn ranges(req: Option<PeerRequest>) -> Vec<(u32, u32)> {
        match req {
            Some(PeerRequest::Retransmit { ranges, .. }) => {
                ranges.iter().map(|r| (r.first, r.count)).collect()
            }
            other => panic!("expected a retransmit request, got {other:?}"),
        }
    }

    #[test]
    fn gaps_are_asked_for_after_the_grace_and_again_after_the_timeout() {
        let t0 = Instant::now();
        let mut g = GapTracker::default();
        // 11 and 12 are missing, 13 and 15 arrived, 14 is missing.
        let st = state(3, 10, &[13, 15]);
        assert_eq!(g.poll(&st, t0), None, "reordering grace");
        assert_eq!(ranges(g.poll(&st, t0 + REORDER_GRACE)), [(11, 2), (14, 1)]);
        assert_eq!(
            g.poll(&st, t0 + REORDER_GRACE * 2),
            None,
            "request outstanding"
        );
        // 11 arrives; 12 and 14 are asked for again after the timeout.
        let st = state(3, 11, &[13, 15]);
        let again = t0 + REORDER_GRACE + RETRANSMIT_TIMEOUT;
        assert_eq!(ranges(g.poll(&st, again)), [(12, 1), (14, 1)]);
        // Everything arrived: nothing to ask.
        assert_eq!(g.poll(&state(3, 15, &[]), again + RETRANSMIT_TIMEOUT), None);
        assert_eq!(g.stats.gaps_detected, 3);
        assert_eq!(g.stats.messages_requested, 5);
        assert_eq!(g.stats.retransmit_requests_sent, 2);
    }

    #[test]
    fn a_new_epoch_forgets_the_old_gaps_and_skips_ask_for_a_resync() {
        let t0 = Instant::now();
        let mut g = GapTracker::default();
        g.poll(&state(3, 10, &[12]), t0);
        assert_eq!(g.poll(&state(4, 0, &[]), t0 + REORDER_GRACE), None);
        let mut st = state(4, 70_000, &[]);
        st.skipped = 65_600;
        st.resync_needed = 1;
        assert_eq!(
            g.poll(&st, t0 + REORDER_GRACE),
            Some(PeerRequest::Resync { epoch: 4 })
        );
        st.skipped += 5;
        assert_eq!(g.poll(&st, t0 + REORDER_GRACE * 2), None, "resync hold-off");
        assert_eq!(
            g.poll(&st, t0 + RESYNC_HOLDOFF * 2),
            Some(PeerRequest::Resync { epoch: 4 })
        );
        assert_eq!(g.stats.messages_skipped, 65_605);
    }

    /// Input: messages given up, the resync request lost on the way (no bulk sync starts), then
    /// one that starts. Output: the request is made again each hold-off until then, and no more.
    #[test]
    fn a_resync_is_asked_for_again_until_a_bulk_sync_starts() {
        let t0 = Instant::now();
        let mut g = GapTracker::default();
        let mut st = state(4, 70_000, &[]);
        st.skipped = 65_600;
        st.resync_needed = 1;
        let asked = |g: &mut GapTracker, st: &Ha2State, at| {
            g.poll(st, at) == Some(PeerRequest::Resync { epoch: 4 })
        };
        assert!(asked(&mut g, &st, t0));
        // Later messages arrive in order: no gap, but the loss stands.
        st.contiguous = 70_100;
        st.highest = 70_100;
        assert!(!asked(&mut g, &st, t0 + RESYNC_HOLDOFF / 2));
        assert!(asked(&mut g, &st, t0 + RESYNC_HOLDOFF));
        assert!(asked(&mut g, &st, t0 + RESYNC_HOLDOFF * 2));
        // The bulk sync's start marker clears the need.
        st.resync_needed = 0;
        assert_eq!(g.poll(&st, t0 + RESYNC_HOLDOFF * 4), None);
        assert_eq!(g.stats.resync_requests_sent, 3);
    }

    #[test]
    fn requests_round_trip_and_foreign_ones_are_ignored() {
        let w = MessageWriter::new(7, 42);
        let ranges = [
            RetransmitRange { first: 5, count: 2 },
            RetransmitRange { first: 9, count: 1 },
        ];
        let msg = w.request(HA2_RETRANSMIT_REQUEST, 77, &ranges);
        assert_eq!(
            parse_inbound(&msg, 7, 42),
            Some(Inbound::Request(PeerRequest::Retransmit {
                epoch: 77,
                ranges: ranges.to_vec()
            }))
        );
        assert_eq!(parse_inbound(&msg, 8, 42), None, "other group");
        assert_eq!(parse_inbound(&msg, 7, 43), None, "other sender");
        assert_eq!(
            parse_inbound(&msg[..msg.len() - 1], 7, 42),
            None,
            "truncated"
        );
        let resync = w.request(HA2_RESYNC_REQUEST, 77, &[]);
        assert_eq!(
            parse_inbound(&resync, 7, 42),
            Some(Inbound::Request(PeerRequest::Resync { epoch: 77 }))
        );
        let mut data = MessageWriter::new(7, 42);
        assert_eq!(
            parse_inbound(&data.message(HA2_KEEPALIVE, &[]), 7, 42),
            None
        );
    }

    #[test]
    fn the_sender_resends_from_its_buffer_and_resyncs_beyond_it() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        for _ in 0..RESEND_BUFFER + 10 {
            s.keepalive();
        }
        let epoch = s.epoch();
        let newest = (RESEND_BUFFER + 10) as u32;
        let ask = |first, count| PeerRequest::Retransmit {
            epoch,
            ranges: vec![RetransmitRange { first, count }],
        };
        let before = s.link.sent().len();
        assert_eq!(s.serve(&ask(newest - 2, 2)), Served::Done);
        assert_eq!(s.link.sent()[before..], [newest - 2, newest - 1]);
        assert_eq!(s.serve(&ask(5, 1)), Served::NeedsResync, "evicted");
        assert_eq!(
            s.serve(&PeerRequest::Retransmit {
                epoch: epoch + 1,
                ranges: vec![RetransmitRange { first: 5, count: 1 }]
            }),
            Served::Done,
            "another epoch's request is stale"
        );
        assert_eq!(s.serve(&PeerRequest::Resync { epoch }), Served::NeedsResync);
        assert_eq!(s.stats.messages_retransmitted, 2);
    }

    /// A record of the session whose low port is `port` (the rest of its key zero).
    fn record_on_port(port: u16) -> SessionRecord {
        SessionRecord {
            key: SessionKey {
                port_lo: port,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A table of `n` sessions, for bulk syncs.
    fn table(n: u32) -> Vec<(SessionKey, SessionValue)> {
        (0..n)
            .map(|i| {
                let key = SessionKey {
                    addr_lo: [i, 0, 0, 0],
                    family: hafw_common::session::FAMILY_IPV4,
                    proto: 17,
                    ..Default::default()
                };
                (key, SessionValue::default())
            })
            .collect()
    }

    /// Input: a bulk sync of more messages than the resend buffer holds, then the peer's request
    /// for its first message (made during the bulk sync, served after it). Output: sent again
    /// from the buffer; the old code had dropped it and answered with another whole bulk sync,
    /// which lost another early message, and so on.
    #[test]
    fn a_whole_bulk_sync_stays_resendable_until_the_buffer_has_passed_it() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        let sessions = table((RESEND_BUFFER as u32 + 100) * MAX_SESSION_RECORDS as u32);
        s.bulk(&sessions, 0);
        let (start, end) = (1, s.writer.sequence);
        assert!((end - start) as usize > RESEND_BUFFER + 100);
        let epoch = s.epoch();
        let ask = |first| PeerRequest::Retransmit {
            epoch,
            ranges: vec![RetransmitRange { first, count: 1 }],
        };
        assert_eq!(s.serve(&ask(start + 1)), Served::Done);
        assert_eq!(s.link.sent().last(), Some(&(start + 1)));
        // Kept until RESEND_BUFFER more messages went out, then the buffer shrinks back.
        for _ in 0..RESEND_BUFFER - 1 {
            s.keepalive();
        }
        assert_eq!(s.serve(&ask(start + 2)), Served::Done);
        s.keepalive();
        assert_eq!(s.resend.len(), RESEND_BUFFER);
        assert_eq!(
            s.serve(&ask(end)),
            Served::NeedsResync,
            "passed by the buffer"
        );
    }

    /// Input: a message lost before a bulk sync and asked for after it. Output: nothing is sent
    /// and no resync follows: the bulk sync superseded it (the peer gives it up when the bulk
    /// sync's start marker arrives).
    #[test]
    fn a_number_before_the_last_bulk_sync_is_not_resynced_again() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        for _ in 0..RESEND_BUFFER + 10 {
            s.keepalive();
        }
        s.bulk(&table(10), 0);
        let epoch = s.epoch();
        let before = s.link.sent().len();
        let old = PeerRequest::Retransmit {
            epoch,
            ranges: vec![RetransmitRange { first: 5, count: 3 }],
        };
        assert_eq!(s.serve(&old), Served::Done);
        assert_eq!(s.link.sent().len(), before, "nothing sent");
        assert_eq!(s.stats.requests_superseded, 3);
    }

    /// Input: the sequence numbers of an epoch used up. Output: a new epoch, differing in the
    /// low 16 bits synced sessions keep, numbered from 1 again; the old epoch's requests are
    /// stale.
    #[test]
    fn a_used_up_epoch_gives_way_to_the_next_before_its_numbers_wrap() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        s.writer.sequence = LAST_SEQUENCE - 2;
        s.keepalive();
        assert!(!s.epoch_used_up());
        s.keepalive();
        s.keepalive();
        assert!(s.epoch_used_up());
        let old = s.epoch();
        s.renew_epoch();
        assert_ne!(s.epoch() as u16, old as u16);
        assert!(!s.epoch_used_up());
        s.keepalive();
        let h = parse_header(&s.link.sent_messages()[3]).unwrap();
        assert_eq!((h.epoch, h.sequence), (s.epoch(), 1));
        let stale = PeerRequest::Retransmit {
            epoch: old,
            ranges: vec![RetransmitRange {
                first: LAST_SEQUENCE,
                count: 1,
            }],
        };
        assert_eq!(s.serve(&stale), Served::Done);
        assert_eq!(s.link.sent_messages().len(), 4, "nothing sent again");
    }

    /// Input: an update of sessions A and B (message 1), a delete of A (2), a new update of A,
    /// its tuple reused (3); the peer asks for 1 and 3 again. Output: 1 comes back with B only
    /// (A's old record would bring the deleted session back on the peer for good), 3 whole; once
    /// the delete leaves the resend buffer, A is forgotten.
    #[test]
    fn a_retransmission_leaves_out_sessions_a_later_message_deleted() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        let (a, b) = (record_on_port(1), record_on_port(2));
        s.update(a);
        s.update(b);
        s.flush();
        s.delete(a.key);
        s.flush();
        s.update(a);
        s.flush();
        let epoch = s.epoch();
        let ask = |first| PeerRequest::Retransmit {
            epoch,
            ranges: vec![RetransmitRange { first, count: 1 }],
        };
        let keys = |msg: &[u8]| -> Vec<u16> {
            session_records(msg, HA2_SESSION_UPDATE)
                .iter()
                .map(|r| r.key.port_lo)
                .collect()
        };
        assert_eq!(s.serve(&ask(1)), Served::Done);
        let resent = s.link.sent_messages().last().unwrap().clone();
        assert_eq!(parse_header(&resent).unwrap().sequence, 1);
        assert_eq!(parse_header(&resent).unwrap().count, 1);
        assert_eq!(keys(&resent), [2], "A was deleted by message 2");
        assert_eq!(s.stats.retransmit_records_withheld, 1);
        s.serve(&ask(3));
        assert_eq!(
            keys(s.link.sent_messages().last().unwrap()),
            [1],
            "after the delete"
        );
        for _ in 0..RESEND_BUFFER {
            s.keepalive();
        }
        assert!(s.deleted_in.is_empty(), "the delete left the resend buffer");
    }

    #[test]
    fn keepalive_silence_beyond_the_threshold_is_reported_once_and_so_is_recovery() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeepaliveWatch::new(ms(300), t0);
        assert_eq!(k.poll(1, t0 + ms(100)), None);
        assert_eq!(
            k.poll(1, t0 + ms(400)),
            None,
            "300 ms silent: at the threshold"
        );
        assert_eq!(
            k.poll(1, t0 + ms(401)),
            Some(KeepaliveEvent::Lost { silent: ms(301) })
        );
        assert_eq!(k.poll(1, t0 + ms(900)), None, "reported once");
        assert_eq!(k.poll(2, t0 + ms(901)), Some(KeepaliveEvent::Restored));
        assert_eq!(k.failures, 1);
    }

    #[test]
    fn neighbour_records_round_trip() {
        let mut w = MessageWriter::new(7, 42);
        let n = NeighbourRecord {
            addr: [198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            mac: [2, 0, 0, 0, 0, 9],
            port: 1,
            family: 2,
            _pad: [0; 7],
        };
        let msg = w.neighbour_message(&[n, n]);
        assert_eq!(
            parse_inbound(&msg, 7, 42),
            Some(Inbound::Neighbours(vec![n, n]))
        );
        assert_eq!(parse_inbound(&msg, 7, 41), None, "other sender");
        let keepalive = w.request(HA2_KEEPALIVE, 3, &[]);
        assert_eq!(parse_inbound(&keepalive, 7, 42), Some(Inbound::Keepalive));
        let sequenced = w.message(HA2_KEEPALIVE, &[]);
        assert_eq!(
            parse_inbound(&sequenced, 7, 42),
            None,
            "the active's own kind"
        );
        const { assert!(HA2_HEADER_LEN + MAX_NEIGHBOUR_RECORDS * 32 <= 1500 - 28) };
    }

    /// Input: session A updated, closed (RST) and reopened with the same tuple, B updated around
    /// it, all within one batch (one flush). Output: the peer gets A's messages in that order,
    /// so it ends with A open: add A and B, delete A, add A again.
    #[test]
    fn a_session_closed_and_reopened_in_one_batch_reaches_the_peer_in_order() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        let (a, b) = (record_on_port(1), record_on_port(2));
        s.update(a);
        s.update(b);
        s.delete(a.key);
        s.update(a);
        s.flush();
        let sent: Vec<(u8, Vec<u16>)> = s
            .link
            .sent_messages()
            .iter()
            .map(|m| {
                let t = parse_header(m).unwrap().msg_type;
                let ports = session_records(m, t)
                    .iter()
                    .map(|r| r.key.port_lo)
                    .collect();
                (t, ports)
            })
            .collect();
        assert_eq!(
            sent,
            [
                (HA2_SESSION_UPDATE, vec![1, 2]),
                (HA2_SESSION_DELETE, vec![1]),
                (HA2_SESSION_UPDATE, vec![1]),
            ]
        );
        // Replaying them in order leaves A open on the peer.
        let mut peer = std::collections::BTreeSet::new();
        for (t, ports) in &sent {
            for p in ports {
                if *t == HA2_SESSION_UPDATE {
                    peer.insert(*p);
                } else {
                    peer.remove(p);
                }
            }
        }
        assert_eq!(peer, [1, 2].into());
        // Unrelated sessions still share a message per kind.
        let before = s.link.sent_messages().len();
        s.update(record_on_port(3));
        s.delete(record_on_port(4).key);
        s.update(record_on_port(5));
        s.flush();
        assert_eq!(s.link.sent_messages().len() - before, 2);
    }

    #[test]
    fn a_tail_probe_follows_data_only() {
        let mut s = Sender::new(Link::recorded(), MessageWriter::new(1, 1));
        s.probe_tail();
        assert_eq!(s.stats.keepalives_sent, 0);
        s.update(SessionRecord::default());
        s.flush();
        s.probe_tail();
        s.probe_tail();
        assert_eq!(s.stats.keepalives_sent, 1);
    }
}
