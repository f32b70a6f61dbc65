//! The dataplane's two session tables, IPv4 and IPv6 (see "Two tables" in `hafw_common::session`),
//! behind one interface keyed by [`SessionKey`] of either family.
//!
//! The tables are open addressing of our own in mmapable arrays (layout and slot protocol in
//! `hafw_common::table`). The controller maps them and works on the shared memory with the same
//! atomic slot protocol as the programs: a walk of a million sessions reads memory instead of
//! making a million syscalls.

use std::{
    os::fd::AsFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering, fence},
    },
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData},
};
use hafw_common::{
    session::{FAMILY_IPV4, KeyWords, SessionKey, SessionValue},
    table::{
        BUCKET_SLOTS, KeyBucket, SLOT_CLAIMED, SLOT_LIVE, SLOT_STATE, TableShape, ValueBucket,
        buckets_for, buckets_of, hash, value_index,
    },
};
use memmap2::{MmapOptions, MmapRaw};

/// The maps' names in the object, and their pins' file names (see `dataplane::pin_dir`).
pub const MAPS: [(&str, &str); 5] = [
    (SHAPE_MAP, "session_table_shape"),
    (KEYS_V4, "session_keys_v4"),
    (VALUES_V4, "session_values_v4"),
    (KEYS_V6, "session_keys_v6"),
    (VALUES_V6, "session_values_v6"),
];
const SHAPE_MAP: &str = "SESSION_TABLE_SHAPE";
const KEYS_V4: &str = "SESSION_KEYS_V4";
const VALUES_V4: &str = "SESSION_VALUES_V4";
const KEYS_V6: &str = "SESSION_KEYS_V6";
const VALUES_V6: &str = "SESSION_VALUES_V6";

/// Sizes the tables' maps for `capacity` sessions per family (see `hafw_common::table`).
pub fn size_maps(loader: &mut EbpfLoader<'_>, capacity: u32) {
    let buckets = buckets_for(capacity);
    for map in [KEYS_V4, VALUES_V4, KEYS_V6, VALUES_V6] {
        loader.map_max_entries(map, buckets);
    }
}

/// Writes the shape of the tables [`size_maps`] sized for `capacity`, with a fresh random seed,
/// before any program runs.
pub fn write_shape(ebpf: &mut Ebpf, capacity: u32) -> Result<()> {
    let buckets = buckets_for(capacity);
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow!("no random seed for the session tables: {e}"))?;
    let shape = TableShape {
        seed: u64::from_ne_bytes(seed),
        buckets_v4: buckets,
        buckets_v6: buckets,
    };
    let map = ebpf
        .map_mut(SHAPE_MAP)
        .ok_or_else(|| anyhow!("map {SHAPE_MAP} missing from the XDP object"))?;
    Array::<_, TableShape>::try_from(map)?.set(0, shape, 0)?;
    Ok(())
}

/// Both tables, mapped. Clones share the mappings.
#[derive(Clone)]
pub struct SessionTables {
    v4: Table<2>,
    v6: Table<5>,
    /// The maps' descriptors, kept open: programs loaded later from the same object are
    /// relocated against these descriptor numbers (a closed one could be reused by another map).
    _maps: Arc<(Array<MapData, TableShape>, [MapData; 4])>,
}

/// Sessions per family, as a walk of the tables counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyCounts {
    pub ipv4: u64,
    pub ipv6: u64,
}

impl FamilyCounts {
    pub fn count(&mut self, key: &SessionKey) {
        if key.family == FAMILY_IPV4 {
            self.ipv4 += 1;
        } else {
            self.ipv6 += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.ipv4 + self.ipv6
    }
}

impl SessionTables {
    /// Maps both tables of the loaded object (after [`write_shape`]).
    pub fn take(ebpf: &mut Ebpf) -> Result<SessionTables> {
        let mut take = |name: &str| -> Result<MapData> {
            match ebpf.take_map(name) {
                Some(Map::Array(data)) => Ok(data),
                Some(_) => Err(anyhow!("map {name} is not an array")),
                None => Err(anyhow!("map {name} missing from the XDP object")),
            }
        };
        SessionTables::new(
            take(SHAPE_MAP)?,
            [take(KEYS_V4)?, take(VALUES_V4)?],
            [take(KEYS_V6)?, take(VALUES_V6)?],
        )
    }

    /// The tables a running instance pinned in `dir` (its `dataplane::pin_dir`).
    pub fn from_pins(dir: &Path) -> Result<SessionTables> {
        let open = |index: usize| -> Result<MapData> {
            let path = dir.join(MAPS[index].1);
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
        };
        SessionTables::new(open(0)?, [open(1)?, open(2)?], [open(3)?, open(4)?])
    }

