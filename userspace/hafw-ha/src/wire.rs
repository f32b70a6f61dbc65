//! HA1 wire format: how hellos and heartbeats travel between the two nodes.
//!
//! One format serves both HA1 transports: on the TCP session (hellos, and later config sync and
//! jobs) frames follow each other on the byte stream and the header's length delimits them; over
//! UDP (heartbeats on HA1, HA1 backup and the heartbeat backup) each datagram is one frame. With
//! encryption on, the shell seals whole frames (see the `secure` module); the format is the same.
//!
//! # Frame
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      'H'      |      '1'      |    Version    |     Type      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Payload length         |           Reserved            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      Payload (length octets) ...
//! ```
//!
//! All integers are big-endian. `Version` is [`WIRE_VERSION`] (the framing; the election protocol
//! has its own version inside the hello). A receiver skips frames of a type it does not know
//! (their length still delimits them), so config sync and jobs can be added without breaking older
//! peers; reserved bits are sent as zero and ignored.
//!
//! # Hello payload (type 1), 40 octets + software version
//!
//! ```text
//! | group id (1) | priority (1) | flags (1) | state (1) | protocol version (2) | mode (1) | ha2 (1) |
//! | node id (8)                                                                                  |
//! | boot id (8)                                                                                  |
//! | sequence (8)                                                                                 |
//! | takeover after, ms (4)                          | sw version length (1) | reserved (3)        |
//! | software version (sw version length octets, UTF-8, at most 64)                               |
//! ```
//!
//! Flags: bit 0 preemptive, bit 1 wants reply, bit 2 resuming (the sender stalled while active
//! and holds forwarding: see [`crate::Event::Stalled`]). Takeover after: the sender's peer-dead time plus
//! promotion hold, at most 2^32 - 1 ms (0 from senders that do not say: they sent it reserved).
//! The boot id is random per process start: a peer that restarted is recognised even if it comes
//! back within the dead time.
//!
//! # Heartbeat payload (type 2), 32 octets
//!
//! ```text
//! | group id (1) | priority (1) | state (1) | flags (1) | reserved (4)                            |
//! | node id (8)                                                                                  |
//! | boot id (8)                                                                                  |
//! | sequence (8)                                                                                 |
//! ```
//!
//! The sequence counts every frame a sender boot emits, hellos and heartbeats alike. A heartbeat
//! that waited in a neighbour queue while the peer's address was unresolved arrives seconds late
//! and describes a state its sender has left; the receiver recognises it because its sequence is
//! below the newest frame it heard (a hello, which TCP delivers fresh, or a heartbeat on another
//! link) and drops it. Flags: bit 2 resuming, as in the hello.

use std::time::Duration;

use thiserror::Error;

use crate::{
    config::{Ha2Transport, Mode},
    message::{Heartbeat, Hello},
    state::State,
};

/// Version of the framing described above.
pub const WIRE_VERSION: u8 = 1;
/// The two magic octets that open every frame.
pub const MAGIC: [u8; 2] = *b"H1";
/// Length of the frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload accepted; far above any message defined today, small enough that a corrupt
/// length cannot make a reader buffer much.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Longest software version string carried in a hello.
pub const MAX_SOFTWARE_VERSION: usize = 64;

const HELLO_FIXED_LEN: usize = 40;
const HEARTBEAT_LEN: usize = 32;

const FLAG_PREEMPTIVE: u8 = 1 << 0;
const FLAG_WANTS_REPLY: u8 = 1 << 1;
/// Hello flags and heartbeat flags: the sender stalled and holds forwarding.
const FLAG_RESUMING: u8 = 1 << 2;

/// Frame types. Unknown values are kept so the reader can skip and count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    /// [`HelloFrame`].
    Hello,
    /// [`HeartbeatFrame`].
    Heartbeat,
    /// A type this implementation does not know.
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Hello,
            2 => Self::Heartbeat,
            other => Self::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> Self {
        match t {
            FrameType::Hello => 1,
            FrameType::Heartbeat => 2,
            FrameType::Unknown(v) => v,
        }
    }
}

/// Why a frame could not be decoded. Each is counted per link by the shell.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer octets than the header or the payload length announce.
    #[error("truncated frame: need {needed} octets, have {have}")]
    Truncated {
        /// Octets the frame needs.
        needed: usize,
        /// Octets available.
        have: usize,
    },
    /// The frame does not start with [`MAGIC`]: not HA1, or the stream lost its framing.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// A framing version this implementation does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The payload length is above [`MAX_PAYLOAD`].
    #[error("payload length {0} exceeds the maximum {MAX_PAYLOAD}")]
    Oversized(usize),
    /// A known type with a payload shorter than its fixed part.
    #[error("{frame} payload too short: {len} octets")]
    ShortPayload {
        /// Which message.
        frame: &'static str,
        /// Its payload length.
        len: usize,
    },
    /// A field holds a value outside its domain.
    #[error("{frame} field `{field}`: invalid value {value}")]
    BadField {
        /// Which message.
        frame: &'static str,
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// The fixed header of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub frame_type: FrameType,
    /// Payload length in octets.
    pub payload_len: usize,
}

