//! The layout of the session tables: open addressing in array maps, shared by the programs, which
//! look sessions up and claim slots, and the controller, which walks, ages and fills them through
//! a memory mapping of the same arrays.
//!
//! # Why not the kernel's hash map
//! A new session written into a preallocated `BPF_MAP_TYPE_HASH` took 400-580 ns on the reference
//! VM (a cold bucket, taken under its lock, then an element from the free list), which held the
//! HA2 ingest of new sessions below 2.8M per second and core. Written here, with the two buckets'
//! misses overlapping and no lock, one takes about 270 ns (ingest of new records 3.6-3.9M/s, of
//! updates 5.9-6.7M/s), and an established packet's lookup about 42 ns instead of 59 (measured
//! side by side: README, benchmarks). Reading a message's buckets ahead before writing its records
//! was tried, and cost more instructions than it saved. The arrays are also mmapable, so the
//! controller walks a million sessions by reading memory instead of making a million syscalls.
//!
//! # Layout
//! A table of one family is two arrays of the same number of buckets:
//! - keys (`SESSION_KEYS_V4` / `_V6`): [`KeyBucket`]s of [`BUCKET_SLOTS`] keys, each key as its
//!   [`KeyWords`](crate::session::KeyWords) (2 words for IPv4, one 128-octet bucket in two cache
//!   lines; 5 for IPv6);
//! - values (`SESSION_VALUES_V4` / `_V6`): a [`ValueBucket`] per bucket, the
//!   [`SessionValue`] of each of its slots (slot `bucket * BUCKET_SLOTS + i` of the flat array).
//!
//! Keys sit apart from values so a lookup reads two small buckets, not sixteen values.
//!
//! # Two choices
//! A key may live in either of two buckets picked by a seeded hash of its words ([`buckets_of`]);
//! an insert takes the emptier one. No key is ever moved, and a bucket never overflows into
//! another, so a delete just empties its slot (no tombstones, no probe chains to repair under
//! concurrent readers). The price is headroom: a table has two slots per session it is sized for
//! ([`buckets_for`]); at that load two-choice bucketing leaves the fullest bucket far from full,
//! and a session is refused only when both of its buckets are full (the unit tests below fill a
//! table to its size under churn and see no refusal). The seed is random per table, so nobody can
//! aim flows at one pair of buckets.
//!
//! # Slot states and concurrency
//! The top octet of a key's last word (a pad octet of both key layouts) is the slot's state: an
//! empty slot's last word is 0 (no key's is: its protocol is never 0); an insert claims a slot by
//! compare-and-swap from 0 to the key's word with [`SLOT_CLAIMED`], writes the other words and the
//! value, and publishes it with [`SLOT_LIVE`] by an atomic exchange (ordered after the writes
//! before it on every architecture). Lookups match only live slots. A delete swaps the live word
//! back to 0. Two CPUs inserting the same new key at once each find it absent (a claimed slot is
//! not live yet) and each claim a slot; after publishing, an insert looks again and keeps the
//! first live copy in lookup order, emptying the others, and since both publish with a fully
//! ordered exchange, at least one of them sees both (`Ops::keep_one` in `hafw_ebpf::table`).
//!
//! Limits: a delete compares the slot's last word (ports, protocol, state), so one racing with
//! the slot's reuse by a key of the same ports and protocol could empty the new key's slot (a
//! window of one lookup, a few hundred ns in the programs). Lookups read the state word with a
//! plain load: on arm64 a lookup racing an insert could see the slot live before its value (x86
//! keeps loads in order). A value written over in place (a reopened TCP session, a synced update)
//! can be read half old, half new by another CPU, field by field.

/// Keys per bucket.
pub const BUCKET_SLOTS: usize = 8;

/// Shift of the slot state octet in a key's last word.
const STATE_SHIFT: u32 = 56;
/// Mask of the slot state octet.
pub const SLOT_STATE: u64 = 0xff << STATE_SHIFT;
/// An insert holds the slot and is writing it.
pub const SLOT_CLAIMED: u64 = 0x40 << STATE_SHIFT;
/// The slot holds a session.
pub const SLOT_LIVE: u64 = 0x80 << STATE_SHIFT;

use crate::session::SessionValue;

#[cfg(target_endian = "big")]
compile_error!("the slot state lives in the last octet of a key: little-endian layouts only");

/// One bucket of a key array: `N` words per key (2 for IPv4, 5 for IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBucket<const N: usize> {
    pub slots: [[u64; N]; BUCKET_SLOTS],
}

/// The IPv4 table's bucket (128 octets).
pub type KeyBucketV4 = KeyBucket<2>;
/// The IPv6 table's bucket (320 octets).
pub type KeyBucketV6 = KeyBucket<5>;

/// The values of one bucket's slots, an element of a value array: one lookup gives a program
/// every slot's value (a value array of single values would need a lookup per slot, and the
/// verifier refuses a variable offset beyond an element).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueBucket {
    pub values: [SessionValue; BUCKET_SLOTS],
}
crate::impl_pod!(KeyBucketV4, KeyBucketV6, ValueBucket, TableShape);

