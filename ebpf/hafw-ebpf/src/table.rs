//! Lookup, insert and delete in the session tables: open addressing in array maps, two buckets per
//! key (layout, slot states and why in `hafw_common::table`). `session::{get, insert, remove}`
//! pick the family's table; this module knows nothing of sessions but their value type.
//!
//! Verifier notes: the operations are global functions, verified once each (see `global_ops`);
//! their stack frames add to the fast path's within the 512 octets of a call chain, so they are
//! written to need few registers (see `StateWord::is_free`, `Ops::scan`, `Ops::free`). Every
//! loop is bounded by `BUCKET_SLOTS` or the key's word count; buckets and values are reached
//! through `bpf_map_lookup_elem` on arrays, which the verifier inlines as a bounds check and an
//! address computation, so an index from the hash needs no proof of range.

use aya_ebpf::btf_maps::Array;
use hafw_common::{
    session::{KeyWords, SessionValue},
    table::{
        BUCKET_SLOTS, KeyBucket, SLOT_CLAIMED, SLOT_LIVE, TableShape, ValueBucket, buckets_of,
        hash, value_index,
    },
};

use crate::maps::{
    MMAPABLE, SESSION_KEYS_V4, SESSION_KEYS_V6, SESSION_TABLE_SHAPE, SESSION_VALUES_V4,
    SESSION_VALUES_V6,
};

/// Default bucket count of the key arrays (the loader sets the real one from the table size).
pub const DEFAULT_BUCKETS: usize = 65_536;
/// A key array: `N` words per key.
pub type Keys<const N: usize> = Array<KeyBucket<N>, DEFAULT_BUCKETS, MMAPABLE>;
/// A value array, one [`ValueBucket`] per bucket.
pub type Values = Array<ValueBucket, DEFAULT_BUCKETS, MMAPABLE>;

/// The errors of `bpf_map_update_elem` and `bpf_map_delete_elem` for a full table and a missing
/// key, as the kernel's hash map would return them.
pub const E2BIG: i32 = 7;
pub const ENOENT: i32 = 2;

/// One family's table: its maps, named in the code (a map pointer held in a variable or passed
/// to a subprogram is not one the verifier can inline lookups for), and its bucket count.
pub trait Table<const N: usize> {
    fn keys() -> &'static Keys<N>;
    fn values() -> &'static Values;
    fn buckets(shape: &TableShape) -> u32;
}

/// Where a key lives (or may live): its two buckets, and their keys. (Fields, not arrays: an
/// array indexed in a loop the optimizer keeps is built on the stack.)
#[derive(Clone, Copy)]
struct Place<const N: usize> {
    first: Bucket<N>,
    second: Bucket<N>,
}

/// A bucket's index and keys.
#[derive(Clone, Copy)]
struct Bucket<const N: usize> {
    index: u32,
    keys: *mut KeyBucket<N>,
}

/// The key's last word with the slot state `state`.
#[inline(always)]
fn last_word<const N: usize>(key: &[u64; N], state: u64) -> u64 {
    key[N - 1] | state
}

/// The last word of a slot (the state lives in it), read and written only through the methods
/// below.
///
/// Why assembly: the BPF target's Rust atomics stop at loads, stores and adds (its default CPU
/// has no compare-and-swap), but the kernel runs `BPF_CMPXCHG` and `BPF_XCHG` on map values
/// since 5.12, and the BPF assembler takes them whatever the target CPU.
#[derive(Clone, Copy)]
struct StateWord(*mut u64);

impl StateWord {
    #[inline(always)]
    fn of<const N: usize>(bucket: *mut KeyBucket<N>, slot: usize) -> StateWord {
        // SAFETY: `bucket` is a map value, valid and 8-aligned for this program run.
        StateWord(unsafe { &raw mut (*bucket).slots[slot % BUCKET_SLOTS][N - 1] })
    }

    #[inline(always)]
    fn load(self) -> u64 {
        // SAFETY: see `of`; volatile, so it is read once, where it stands.
        unsafe { core::ptr::read_volatile(self.0) }
    }

    /// 1 if the slot is free (its word is 0), else 0, without a branch: `((w | -w) >> 63) ^ 1`.
    /// In assembly for two reasons. BPF has no set-on-condition, so a comparison used as a value
    /// is a branch setting 0 or 1, and the verifier cannot merge such paths (their constants
    /// differ): eight slots would be 256 paths; the optimizer sees through the same arithmetic
    /// written in Rust and turns it back into comparisons. And the word is read in the same
    /// block, where it is tested: read ahead, a bucket's eight words took eight registers, and
    /// their spills made the insert's frame too large beside the fast path's.
    #[inline(always)]
    fn is_free(self) -> u64 {
        let (word, free): (u64, u64);
        // SAFETY: a load of the word (see `of`) and register arithmetic.
        unsafe {
            core::arch::asm!(
                "{w} = *(u64 *)({p} + 0)",
                "{z} = {w}",
                "{z} = -{z}",
                "{z} |= {w}",
                "{z} >>= 63",
                "{z} ^= 1",
                p = in(reg) self.0,
                w = out(reg) word,
                z = out(reg) free,
                options(readonly, nostack),
            );
        }
        let _ = word;
        free
    }

