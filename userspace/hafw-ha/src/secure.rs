//! HA1 encryption with mutual authentication, as pure state objects over byte buffers (the shell
//! moves the bytes). Every cryptographic operation is the `snow` crate's implementation of the
//! Noise Protocol Framework (revision 34); nothing here invents cryptography.
//!
//! - **Keys**: each node has a static X25519 key pair (`hafw ha keygen`). The operator exports
//!   the public key and imports it on the peer. Both nodes thus know, before any traffic, the one
//!   key the other must prove it holds.
//! - **HA1 TCP session**: `Noise_KK_25519_ChaChaPoly_BLAKE2s` (Noise section 7.5, interactive
//!   pattern "KK": both static keys known in advance). Two handshake messages; a peer holding any
//!   other key fails the handshake and is refused ([`SecureError::PeerNotAuthenticated`]). After
//!   the handshake every frame is sealed with the session's transport keys (fresh per connection
//!   thanks to the ephemeral keys, so recorded traffic of one session cannot be replayed into
//!   another).
//! - **Heartbeat datagrams**: they must flow when no TCP session exists (heartbeat backup over
//!   management while HA1 is down), so each datagram is a self-contained one-way message,
//!   `Noise_K_25519_ChaChaPoly_BLAKE2s` (Noise section 7.4, one-way pattern "K": sender and
//!   recipient static keys known). Replays are bounded by the shell, not here: the sealed frame
//!   carries the sender's boot id and frame sequence, and the shell drops heartbeats of another
//!   boot than the last (fresh, authenticated) hello's, older than the newest frame heard from
//!   the peer, or already accepted on the link they arrive on; so heartbeats the receiver has
//!   heard, sent again, extend the peer's life by at most one heartbeat per link. Nothing limits
//!   a heartbeat's age: until a node hears the peer's first hello (HA1 down, heartbeat backup
//!   up) it takes the boot of the first heartbeat it accepts, and a recording of an earlier boot,
//!   replayed in order, is accepted, each frame once per link, until a hello comes.
//!   Measured on the lab machine (release build, `datagram_cost` test): 0.32 ms of CPU to seal
//!   and open one heartbeat. The shell seals each heartbeat once for all links, so at the `fast`
//!   profile (100 heartbeats per second, two links) a node spends about 3% of a core sealing and
//!   6% opening.
//! - **Prologue**: `hafw-ha1 v1` plus the HA group id, so peers of different groups cannot
//!   complete a handshake even with the right keys.

use std::fmt;

use snow::{Builder, HandshakeState, TransportState, params::NoiseParams};
use thiserror::Error;

const STREAM_PATTERN: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
const DATAGRAM_PATTERN: &str = "Noise_K_25519_ChaChaPoly_BLAKE2s";
const PRIVATE_TAG: &str = "hafw-ha1-private-v1";
const PUBLIC_TAG: &str = "hafw-ha1-public-v1";
/// Largest Noise message (Noise section 3).
pub const MAX_MESSAGE: usize = 65_535;
/// Authentication tag added to each sealed message.
pub const TAG_LEN: usize = 16;

/// Why a key, a handshake or a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SecureError {
    /// The peer does not hold the private key of the public key imported for it (or it does not
    /// hold ours): the handshake or datagram did not authenticate.
    #[error("peer not authenticated: it does not hold the imported key")]
    PeerNotAuthenticated,
    /// Not a message of this protocol: too short, too long, or out of sequence.
    #[error("malformed secure message: {0}")]
    Malformed(&'static str),
    /// A key file's text is wrong.
    #[error("bad key: {0}")]
    BadKey(String),
}

fn params(pattern: &str) -> NoiseParams {
    pattern.parse().expect("a pattern snow supports")
}

fn prologue(group_id: u8) -> Vec<u8> {
    let mut p = b"hafw-ha1 v1".to_vec();
    p.push(group_id);
    p
}

