//! Rebuilding pinned maps for a new layout version or size, their contents carried over.

use super::*;

/// The maps whose size is `max_mappings`.
pub(super) const RESIZED: [&str; 2] = [names::DNAT_MAP, names::SNAT_MAP];

/// The batch path of [`copy_map`]: `Ok(false)` when the kernel has no batch operations for
/// these maps, or `to` has no room for an entry (an array's tail): the caller then copies
/// entry by entry, which leaves those out.
pub(super) fn copy_map_batched(
    from: u64,
    to: u64,
    key_size: usize,
    value_len: usize,
) -> std::io::Result<bool> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    read_batches(from, key_size, value_len, |keys, values, n| {
        let mut up = [
            0,
            0,
            keys.as_ptr() as u64,
            values.as_ptr() as u64,
            n as u64 | (to << 32),
            0,
            0,
        ];
        if bpf(BPF_MAP_UPDATE_BATCH, &mut up) < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINVAL | libc::E2BIG | 524) => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    })
}

/// Copies every entry of map `from` into map `to` (same key and value sizes): in batches
/// where the kernel can, else through the generic bpf(2) element calls, leaving out entries
/// `to` has no room for (an array's tail).
pub(super) fn copy_map(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    per_cpu: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let value_len = if per_cpu {
        value_size.next_multiple_of(8) * aya::util::nr_cpus().map_err(|(_, e)| e)?
    } else {
        value_size
    };
    let (from, to) = (from.as_raw_fd() as u64, to.as_raw_fd() as u64);
    if copy_map_batched(from, to, key_size, value_len)? {
        return Ok(());
    }
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; value_len];
    let mut first = true;
    loop {
        // union bpf_attr for the element calls: map_fd, key, value / next_key, flags.
        let mut attr = [
            from,
            if first { 0 } else { key.as_ptr() as u64 },
            next.as_mut_ptr() as u64,
            0,
        ];
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(())
            } else {
                Err(e)
            };
        }
        first = false;
        key.copy_from_slice(&next);
        let mut attr = [from, key.as_ptr() as u64, value.as_mut_ptr() as u64, 0];
        if bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) < 0 {
            // Removed meanwhile.
            continue;
        }
        let mut attr = [to, key.as_ptr() as u64, value.as_ptr() as u64, 0];
        if bpf(BPF_MAP_UPDATE_ELEM, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::E2BIG) {
                return Err(e);
            }
        }
    }
}