impl Header {
    /// Parses a header from the start of `buf` (the payload need not be there yet: a stream reader
    /// uses this to learn how much more to read).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                needed: HEADER_LEN,
                have: buf.len(),
            });
        }
        if buf[0..2] != MAGIC {
            return Err(WireError::BadMagic([buf[0], buf[1]]));
        }
        if buf[2] != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(buf[2]));
        }
        let payload_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        if payload_len > MAX_PAYLOAD {
            return Err(WireError::Oversized(payload_len));
        }
        Ok(Self {
            frame_type: FrameType::from(buf[3]),
            payload_len,
        })
    }

    /// Total frame length: header plus payload.
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.frame_type.into());
        // MAX_PAYLOAD fits in u16; emitters only build known, bounded payloads.
        out.extend_from_slice(&(self.payload_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
}

/// A hello with what only the wire carries: the sender's boot id, a sequence and its software
/// version (shown to the operator and compared, never used in the election).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloFrame {
    /// The election content.
    pub hello: Hello,
    /// Random per sender process start.
    pub boot_id: u64,
    /// The sender's frame counter (one counter for hellos and heartbeats), so a receiver can
    /// tell a heartbeat that was delayed from one sent after this hello.
    pub sequence: u64,
    /// Sender's software version, e.g. "hafw 0.1.0".
    pub software_version: String,
}

/// A heartbeat with the sender's boot id and sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatFrame {
    /// The election content.
    pub heartbeat: Heartbeat,
    /// Random per sender process start.
    pub boot_id: u64,
    /// The sender's frame counter (shared with its hellos).
    pub sequence: u64,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Type 1.
    Hello(HelloFrame),
    /// Type 2.
    Heartbeat(HeartbeatFrame),
    /// A frame of a type this implementation does not know; skipped.
    Unknown(u8),
}

impl Frame {
    /// Parses exactly one frame from the start of `buf`; returns it and the octets it used.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), WireError> {
        let header = Header::parse(buf)?;
        let len = header.frame_len();
        if buf.len() < len {
            return Err(WireError::Truncated {
                needed: len,
                have: buf.len(),
            });
        }
        let payload = &buf[HEADER_LEN..len];
        let frame = match header.frame_type {
            FrameType::Hello => Self::Hello(parse_hello(payload)?),
            FrameType::Heartbeat => Self::Heartbeat(parse_heartbeat(payload)?),
            FrameType::Unknown(t) => Self::Unknown(t),
        };
        Ok((frame, len))
    }

    /// Appends the encoded frame to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let frame_type = match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Heartbeat(_) => FrameType::Heartbeat,
            Self::Unknown(t) => FrameType::Unknown(*t),
        };
        Header {
            frame_type,
            payload_len: 0,
        }
        .emit(out);
        match self {
            Self::Hello(h) => emit_hello(h, out),
            Self::Heartbeat(h) => emit_heartbeat(h, out),
            Self::Unknown(_) => {}
        }
        let payload_len = (out.len() - start - HEADER_LEN) as u16;
        out[start + 4..start + 6].copy_from_slice(&payload_len.to_be_bytes());
    }

    /// The encoded frame as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + HELLO_FIXED_LEN + MAX_SOFTWARE_VERSION);
        self.emit(&mut out);
        out
    }
}

fn state_code(s: State) -> u8 {
    match s {
        State::Initial => 0,
        State::Active => 1,
        State::Passive => 2,
        State::NonFunctional => 3,
        State::Suspended => 4,
    }
}

fn parse_state(frame: &'static str, v: u8) -> Result<State, WireError> {
    Ok(match v {
        0 => State::Initial,
        1 => State::Active,
        2 => State::Passive,
        3 => State::NonFunctional,
        4 => State::Suspended,
        _ => return Err(bad(frame, "state", v)),
    })
}

fn bad(frame: &'static str, field: &'static str, value: impl Into<u64>) -> WireError {
    WireError::BadField {
        frame,
        field,
        value: value.into(),
    }
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_be_bytes(b)
}

