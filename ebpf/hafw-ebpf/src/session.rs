//! Session table logic: lookup, strict TCP state tracking, creation, and session events.
//!
//! Concurrency: one session may be updated from several CPUs at once. Counters are plain adds: the
//! BPF target's core has no 64-bit fetch_add, and RSS steers each direction of a flow to one
//! receive queue, so each direction's counters have a single writer in practice. State and flags
//! are plain stores; a lost race between two state updates resolves on the flow's next packet.

use hafw_common::{
    config::{CONFIG_F_SESSION_EVENTS, DataplaneConfig},
    counters::Counters,
    session::{
        EVENT_CLOSED, EVENT_CREATED, EVENT_STATE_CHANGED, FAMILY_IPV4, PROTO_TCP,
        SESSION_F_FIN_ORIG, SESSION_F_FIN_REPLY, SESSION_F_INITIATOR_IS_HI, SESSION_F_UNCONFIRMED,
        SessionKey, SessionState, SessionValue,
    },
    table::BUCKET_SLOTS,
};

use crate::{
    maps::{NEW_SESSION, SESSION_EVENTS},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    table::{self, Table, V4, V6, Writers},
};

/// A session found for a packet.
pub struct Hit {
    pub value: *mut SessionValue,
    /// The packet travels initiator -> responder.
    pub from_initiator: bool,
}

/// The session of `key`, in the table of its family. (Every table access passes the key as
/// words: see `hafw_common::session::KeyWords`.)
#[inline(always)]
pub fn get(key: &SessionKey) -> Option<*mut SessionValue> {
    if key.family == FAMILY_IPV4 {
        apart(value::<2, V4>(table::hafw_session_find_v4(&key.v4_words())))
    } else {
        value::<5, V6>(table::hafw_session_find_v6(key.as_words()))
    }
}

/// The value at `index` of table `T`, as a table function returned it (negative: none).
#[inline(always)]
fn value<const N: usize, T: Table<N>>(index: i64) -> Option<*mut SessionValue> {
    if index < 0 {
        return None;
    }
    let bucket = T::values().get_ptr_mut((index as u64 / BUCKET_SLOTS as u64) as u32)?;
    // SAFETY: a map value, valid for this program run; the slot is below BUCKET_SLOTS.
    Some(unsafe { &raw mut (*table::checked(bucket)).values[index as usize % BUCKET_SLOTS] })
}

/// Keeps a table access in a call of its own. The optimizer would merge the two families' value
/// lookups into one whose map is chosen at run time, and the verifier inlines an array lookup
/// only where a call has one map.
#[inline(always)]
fn apart<T>(result: T) -> T {
    core::hint::black_box(result)
}

/// Inserts `value` as the session of `key` in the table of its family. Returns a status: 0 when
/// inserted; when a session holds `key`, nothing is written and [`present`] gives that session;
/// negative (`-E2BIG`) when the table is full. (A status, not an `Option` of the session: the
/// optimizer moved the pointer of the `Some` case, undefined in the others, into registers the
/// verifier then refused to read.) `writers`: see [`Writers`].
#[inline(always)]
pub fn insert(key: &SessionKey, value: &SessionValue, writers: Writers) -> i64 {
    if key.family == FAMILY_IPV4 {
        apart(table::hafw_session_insert_v4(
            &key.v4_words(),
            value,
            writers as u64,
        ))
    } else {
        table::hafw_session_insert_v6(key.as_words(), value, writers as u64)
    }
}

/// The session that [`insert`]'s `status` for `key` names, if it names one.
#[inline(always)]
pub fn present(key: &SessionKey, status: i64) -> Option<*mut SessionValue> {
    if status <= 0 {
        return None;
    }
    let index = status & !table::PRESENT;
    if key.family == FAMILY_IPV4 {
        apart(value::<2, V4>(index))
    } else {
        value::<5, V6>(index)
    }
}