/// Pinned maps that an adopting controller rebuilds, held open while new maps take over their
/// pins: every map when the pins carry another layout version ([`SCHEMA_VERSION`]), the
/// tables sized by `max_mappings` ([`RESIZED`]) when their size differs from the configured
/// one. Every rebuilt map whose type, key size and value size are unchanged is copied entry by
/// entry (an array up to the shorter length: outcome counters are only ever appended, so
/// they keep their meaning); one whose layout changed starts empty, and the controller refills
/// the tables from the config. Attaching then replaces the programs (and so the maps they use)
/// link by link: traffic keeps flowing. What the old programs count in the exact tables
/// between the copy and the swap is added afterwards ([`Carried`]); in the other maps (outcome
/// and steering counters, block mappings' counters) it is lost.
pub(super) struct Rebuild {
    /// The pinned maps' layout version.
    pub(super) from: u32,
    pub(super) old: Vec<(&'static str, MapData)>,
}

impl Rebuild {
    pub(super) fn open(dir: &Path, capacity: u32) -> Result<Option<Self>, DataplaneError> {
        let open = |name: &'static str| {
            let path = dir.join(name);
            MapData::from_pin(&path).map_err(|e| pin_error(&path, e))
        };
        let typed = |name: &'static str| {
            aya::maps::Map::from_map_data(open(name)?).map_err(|e| pin_error(&dir.join(name), e))
        };
        if !dir.join(names::SETTINGS).exists() {
            return Ok(None);
        }
        let settings: Array<MapData, Settings> = typed(names::SETTINGS)?
            .try_into()
            .map_err(map_err(names::SETTINGS))?;
        let from = settings
            .get(&0, 0)
            .map_err(map_err(names::SETTINGS))?
            .schema;
        let which: &[&'static str] = if from != 0 && from != SCHEMA_VERSION {
            tracing::info!(
                from,
                to = SCHEMA_VERSION,
                "the pinned maps have another layout: building new ones and carrying their contents over"
            );
            &MAP_NAMES
        } else {
            let size = open(names::DNAT_MAP)?
                .info()
                .map_err(map_err(names::DNAT_MAP))?
                .max_entries();
            if size == capacity {
                return Ok(None);
            }
            let dnat: HashMap<MapData, u32, NatEntry> = typed(names::DNAT_MAP)?
                .try_into()
                .map_err(map_err(names::DNAT_MAP))?;
            // Everything installed must fit the new size, ids included.
            let (mut installed, mut top_id) = (0usize, 0u32);
            for (_, e) in dnat.iter().filter_map(Result::ok) {
                installed += 1;
                top_id = top_id.max(e.target.id);
            }
            if installed > capacity as usize || top_id > capacity {
                return Err(DataplaneError::Full(capacity));
            }
            &RESIZED
        };
        let mut old = Vec::new();
        for &name in which {
            if dir.join(name).exists() {
                old.push((name, open(name)?));
            }
        }
        Ok(Some(Self { from, old }))
    }

    /// The maps rebuilt (whose pins the new maps take).
    pub(super) fn names(&self) -> Vec<&'static str> {
        self.old.iter().map(|(n, _)| *n).collect()
    }

    /// Whether the layout version changes (else only sizes do).
    pub(super) fn migrates(&self) -> bool {
        self.from != 0 && self.from != SCHEMA_VERSION
    }

    /// Copies the old maps' contents into the new ones. The exact tables' entries are copied
    /// as read at that moment, and kept with the old maps ([`Carried`]): what the old programs
    /// count until their links are swapped is added afterwards ([`Carried::settle`]).
    pub(super) fn copy_into(self, new: &Tables) -> Result<Option<Carried>, DataplaneError> {
        use std::os::fd::AsFd;
        let mut carried = Carried::default();
        for (name, old) in self.old {
            let Some(fd) = new.batch_fds.get(name) else {
                continue;
            };
            let new_map = fd
                .try_clone()
                .map_err(|error| DataplaneError::Batch { name, error })?;
            let (a, b) = match (old.info(), MapData::from_fd(new_map).and_then(|d| d.info())) {
                (Ok(a), Ok(b)) => (a, b),
                _ => continue,
            };
            let same = a.map_type().ok().map(|t| t as u32) == b.map_type().ok().map(|t| t as u32)
                && a.key_size() == b.key_size()
                && a.value_size() == b.value_size();
            if !same {
                tracing::warn!(
                    map = name,
                    from = self.from,
                    "its layout changed: it starts empty"
                );
                continue;
            }
            let batch = |error| DataplaneError::Batch { name, error };
            if matches!(name, names::DNAT_MAP | names::SNAT_MAP)
                && let Some(entries) =
                    lookup_batch::<u32, NatEntry>(old.fd().as_fd()).map_err(batch)?
            {
                let (keys, values): (Vec<u32>, Vec<NatEntry>) = entries.iter().copied().unzip();
                if update_batch(fd.as_fd(), &keys, &values).map_err(batch)? {
                    let copied = entries.into_iter().map(|(k, e)| (k, e.counters)).collect();
                    carried.maps.push((name, old, copied));
                    continue;
                }
            }
            let per_cpu = matches!(
                b.map_type(),
                Ok(aya::maps::MapType::PerCpuArray | aya::maps::MapType::PerCpuHash)
            );
            copy_map(
                old.fd().as_fd(),
                fd.as_fd(),
                a.key_size() as usize,
                a.value_size() as usize,
                per_cpu,
            )
            .map_err(batch)?;
        }
        Ok((!carried.maps.is_empty()).then_some(carried))
    }
}

/// The old exact tables of a rebuild, with their entries' counters as copied: until the
/// programs are swapped link by link, the old programs go on counting in the old tables.
#[derive(Default)]
pub(super) struct Carried {
    maps: Vec<(
        &'static str,
        MapData,
        std::collections::HashMap<u32, EntryCounters>,
    )>,
}

impl Carried {
    /// After every link runs the new programs: adds what the old tables counted since the copy
    /// to the same entries of the new ones (atomic adds, through the table writer), so a
    /// rebuild loses no increment. Waits a moment first for programs still running on the old
    /// tables (a link update lets a running program finish).
    pub(super) fn settle(self, tables: &mut Tables) -> Result<(), DataplaneError> {
        use std::os::fd::AsFd;
        std::thread::sleep(std::time::Duration::from_millis(50));
        for (name, old, copied) in self.maps {
            let batch = |error| DataplaneError::Batch { name, error };
            let Some(now) = lookup_batch::<u32, NatEntry>(old.fd().as_fd()).map_err(batch)? else {
                continue;
            };
            let present: std::collections::HashSet<u32> = tables
                .exact_entries(name)?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let table = if name == names::DNAT_MAP {
                TABLE_DNAT
            } else {
                TABLE_SNAT
            };
            let writes: Vec<TableWrite> = now
                .into_iter()
                .filter(|(k, _)| present.contains(k))
                .filter_map(|(k, e)| {
                    let then = copied.get(&k).copied().unwrap_or_default();
                    let delta = EntryCounters {
                        packets: e.counters.packets.saturating_sub(then.packets),
                        bytes: e.counters.bytes.saturating_sub(then.bytes),
                    };
                    (delta.packets != 0).then_some(TableWrite::add_counters(table, k, delta))
                })
                .collect();
            tables.write_in_place(&writes)?;
        }
        Ok(())
    }
}
