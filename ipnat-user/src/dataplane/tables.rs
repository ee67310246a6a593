//! The tables: mappings, steering rules, block tables, settings and counters, as the data
//! path reads them.

use super::*;

/// A mapping as installed in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledMapping {
    pub id: u32,
    pub public: Block,
    pub private: Block,
}

impl InstalledMapping {
    /// The mapping as the config writes it.
    pub fn config(&self) -> MappingConfig {
        MappingConfig {
            public: self.public,
            private: self.private,
        }
    }
}

/// A steering rule as installed, with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct InstalledSteer {
    pub id: u32,
    pub source: Block,
    pub interface: String,
    pub ifindex: u32,
    pub gateway: Ipv4Addr,
    pub subnet: Block,
    pub packets: u64,
    pub bytes: u64,
}

impl InstalledSteer {
    /// The rule as the config writes it.
    pub fn rule(&self) -> crate::config::SteerConfig {
        crate::config::SteerConfig {
            source: self.source,
            interface: self.interface.clone(),
            gateway: self.gateway,
            subnet: self.subnet,
        }
    }
}

/// The maps, owned by whoever writes them: the running controller, or a CLI that opened pins.
pub struct Tables {
    pub(super) dnat: HashMap<MapData, u32, NatEntry>,
    pub(super) snat: HashMap<MapData, u32, NatEntry>,
    /// Mappings the exact tables have room for (`max_mappings`); ids go up to it.
    pub(super) capacity: u32,
    /// The in-place writer of entries (`ipnat_table_write`), where this process loaded the
    /// programs, or the one `ipnat run` pinned beside the maps.
    pub(super) writer: Option<std::os::fd::OwnedFd>,
    pub(super) reasons: PerCpuArray<MapData, u64>,
    pub(super) settings: Array<MapData, Settings>,
    pub(super) dnat_pfx: LpmTrie<MapData, u32, PrefixEntry>,
    pub(super) snat_pfx: LpmTrie<MapData, u32, PrefixEntry>,
    pub(super) steer: LpmTrie<MapData, u32, SteerTarget>,
    pub(super) steer_counters: Array<MapData, SteerCounters>,
    pub(super) xdp_targets: HashMap<MapData, u32, u32>,
    pub(super) internal: LpmTrie<MapData, u32, u32>,
    /// The fast path's remembered reverse-path verdicts and their route generation.
    pub(super) rpf: HashMap<MapData, RpfKey, u64>,
    pub(super) route_gen: Array<MapData, u32>,
    /// Descriptors of every map (batch operations, layout migration).
    pub(super) batch_fds: BTreeMap<&'static str, std::os::fd::OwnedFd>,
    /// Kernel memory charged to each map (`memlock` in its fdinfo), bytes.
    pub(super) memory: BTreeMap<&'static str, u64>,
}

/// The kernel memory a map holds, as its fdinfo reports it.
pub(super) fn memlock(map: &MapData) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The route generation, written from the thread that watches the kernel's routing changes.
pub struct RouteGeneration(Array<MapData, u32>);

impl RouteGeneration {
    /// Moves to the next generation: every remembered reverse-path verdict is forgotten.
    pub fn bump(&mut self) -> Result<u32, DataplaneError> {
        let name = names::ROUTE_GENERATION;
        let next = self.0.get(&0, 0).map_err(map_err(name))?.wrapping_add(1);
        self.0.set(0, next, 0).map_err(map_err(name))?;
        Ok(next)
    }
}

/// What the tables cost in kernel memory.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Bytes per map.
    pub maps: BTreeMap<&'static str, u64>,
    pub total_bytes: u64,
    /// Mappings the tables have room for (`max_mappings`).
    pub capacity: u32,
    /// The exact tables and the counters, divided by `capacity` (the block tables and the
    /// per-CPU reason counters do not grow with it).
    pub bytes_per_mapping: f64,
}

/// The `MapData` inside a map taken from the object.
pub(super) fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::Array(m)
        | Map::PerCpuArray(m) => Some(m),
        _ => None,
    }
}

impl Tables {
    /// Takes the maps out of the loaded object. With `repin` (directory, names), those maps
    /// replace the pins of their predecessors there.
    pub(super) fn take(
        ebpf: &mut Ebpf,
        repin: Option<(&Path, &[&str])>,
    ) -> Result<Self, DataplaneError> {
        Self::assemble(|name| {
            let map = ebpf
                .take_map(name)
                .ok_or(DataplaneError::MissingMap(name))?;
            if let Some((dir, _)) = repin.filter(|(_, which)| which.contains(&name)) {
                let path = dir.join(name);
                remove_pin(&path)?;
                map.pin(&path).map_err(|e| pin_error(&path, e))?;
            }
            Ok(map)
        })
    }