/// Deletes the session of `key` from the table of its family.
#[inline(always)]
pub fn remove(key: &SessionKey) -> Result<(), i32> {
    let done = if key.family == FAMILY_IPV4 {
        apart(table::hafw_session_remove_v4(&key.v4_words()))
    } else {
        table::hafw_session_remove_v6(key.as_words())
    };
    if done < 0 { Err(done as i32) } else { Ok(()) }
}

#[inline(always)]
pub fn lookup(key: &SessionKey, src_is_hi: bool) -> Option<Hit> {
    let value = get(key)?;
    // SAFETY: pointer from a successful lookup; valid for the rest of this program run.
    let flags = unsafe { (*value).flags };
    let initiator_is_hi = flags & SESSION_F_INITIATOR_IS_HI != 0;
    Some(Hit {
        value,
        from_initiator: initiator_is_hi == src_is_hi,
    })
}

/// What the TCP tracker says about a segment of an existing session.
#[derive(PartialEq, Eq)]
pub enum TcpVerdict {
    Accept,
    /// A pure SYN on a closed session: a new connection reusing the tuple; re-run policy.
    Reopen,
    /// Does not fit the session's state.
    Invalid,
}

/// Strict TCP tracking (handshake, FIN from each side, RST). Returns the new state.
///
/// `unconfirmed`: the session was written by HA2 sync and no packet has been accepted in it here
/// since ([`SESSION_F_UNCONFIRMED`]), so its state may lag the peer's by the sync delay. A
/// connection whose handshake completed on the old active node moments before a failover reaches
/// this node with its session still `New` or `SynRecv` (the state changes were in flight, or in a
/// message not yet sent); its first segment here, an ACK without SYN, is taken as the handshake
/// done (sequence numbers are not tracked: an ACK forged into such a session would pass too).
/// Once a packet is accepted the exemption is spent; a session this node created never has it.
#[inline(always)]
pub fn tcp_track(
    state: SessionState,
    flags: u8,
    fin_flags: u8,
    from_initiator: bool,
    unconfirmed: bool,
) -> (TcpVerdict, SessionState, u8) {
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let pure_syn = syn && !ack;
    if flags & TCP_RST != 0 {
        return (TcpVerdict::Accept, SessionState::Closed, fin_flags);
    }
    let handshake_lagging = matches!(state, SessionState::New | SessionState::SynRecv);
    if unconfirmed && handshake_lagging && ack && !syn {
        return track_fin(SessionState::Established, flags, fin_flags, from_initiator);
    }
    match state {
        SessionState::New => {
            if from_initiator && pure_syn {
                (TcpVerdict::Accept, state, fin_flags)
            } else if !from_initiator && syn && ack {
                (TcpVerdict::Accept, SessionState::SynRecv, fin_flags)
            } else {
                (TcpVerdict::Invalid, state, fin_flags)
            }
        }
        SessionState::SynRecv => {
            if from_initiator && ack && !syn {
                track_fin(SessionState::Established, flags, fin_flags, from_initiator)
            } else if syn {
                // Retransmitted SYN or SYN-ACK.
                (TcpVerdict::Accept, state, fin_flags)
            } else {
                (TcpVerdict::Invalid, state, fin_flags)
            }
        }
        SessionState::Established | SessionState::FinWait => {
            if syn {
                (TcpVerdict::Invalid, state, fin_flags)
            } else {
                track_fin(state, flags, fin_flags, from_initiator)
            }
        }
        SessionState::TimeWait | SessionState::Closed => {
            if from_initiator && pure_syn {
                (TcpVerdict::Reopen, state, fin_flags)
            } else {
                // Late ACKs and retransmitted FINs of a closing connection.
                (TcpVerdict::Accept, state, fin_flags)
            }
        }
    }
}