    /// Compare-and-swap: `Ok` if the word was `old` and is now `new`.
    #[inline(always)]
    fn replace(self, old: u64, new: u64) -> Result<(), ()> {
        let found: u64;
        // SAFETY: see `of`; the instruction reads and writes only that word.
        unsafe {
            core::arch::asm!(
                "r0 = cmpxchg_64({word} + 0, r0, {new})",
                word = in(reg) self.0,
                new = in(reg) new,
                inout("r0") old => found,
                options(nostack),
            );
        }
        if found == old { Ok(()) } else { Err(()) }
    }

    /// Writes the word after every write before it, as other CPUs see them, so that a slot goes
    /// live only once its key and value are whole: an atomic exchange, which the JIT emits fully
    /// ordered on every architecture (a plain store may pass earlier ones on arm64), and which
    /// the optimizer treats as touching any memory (it keeps the writes before it there).
    #[inline(always)]
    fn publish(self, new: u64) {
        // SAFETY: as in `replace`.
        unsafe {
            core::arch::asm!(
                "{new} = xchg_64({word} + 0, {new})",
                word = in(reg) self.0,
                new = inout(reg) new => _,
                options(nostack),
            );
        }
    }
}

/// A map value pointer after its null check, through an instruction the optimizer may not move
/// above that check: it computed an element's address inside the value before the check, and
/// the verifier refuses arithmetic on a pointer that may be null.
#[inline(always)]
pub fn checked<T>(mut pointer: *mut T) -> *mut T {
    // SAFETY: a register move; not `pure`, so it stays where it is written.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) pointer, options(nostack)) };
    pointer
}

/// `x`, through a register move the optimizer cannot see through.
#[inline(always)]
fn opaque(mut x: usize) -> usize {
    // SAFETY: a register move.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
    x
}

/// The table operations, generic over the family; the programs call them through the global
/// functions below.
struct Ops<const N: usize, T: Table<N>>(core::marker::PhantomData<T>);

impl<const N: usize, T: Table<N>> Ops<N, T> {
    /// The two buckets `key` may live in.
    #[inline(always)]
    fn place(key: &[u64; N]) -> Option<Place<N>> {
        let shape = SESSION_TABLE_SHAPE.get(0)?;
        let (first, second) = buckets_of(hash(shape.seed, key), T::buckets(shape));
        Some(Place {
            first: Bucket {
                index: first,
                keys: T::keys().get_ptr_mut(first)?,
            },
            second: Bucket {
                index: second,
                keys: T::keys().get_ptr_mut(second)?,
            },
        })
    }

    /// The live slot of `key` in `bucket`.
    #[inline(always)]
    fn scan(bucket: *mut KeyBucket<N>, key: &[u64; N]) -> Option<usize> {
        (0..BUCKET_SLOTS).find(|&slot| Self::scan_slot(bucket, slot, key))
    }

    /// Whether `slot` of `bucket` holds `key`, live. A slot of another key costs a load and a
    /// comparison of its last word (its ports, protocol and state). Each test either goes on or
    /// returns, so the verifier walks one path per slot of a scan (these functions are verified
    /// once, on their own: see `global_ops`). A torn read of a slot being rewritten compares
    /// unequal, or equal to a key whole in its words.
    #[inline(always)]
    fn scan_slot(bucket: *mut KeyBucket<N>, slot: usize, key: &[u64; N]) -> bool {
        if StateWord::of(bucket, slot).load() != last_word(key, SLOT_LIVE) {
            return false;
        }
        // SAFETY: map value, see `StateWord::of`.
        let words = unsafe { &(*bucket).slots[slot % BUCKET_SLOTS] };
        for (word, wanted) in words.iter().zip(key).take(N - 1) {
            // Volatile, the key's words too: read as they are used, they need few registers;
            // the optimizer would hoist them all and spill, and the stack of these functions
            // adds to the fast path's, within 512 octets in all.
            // SAFETY: reads of a map value and of the caller's key, in bounds.
            if unsafe { core::ptr::read_volatile(word) != core::ptr::read_volatile(wanted) } {
                return false;
            }
        }
        true
    }

    /// The bucket and slot of `key`, if it is in the table.
    #[inline(always)]
    fn find(place: &Place<N>, key: &[u64; N]) -> Option<(Bucket<N>, usize)> {
        if let Some(slot) = Self::scan(place.first.keys, key) {
            return Some((place.first, slot));
        }
        Self::scan(place.second.keys, key).map(|slot| (place.second, slot))
    }