/// Maps snow's errors: a failed decryption or DH during a handshake means the keys did not match.
fn auth_error(e: snow::Error) -> SecureError {
    match e {
        snow::Error::Decrypt | snow::Error::Dh => SecureError::PeerNotAuthenticated,
        snow::Error::Input => SecureError::Malformed("bad length"),
        _ => SecureError::Malformed("unexpected message"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Result<[u8; 32], SecureError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(SecureError::BadKey(format!(
            "expected 64 hex digits, got {}",
            s.len()
        )));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| SecureError::BadKey("not hexadecimal".into()))?;
    }
    Ok(out)
}

fn tagged<'a>(text: &'a str, tag: &str) -> Result<&'a str, SecureError> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(tag))
        .ok_or_else(|| SecureError::BadKey(format!("no `{tag}` line")))
}

/// A node's public key, as exported to its peer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the exported text: `hafw-ha1-public-v1 <64 hex digits>`.
    pub fn from_text(text: &str) -> Result<Self, SecureError> {
        Ok(Self(unhex32(tagged(text, PUBLIC_TAG)?)?))
    }

    /// The exported text (one line).
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", hex(&self.0))
    }

    /// Short identifier for `show` output: the first eight octets, colon separated.
    pub fn fingerprint(&self) -> String {
        self.0[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A node's static key pair. The private half never leaves the node.
#[derive(Clone)]
pub struct NodeKey {
    private: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.public.fingerprint())
    }
}

impl NodeKey {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        let kp = Builder::new(params(STREAM_PATTERN))
            .generate_keypair()
            .expect("X25519 key generation");
        let mut private = [0u8; 32];
        private.copy_from_slice(&kp.private);
        let mut public = [0u8; 32];
        public.copy_from_slice(&kp.public);
        Self {
            private,
            public: PublicKey(public),
        }
    }

    /// Parses the key file's text (private and public lines).
    pub fn from_text(text: &str) -> Result<Self, SecureError> {
        Ok(Self {
            private: unhex32(tagged(text, PRIVATE_TAG)?)?,
            public: PublicKey(unhex32(tagged(text, PUBLIC_TAG)?)?),
        })
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{PRIVATE_TAG} {}\n{}",
            hex(&self.private),
            self.public.to_text()
        )
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    fn builder<'a>(
        &'a self,
        pattern: &str,
        peer: &'a PublicKey,
        prologue: &'a [u8],
    ) -> Builder<'a> {
        Builder::new(params(pattern))
            .local_private_key(&self.private)
            .and_then(|b| b.remote_public_key(&peer.0))
            .and_then(|b| b.prologue(prologue))
            .expect("builder takes 32-byte keys once each")
    }
}

/// An authenticated, encrypted HA1 session (after the handshake).
pub struct Channel(TransportState);

impl Channel {
    /// Seals one frame.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SecureError> {
        if plaintext.len() + TAG_LEN > MAX_MESSAGE {
            return Err(SecureError::Malformed("frame too long to seal"));
        }
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        let n = self
            .0
            .write_message(plaintext, &mut out)
            .map_err(auth_error)?;
        out.truncate(n);
        Ok(out)
    }

    /// Opens one sealed frame; a forged or altered message is refused.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, SecureError> {
        if sealed.len() < TAG_LEN || sealed.len() > MAX_MESSAGE {
            return Err(SecureError::Malformed("bad sealed length"));
        }
        let mut out = vec![0u8; sealed.len()];
        let n = self
            .0
            .read_message(sealed, &mut out)
            .map_err(|_| SecureError::PeerNotAuthenticated)?;
        out.truncate(n);
        Ok(out)
    }
}

/// The connecting side of the HA1 handshake, waiting for the responder's answer.
pub struct Initiator(HandshakeState);

impl Initiator {
    /// Starts the handshake; returns the first message to send.
    pub fn start(
        local: &NodeKey,
        peer: &PublicKey,
        group_id: u8,
    ) -> Result<(Self, Vec<u8>), SecureError> {
        let prologue = prologue(group_id);
        let mut hs = local
            .builder(STREAM_PATTERN, peer, &prologue)
            .build_initiator()
            .map_err(auth_error)?;
        let mut msg = vec![0u8; 256];
        let n = hs.write_message(&[], &mut msg).map_err(auth_error)?;
        msg.truncate(n);
        Ok((Self(hs), msg))
    }