#[inline(always)]
fn track_fin(
    state: SessionState,
    flags: u8,
    mut fin_flags: u8,
    from_initiator: bool,
) -> (TcpVerdict, SessionState, u8) {
    if flags & TCP_FIN == 0 {
        return (TcpVerdict::Accept, state, fin_flags);
    }
    fin_flags |= if from_initiator {
        SESSION_F_FIN_ORIG
    } else {
        SESSION_F_FIN_REPLY
    };
    let both = SESSION_F_FIN_ORIG | SESSION_F_FIN_REPLY;
    let next = if fin_flags & both == both {
        SessionState::TimeWait
    } else {
        SessionState::FinWait
    };
    (TcpVerdict::Accept, next, fin_flags)
}

/// Updates an existing session for one packet. Returns `false` if strict TCP rejects the packet
/// (`c.drop_tcp_invalid` is then the caller's to count) and `Err(())` when a SYN reopens it.
#[inline(always)]
pub fn update(
    cfg: &DataplaneConfig,
    c: &mut Counters,
    key: &SessionKey,
    hit: &Hit,
    tcp_flags: u8,
    bytes: u64,
    now: u64,
) -> TcpVerdict {
    // SAFETY: lookup pointer, valid for this run; see the module doc on concurrency.
    let v = unsafe { &mut *hit.value };
    let old = SessionState::from_u8(v.state);
    let mut new = old;
    if key.proto == PROTO_TCP {
        let fin_flags = v.flags & (SESSION_F_FIN_ORIG | SESSION_F_FIN_REPLY);
        let unconfirmed = v.flags & SESSION_F_UNCONFIRMED != 0;
        let (verdict, next, fins) =
            tcp_track(old, tcp_flags, fin_flags, hit.from_initiator, unconfirmed);
        if verdict != TcpVerdict::Accept {
            return verdict;
        }
        if unconfirmed {
            v.flags &= !SESSION_F_UNCONFIRMED;
        }
        new = next;
        if fins != fin_flags {
            v.flags |= fins;
        }
    } else if !hit.from_initiator && old == SessionState::New {
        // UDP/ICMP: a reply establishes the session.
        new = SessionState::Established;
    }
    if hit.from_initiator {
        v.packets_orig += 1;
        v.bytes_orig += bytes;
    } else {
        v.packets_reply += 1;
        v.bytes_reply += bytes;
    }
    v.last_seen_ns = now;
    if new != old {
        v.state = new as u8;
        if new == SessionState::Established {
            c.session_established += 1;
        }
        let kind = if new == SessionState::Closed {
            c.session_closed += 1;
            EVENT_CLOSED
        } else {
            EVENT_STATE_CHANGED
        };
        emit(cfg, c, kind, key, v);
    }
    TcpVerdict::Accept
}

/// What [`create`] did.
pub enum Created {
    Yes,
    /// `if_absent` and a session holds the tuple: nothing written (the new value waits in the
    /// scratch entry, for [`syn_on_existing`]).
    Exists,
    /// The table refused it (counted).
    Failed,
}

/// Creates the session of an allowed new flow: only if no session holds its tuple when
/// `if_absent`, else whatever holds it is replaced (a reopen).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn create(
    cfg: &DataplaneConfig,
    c: &mut Counters,
    key: &SessionKey,
    src_is_hi: bool,
    rule_id: u32,
    ingress_zone: u8,
    egress_zone: u8,
    bytes: u64,
    now: u64,
    if_absent: bool,
) -> Created {
    // Built in a per-CPU scratch entry: 112 bytes on the stack would not fit beside the parsed
    // packet and the FIB parameters in the program's 512.
    let Some(value) = NEW_SESSION.get_ptr_mut(0) else {
        return Created::Failed;
    };
    // SAFETY: this CPU's scratch entry; XDP runs with preemption disabled, so nothing else uses
    // it until the program returns.
    let value = unsafe { &mut *value };
    *value = SessionValue {
        created_ns: now,
        last_seen_ns: now,
        packets_orig: 1,
        packets_reply: 0,
        bytes_orig: bytes,
        bytes_reply: 0,
        rule_id,
        state: SessionState::New as u8,
        flags: if src_is_hi {
            SESSION_F_INITIATOR_IS_HI
        } else {
            0
        },
        ingress_zone,
        egress_zone,
        policy_slot: (cfg.policy_slot & 1) as u8,
        _pad: 0,
        sync_epoch: 0,
        sync_sequence: 0,
        next_hop: Default::default(),
    };
    store(cfg, c, key, value, if_absent)
}

