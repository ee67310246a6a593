//! The `[failover]` section: inside a VPC, where no router spreads traffic over several
//! gateways, one gateway at a time holds a shard's addresses (the secondary private addresses
//! NAT-mode EIPs are bound to) and the backends' routes; the others stand by. Leadership per
//! shard is an etcd election (see `crate::fleet::leader`); a new leader moves the addresses
//! and routes to itself through the cloud's API (see `crate::providers::takeover`).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{ConfigError, validate::invalid};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// This gateway's name in the elections (what `ipnat status` shows as a shard's leader);
    /// default: the host name. Unique in the fleet.
    #[serde(default)]
    pub name: Option<String>,
    /// The interface whose NIC takes the shards' addresses and is the backends' next hop.
    pub interface: String,
    /// The etcd lease behind each candidacy: a leader that stops renewing it (it died, or lost
    /// etcd) is replaced this long after its last renewal. etcd's own minimum is about 2 s.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// A leader considers itself fenced this long before its lease could expire (clock rate,
    /// scheduling): it stops at (send time of its last acknowledged renewal + TTL - margin).
    #[serde(default = "default_fence_margin_ms")]
    pub fence_margin_ms: u64,
    /// Each cloud call gives up after this long; a leader makes no call unless its lease has
    /// more time left than this.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// The cloud moves addresses asynchronously: how long to wait for this instance's
    /// metadata to list them before the takeover is retried.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// A shard's preferred gateway (`prefer`) gets it back only after it has stood by this
    /// long without a break: a gateway that keeps restarting does not pull the shard to and fro.
    #[serde(default = "default_hold_down_s")]
    pub hold_down_s: u64,
    #[serde(default, rename = "shard")]
    pub shards: Vec<ShardConfig>,
}

/// A set of addresses and routes that move together.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Names the election (`<prefix>/failover/<name>`) and the shard in status.
    pub name: String,
    /// The secondary private addresses that NAT-mode EIPs are bound to (the public side of
    /// this gateway's mappings); the leader's NIC holds them.
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    /// The backends' routes through the leader (route table, destination): AWS
    /// (`ReplaceRoute`), and Alibaba Cloud without a HaVip (`ModifyRouteEntry`; with one,
    /// routes whose next hop is the HaVip follow it).
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Across zones: EIPs the leader binds to an address of its own NIC (AWS: addresses move
    /// only within a subnet; Alibaba Cloud: a HaVip lives in one vSwitch), so gateways in
    /// different zones each hold their own address for the EIP, and each one's table maps its
    /// own.
    #[serde(default, rename = "eip")]
    pub eips: Vec<EipConfig>,
    /// Alibaba Cloud: the HaVip (`havip-...`) whose address is the shard's one address,
    /// associated with every gateway of the shard in advance (`AssociateHaVip`); the leader
    /// holds it by announcing it with gratuitous ARP.
    #[serde(default)]
    pub havip: Option<String>,
    /// The gateway (its `[failover] name`) that should lead the shard whenever it can: the
    /// leader hands the shard to it once it has stood by for `hold_down_s`. Without it a
    /// shard stays where the last failover put it until `ipnat fleet move`.
    #[serde(default)]
    pub prefer: Option<String>,
}

/// An EIP that follows the shard's leader (AWS `AssociateAddress`, Alibaba Cloud
/// `UnassociateEipAddress` + `AssociateEipAddress`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EipConfig {
    /// The EIP's allocation id (AWS `eipalloc-...`, Alibaba Cloud `eip-...`).
    pub allocation_id: String,
    /// This gateway's own secondary private address that takes the EIP when it leads (the
    /// public side of this gateway's mapping for it; each gateway names its own).
    pub private: Ipv4Addr,
}

/// One route of a VPC route table whose next hop is the leader's NIC.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route table's id (`rtb-...`).
    pub table: String,
    pub destination: Ipv4Net,
}

fn default_lease_ttl_s() -> u64 {
    5
}

fn default_fence_margin_ms() -> u64 {
    500
}

fn default_call_timeout_ms() -> u64 {
    2_000
}

fn default_confirm_timeout_ms() -> u64 {
    15_000
}

