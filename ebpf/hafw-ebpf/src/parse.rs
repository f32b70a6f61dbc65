//! Packet parsing: Ethernet (one 802.1Q/802.1ad tag; a frame with a second one is refused), IPv4
//! (with options), IPv6 (skipping up to three extension headers), TCP, UDP, ICMP and ICMPv6,
//! including the header quoted by ICMP errors.
//!
//! Every access goes through [`ptr_at`], the single bounds check the verifier needs to see:
//! `data + offset + size_of::<T>() <= data_end`.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use hafw_common::{
    ha,
    session::{FAMILY_IPV4, FAMILY_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// The tag type some switches used for stacked VLANs before 802.1ad.
const ETH_P_QINQ1: u16 = 0x9100;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a frame is not a parsed IP packet.
pub enum NotIp {
    /// ARP, LLDP, ...: the kernel's business.
    Other,
    /// HA2 over raw Ethernet on a data port.
    HaFrame,
    /// A VLAN tag behind the one tag the parser reads (or an outer 0x9100 one): the packet inside
    /// is never checked, and the kernel would forward it (it strips an outer VID-0 tag).
    StackedVlan,
}

/// What kind of frame the parser found.
pub enum Parsed {
    /// An IP packet, described in the caller's [`Packet`].
    Ip,
    NotIp(NotIp),
}

pub enum ParseError {
    Malformed,
    Fragment,
}

/// ICMP message classes that matter to the session logic.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Not ICMP.
    None,
    EchoRequest,
    EchoReply,
    /// Destination unreachable, time exceeded, ...: related to the quoted packet's session.
    Error,
    /// IPv6 neighbour discovery and router messages: for the host.
    NeighbourDiscovery,
    /// Anything else: evaluated by policy, no session.
    Other,
}

/// A parsed IP packet: the 5-tuple in network byte order plus what forwarding needs. The program
/// keeps exactly one of these on its 512-byte stack and the parser fills it in place.
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    /// ICMP type (the "port" of ICMP for service matching).
    pub icmp_type: u8,
    pub icmp: IcmpKind,
    pub vlan: bool,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length / IPv6 payload length, host order (for the FIB's MTU check).
    pub ip_len: u16,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// IPv4 TOS or IPv6 flow info word, for the FIB lookup.
    pub tos_or_flowinfo: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// For ICMP errors (`icmp == Error`): the quoted packet's 5-tuple, as in the quoted packet.
    pub inner: Tuple,
}

#[derive(Clone, Copy)]
pub struct Tuple {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl Packet {
    pub const fn empty() -> Packet {
        Packet {
            family: 0,
            proto: 0,
            tcp_flags: 0,
            icmp_type: 0,
            icmp: IcmpKind::None,
            vlan: false,
            ttl: 0,
            sport: 0,
            dport: 0,
            ip_len: 0,
            l3_off: 0,
            tos_or_flowinfo: 0,
            src: [0; 4],
            dst: [0; 4],
            inner: Tuple {
                proto: 0,
                sport: 0,
                dport: 0,
                src: [0; 4],
                dst: [0; 4],
            },
        }
    }
}

/// The single bounds check of the program.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(ParseError::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ParseError> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ParseError> {
    // SAFETY: bounds checked by ptr_at; unaligned because headers sit at any offset.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Result<Parsed, ParseError> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // TCI (2 bytes) then the inner ethertype.
        ether_type = u16::from_be(read::<u16>(ctx, off + 2)?);
        off += 4;
        pkt.vlan = true;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, off, pkt).map(|()| Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(ctx, off, pkt).map(|()| Parsed::Ip),
        ha::HA2_ETHERTYPE => Ok(Parsed::NotIp(NotIp::HaFrame)),
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1 => Ok(Parsed::NotIp(NotIp::StackedVlan)),
        _ => Ok(Parsed::NotIp(NotIp::Other)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<(), ParseError> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; every field is a byte array (alignment 1).
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(ParseError::Malformed);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len);
    if (tot_len as usize) < ihl {
        return Err(ParseError::Malformed);
    }
    // More-fragments set, or a non-zero offset.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(ParseError::Fragment);
    }
    pkt.family = FAMILY_IPV4;
    pkt.proto = ip.proto;
    pkt.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    pkt.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    pkt.l3_off = off;
    pkt.ttl = ip.ttl;
    pkt.ip_len = tot_len;
    pkt.tos_or_flowinfo = ip.tos as u32;
    // ihl is at most 60: the verifier sees a bounded variable offset.
    parse_l4(ctx, off + (ihl & 0x3c), pkt)
}