fn parse_hello(p: &[u8]) -> Result<HelloFrame, WireError> {
    const F: &str = "hello";
    if p.len() < HELLO_FIXED_LEN {
        return Err(WireError::ShortPayload {
            frame: F,
            len: p.len(),
        });
    }
    let mode = match p[6] {
        0 => Mode::ActivePassive,
        1 => Mode::Lite,
        v => return Err(bad(F, "mode", v)),
    };
    let ha2_transport = match p[7] {
        0 => Ha2Transport::Ethernet,
        1 => Ha2Transport::Ip,
        2 => Ha2Transport::Udp,
        v => return Err(bad(F, "ha2_transport", v)),
    };
    let sw_len = usize::from(p[36]);
    if sw_len > MAX_SOFTWARE_VERSION {
        return Err(bad(F, "software_version_length", p[36]));
    }
    let sw = p
        .get(HELLO_FIXED_LEN..HELLO_FIXED_LEN + sw_len)
        .ok_or(WireError::ShortPayload {
            frame: F,
            len: p.len(),
        })?;
    let software_version = String::from_utf8_lossy(sw).into_owned();
    Ok(HelloFrame {
        hello: Hello {
            group_id: p[0],
            priority: p[1],
            preemptive: p[2] & FLAG_PREEMPTIVE != 0,
            wants_reply: p[2] & FLAG_WANTS_REPLY != 0,
            resuming: p[2] & FLAG_RESUMING != 0,
            state: parse_state(F, p[3])?,
            protocol_version: u16::from_be_bytes([p[4], p[5]]),
            mode,
            ha2_transport,
            node_id: u64_at(p, 8),
            takeover_after: Duration::from_millis(u64::from(u32::from_be_bytes([
                p[32], p[33], p[34], p[35],
            ]))),
        },
        boot_id: u64_at(p, 16),
        sequence: u64_at(p, 24),
        software_version,
    })
}

fn emit_hello(h: &HelloFrame, out: &mut Vec<u8>) {
    let hello = &h.hello;
    let mut flags = 0;
    if hello.preemptive {
        flags |= FLAG_PREEMPTIVE;
    }
    if hello.wants_reply {
        flags |= FLAG_WANTS_REPLY;
    }
    if hello.resuming {
        flags |= FLAG_RESUMING;
    }
    out.extend_from_slice(&[
        hello.group_id,
        hello.priority,
        flags,
        state_code(hello.state),
    ]);
    out.extend_from_slice(&hello.protocol_version.to_be_bytes());
    out.push(match hello.mode {
        Mode::ActivePassive => 0,
        Mode::Lite => 1,
    });
    out.push(match hello.ha2_transport {
        Ha2Transport::Ethernet => 0,
        Ha2Transport::Ip => 1,
        Ha2Transport::Udp => 2,
    });
    out.extend_from_slice(&hello.node_id.to_be_bytes());
    out.extend_from_slice(&h.boot_id.to_be_bytes());
    out.extend_from_slice(&h.sequence.to_be_bytes());
    let takeover_ms = u32::try_from(hello.takeover_after.as_millis()).unwrap_or(u32::MAX);
    out.extend_from_slice(&takeover_ms.to_be_bytes());
    // Truncate on a character boundary so the peer never sees a split UTF-8 sequence.
    let mut sw = h.software_version.as_str();
    while sw.len() > MAX_SOFTWARE_VERSION {
        let mut end = MAX_SOFTWARE_VERSION;
        while !sw.is_char_boundary(end) {
            end -= 1;
        }
        sw = &sw[..end];
    }
    out.push(sw.len() as u8);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(sw.as_bytes());
}

fn parse_heartbeat(p: &[u8]) -> Result<HeartbeatFrame, WireError> {
    const F: &str = "heartbeat";
    if p.len() < HEARTBEAT_LEN {
        return Err(WireError::ShortPayload {
            frame: F,
            len: p.len(),
        });
    }
    Ok(HeartbeatFrame {
        heartbeat: Heartbeat {
            group_id: p[0],
            priority: p[1],
            state: parse_state(F, p[2])?,
            node_id: u64_at(p, 8),
            resuming: p[3] & FLAG_RESUMING != 0,
        },
        boot_id: u64_at(p, 16),
        sequence: u64_at(p, 24),
    })
}

