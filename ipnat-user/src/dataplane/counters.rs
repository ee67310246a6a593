//! The counters, read at one moment: per mapping, per reason, per steering rule; rates between
//! two readings and their rendering.

use super::*;

/// Counters of one mapping.
#[derive(Clone, Debug, Serialize)]
pub struct MappingStats {
    #[serde(flatten)]
    pub mapping: InstalledMapping,
    pub dnat_packets: u64,
    pub dnat_bytes: u64,
    pub snat_packets: u64,
    pub snat_bytes: u64,
}

/// Everything the counters say, at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub mappings: Vec<MappingStats>,
    /// Packets per reason, summed over CPUs, in `Reason` order.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Kernel memory of the tables.
    pub memory: MemoryReport,
    /// Steering rules and their counters.
    pub steering: Vec<InstalledSteer>,
}

impl Tables {
    /// Reads every counter.
    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        // Each entry counts what its table's lookups translate (see `NatEntry`): the
        // public-keyed entries inbound in gateway orientation and outbound in host orientation,
        // the private-keyed ones the other way.
        let counters_by_key = |public: bool| -> Result<_, DataplaneError> {
            let exact = if public {
                names::DNAT_MAP
            } else {
                names::SNAT_MAP
            };
            let mut by: std::collections::HashMap<Block, EntryCounters> = self
                .exact_entries(exact)?
                .into_iter()
                .map(|(k, e)| (Block::from(addr(k)), e.counters))
                .collect();
            by.extend(
                self.prefix_entries(public)?
                    .into_iter()
                    .map(|(b, e)| (b, e.counters)),
            );
            Ok(by)
        };
        let (by_public, by_private) = (counters_by_key(true)?, counters_by_key(false)?);
        let host = self.flags()? & FLAG_HOST != 0;
        let mut mappings = Vec::new();
        for m in self.mappings()? {
            let public = by_public.get(&m.public).copied().unwrap_or_default();
            let private = by_private.get(&m.private).copied().unwrap_or_default();
            let (inbound, outbound) = if host {
                (private, public)
            } else {
                (public, private)
            };
            mappings.push(MappingStats {
                mapping: m,
                dnat_packets: inbound.packets,
                dnat_bytes: inbound.bytes,
                snat_packets: outbound.packets,
                snat_bytes: outbound.bytes,
            });
        }
        let mut reasons = BTreeMap::new();
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(map_err(names::REASON_COUNTERS))?;
            reasons.insert(r.name(), per_cpu.iter().sum());
        }
        Ok(Snapshot {
            mappings,
            reasons,
            memory: self.memory(),
            steering: self.steering()?,
        })
    }
}

impl Snapshot {
    /// Per-mapping rates since `prev`, `secs` seconds earlier: (public, in pkt/s, in bit/s,
    /// out pkt/s, out bit/s).
    pub fn rates(&self, prev: &Snapshot, secs: f64) -> Vec<(Block, f64, f64, f64, f64)> {
        self.mappings
            .iter()
            .map(|m| {
                let p = prev
                    .mappings
                    .iter()
                    .find(|o| o.mapping.id == m.mapping.id && o.mapping.public == m.mapping.public);
                let d = |now: u64, then: Option<u64>| {
                    now.saturating_sub(then.unwrap_or(0)) as f64 / secs
                };
                (
                    m.mapping.public,
                    d(m.dnat_packets, p.map(|p| p.dnat_packets)),
                    8.0 * d(m.dnat_bytes, p.map(|p| p.dnat_bytes)),
                    d(m.snat_packets, p.map(|p| p.snat_packets)),
                    8.0 * d(m.snat_bytes, p.map(|p| p.snat_bytes)),
                )
            })
            .collect()
    }

    /// Human-readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>4}  {:<15}  {:<15}  {:>10} {:>12}  {:>10} {:>12}",
            "id", "public", "private", "in pkts", "in bytes", "out pkts", "out bytes"
        );
        for m in &self.mappings {
            let _ = writeln!(
                s,
                "{:>4}  {:<15}  {:<15}  {:>10} {:>12}  {:>10} {:>12}",
                m.mapping.id,
                m.mapping.public.to_string(),
                m.mapping.private.to_string(),
                m.dnat_packets,
                m.dnat_bytes,
                m.snat_packets,
                m.snat_bytes
            );
        }
        let _ = writeln!(
            s,
            "(in: public -> private, destination translated; out: private -> public, source translated)"
        );
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(s, "packets by outcome: {}", reasons.join(" "));
        for r in &self.steering {
            let _ = writeln!(
                s,
                "steer {}: from {} out of {} (via {} outside {}): {} packets, {} bytes",
                r.id, r.source, r.interface, r.gateway, r.subnet, r.packets, r.bytes
            );
        }
        let _ = writeln!(
            s,
            "table memory: {} KiB for {} mappings ({:.0} bytes per mapping)",
            self.memory.total_bytes / 1024,
            self.memory.capacity,
            self.memory.bytes_per_mapping
        );
        s
    }
}