/// The geometry of both tables, written once when the maps are created (map `SESSION_TABLE_SHAPE`,
/// one entry), read by every lookup and by whoever maps the tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableShape {
    /// Seed of [`hash`], random per load.
    pub seed: u64,
    pub buckets_v4: u32,
    pub buckets_v6: u32,
}

/// Buckets for a table of `capacity` sessions: two slots per session (at least two buckets, so a
/// key's two buckets differ).
pub const fn buckets_for(capacity: u32) -> u32 {
    let slots = capacity as u64 * 2;
    let buckets = slots.div_ceil(BUCKET_SLOTS as u64);
    if buckets < 2 { 2 } else { buckets as u32 }
}

/// A seeded hash of a key's words (a multiply-xorshift mix: a few ns, 64-bit multiplies only,
/// which the BPF instruction set has). The key's words, the last one's state octet clear.
#[inline(always)]
pub fn hash(seed: u64, words: &[u64]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed;
    let mut i = 0;
    // A while loop: the BPF backend unrolls it for the two constant lengths.
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(K);
        h ^= h >> 29;
        i += 1;
    }
    h = h.wrapping_mul(K);
    h ^ (h >> 32)
}

/// The two buckets a key may live in, of `buckets` (at least 2): one from each half of its hash
/// (multiply-shift, so any bucket count works), made distinct.
#[inline(always)]
pub fn buckets_of(hash: u64, buckets: u32) -> (u32, u32) {
    let n = u64::from(buckets);
    let first = (((hash & 0xffff_ffff) * n) >> 32) as u32;
    let mut second = (((hash >> 32) * n) >> 32) as u32;
    if second == first {
        second = if first + 1 == buckets { 0 } else { first + 1 };
    }
    (first, second)
}

/// Index of slot `slot` of bucket `bucket` in the value array.
#[inline(always)]
pub const fn value_index(bucket: u32, slot: usize) -> u32 {
    bucket * BUCKET_SLOTS as u32 + slot as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the tests replay the same keys.
    struct Keys(u64);
    impl Keys {
        fn next(&mut self) -> [u64; 2] {
            let mut step = || {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            };
            // A realistic IPv4 key: addresses anywhere, ports, protocol 6, state octet clear.
            [step(), step() & 0x0000_0006_ffff_ffff]
        }
    }

    /// Fills a table of `buckets` with `sessions`, then replaces random sessions by new ones
    /// `churn` times (the steady state of a busy firewall), placing each key in the emptier of its
    /// two buckets as the programs do. Returns the refusals.
    fn refusals(buckets: u32, sessions: u32, churn: usize, seed: u64) -> usize {
        let mut load = std::vec![0u8; buckets as usize];
        let mut live: std::vec::Vec<u32> = std::vec::Vec::new();
        let mut keys = Keys(seed | 1);
        let mut refused = 0;
        let mut insert = |load: &mut std::vec::Vec<u8>, live: &mut std::vec::Vec<u32>| {
            let (a, b) = buckets_of(hash(seed, &keys.next()), buckets);
            let target = if load[a as usize] <= load[b as usize] {
                a
            } else {
                b
            };
            if usize::from(load[target as usize]) == BUCKET_SLOTS {
                refused += 1;
            } else {
                load[target as usize] += 1;
                live.push(target);
            }
        };
        for _ in 0..sessions {
            insert(&mut load, &mut live);
        }
        let mut pick = Keys(seed.rotate_left(17) | 1);
        for _ in 0..churn {
            let victim = (pick.next()[0] % live.len() as u64) as usize;
            load[live.swap_remove(victim) as usize] -= 1;
            insert(&mut load, &mut live);
        }
        refused
    }

    extern crate std;

    #[test]
    fn a_table_filled_to_its_size_under_churn_refuses_nothing() {
        for (capacity, churn, seed) in [(1 << 20, 3 << 20, 0x5eed), (1024, 100_000, 7)] {
            assert_eq!(refusals(buckets_for(capacity), capacity, churn, seed), 0);
        }
    }

    #[test]
    fn the_headroom_is_what_keeps_refusals_away() {
        // The same walk with 1.4 slots per session instead of 2 refuses: the test above can fail.
        let buckets = buckets_for(1 << 20);
        let sessions = buckets / 10 * 7 * BUCKET_SLOTS as u32;
        assert!(refusals(buckets, sessions, 3 << 20, 0x5eed) > 1000);
    }

    #[test]
    fn a_keys_two_buckets_differ_and_fall_in_the_table() {
        let mut keys = Keys(3);
        for buckets in [2, 3, 128, 1_000_003] {
            for _ in 0..10_000 {
                let (a, b) = buckets_of(hash(1, &keys.next()), buckets);
                assert!(a < buckets && b < buckets && a != b);
            }
        }
    }

    #[test]
    fn layouts() {
        assert_eq!(core::mem::size_of::<KeyBucketV4>(), 128);
        assert_eq!(core::mem::size_of::<KeyBucketV6>(), 320);
        assert_eq!(buckets_for(1024), 256);
        assert_eq!(value_index(3, 5), 29);
    }
}
