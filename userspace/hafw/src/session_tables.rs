//! The dataplane's two session tables, IPv4 and IPv6 (see "Two tables" in `hafw_common::session`),
//! behind one interface keyed by [`SessionKey`] of either family.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
};
use hafw_common::session::{FAMILY_IPV4, SessionKey, SessionKeyV4, SessionValue};

/// The tables' map names in the object.
pub const IPV4_MAP: &str = "SESSIONS_V4";
pub const IPV6_MAP: &str = "SESSIONS_V6";
/// Their pins' file names (see `dataplane::pin_dir`).
pub const IPV4_PIN: &str = "sessions_v4";
pub const IPV6_PIN: &str = "sessions_v6";

pub struct SessionTables {
    v4: HashMap<MapData, SessionKeyV4, SessionValue>,
    v6: HashMap<MapData, SessionKey, SessionValue>,
    /// Second descriptors of both maps, for [`SessionTables::try_clone`] (aya's map handles do
    /// not lend theirs).
    fds: [OwnedFd; 2],
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
    /// Takes both tables out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<SessionTables> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
        };
        SessionTables::new(take(IPV4_MAP)?, take(IPV6_MAP)?)
    }

    /// The tables a running instance pinned in `dir` (its `dataplane::pin_dir`).
    pub fn from_pins(dir: &Path) -> Result<SessionTables> {
        let open = |file: &str| -> Result<Map> {
            let path = dir.join(file);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        SessionTables::new(open(IPV4_PIN)?, open(IPV6_PIN)?)
    }

    /// Other handles on the same tables, for work that walks them (aging) without holding the
    /// dataplane, and so without stalling session events and HA2 sync meanwhile.
    pub fn try_clone(&self) -> Result<SessionTables> {
        let reopen =
            |fd: &OwnedFd| -> Result<Map> { Ok(Map::HashMap(MapData::from_fd(fd.try_clone()?)?)) };
        SessionTables::new(reopen(&self.fds[0])?, reopen(&self.fds[1])?)
    }

    /// Both tables, each with a second descriptor kept for [`SessionTables::try_clone`].
    fn new(v4: Map, v6: Map) -> Result<SessionTables> {
        let fds = [second_fd(&v4)?, second_fd(&v6)?];
        Ok(SessionTables {
            v4: v4.try_into()?,
            v6: v6.try_into()?,
            fds,
        })
    }

    /// Every session of both tables, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = Result<(SessionKey, SessionValue)>> + '_ {
        let v4 = self.v4.iter().map(|r| {
            r.map(|(k, v)| (SessionKey::from(k), v))
                .context("reading SESSIONS_V4")
        });
        let v6 = self.v6.iter().map(|r| r.context("reading SESSIONS_V6"));
        v4.chain(v6)
    }

    /// The key of every session of both tables.
    pub fn keys(&self) -> impl Iterator<Item = Result<SessionKey>> + '_ {
        let v4 = self
            .v4
            .keys()
            .map(|r| r.map(SessionKey::from).context("reading SESSIONS_V4"));
        let v6 = self.v6.keys().map(|r| r.context("reading SESSIONS_V6"));
        v4.chain(v6)
    }

    pub fn get(&self, key: &SessionKey) -> Option<SessionValue> {
        if key.family == FAMILY_IPV4 {
            self.v4.get(&key.v4(), 0).ok()
        } else {
            self.v6.get(key, 0).ok()
        }
    }

    pub fn insert(&mut self, key: &SessionKey, value: &SessionValue) -> Result<()> {
        if key.family == FAMILY_IPV4 {
            self.v4.insert(key.v4(), value, 0)?;
        } else {
            self.v6.insert(key, value, 0)?;
        }
        Ok(())
    }

    pub fn remove(&mut self, key: &SessionKey) -> Result<()> {
        if key.family == FAMILY_IPV4 {
            self.v4.remove(&key.v4())?;
        } else {
            self.v6.remove(key)?;
        }
        Ok(())
    }
}

fn second_fd(map: &Map) -> Result<OwnedFd> {
    match map {
        Map::HashMap(data) => Ok(data.fd().as_fd().try_clone_to_owned()?),
        _ => Err(anyhow!("a session table is not a hash map")),
    }
}