    /// The value index of `key`.
    #[inline(always)]
    fn get(key: &[u64; N]) -> Option<u32> {
        let (bucket, slot) = Self::find(&Self::place(key)?, key)?;
        Some(value_index(bucket.index, slot))
    }

    /// Inserts `key` with `value` into a free slot of the emptier of its buckets:
    /// `Ok(Inserted::New)`. When `key` is present, writes nothing: `Ok(Inserted::Present(index))`.
    /// `-E2BIG` when both buckets are full (or other CPUs' claims took their last free slots
    /// meanwhile). `writers`: [`Writers::Several`] unless the caller is the table's only writer.
    #[inline(always)]
    fn insert(key: &[u64; N], value: &SessionValue, writers: Writers) -> Result<Inserted, i32> {
        let place = Self::place(key).ok_or(-E2BIG)?;
        if let Some((bucket, slot)) = Self::find(&place, key) {
            return Ok(Inserted::Present(value_index(bucket.index, slot)));
        }
        let (emptier, other) = if Self::free(place.first.keys) >= Self::free(place.second.keys) {
            (place.first, place.second)
        } else {
            (place.second, place.first)
        };
        let ours = match Self::claim(emptier, key, value) {
            Some(slot) => value_index(emptier.index, slot),
            None => match Self::claim(other, key, value) {
                Some(slot) => value_index(other.index, slot),
                None => return Err(-E2BIG),
            },
        };
        if writers == Writers::One {
            return Ok(Inserted::New);
        }
        match Self::keep_one(&place, key) {
            Some(kept) if kept != ours => Ok(Inserted::Present(kept)),
            _ => Ok(Inserted::New),
        }
    }

    /// Leaves one live copy of `key`, the first in lookup order, and returns its value index.
    /// Two CPUs (or a CPU and the controller) inserting the same new key at once each find it
    /// absent (a claimed slot is not live yet) and each claim a slot. Each publishes its slot with
    /// a fully ordered exchange and then calls this, so at least one of them sees both copies and
    /// empties the later one; the other copy, never updated again, would otherwise outlive the
    /// session (aging and deletes find the first).
    #[inline(always)]
    fn keep_one(place: &Place<N>, key: &[u64; N]) -> Option<u32> {
        let kept = Self::keep_first(place.first, key, None);
        Self::keep_first(place.second, key, kept)
    }

    /// [`Ops::keep_one`] in one bucket, `kept` the copy kept so far.
    #[inline(always)]
    fn keep_first(bucket: Bucket<N>, key: &[u64; N], mut kept: Option<u32>) -> Option<u32> {
        for slot in 0..BUCKET_SLOTS {
            if !Self::scan_slot(bucket.keys, slot, key) {
                continue;
            }
            if kept.is_none() {
                kept = Some(value_index(bucket.index, slot));
            } else {
                // Failing means another CPU emptied it first.
                let _ = StateWord::of(bucket.keys, slot).replace(last_word(key, SLOT_LIVE), 0);
            }
        }
        kept
    }

    /// How many slots of `bucket` are free (branch-free). A loop the optimizer cannot unroll (its
    /// bound is opaque to it, not to the verifier): unrolled, it computed all eight slot
    /// addresses ahead and spilled them, and this function's stack adds to the fast path's.
    #[inline(always)]
    fn free(bucket: *mut KeyBucket<N>) -> u64 {
        let mut free = 0;
        let mut slot = 0;
        while slot < opaque(BUCKET_SLOTS) {
            free += StateWord::of(bucket, slot).is_free();
            slot += 1;
        }
        free
    }

    /// Claims a free slot of `bucket` for `key`, writes it and publishes it: the slot. `None`
    /// when the bucket has no free slot left.
    #[inline(always)]
    fn claim(bucket: Bucket<N>, key: &[u64; N], value: &SessionValue) -> Option<usize> {
        let keys = bucket.keys;
        let values = T::values().get_ptr_mut(bucket.index)?;
        for slot in 0..BUCKET_SLOTS {
            let state = StateWord::of(keys, slot);
            if state.load() != 0 || state.replace(0, last_word(key, SLOT_CLAIMED)).is_err() {
                continue;
            }
            // SAFETY: the slot is ours since the claim; map values, valid for this run.
            unsafe {
                let words = &raw mut (*keys).slots[slot];
                for (w, word) in key.iter().enumerate().take(N - 1) {
                    core::ptr::write_volatile(&raw mut (*words)[w], *word);
                }
                core::ptr::copy_nonoverlapping(value, &raw mut (*values).values[slot], 1);
            }
            state.publish(last_word(key, SLOT_LIVE));
            return Some(slot);
        }
        None
    }