/// IPv6 extension headers that are skipped to find the transport header.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
const MAX_IPV6_EXT_HEADERS: usize = 3;

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<(), ParseError> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; every field is a byte array (alignment 1).
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut next = ip.next_hdr;
    let mut l4 = off + Ipv6Hdr::LEN;
    // Bounded: a loop of three the verifier proves.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let hdr: [u8; 2] = read(ctx, l4)?;
                next = hdr[0];
                // Length in 8-octet units, not counting the first 8: at most 2048 bytes.
                l4 += (hdr[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => return Err(ParseError::Fragment),
            _ => break,
        }
    }
    if matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT
    ) {
        // More extension headers than the fast path walks: not a packet it can classify.
        return Err(ParseError::Malformed);
    }
    pkt.family = FAMILY_IPV6;
    pkt.proto = next;
    pkt.src = addr6(&ip.src_addr);
    pkt.dst = addr6(&ip.dst_addr);
    pkt.l3_off = off;
    pkt.ttl = ip.hop_limit;
    pkt.ip_len = u16::from_be_bytes(ip.payload_len);
    pkt.tos_or_flowinfo = u32::from_ne_bytes(ip.vcf) & 0x0fff_ffff_u32.to_be();
    // Bound the offset so the verifier can track it: 40 + 3 * 2048 fits in 0x3fff.
    parse_l4(ctx, l4 & 0x3fff, pkt)
}

#[inline(always)]
fn addr6(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

const TCP_HEADER_LEN: usize = 20;

#[inline(always)]
fn parse_l4(ctx: &XdpContext, l4: usize, pkt: &mut Packet) -> Result<(), ParseError> {
    match pkt.proto {
        PROTO_TCP => {
            let hdr = ptr_at::<[u8; TCP_HEADER_LEN]>(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let hdr = unsafe { &*hdr };
            if (hdr[12] >> 4) < 5 {
                return Err(ParseError::Malformed);
            }
            pkt.sport = u16::from_ne_bytes([hdr[0], hdr[1]]);
            pkt.dport = u16::from_ne_bytes([hdr[2], hdr[3]]);
            pkt.tcp_flags = hdr[13];
        }
        PROTO_UDP => {
            let hdr = ptr_at::<[u8; 8]>(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let hdr = unsafe { &*hdr };
            pkt.sport = u16::from_ne_bytes([hdr[0], hdr[1]]);
            pkt.dport = u16::from_ne_bytes([hdr[2], hdr[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => parse_icmp(ctx, l4, pkt)?,
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn parse_icmp(ctx: &XdpContext, l4: usize, pkt: &mut Packet) -> Result<(), ParseError> {
    let hdr = ptr_at::<[u8; 8]>(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let hdr = unsafe { &*hdr };
    let ty = hdr[0];
    pkt.icmp_type = ty;
    let v4 = pkt.proto == PROTO_ICMP;
    pkt.icmp = match (v4, ty) {
        (true, 8) | (false, 128) => IcmpKind::EchoRequest,
        (true, 0) | (false, 129) => IcmpKind::EchoReply,
        (true, 3 | 11 | 12) | (false, 1..=4) => IcmpKind::Error,
        (false, 133..=137) => IcmpKind::NeighbourDiscovery,
        _ => IcmpKind::Other,
    };
    match pkt.icmp {
        IcmpKind::EchoRequest | IcmpKind::EchoReply => {
            // The echo identifier plays the role of both ports.
            let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
            pkt.sport = id;
            pkt.dport = id;
        }
        IcmpKind::Error => parse_quoted(ctx, l4 + 8, v4, &mut pkt.inner)?,
        _ => {}
    }
    Ok(())
}

/// The packet quoted in an ICMP error: an IP header without options (v4) or a fixed IPv6 header,
/// followed by at least 8 bytes of transport header (RFC 792, RFC 4443 section 3).
#[inline(always)]
fn parse_quoted(ctx: &XdpContext, off: usize, v4: bool, t: &mut Tuple) -> Result<(), ParseError> {
    let l4 = if v4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, off)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        if ip.vihl != 0x45 {
            return Err(ParseError::Malformed);
        }
        t.proto = ip.proto;
        t.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
        t.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
        off + Ipv4Hdr::LEN
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, off)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        t.proto = ip.next_hdr;
        t.src = addr6(&ip.src_addr);
        t.dst = addr6(&ip.dst_addr);
        off + Ipv6Hdr::LEN
    };
    let l4h = ptr_at::<[u8; 8]>(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let l4h = unsafe { &*l4h };
    match t.proto {
        PROTO_TCP | PROTO_UDP => {
            t.sport = u16::from_ne_bytes([l4h[0], l4h[1]]);
            t.dport = u16::from_ne_bytes([l4h[2], l4h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = u16::from_ne_bytes([l4h[4], l4h[5]]);
            t.sport = id;
            t.dport = id;
        }
        _ => {}
    }
    Ok(())
}