/// Writes `value` (by reference: a copy would put the 112 bytes back on the stack) as the new
/// session of `key`, counts it and announces it; see [`create`] for `if_absent`.
#[inline(always)]
fn store(
    cfg: &DataplaneConfig,
    c: &mut Counters,
    key: &SessionKey,
    value: &SessionValue,
    if_absent: bool,
) -> Created {
    let status = insert(key, value, Writers::Several);
    if status != 0 {
        if status > 0 && if_absent {
            return Created::Exists;
        }
        let Some(held) = present(key, status) else {
            c.drop_session_table_full += 1;
            return Created::Failed;
        };
        // SAFETY: a session's value, valid for this program run.
        unsafe { core::ptr::copy_nonoverlapping(value, held, 1) };
    }
    c.session_created += 1;
    emit(cfg, c, EVENT_CREATED, key, value);
    Created::Yes
}

/// A pure SYN the policy allowed whose tuple has a session ([`Created::Exists`]): the session
/// decides, as it does for every other packet (a retransmitted SYN passes, a SYN into an
/// established connection is dropped, one on a closed session reopens it with the value
/// [`create`] left in the scratch entry). Returns whether the SYN is forwarded.
#[inline(always)]
pub fn syn_on_existing(
    cfg: &DataplaneConfig,
    c: &mut Counters,
    key: &SessionKey,
    src_is_hi: bool,
    tcp_flags: u8,
    bytes: u64,
    now: u64,
) -> bool {
    let verdict = match lookup(key, src_is_hi) {
        Some(hit) => {
            c.session_hit += 1;
            update(cfg, c, key, &hit, tcp_flags, bytes, now)
        }
        // Removed since the insert failed (aged out, or a synced delete).
        None => TcpVerdict::Reopen,
    };
    match verdict {
        TcpVerdict::Accept => true,
        TcpVerdict::Invalid => {
            c.drop_tcp_invalid += 1;
            false
        }
        TcpVerdict::Reopen => {
            let Some(value) = NEW_SESSION.get_ptr_mut(0) else {
                return false;
            };
            // SAFETY: this CPU's scratch entry, as `create` left it in this program run.
            let value: &SessionValue = unsafe { &*value };
            matches!(store(cfg, c, key, value, false), Created::Yes)
        }
    }
}

#[inline(always)]
fn emit(
    cfg: &DataplaneConfig,
    c: &mut Counters,
    kind: u32,
    key: &SessionKey,
    value: &SessionValue,
) {
    if cfg.flags & CONFIG_F_SESSION_EVENTS == 0 {
        return;
    }
    match SESSION_EVENTS.reserve(0) {
        Some(mut entry) => {
            // Fill the reserved slot in place: building the event on the stack would cost 160 of
            // the program's 512 stack bytes.
            let ev = entry.as_mut_ptr();
            // SAFETY: the reservation is sizeof(SessionEvent) bytes and ours until submit.
            unsafe {
                (*ev).kind = kind;
                (*ev)._pad = 0;
                (*ev).key = *key;
                // The value up to its next-hop cache (see SESSION_EVENT_VALUE_LEN); SessionValue
                // is 8-aligned, as the words are.
                (*ev).value_head = *(value as *const SessionValue).cast();
            }
            entry.submit(0);
        }
        None => c.event_ringbuf_full += 1,
    }
}