    fn new(shape: MapData, v4: [MapData; 2], v6: [MapData; 2]) -> Result<SessionTables> {
        let shape_map = Array::<_, TableShape>::try_from(Map::Array(shape))?;
        let table_shape = shape_map
            .get(&0, 0)
            .context("reading SESSION_TABLE_SHAPE")?;
        let v4_table = Table::map(&v4, table_shape.buckets_v4, table_shape.seed)?;
        let v6_table = Table::map(&v6, table_shape.buckets_v6, table_shape.seed)?;
        let [k4, x4] = v4;
        let [k6, x6] = v6;
        Ok(SessionTables {
            v4: v4_table,
            v6: v6_table,
            _maps: Arc::new((shape_map, [k4, x4, k6, x6])),
        })
    }

    /// Every session of both tables, IPv4 first (a walk of memory: it cannot fail).
    pub fn iter(&self) -> impl Iterator<Item = (SessionKey, SessionValue)> + '_ {
        let (t4, t6) = (&self.v4, &self.v6);
        let v4 = t4.live().filter_map(move |(key, slot, state)| {
            let value = t4.read_value(slot, state)?;
            Some((SessionKey::from(*KeyWords(key).v4()), value))
        });
        let v6 = t6.live().filter_map(move |(key, slot, state)| {
            let value = t6.read_value(slot, state)?;
            Some((*KeyWords(key).key(), value))
        });
        v4.chain(v6)
    }

    /// The key of every session of both tables.
    pub fn keys(&self) -> impl Iterator<Item = SessionKey> + '_ {
        let v4 = self
            .v4
            .live()
            .map(|(key, _, _)| SessionKey::from(*KeyWords(key).v4()));
        let v6 = self.v6.live().map(|(key, _, _)| *KeyWords(key).key());
        v4.chain(v6)
    }

    pub fn get(&self, key: &SessionKey) -> Option<SessionValue> {
        if key.family == FAMILY_IPV4 {
            let (slot, state) = self.v4.find(&key.v4_words().0)?;
            self.v4.read_value(slot, state)
        } else {
            let (slot, state) = self.v6.find(&key.words().0)?;
            self.v6.read_value(slot, state)
        }
    }

    pub fn insert(&mut self, key: &SessionKey, value: &SessionValue) -> Result<()> {
        if key.family == FAMILY_IPV4 {
            self.v4.insert(&key.v4_words().0, value)
        } else {
            self.v6.insert(&key.words().0, value)
        }
    }

    pub fn remove(&mut self, key: &SessionKey) -> Result<()> {
        let removed = if key.family == FAMILY_IPV4 {
            self.v4.remove(&key.v4_words().0)
        } else {
            self.v6.remove(&key.words().0)
        };
        if removed {
            Ok(())
        } else {
            bail!("no session {key:?}")
        }
    }
}

/// One family's mapped table: `N` words per key.
#[derive(Clone)]
struct Table<const N: usize> {
    keys: Arc<MmapRaw>,
    values: Arc<MmapRaw>,
    buckets: u32,
    seed: u64,
}

/// A slot: bucket and index in it.
type Slot = (u32, usize);

impl<const N: usize> Table<N> {
    fn map(maps: &[MapData; 2], buckets: u32, seed: u64) -> Result<Table<N>> {
        let map = |data: &MapData, size: usize| -> Result<Arc<MmapRaw>> {
            let info = data.info()?;
            if buckets < 2 || info.max_entries() != buckets || info.value_size() as usize != size {
                bail!(
                    "a session table map has {} entries of {} octets, not {buckets} of {size}",
                    info.max_entries(),
                    info.value_size()
                );
            }
            let mmap = MmapOptions::new()
                .len(buckets as usize * size)
                .map_raw(&data.fd().as_fd())
                .context("mapping a session table")?;
            Ok(Arc::new(mmap))
        };
        Ok(Table {
            keys: map(&maps[0], size_of::<KeyBucket<N>>())?,
            values: map(&maps[1], size_of::<ValueBucket>())?,
            buckets,
            seed,
        })
    }

    /// The words of a slot's key (the last one is the state word).
    fn words(&self, (bucket, index): Slot) -> *mut [u64; N] {
        let buckets = self.keys.as_mut_ptr().cast::<KeyBucket<N>>();
        // SAFETY: `bucket` < `self.buckets`, within the mapping (its length was checked).
        unsafe { &raw mut (*buckets.add(bucket as usize)).slots[index] }
    }

    fn state(&self, slot: Slot) -> &AtomicU64 {
        // SAFETY: an 8-aligned word of the mapping, shared with the programs, which access it
        // atomically too (see `hafw_common::table`).
        unsafe { AtomicU64::from_ptr((*self.words(slot)).as_mut_ptr().add(N - 1)) }
    }

    fn value(&self, (bucket, index): Slot) -> *mut SessionValue {
        let values = self.values.as_mut_ptr().cast::<SessionValue>();
        // SAFETY: within the mapping, as `words`.
        unsafe { values.add(value_index(bucket, index) as usize) }
    }