    /// Empties `key`'s slot (`-ENOENT` if absent).
    #[inline(always)]
    fn remove(key: &[u64; N]) -> Result<(), i32> {
        let place = Self::place(key).ok_or(-ENOENT)?;
        let (bucket, slot) = Self::find(&place, key).ok_or(-ENOENT)?;
        // Only if still this key's: another CPU may have emptied and reclaimed it.
        StateWord::of(bucket.keys, slot)
            .replace(last_word(key, SLOT_LIVE), 0)
            .map_err(|()| -ENOENT)
    }
}

/// Who writes the table while an insert runs.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Writers {
    /// The caller alone: the HA2 ingest of a passive node, whose fast path creates no sessions
    /// (a sender's HA2 messages are one flow, on one queue of the link in use; only while the
    /// sender moves to the backup link could the two links deliver the same new session at the
    /// same instant, and leave two copies of it). An insert then skips
    /// [`Ops::keep_one`]: its second look, after the exchange that publishes the slot, waits for
    /// that exchange to complete, and so for the value's stores, cache misses, to reach the
    /// cache: 3.75M new records/s/core without it, 2.35M with it.
    One = 0,
    /// Programs on several CPUs, the controller, or both: the fast path.
    Several = 1,
}

/// What an insert did.
enum Inserted {
    New,
    /// The key was present (its value index); nothing was written.
    Present(u32),
}

/// [`Inserted::Present`] in the scalar a global function returns: bit 32 set, the index below.
pub const PRESENT: i64 = 1 << 32;

/// The table operations as global functions, one per family and operation. The verifier checks a
/// global function once, on its own, and its callers against its signature only; a static
/// subprogram or inlined code is checked again at every call site for every state that reaches
/// it, and the fast path reaches its lookup in hundreds of states (with the scans inlined it
/// exceeded the verifier's million instructions; it verifies 470k with the kernel's hash map).
/// A global function returns a scalar, so the callers look the value up by the index returned.
macro_rules! global_ops {
    ($words:literal, $table:ty, $find:ident, $insert:ident, $remove:ident) => {
        /// The value index of a key, or -1. (A global function: see `global_ops`.)
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $find(key: *const KeyWords<$words>) -> i64 {
            // SAFETY: the verifier checked the memory behind a non-null pointer.
            let Some(key) = (unsafe { key.as_ref() }) else {
                return -1;
            };
            Ops::<$words, $table>::get(&key.0).map_or(-1, i64::from)
        }

        /// Inserts a key with a value: 0, or [`PRESENT`] with the value index of the key present
        /// (nothing written), or `-E2BIG`. `writers`: a [`Writers`].
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $insert(
            key: *const KeyWords<$words>,
            value: *const SessionValue,
            writers: u64,
        ) -> i64 {
            // SAFETY: as in the lookup.
            let (Some(key), Some(value)) = (unsafe { key.as_ref() }, unsafe { value.as_ref() })
            else {
                return -i64::from(E2BIG);
            };
            let writers = if writers == Writers::One as u64 {
                Writers::One
            } else {
                Writers::Several
            };
            match Ops::<$words, $table>::insert(&key.0, value, writers) {
                Ok(Inserted::New) => 0,
                Ok(Inserted::Present(index)) => PRESENT | i64::from(index),
                Err(e) => i64::from(e),
            }
        }

        /// Deletes a key: 0, or `-ENOENT`.
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $remove(key: *const KeyWords<$words>) -> i64 {
            // SAFETY: as in the lookup.
            let Some(key) = (unsafe { key.as_ref() }) else {
                return -i64::from(ENOENT);
            };
            match Ops::<$words, $table>::remove(&key.0) {
                Ok(()) => 0,
                Err(e) => i64::from(e),
            }
        }
    };
}

global_ops!(
    2,
    V4,
    hafw_session_find_v4,
    hafw_session_insert_v4,
    hafw_session_remove_v4
);
global_ops!(
    5,
    V6,
    hafw_session_find_v6,
    hafw_session_insert_v6,
    hafw_session_remove_v6
);

/// The IPv4 table.
pub struct V4;
impl Table<2> for V4 {
    #[inline(always)]
    fn keys() -> &'static Keys<2> {
        &SESSION_KEYS_V4
    }
    #[inline(always)]
    fn values() -> &'static Values {
        &SESSION_VALUES_V4
    }
    #[inline(always)]
    fn buckets(shape: &TableShape) -> u32 {
        shape.buckets_v4
    }
}

/// The IPv6 table.
pub struct V6;
impl Table<5> for V6 {
    #[inline(always)]
    fn keys() -> &'static Keys<5> {
        &SESSION_KEYS_V6
    }
    #[inline(always)]
    fn values() -> &'static Values {
        &SESSION_VALUES_V6
    }
    #[inline(always)]
    fn buckets(shape: &TableShape) -> u32 {
        shape.buckets_v6
    }
}