    /// Opens the maps a running `ipnat run` pinned under `dir`, and its in-place writer.
    pub fn open_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        crate::state::bpffs_of(dir)?;
        let mut tables = Self::assemble(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| pin_error(&path, format!("{e} (is `ipnat run` running?)")))?;
            aya::maps::Map::from_map_data(data).map_err(|e| pin_error(&path, e))
        })?;
        tables.writer = obj_get(&dir.join(names::TABLE_WRITE_PROGRAM)).ok();
        Ok(tables)
    }

    /// The tables from `get`, which gives each map by name; records what each costs.
    pub(super) fn assemble(
        mut get: impl FnMut(&'static str) -> Result<aya::maps::Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        let mut memory = BTreeMap::new();
        let mut batch_fds = BTreeMap::new();
        let mut capacity = 0;
        let mut typed = |name: &'static str| {
            let map = get(name)?;
            if let Some(data) = map_data(&map) {
                memory.insert(name, memlock(data));
                if name == names::DNAT_MAP {
                    capacity = data.info().map_err(map_err(name))?.max_entries();
                }
                {
                    use std::os::fd::AsFd;
                    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| {
                        DataplaneError::Pin {
                            path: name.into(),
                            why: e.to_string(),
                        }
                    })?;
                    batch_fds.insert(name, fd);
                }
            }
            Ok::<_, DataplaneError>(map)
        };
        macro_rules! map {
            ($name:expr) => {
                typed($name)?.try_into().map_err(map_err($name))?
            };
        }
        let (dnat, snat, reasons, settings): (HashMap<MapData, u32, NatEntry>, _, _, _) = (
            map!(names::DNAT_MAP),
            map!(names::SNAT_MAP),
            map!(names::REASON_COUNTERS),
            map!(names::SETTINGS),
        );

        let (dnat_pfx, snat_pfx, steer, steer_counters, xdp_targets, internal) = (
            map!(names::DNAT_PREFIX_MAP),
            map!(names::SNAT_PREFIX_MAP),
            map!(names::STEER_MAP),
            map!(names::STEER_COUNTERS),
            map!(names::XDP_TARGETS),
            map!(names::INTERNAL_MAP),
        );
        let (rpf, route_gen) = (map!(names::RPF_MAP), map!(names::ROUTE_GENERATION));
        Ok(Self {
            dnat,
            snat,
            capacity,
            writer: None,
            reasons,
            settings,
            dnat_pfx,
            snat_pfx,
            steer,
            steer_counters,
            xdp_targets,
            internal,
            rpf,
            route_gen,
            batch_fds,
            memory,
        })
    }

    /// Every entry of the exact table `name` (DNAT or SNAT): in batches where the kernel can.
    pub(super) fn exact_entries(
        &self,
        name: &'static str,
    ) -> Result<Vec<(u32, NatEntry)>, DataplaneError> {
        use std::os::fd::AsFd;
        let batch = match self.batch_fds.get(name) {
            Some(fd) => lookup_batch::<u32, NatEntry>(fd.as_fd())
                .map_err(|error| DataplaneError::Batch { name, error })?,
            None => None,
        };
        match batch {
            Some(entries) => Ok(entries),
            None => {
                let map = if name == names::SNAT_MAP {
                    &self.snat
                } else {
                    &self.dnat
                };
                map.iter().collect::<Result<_, _>>().map_err(map_err(name))
            }
        }
    }

    /// Every entry of a prefix table, with its block.
    pub(super) fn prefix_entries(
        &self,
        public: bool,
    ) -> Result<Vec<(Block, PrefixEntry)>, DataplaneError> {
        let (trie, name) = if public {
            (&self.dnat_pfx, names::DNAT_PREFIX_MAP)
        } else {
            (&self.snat_pfx, names::SNAT_PREFIX_MAP)
        };
        let mut out = Vec::new();
        for entry in trie.iter() {
            let (k, e) = entry.map_err(map_err(name))?;
            let block = Ipv4Net::new(addr(k.data()), k.prefix_len() as u8)
                .map(Block)
                .map_err(|_| DataplaneError::Corrupt(name))?;
            out.push((block, e));
        }
        Ok(out)
    }

    /// The mappings in the kernel, by id; the self-check's probe mapping
    /// ([`super::PROBE_MAPPING`]) is not one of them.
    pub fn mappings(&self) -> Result<Vec<InstalledMapping>, DataplaneError> {
        let mut all = self.all_mappings()?;
        all.retain(|m| m.public != super::PROBE_MAPPING.public);
        Ok(all)
    }

    /// Whether the self-check's probe mapping is among `installed`.
    fn has_probe(installed: &[InstalledMapping]) -> bool {
        installed
            .iter()
            .any(|m| m.public == super::PROBE_MAPPING.public)
    }

    /// Installs the self-check's probe mapping beside the others (it takes one entry of the
    /// capacity); [`Tables::apply`] keeps it from then on.
    pub fn install_probe(&mut self) -> Result<(), DataplaneError> {
        let current = self.all_mappings()?;
        if Self::has_probe(&current) {
            return Ok(());
        }
        if current.len() >= self.capacity() as usize {
            return Err(DataplaneError::Full(self.capacity()));
        }
        let mut all: Vec<MappingConfig> = current.iter().map(InstalledMapping::config).collect();
        all.push(super::PROBE_MAPPING);
        self.apply_all(&all, current)
    }

    /// Every mapping in the kernel, the probe's included, by id.
    fn all_mappings(&self) -> Result<Vec<InstalledMapping>, DataplaneError> {
        let mut out = Vec::new();
        let entries = self.exact_entries(names::DNAT_MAP)?;
        for (public, NatEntry { target, .. }) in entries {
            out.push(InstalledMapping {
                id: target.id,
                public: addr(public).into(),
                private: addr(target.addr).into(),
            });
        }
        for (public, PrefixEntry { target, .. }) in self.prefix_entries(true)? {
            let private = Ipv4Net::new(addr(key(public.addr()) ^ target.xor), public.prefix_len())
                .map(Block)
                .map_err(|_| DataplaneError::Corrupt(names::DNAT_PREFIX_MAP))?;
            out.push(InstalledMapping {
                id: target.id,
                public,
                private,
            });
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    /// Makes the kernel tables equal `desired`. Additions and changes are written before
    /// removals, so a mapping that stays is never absent. A changed entry (a key that stays,
    /// with a new translation) is rewritten in place, one 8-byte store, so the data path sees
    /// the old or the new translation and its counters lose no increment; a new key is
    /// inserted with zero counters. A mapping keeps its id while its public side stays; its
    /// inbound counters are its public address's entry, its outbound its private address's.
    /// Single addresses go to the hash tables, blocks to the longest-prefix-match tables.
    ///
    /// The self-check's probe mapping stays when it is installed.
    pub fn apply(&mut self, desired: &[MappingConfig]) -> Result<(), DataplaneError> {
        let current = self.all_mappings()?;
        if Self::has_probe(&current) {
            let mut with_probe = desired.to_vec();
            with_probe.push(super::PROBE_MAPPING);
            return self.apply_all(&with_probe, current);
        }
        self.apply_all(desired, current)
    }

    /// [`Tables::apply`], `desired` being every mapping (the probe's too) and `current` what
    /// the tables hold now (read once by the caller).
    fn apply_all(
        &mut self,
        desired: &[MappingConfig],
        current: Vec<InstalledMapping>,
    ) -> Result<(), DataplaneError> {
        let by_public: std::collections::HashMap<Block, InstalledMapping> =
            current.iter().map(|m| (m.public, *m)).collect();
        let privates: HashSet<Block> = current.iter().map(|m| m.private).collect();
        let wanted_public: HashSet<Block> = desired.iter().map(|m| m.public).collect();
        let wanted_private: HashSet<Block> = desired.iter().map(|m| m.private).collect();
        let any_prefix = desired.iter().any(|m| !m.public.is_host());
        if any_prefix {
            // Before the first block is written: the data plane skips the prefix tables
            // while the flag is off.
            self.set_flag(FLAG_PREFIXES, true)?;
        }
        // Ids of mappings that stay are kept; removed ones are only freed after the removals.
        let mut used: HashSet<u32> = current.iter().map(|m| m.id).collect();
        let mut next = 1u32;
        // Private-keyed entries first, then public-keyed ones, so that a packet never finds a
        // mapping whose other direction is missing.
        let (mut snat_new, mut dnat_new) = (Vec::new(), Vec::new());
        let (mut snat_changed, mut dnat_changed) = (Vec::new(), Vec::new());
        let mut blocks = Vec::new();
        for m in desired {
            let id = match by_public.get(&m.public) {
                Some(old) => old.id,
                None => {
                    while used.contains(&next) {
                        next += 1;
                    }
                    if next > self.capacity {
                        return Err(DataplaneError::IdsExhausted(self.capacity));
                    }
                    used.insert(next);
                    next
                }
            };
            if by_public
                .get(&m.public)
                .is_some_and(|old| old.private == m.private)
            {
                continue; // unchanged: no write
            }
            let (public, private) = (key(m.public.addr()), key(m.private.addr()));
            let (public_exists, private_exists) = (
                by_public.contains_key(&m.public),
                privates.contains(&m.private),
            );
            if m.public.is_host() {
                let to_public = NatTarget { addr: public, id };
                let to_private = NatTarget { addr: private, id };
                if private_exists {
                    snat_changed.push(TableWrite::exact(TABLE_SNAT, private, to_public));
                } else {
                    snat_new.push((private, NatEntry::new(to_public)));
                }
                if public_exists {
                    dnat_changed.push(TableWrite::exact(TABLE_DNAT, public, to_private));
                } else {
                    dnat_new.push((public, NatEntry::new(to_private)));
                }
            } else {
                let len = u32::from(m.public.prefix_len());
                let target = PrefixTarget {
                    xor: public ^ private,
                    id,
                };
                blocks.push((len, private, private_exists, TABLE_SNAT_PREFIX, target));
                blocks.push((len, public, public_exists, TABLE_DNAT_PREFIX, target));
            }
        }
        for (name, new, changed) in [
            (names::SNAT_MAP, &snat_new, &snat_changed),
            (names::DNAT_MAP, &dnat_new, &dnat_changed),
        ] {
            let (k, v): (Vec<u32>, Vec<NatEntry>) = new.iter().copied().unzip();
            if !self.write_batch(name, &k, &v)? {
                let map = if name == names::SNAT_MAP {
                    &mut self.snat
                } else {
                    &mut self.dnat
                };
                for (k, v) in new {
                    map.insert(k, v, 0).map_err(map_err(name))?;
                }
            }
            self.write_in_place(changed)?;
        }
        // Block mappings are few (MAX_PREFIXES); LPM tries have no batch operations.
        for (len, k, exists, table, target) in blocks {
            if exists {
                self.write_in_place(&[TableWrite::prefix(table, len, k, target)])?;
                continue;
            }
            let (trie, name) = if table == TABLE_SNAT_PREFIX {
                (&mut self.snat_pfx, names::SNAT_PREFIX_MAP)
            } else {
                (&mut self.dnat_pfx, names::DNAT_PREFIX_MAP)
            };
            trie.insert(&Key::new(len, k), PrefixEntry::new(target), 0)
                .map_err(map_err(name))?;
        }
        for old in &current {
            if !wanted_public.contains(&old.public) {
                self.remove_side(old.public, true)?;
            }
            if !wanted_private.contains(&old.private) {
                self.remove_side(old.private, false)?;
            }
        }
        if !any_prefix {
            self.set_flag(FLAG_PREFIXES, false)?;
        }
        Ok(())
    }

    /// Gives existing entries new translations, in place (see [`TableWrite`]): through the
    /// `ipnat_table_write` program (this process's, or the one `ipnat run` pinned), else (pins
    /// of a data plane without one) by reading each entry and writing it back with its
    /// counters, which loses what the data path adds in between.
    pub(super) fn write_in_place(&mut self, writes: &[TableWrite]) -> Result<(), DataplaneError> {
        use std::os::fd::AsFd;
        if writes.is_empty() {
            return Ok(());
        }
        if let Some(prog) = &self.writer {
            for chunk in writes.chunks(TABLE_WRITES) {
                let mut data = vec![0u8; TABLE_WRITE_HEADER];
                for w in chunk {
                    // SAFETY: TableWrite is plain old data (repr(C), no padding left undefined).
                    data.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(
                            (w as *const TableWrite).cast::<u8>(),
                            size_of::<TableWrite>(),
                        )
                    });
                }
                let written =
                    test_run(prog.as_fd(), &data).map_err(|error| DataplaneError::Batch {
                        name: names::TABLE_WRITE_PROGRAM,
                        error,
                    })?;
                if written as usize != chunk.len() {
                    return Err(DataplaneError::Batch {
                        name: names::TABLE_WRITE_PROGRAM,
                        error: std::io::Error::other(format!(
                            "{written} of {} entries found to rewrite in place",
                            chunk.len()
                        )),
                    });
                }
            }
            return Ok(());
        }
        for w in writes {
            match w.table {
                TABLE_DNAT | TABLE_SNAT => {
                    let (map, name) = if w.table == TABLE_DNAT {
                        (&mut self.dnat, names::DNAT_MAP)
                    } else {
                        (&mut self.snat, names::SNAT_MAP)
                    };
                    let mut e = map.get(&w.key, 0).map_err(map_err(name))?;
                    let (addr, id) = split_word(w.value);
                    e.target = NatTarget { addr, id };
                    map.insert(w.key, e, 0).map_err(map_err(name))?;
                }
                _ => {
                    let (trie, name) = if w.table == TABLE_SNAT_PREFIX {
                        (&mut self.snat_pfx, names::SNAT_PREFIX_MAP)
                    } else {
                        (&mut self.dnat_pfx, names::DNAT_PREFIX_MAP)
                    };
                    let k = Key::new(w.prefix_len, w.key);
                    let mut e = trie.get(&k, 0).map_err(map_err(name))?;
                    let (xor, id) = split_word(w.value);
                    e.target = PrefixTarget { xor, id };
                    trie.insert(&k, e, 0).map_err(map_err(name))?;
                }
            }
        }
        Ok(())
    }

    /// Removes one side of a mapping; a key already gone (e.g. a private side that moved to
    /// another mapping and was overwritten) is fine.
    pub(super) fn remove_side(&mut self, side: Block, public: bool) -> Result<(), DataplaneError> {
        let k = key(side.addr());
        let (result, name) = match (side.is_host(), public) {
            (true, true) => (self.dnat.remove(&k), names::DNAT_MAP),
            (true, false) => (self.snat.remove(&k), names::SNAT_MAP),
            (false, true) => (
                self.dnat_pfx
                    .remove(&Key::new(u32::from(side.prefix_len()), k)),
                names::DNAT_PREFIX_MAP,
            ),
            (false, false) => (
                self.snat_pfx
                    .remove(&Key::new(u32::from(side.prefix_len()), k)),
                names::SNAT_PREFIX_MAP,
            ),
        };
        absent_ok(result).map_err(map_err(name))
    }

    /// The steering rules in the kernel.
    pub fn steering(&self) -> Result<Vec<InstalledSteer>, DataplaneError> {
        let mut out = Vec::new();
        for entry in self.steer.iter() {
            let (k, t) = entry.map_err(map_err(names::STEER_MAP))?;
            let c = self
                .steer_counters
                .get(&t.id, 0)
                .map_err(map_err(names::STEER_COUNTERS))?;
            let plen = k.prefix_len() as u8;
            let source = Ipv4Net::new(addr(k.data()), plen)
                .map(Block)
                .map_err(|_| DataplaneError::Corrupt(names::STEER_MAP))?;
            let subnet = Ipv4Net::new(addr(t.subnet), u32::from_be(t.mask).count_ones() as u8)
                .map(Block)
                .map_err(|_| DataplaneError::Corrupt(names::STEER_MAP))?;
            out.push(InstalledSteer {
                id: t.id,
                source,
                interface: nix::net::if_::if_indextoname(t.ifindex)
                    .ok()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("ifindex {}", t.ifindex)),
                ifindex: t.ifindex,
                gateway: addr(t.gateway),
                subnet,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Makes the steering table equal `rules` (with their interfaces' indexes): additions and
    /// changes first, then removals; a rule keeps its id and counters while its source stays.
    pub fn apply_steering(
        &mut self,
        rules: &[(crate::config::SteerConfig, u32)],
    ) -> Result<(), DataplaneError> {
        // What is installed, by (prefix length, network): one pass over the trie.
        let mut current: std::collections::HashMap<(u32, u32), SteerTarget> =
            std::collections::HashMap::new();
        for entry in self.steer.iter() {
            let (k, t) = entry.map_err(map_err(names::STEER_MAP))?;
            current.insert((k.prefix_len(), k.data()), t);
        }
        let mut used: HashSet<u32> = current.values().map(|t| t.id).collect();
        let mut wanted = HashSet::new();
        let mut next = 1u32;
        if !rules.is_empty() {
            self.set_flag(FLAG_STEER, true)?;
        }
        for (r, ifindex) in rules {
            let k = (u32::from(r.source.prefix_len()), key(r.source.addr()));
            wanted.insert(k);
            let old = current.get(&k);
            let id = match old {
                Some(t) => t.id,
                None => {
                    while used.contains(&next) {
                        next += 1;
                    }
                    used.insert(next);
                    self.steer_counters
                        .set(next, SteerCounters::default(), 0)
                        .map_err(map_err(names::STEER_COUNTERS))?;
                    next
                }
            };
            let target = SteerTarget {
                ifindex: *ifindex,
                gateway: key(r.gateway),
                subnet: key(r.subnet.addr()),
                mask: u32::from(r.subnet.0.netmask()).to_be(),
                id,
                _pad: 0,
            };
            if old == Some(&target) {
                continue; // unchanged: no write
            }
            self.steer
                .insert(&Key::new(k.0, k.1), target, 0)
                .map_err(map_err(names::STEER_MAP))?;
        }
        for k in current.keys() {
            if !wanted.contains(k) {
                absent_ok(self.steer.remove(&Key::new(k.0, k.1)))
                    .map_err(map_err(names::STEER_MAP))?;
            }
        }
        if rules.is_empty() {
            self.set_flag(FLAG_STEER, false)?;
        }
        Ok(())
    }

    /// Adds one steering rule to the running tables (out of interface `ifindex`), validated
    /// against the installed ones as the config is. Nothing changes when it is refused.
    pub fn add_steer(
        &mut self,
        rule: crate::config::SteerConfig,
        ifindex: u32,
    ) -> Result<InstalledSteer, DataplaneError> {
        let current = self.steering()?;
        let mut all: Vec<(crate::config::SteerConfig, u32)> =
            current.iter().map(|r| (r.rule(), r.ifindex)).collect();
        all.push((rule.clone(), ifindex));
        let rules: Vec<crate::config::SteerConfig> = all.iter().map(|(r, _)| r.clone()).collect();
        crate::config::validate_steer_rules(
            &rules,
            &new_or_installed(current.len(), "the new rule", |i| {
                format!("installed rule from {}", current[i].source)
            }),
        )?;
        self.apply_steering(&all)?;
        let (added, _) = without(self.steering()?, |r| r.source == rule.source)
            .ok_or(DataplaneError::NoSuchSteer(rule.source))?;
        Ok(added)
    }

    /// Removes the steering rule for `source`. Nothing changes when there is none.
    pub fn remove_steer(&mut self, source: Block) -> Result<InstalledSteer, DataplaneError> {
        let (gone, rest) = without(self.steering()?, |r| r.source == source)
            .ok_or(DataplaneError::NoSuchSteer(source))?;
        let rest: Vec<_> = rest.iter().map(|r| (r.rule(), r.ifindex)).collect();
        self.apply_steering(&rest)?;
        Ok(gone)
    }

    /// Adds one mapping to the running tables, validated against the installed ones as the
    /// config is. Nothing changes when it is refused.
    pub fn add_mapping(&mut self, new: MappingConfig) -> Result<InstalledMapping, DataplaneError> {
        let mut current = self.all_mappings()?;
        let probe = Self::has_probe(&current);
        current.retain(|m| m.public != super::PROBE_MAPPING.public);
        let mut all: Vec<MappingConfig> = current.iter().map(InstalledMapping::config).collect();
        all.push(new);
        crate::config::validate_mappings(
            &all,
            &new_or_installed(current.len(), "the new mapping", |i| {
                format!(
                    "installed mapping {} <-> {}",
                    current[i].public, current[i].private
                )
            }),
        )?;
        if all.len() + usize::from(probe) > self.capacity() as usize {
            return Err(DataplaneError::Full(self.capacity()));
        }
        self.apply(&all)?;
        let (added, _) = without(self.mappings()?, |m| m.public == new.public)
            .ok_or(DataplaneError::NoSuchMapping(new.public))?;
        Ok(added)
    }

    /// Removes the mapping whose public side is `public` (both directions). Nothing changes
    /// when there is none.
    pub fn remove_mapping(&mut self, public: Block) -> Result<InstalledMapping, DataplaneError> {
        let (gone, rest) = without(self.mappings()?, |m| m.public == public)
            .ok_or(DataplaneError::NoSuchMapping(public))?;
        let rest: Vec<_> = rest.iter().map(InstalledMapping::config).collect();
        self.apply(&rest)?;
        Ok(gone)
    }

    /// Records this binary's map layout in fresh maps, or checks that adopted maps have it.
    pub(super) fn claim_schema(&mut self, adopted: bool) -> Result<(), DataplaneError> {
        let mut settings = self.settings.get(&0, 0).map_err(map_err(names::SETTINGS))?;
        if settings.schema == SCHEMA_VERSION {
            return Ok(());
        }
        if adopted && settings.schema != 0 {
            return Err(DataplaneError::Schema {
                found: settings.schema,
                ours: SCHEMA_VERSION,
            });
        }
        settings.schema = SCHEMA_VERSION;
        self.settings
            .set(0, settings, 0)
            .map_err(map_err(names::SETTINGS))
    }

    /// Room in the mapping tables.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The route generation of the fast path's remembered reverse-path verdicts.
    pub fn route_generation(&self) -> Result<u32, DataplaneError> {
        self.route_gen
            .get(&0, 0)
            .map_err(map_err(names::ROUTE_GENERATION))
    }

    /// Reverse-path verdicts the fast path remembers now (of every generation; the older ones
    /// are never found again and age out).
    pub fn remembered_verdicts(&self) -> usize {
        self.rpf.keys().filter(Result::is_ok).count()
    }

    /// A handle on the route generation for another thread (the route watcher).
    pub fn route_generation_handle(&self) -> Result<RouteGeneration, DataplaneError> {
        use std::os::fd::AsFd;
        let name = names::ROUTE_GENERATION;
        let fd = self
            .batch_fds
            .get(name)
            .ok_or(DataplaneError::MissingMap(name))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|error| DataplaneError::Batch { name, error })?;
        let data = MapData::from_fd(fd).map_err(map_err(name))?;
        let map = Array::try_from(aya::maps::Map::Array(data)).map_err(map_err(name))?;
        Ok(RouteGeneration(map))
    }

    /// Kernel memory held by the tables.
    pub fn memory(&self) -> MemoryReport {
        let capacity = self.capacity;
        let total_bytes = self.memory.values().sum();
        let scaling: u64 = [names::DNAT_MAP, names::SNAT_MAP]
            .iter()
            .filter_map(|n| self.memory.get(n))
            .sum();
        MemoryReport {
            maps: self.memory.clone(),
            total_bytes,
            capacity,
            bytes_per_mapping: scaling as f64 / f64::from(capacity.max(1)),
        }
    }

    /// The data plane's `FLAG_*` bits.
    pub fn flags(&self) -> Result<u32, DataplaneError> {
        Ok(self
            .settings
            .get(&0, 0)
            .map_err(map_err(names::SETTINGS))?
            .flags)
    }

    /// Turns the forwarding fast path on or off.
    pub fn set_fast_path(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_flag(FLAG_FAST_PATH, on)
    }

    /// Host orientation on or off (see [`FLAG_HOST`]).
    pub fn set_host(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_flag(FLAG_HOST, on)
    }

    /// [`update_batch`] on the map `name`; `Ok(false)` when the kernel cannot.
    pub(super) fn write_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[K],
        values: &[V],
    ) -> Result<bool, DataplaneError> {
        use std::os::fd::AsFd;
        if keys.is_empty() {
            return Ok(true);
        }
        let Some(fd) = self.batch_fds.get(name) else {
            return Ok(false);
        };
        update_batch(fd.as_fd(), keys, values)
            .map_err(|error| DataplaneError::Batch { name, error })
    }

    /// Records interface `index` (one ipnat is attached to) with its value (`IFACE_*`, see
    /// [`interface_value`]).
    pub fn set_interface(&mut self, index: u32, value: u32) -> Result<(), DataplaneError> {
        self.xdp_targets
            .insert(index, value, 0)
            .map_err(map_err(names::XDP_TARGETS))
    }

    /// The interface table's value for `index` (`IFACE_*`), if it has one.
    pub fn interface(&self, index: u32) -> Option<u32> {
        self.xdp_targets.get(&index, 0).ok()
    }

    /// The internal prefixes in the kernel.
    pub fn internal_prefixes(&self) -> Result<Vec<Ipv4Net>, DataplaneError> {
        let mut out = Vec::new();
        for k in self.internal.keys() {
            let k = k.map_err(map_err(names::INTERNAL_MAP))?;
            let net = Ipv4Net::new(addr(k.data()), k.prefix_len() as u8)
                .map_err(|_| DataplaneError::Corrupt(names::INTERNAL_MAP))?;
            out.push(net);
        }
        out.sort();
        Ok(out)
    }

    /// Makes the internal prefixes equal `desired`: additions first, then removals.
    pub fn apply_internal(&mut self, desired: &[Ipv4Net]) -> Result<(), DataplaneError> {
        let have = self.internal_prefixes()?;
        for net in desired.iter().filter(|n| !have.contains(n)) {
            self.internal
                .insert(
                    &Key::new(u32::from(net.prefix_len()), key(net.network())),
                    1,
                    0,
                )
                .map_err(map_err(names::INTERNAL_MAP))?;
        }
        for net in have.iter().filter(|n| !desired.contains(n)) {
            absent_ok(
                self.internal
                    .remove(&Key::new(u32::from(net.prefix_len()), key(net.network()))),
            )
            .map_err(map_err(names::INTERNAL_MAP))?;
        }
        Ok(())
    }

    pub(super) fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), DataplaneError> {
        let mut flags = self.flags()? & !flag;
        if on {
            flags |= flag;
        }
        let schema = self
            .settings
            .get(&0, 0)
            .map_err(map_err(names::SETTINGS))?
            .schema;
        self.settings
            .set(0, Settings { flags, schema }, 0)
            .map_err(map_err(names::SETTINGS))
    }
}