    /// The words of a live slot's key and its state word, read as one: the state before and after
    /// the words (a seqlock's read), `None` if the slot is not live or changed meanwhile (emptied
    /// and claimed again by another key, the words could be a mix of two keys).
    fn read_key(&self, slot: Slot) -> Option<(u64, [u64; N])> {
        let state = self.state(slot).load(Ordering::Acquire);
        if state & SLOT_STATE != SLOT_LIVE {
            return None;
        }
        // SAFETY: within the mapping; volatile, as the programs write it concurrently.
        let words = unsafe { self.words(slot).read_volatile() };
        fence(Ordering::Acquire);
        (self.state(slot).load(Ordering::Relaxed) == state).then_some((state, words))
    }

    /// The value of a slot whose state word was `state` when its key was read; `None` if the slot
    /// changed since.
    fn read_value(&self, slot: Slot, state: u64) -> Option<SessionValue> {
        // SAFETY: within the mapping; volatile, as the programs write it concurrently (a field
        // may be torn, as a read of a kernel hash map's value can be).
        let value = unsafe { self.value(slot).read_volatile() };
        fence(Ordering::Acquire);
        (self.state(slot).load(Ordering::Relaxed) == state).then_some(value)
    }

    /// Every live slot, with its key's words (state octet cleared) and its state word.
    fn live(&self) -> impl Iterator<Item = ([u64; N], Slot, u64)> + '_ {
        (0..self.buckets)
            .flat_map(|bucket| (0..BUCKET_SLOTS).map(move |index| (bucket, index)))
            .filter_map(|slot| {
                let (state, mut words) = self.read_key(slot)?;
                words[N - 1] = state & !SLOT_STATE;
                Some((words, slot, state))
            })
    }

    fn buckets_of(&self, key: &[u64; N]) -> [u32; 2] {
        let (first, second) = buckets_of(hash(self.seed, key), self.buckets);
        [first, second]
    }

    /// Every live copy of `key` (one but for a moment: see [`Table::keep_one`]) with its state
    /// word, in lookup order.
    fn copies<'a>(&'a self, key: &'a [u64; N]) -> impl Iterator<Item = (Slot, u64)> + 'a {
        let live = key[N - 1] | SLOT_LIVE;
        self.buckets_of(key).into_iter().flat_map(move |bucket| {
            (0..BUCKET_SLOTS).filter_map(move |index| {
                let (state, words) = self.read_key((bucket, index))?;
                (state == live && words[..N - 1] == key[..N - 1])
                    .then_some(((bucket, index), state))
            })
        })
    }

    /// The slot of `key` and its state word.
    fn find(&self, key: &[u64; N]) -> Option<(Slot, u64)> {
        self.copies(key).next()
    }

    /// Writes `value` over the session of `key`, or inserts it as the programs do.
    fn insert(&self, key: &[u64; N], value: &SessionValue) -> Result<()> {
        if let Some((slot, _)) = self.find(key) {
            // SAFETY: within the mapping.
            unsafe { self.value(slot).write_volatile(*value) };
            return Ok(());
        }
        let free = |bucket: u32| {
            (0..BUCKET_SLOTS)
                .filter(|&index| self.state((bucket, index)).load(Ordering::Relaxed) == 0)
                .count()
        };
        let [first, second] = self.buckets_of(key);
        let order = if free(first) >= free(second) {
            [first, second]
        } else {
            [second, first]
        };
        for bucket in order {
            for index in 0..BUCKET_SLOTS {
                let slot = (bucket, index);
                let claimed = key[N - 1] | SLOT_CLAIMED;
                if self
                    .state(slot)
                    .compare_exchange(0, claimed, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // SAFETY: the slot is ours since the claim; within the mapping.
                unsafe {
                    let words = self.words(slot).cast::<u64>();
                    for (w, word) in key[..N - 1].iter().enumerate() {
                        words.add(w).write_volatile(*word);
                    }
                    self.value(slot).write_volatile(*value);
                }
                // Fully ordered, then one copy kept, as the programs do (see `Ops::keep_one`
                // in `hafw_ebpf::table`): a program inserting the same key at once claimed
                // another slot.
                self.state(slot)
                    .swap(key[N - 1] | SLOT_LIVE, Ordering::SeqCst);
                self.keep_one(key);
                return Ok(());
            }
        }
        bail!("the session table has no room for this session (both of its buckets are full)")
    }

    /// Leaves one live copy of `key`, the first in lookup order.
    fn keep_one(&self, key: &[u64; N]) {
        for (slot, state) in self.copies(key).skip(1) {
            let _ =
                self.state(slot)
                    .compare_exchange(state, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Empties the slot of `key`; `false` if absent.
    fn remove(&self, key: &[u64; N]) -> bool {
        self.find(key).is_some_and(|(slot, _)| {
            self.state(slot)
                .compare_exchange(
                    key[N - 1] | SLOT_LIVE,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        })
    }
}