fn emit_heartbeat(h: &HeartbeatFrame, out: &mut Vec<u8>) {
    let hb = &h.heartbeat;
    out.extend_from_slice(&[
        hb.group_id,
        hb.priority,
        state_code(hb.state),
        if hb.resuming { FLAG_RESUMING } else { 0 },
        0,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(&hb.node_id.to_be_bytes());
    out.extend_from_slice(&h.boot_id.to_be_bytes());
    out.extend_from_slice(&h.sequence.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> HelloFrame {
        HelloFrame {
            hello: Hello {
                group_id: 7,
                node_id: 0x0102_0304_0506_0708,
                priority: 100,
                preemptive: true,
                state: State::Passive,
                protocol_version: 1,
                mode: Mode::ActivePassive,
                ha2_transport: Ha2Transport::Udp,
                takeover_after: Duration::from_millis(530),
                wants_reply: true,
                resuming: true,
            },
            boot_id: 0x1111_2222_3333_4444,
            sequence: 9,
            software_version: "hafw 0.1.0".into(),
        }
    }

    fn heartbeat() -> HeartbeatFrame {
        HeartbeatFrame {
            heartbeat: Heartbeat {
                group_id: 7,
                node_id: 42,
                state: State::Active,
                priority: 200,
                resuming: true,
            },
            boot_id: 5,
            sequence: 6,
        }
    }

    /// The heartbeat fixture, byte for byte: a forgotten or moved field shows here.
    const HEARTBEAT_BYTES: [u8; 40] = [
        b'H', b'1', 1, 2, 0, 32, 0, 0, // header
        7, 200, 1, 4, 0, 0, 0, 0, // group, priority, state, flags (resuming), reserved
        0, 0, 0, 0, 0, 0, 0, 42, // node id
        0, 0, 0, 0, 0, 0, 0, 5, // boot id
        0, 0, 0, 0, 0, 0, 0, 6, // sequence
    ];

    #[test]
    fn heartbeat_matches_fixture_and_round_trips() {
        let frame = Frame::Heartbeat(heartbeat());
        assert_eq!(frame.to_bytes(), HEARTBEAT_BYTES);
        assert_eq!(Frame::parse(&HEARTBEAT_BYTES), Ok((frame, 40)));
    }

    #[test]
    fn hello_round_trips_and_emit_overwrites_prefilled_buffers() {
        let frame = Frame::Hello(hello());
        let mut out = vec![0xa5; 3];
        frame.emit(&mut out);
        assert_eq!(&out[..3], &[0xa5; 3]);
        let (parsed, used) = Frame::parse(&out[3..]).unwrap();
        assert_eq!(parsed, frame);
        assert_eq!(used, out.len() - 3);
        assert_eq!(used, HEADER_LEN + HELLO_FIXED_LEN + "hafw 0.1.0".len());
    }

    #[test]
    fn frames_follow_each_other_on_a_stream() {
        let mut stream = Frame::Hello(hello()).to_bytes();
        stream.extend(Frame::Unknown(99).to_bytes());
        stream.extend(Frame::Heartbeat(heartbeat()).to_bytes());
        let mut at = 0;
        let mut seen = Vec::new();
        while at < stream.len() {
            let (frame, used) = Frame::parse(&stream[at..]).unwrap();
            seen.push(frame);
            at += used;
        }
        assert_eq!(
            seen,
            [
                Frame::Hello(hello()),
                Frame::Unknown(99),
                Frame::Heartbeat(heartbeat())
            ]
        );
    }

    #[test]
    fn long_software_versions_are_cut_on_a_char_boundary() {
        let mut h = hello();
        h.software_version = "é".repeat(40); // 80 octets
        let (Frame::Hello(parsed), _) = Frame::parse(&Frame::Hello(h).to_bytes()).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(parsed.software_version, "é".repeat(32));
    }

    #[test]
    fn malformed_frames_are_errors_never_panics() {
        let good = Frame::Hello(hello()).to_bytes();
        let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            ("empty", vec![], WireError::Truncated { needed: 8, have: 0 }),
            (
                "magic",
                [b"X1".as_slice(), &good[2..]].concat(),
                WireError::BadMagic(*b"X1"),
            ),
            (
                "version",
                [&good[..2], &[9], &good[3..]].concat(),
                WireError::UnsupportedVersion(9),
            ),
            (
                "payload cut",
                good[..20].to_vec(),
                WireError::Truncated {
                    needed: good.len(),
                    have: 20,
                },
            ),
            (
                "oversized",
                [&good[..4], &[0xff, 0xff], &good[6..]].concat(),
                WireError::Oversized(0xffff),
            ),
            (
                "short heartbeat",
                vec![b'H', b'1', 1, 2, 0, 1, 0, 0, 0],
                WireError::ShortPayload {
                    frame: "heartbeat",
                    len: 1,
                },
            ),
            (
                "state",
                {
                    let mut b = HEARTBEAT_BYTES.to_vec();
                    b[10] = 77;
                    b
                },
                bad("heartbeat", "state", 77u8),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(Frame::parse(&bytes), Err(want), "{name}");
        }
        // Every prefix of a valid frame and every single-octet corruption decodes or errors.
        for cut in 0..good.len() {
            let _ = Frame::parse(&good[..cut]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = Frame::parse(&b);
            }
        }
    }
}