/// How validation names entry `i` of the installed entries (the first `installed`, named by
/// `name`) followed by one new entry (named `new`).
fn new_or_installed<'a>(
    installed: usize,
    new: &'a str,
    name: impl Fn(usize) -> String + 'a,
) -> impl Fn(usize) -> String + 'a {
    move |i| {
        if i == installed {
            new.to_owned()
        } else {
            name(i)
        }
    }
}

/// The one item of `items` that `is` picks, and the rest; `None` when there is none.
fn without<T>(items: Vec<T>, is: impl Fn(&T) -> bool) -> Option<(T, Vec<T>)> {
    let (mut picked, rest): (Vec<T>, Vec<T>) = items.into_iter().partition(|i| is(i));
    let one = picked.pop()?;
    Some((one, rest))
}

/// The two halves of a table value's word ([`NatTarget::to_word`]), in memory order.
fn split_word(w: u64) -> (u32, u32) {
    let b = w.to_ne_bytes();
    (
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// The interface table's value in words, for `ipnat status`.
pub fn describe_interface(value: u32) -> String {
    let mut words = vec![if value & IFACE_XDP_TARGET != 0 {
        "XDP sends into it"
    } else {
        "only TC sends into it"
    }];
    if value & IFACE_PEER != 0 {
        words.push("TC delivers to its veth peer");
    }
    if value & IFACE_XDP_ALONE != 0 {
        words.push("its XDP hands every packet to TC");
    }
    words.join(", ")
}

/// What the controller knows of one interface ipnat is attached to, for the interface table.
#[derive(Clone, Copy, Debug)]
pub struct IfaceFacts {
    pub index: u32,
    pub mode: AttachMode,
    /// The driver's XDP features (`None`: the kernel cannot say).
    pub features: Option<u64>,
    /// A veth (or netkit) whose peer is in another namespace.
    pub peer: bool,
}

/// The interface table's value for one interface, on its own: whether XDP may redirect to it
/// (only where ipnat's XDP runs natively and the driver can transmit redirected frames,
/// `ndo-xmit`; a veth only while its peer has an XDP program; elsewhere XDP hands the packet
/// to TC, which forwards it; unknown features, an older kernel: allowed, as before the
/// kernel could say) and whether TC ingress may deliver to its peer (`IFACE_PEER`).
///
/// `sg`: some interface runs the frags-capable program, so a redirected frame may span
/// several buffers, which a target must also be able to send (`ndo-xmit-sg`).
pub fn interface_value(f: &IfaceFacts, sg: bool) -> u32 {
    let mut needed = crate::netdev::XDP_NDO_XMIT;
    if sg {
        needed |= crate::netdev::XDP_NDO_XMIT_SG;
    }
    let xdp_target =
        f.mode == AttachMode::XdpNative && f.features.is_none_or(|x| x & needed == needed);
    let value = if xdp_target {
        IFACE_XDP_TARGET
    } else {
        IFACE_TC_ONLY
    };
    value | if f.peer { IFACE_PEER } else { 0 }
}

/// The interface table's values for all of ipnat's interfaces together: each one's own
/// ([`interface_value`]), and `IFACE_XDP_ALONE` for those whose native XDP can send nowhere
/// else (no other interface is an XDP target), which hand every packet to TC at once. Not for
/// a gateway's only interface when it can send back out of itself: there every forwarded
/// packet leaves the way it came (one NIC), and XDP sends it back itself.
pub fn interface_values(ifaces: &[IfaceFacts], sg: bool) -> Vec<(u32, u32)> {
    let own: Vec<(u32, u32)> = ifaces
        .iter()
        .map(|f| (f.index, interface_value(f, sg)))
        .collect();
    ifaces
        .iter()
        .zip(&own)
        .map(|(f, &(index, value))| {
            let elsewhere = own
                .iter()
                .any(|&(other, v)| other != index && v & IFACE_XDP_TARGET != 0);
            let one_nic_hairpin = ifaces.len() == 1 && value & IFACE_XDP_TARGET != 0;
            let alone = f.mode == AttachMode::XdpNative && !elsewhere && !one_nic_hairpin;
            (index, value | if alone { IFACE_XDP_ALONE } else { 0 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdev::{XDP_BASIC, XDP_NDO_XMIT, XDP_REDIRECT};

    fn facts(index: u32, mode: AttachMode, xmit: bool, peer: bool) -> IfaceFacts {
        let features = XDP_BASIC | XDP_REDIRECT | if xmit { XDP_NDO_XMIT } else { 0 };
        IfaceFacts {
            index,
            mode,
            features: Some(features),
            peer,
        }
    }

    #[test]
    fn xdp_that_can_send_nowhere_else_hands_everything_to_tc() {
        // ext0 can take XDP frames, int0 cannot (its veth peer runs no XDP program): ext0's XDP
        // can only send back out of ext0, int0's can send to ext0.
        let v = interface_values(
            &[
                facts(2, AttachMode::XdpNative, true, false),
                facts(3, AttachMode::XdpNative, false, true),
            ],
            false,
        );
        assert_eq!(
            v,
            [
                (2, IFACE_XDP_TARGET | IFACE_XDP_ALONE),
                (3, IFACE_TC_ONLY | IFACE_PEER)
            ]
        );
        // Both take XDP frames: each can send to the other.
        let v = interface_values(
            &[
                facts(2, AttachMode::XdpNative, true, false),
                facts(3, AttachMode::XdpNative, true, false),
            ],
            false,
        );
        assert_eq!(v, [(2, IFACE_XDP_TARGET), (3, IFACE_XDP_TARGET)]);
        // No native XDP anywhere but one interface that cannot send either: alone; a TC-only
        // interface runs no XDP, so never alone.
        let v = interface_values(
            &[
                facts(2, AttachMode::XdpNative, false, false),
                facts(4, AttachMode::TcOnly, false, false),
            ],
            false,
        );
        assert_eq!(
            v,
            [(2, IFACE_TC_ONLY | IFACE_XDP_ALONE), (4, IFACE_TC_ONLY)]
        );
        // One NIC: everything leaves the way it came, which XDP can do itself; unless it
        // cannot send at all.
        let v = interface_values(&[facts(2, AttachMode::XdpNative, true, false)], false);
        assert_eq!(v, [(2, IFACE_XDP_TARGET)]);
        let v = interface_values(&[facts(2, AttachMode::XdpNative, false, false)], false);
        assert_eq!(v, [(2, IFACE_TC_ONLY | IFACE_XDP_ALONE)]);
        // Frags: a target must also send multi-buffer frames.
        let v = interface_values(
            &[
                facts(2, AttachMode::XdpNative, true, false),
                facts(3, AttachMode::XdpNative, true, false),
            ],
            true,
        );
        assert_eq!(
            v,
            [
                (2, IFACE_TC_ONLY | IFACE_XDP_ALONE),
                (3, IFACE_TC_ONLY | IFACE_XDP_ALONE)
            ]
        );
    }
}