    /// Reads the responder's answer and completes the session.
    pub fn finish(mut self, answer: &[u8]) -> Result<Channel, SecureError> {
        if answer.len() > MAX_MESSAGE {
            return Err(SecureError::Malformed("handshake message too long"));
        }
        let mut payload = vec![0u8; answer.len()];
        self.0
            .read_message(answer, &mut payload)
            .map_err(auth_error)?;
        Ok(Channel(self.0.into_transport_mode().map_err(auth_error)?))
    }
}

/// The accepting side of the HA1 handshake.
pub struct Responder;

impl Responder {
    /// Checks the initiator's first message; returns the session and the answer to send.
    pub fn respond(
        local: &NodeKey,
        peer: &PublicKey,
        group_id: u8,
        first: &[u8],
    ) -> Result<(Channel, Vec<u8>), SecureError> {
        if first.len() > MAX_MESSAGE {
            return Err(SecureError::Malformed("handshake message too long"));
        }
        let prologue = prologue(group_id);
        let mut hs = local
            .builder(STREAM_PATTERN, peer, &prologue)
            .build_responder()
            .map_err(auth_error)?;
        let mut payload = vec![0u8; first.len()];
        hs.read_message(first, &mut payload).map_err(auth_error)?;
        let mut answer = vec![0u8; 256];
        let n = hs.write_message(&[], &mut answer).map_err(auth_error)?;
        answer.truncate(n);
        Ok((
            Channel(hs.into_transport_mode().map_err(auth_error)?),
            answer,
        ))
    }
}

/// Seals heartbeat datagrams to the peer (one Noise "K" message each).
pub struct DatagramSealer {
    local: NodeKey,
    peer: PublicKey,
    prologue: Vec<u8>,
}