fn default_hold_down_s() -> u64 {
    60
}

impl FailoverConfig {
    /// This gateway's name in the elections.
    pub fn node_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "ipnat".to_owned())
        })
    }

    /// Checks the section on its own; `interfaces` are the `[[interface]]` names, `cloud`
    /// the provider section present.
    pub fn validate(&self, interfaces: &[String], cloud: super::Cloud) -> Result<(), ConfigError> {
        for (i, s) in self.shards.iter().enumerate() {
            let key = format!("failover.shard[{i}]");
            match (cloud, &s.havip) {
                (super::Cloud::Aws, Some(h)) => {
                    return Err(invalid(
                        format!("{key}.havip"),
                        h,
                        "HaVips are Alibaba Cloud's: on AWS the shard's addresses move with AssignPrivateIpAddresses",
                    ));
                }
                (super::Cloud::Aliyun, None) => {
                    if let Some(a) = s.addresses.first() {
                        return Err(invalid(
                            format!("{key}.addresses"),
                            a,
                            "secondary addresses do not move on Alibaba Cloud (unassign, then assign: nobody holds them in between, and no EIP follows them): make the shard a HaVip (havip = ...) or, across zones, [[failover.shard.eip]] entries",
                        ));
                    }
                    if s.eips.is_empty() {
                        return Err(invalid(
                            format!("{key}.havip"),
                            &"(none)",
                            "on Alibaba Cloud a shard is a HaVip (havip-...) associated with every gateway of the shard, or EIPs ([[failover.shard.eip]]) each gateway binds to an address of its own",
                        ));
                    }
                }
                (super::Cloud::Aliyun, Some(h)) => {
                    if !h.starts_with("havip-") || h.len() < 7 {
                        return Err(invalid(
                            format!("{key}.havip"),
                            h,
                            "a HaVip's id (havip-...)",
                        ));
                    }
                    if s.addresses.len() != 1 {
                        return Err(invalid(
                            format!("{key}.addresses"),
                            &s.addresses.len(),
                            "a HaVip shard has one address: the HaVip's",
                        ));
                    }
                    if !s.eips.is_empty() {
                        return Err(invalid(
                            format!("{key}.eip"),
                            &s.eips[0].allocation_id,
                            "on Alibaba Cloud bind the EIP to the HaVip: it follows it, nothing re-associates it",
                        ));
                    }
                    if !s.routes.is_empty() {
                        return Err(invalid(
                            format!("{key}.route"),
                            &s.routes[0].table,
                            "on Alibaba Cloud point the backends' routes at the HaVip (next hop type HaVip): they follow it, nothing moves them",
                        ));
                    }
                }
                (super::Cloud::Aws, None) => {}
            }
        }
        if !interfaces.contains(&self.interface) {
            return Err(invalid(
                "failover.interface".into(),
                &self.interface,
                "is not one of the [[interface]]s",
            ));
        }
        if let Some(n) = &self.name
            && !valid_name(n)
        {
            return Err(invalid(
                "failover.name".into(),
                n,
                "1 to 63 letters, digits, '-', '_' or '.'",
            ));
        }
        if !(2..=60).contains(&self.lease_ttl_s) {
            return Err(invalid(
                "failover.lease_ttl_s".into(),
                &self.lease_ttl_s,
                "must be 2 to 60 (etcd grants no lease under about 2 s)",
            ));
        }
        let ttl_ms = self.lease_ttl_s * 1000;
        if self.fence_margin_ms < 100 || self.fence_margin_ms * 2 > ttl_ms {
            return Err(invalid(
                "failover.fence_margin_ms".into(),
                &self.fence_margin_ms,
                "must be 100 ms to half the lease's TTL",
            ));
        }
        // A leader renews every TTL/3; between renewals it must still be allowed a call.
        if self.call_timeout_ms < 100 || self.call_timeout_ms + self.fence_margin_ms > ttl_ms / 2 {
            return Err(invalid(
                "failover.call_timeout_ms".into(),
                &self.call_timeout_ms,
                &format!(
                    "must be 100 ms to half the lease's TTL less fence_margin_ms ({} ms here): a leader makes no call that could outlive its lease",
                    (ttl_ms / 2).saturating_sub(self.fence_margin_ms)
                ),
            ));
        }
        if !(1_000..=600_000).contains(&self.confirm_timeout_ms) {
            return Err(invalid(
                "failover.confirm_timeout_ms".into(),
                &self.confirm_timeout_ms,
                "must be 1000 to 600000",
            ));
        }
        if !(1..=86_400).contains(&self.hold_down_s) {
            return Err(invalid(
                "failover.hold_down_s".into(),
                &self.hold_down_s,
                "must be 1 to 86400",
            ));
        }
        if self.shards.is_empty() {
            return Err(invalid(
                "failover.shard".into(),
                &"[]",
                "at least one [[failover.shard]] with its addresses",
            ));
        }
        let mut seen: Vec<(Ipv4Addr, &str)> = Vec::new();
        let mut seen_eips: Vec<&EipConfig> = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            let key = format!("failover.shard[{i}]");
            if !valid_name(&s.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    &s.name,
                    "1 to 63 letters, digits, '-', '_' or '.'",
                ));
            }
            if self.shards[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    &s.name,
                    "names another shard too",
                ));
            }
            if let Some(p) = &s.prefer
                && !valid_name(p)
            {
                return Err(invalid(
                    format!("{key}.prefer"),
                    p,
                    "a gateway's [failover] name: 1 to 63 letters, digits, '-', '_' or '.'",
                ));
            }
            if s.addresses.is_empty() && s.eips.is_empty() {
                return Err(invalid(
                    format!("{key}.addresses"),
                    &"[]",
                    "a shard moves at least one address (or, across zones, one [[failover.shard.eip]])",
                ));
            }
            let (eip_prefix, table_prefix) = match cloud {
                super::Cloud::Aws => ("eipalloc-", "rtb-"),
                super::Cloud::Aliyun => ("eip-", "vtb-"),
            };
            for (j, e) in s.eips.iter().enumerate() {
                if !e.allocation_id.starts_with(eip_prefix)
                    || e.allocation_id.len() <= eip_prefix.len()
                {
                    return Err(invalid(
                        format!("{key}.eip[{j}].allocation_id"),
                        &e.allocation_id,
                        &format!("an EIP's allocation id ({eip_prefix}...)"),
                    ));
                }
                if seen_eips
                    .iter()
                    .any(|o| o.allocation_id == e.allocation_id || o.private == e.private)
                {
                    return Err(invalid(
                        format!("{key}.eip[{j}]"),
                        &e.allocation_id,
                        "names an EIP or a private address another eip entry names too",
                    ));
                }
                if self.shards.iter().any(|o| o.addresses.contains(&e.private)) {
                    return Err(invalid(
                        format!("{key}.eip[{j}].private"),
                        &e.private,
                        "is a shard's moving address: an EIP's private address is this gateway's own and never moves",
                    ));
                }
                seen_eips.push(e);
            }
            for a in &s.addresses {
                if a.is_unspecified()
                    || a.is_loopback()
                    || a.is_multicast()
                    || a.is_broadcast()
                    || a.octets()[0] == 0
                {
                    return Err(invalid(
                        format!("{key}.addresses"),
                        a,
                        "not an address a NIC can hold",
                    ));
                }
                if let Some((_, other)) = seen.iter().find(|(x, _)| x == a) {
                    return Err(invalid(
                        format!("{key}.addresses"),
                        a,
                        &format!("is in shard {other:?} too: an address moves with one shard"),
                    ));
                }
                seen.push((*a, &s.name));
            }
            for (j, r) in s.routes.iter().enumerate() {
                if !r.table.starts_with(table_prefix) || r.table.len() <= table_prefix.len() {
                    return Err(invalid(
                        format!("{key}.route[{j}].table"),
                        &r.table,
                        &format!("a route table's id ({table_prefix}...)"),
                    ));
                }
                if r.destination != r.destination.trunc() {
                    return Err(invalid(
                        format!("{key}.route[{j}].destination"),
                        &r.destination,
                        &format!("has host bits set: did you mean {}?", r.destination.trunc()),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn valid_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