impl DatagramSealer {
    pub fn new(local: &NodeKey, peer: &PublicKey, group_id: u8) -> Self {
        Self {
            local: local.clone(),
            peer: *peer,
            prologue: prologue(group_id),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecureError> {
        let mut hs = self
            .local
            .builder(DATAGRAM_PATTERN, &self.peer, &self.prologue)
            .build_initiator()
            .map_err(auth_error)?;
        let mut out = vec![0u8; plaintext.len() + 32 + TAG_LEN];
        let n = hs.write_message(plaintext, &mut out).map_err(auth_error)?;
        out.truncate(n);
        Ok(out)
    }
}

/// Opens heartbeat datagrams from the peer.
pub struct DatagramOpener {
    local: NodeKey,
    peer: PublicKey,
    prologue: Vec<u8>,
}

impl DatagramOpener {
    pub fn new(local: &NodeKey, peer: &PublicKey, group_id: u8) -> Self {
        Self {
            local: local.clone(),
            peer: *peer,
            prologue: prologue(group_id),
        }
    }

    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, SecureError> {
        if datagram.len() < 32 + TAG_LEN || datagram.len() > MAX_MESSAGE {
            return Err(SecureError::Malformed("bad datagram length"));
        }
        let mut hs = self
            .local
            .builder(DATAGRAM_PATTERN, &self.peer, &self.prologue)
            .build_responder()
            .map_err(auth_error)?;
        let mut out = vec![0u8; datagram.len()];
        let n = hs.read_message(datagram, &mut out).map_err(auth_error)?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (NodeKey, NodeKey) {
        (NodeKey::generate(), NodeKey::generate())
    }

    fn session(
        a: &NodeKey,
        b: &NodeKey,
        a_thinks_b: &PublicKey,
    ) -> Result<(Channel, Channel), SecureError> {
        let (init, first) = Initiator::start(a, a_thinks_b, 1)?;
        let (resp, answer) = Responder::respond(b, &a.public(), 1, &first)?;
        Ok((init.finish(&answer)?, resp))
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let k = NodeKey::generate();
        let back = NodeKey::from_text(&k.to_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(back.private, k.private);
        assert_eq!(
            PublicKey::from_text(&k.public().to_text()).unwrap(),
            k.public()
        );
        for (text, want) in [
            ("nothing", "no `hafw-ha1-public-v1` line"),
            ("hafw-ha1-public-v1 abcd", "expected 64 hex digits, got 4"),
            (
                &format!("hafw-ha1-public-v1 {}", "zz".repeat(32)),
                "not hexadecimal",
            ),
        ] {
            assert_eq!(
                PublicKey::from_text(text),
                Err(SecureError::BadKey(want.into()))
            );
        }
    }

    #[test]
    fn the_right_peer_gets_a_session_both_ways() {
        let (a, b) = pair();
        let (mut ca, mut cb) = session(&a, &b, &b.public()).unwrap();
        let sealed = ca.seal(b"hello").unwrap();
        assert_ne!(&sealed[..5], b"hello");
        assert_eq!(cb.open(&sealed).unwrap(), b"hello");
        assert_eq!(ca.open(&cb.seal(b"back").unwrap()).unwrap(), b"back");
        let mut tampered = ca.seal(b"x").unwrap();
        tampered[0] ^= 1;
        assert_eq!(cb.open(&tampered), Err(SecureError::PeerNotAuthenticated));
    }

    #[test]
    fn a_peer_with_another_key_is_refused() {
        let (a, b) = pair();
        let impostor = NodeKey::generate();
        // The impostor connects to b, which expects a's key.
        let (_, first) = Initiator::start(&impostor, &b.public(), 1).unwrap();
        assert_eq!(
            Responder::respond(&b, &a.public(), 1, &first).err(),
            Some(SecureError::PeerNotAuthenticated)
        );
        // a connects to the impostor answering in b's place: a refuses the answer.
        let (init, first) = Initiator::start(&a, &b.public(), 1).unwrap();
        let answer = Responder::respond(&impostor, &a.public(), 1, &first)
            .map(|(_, m)| m)
            .unwrap_or_else(|_| vec![0; 48]);
        assert!(init.finish(&answer).is_err());
        // Another group id: the prologues differ.
        let (_, first) = Initiator::start(&a, &b.public(), 2).unwrap();
        assert!(Responder::respond(&b, &a.public(), 1, &first).is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let (a, b) = pair();
        for junk in [vec![], vec![0u8; 1], vec![0xffu8; 47], vec![7u8; 70_000]] {
            assert!(Responder::respond(&b, &a.public(), 1, &junk).is_err());
            assert!(DatagramOpener::new(&b, &a.public(), 1).open(&junk).is_err());
        }
    }

    #[test]
    fn datagrams_authenticate_their_sender() {
        let (a, b) = pair();
        let sealer = DatagramSealer::new(&a, &b.public(), 1);
        let opener = DatagramOpener::new(&b, &a.public(), 1);
        let d = sealer.seal(b"heartbeat").unwrap();
        assert_eq!(opener.open(&d).unwrap(), b"heartbeat");
        let impostor = NodeKey::generate();
        let forged = DatagramSealer::new(&impostor, &b.public(), 1)
            .seal(b"hb")
            .unwrap();
        assert_eq!(opener.open(&forged), Err(SecureError::PeerNotAuthenticated));
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// Prints the CPU cost of one heartbeat datagram (seal + open); run with `--nocapture`.
    /// Not an assertion: performance lives in benchmarks, this only feeds the module docs.
    #[test]
    fn datagram_cost() {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let sealer = DatagramSealer::new(&a, &b.public(), 1);
        let opener = DatagramOpener::new(&b, &a.public(), 1);
        let n = 200;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let d = sealer.seal(&[0u8; 40]).unwrap();
            opener.open(&d).unwrap();
        }
        println!("heartbeat seal+open: {:?} each", t.elapsed() / n);
    }
}
