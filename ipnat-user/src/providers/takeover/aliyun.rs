//! A failover shard's takeover on Alibaba Cloud: through a HaVip within a zone, or by
//! re-binding EIPs across zones.
//!
//! Secondary private addresses cannot be moved in one call there (unassign from the old NIC,
//! then assign to the new: a window where nobody owns them), and nothing documents an EIP
//! following them. The documented pattern for high availability is a HaVip (Alibaba Cloud's
//! HaVip documentation, with keepalived): associated with every gateway of the shard in
//! advance (`AssociateHaVip`, done once by whoever sets the shard up), the VPC hands it to
//! whichever of them announces it by ARP; an EIP bound to the HaVip, and routes whose next hop
//! is the HaVip, follow it within the zone. So a takeover makes no call that changes anything:
//!
//! 1. Preflight (reads only, before this gateway even campaigns): `DescribeHaVips` (VPC
//!    OpenAPI 2016-04-28) finds the HaVip, with the shard's address, associated with this
//!    instance.
//! 2. The HaVip's address goes on the interface (recorded as failover's, so that it is removed
//!    when this gateway stops leading, on the next start, and by `ipnat down`).
//! 3. Gratuitous ARP, three times: the VPC and the neighbours learn the new owner now.
//!
//! A HaVip lives in one vSwitch, hence one zone. Across zones a shard is its EIPs
//! (`[[failover.shard.eip]]`): each gateway holds a secondary address of its own for each EIP
//! and maps it in its own table; the new leader
//! 1. checks (reads only, before campaigning) each EIP (`DescribeEipAddresses`), its own
//!    address for it on its NIC (the metadata's `private-ipv4s`), and each route entry
//!    (`DescribeRouteEntryList`);
//! 2. unbinds each EIP from wherever it is (`UnassociateEipAddress`: an EIP is bound to one
//!    thing at a time, and both calls are asynchronous, so it waits for `Available`), binds it
//!    to its own address (`AssociateEipAddress`, instance type `NetworkInterface`) and waits
//!    for `InUse`;
//! 3. moves each route entry's next hop to its NIC (`ModifyRouteEntry`, which answers
//!    `TaskConflict` while another change of the table is under way: retried).
//!
//! Between the unbinding and the binding nobody holds the EIP; the clients' connections
//! survive the gap as they survive any loss (no gateway keeps per-flow state).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Guard, TakeoverError, TakeoverReport, retrying};
use crate::{
    config::{AliyunConfig, FailoverConfig, ShardConfig},
    providers::{
        aliyun::Metadata,
        aliyun_api::{OpenApi, VPC_VERSION, credentials},
    },
    system::AddressOwner,
};

/// This gateway's side of a takeover on Alibaba Cloud.
pub struct AliyunTakeover {
    vpc: OpenApi,
    md: Metadata,
    region: String,
    instance: String,
    interface: String,
    pin_path: PathBuf,
    call_timeout: Duration,
    confirm_timeout: Duration,
}

/// An EIP as `DescribeEipAddresses` (VPC OpenAPI) describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Eip {
    pub id: String,
    pub address: Ipv4Addr,
    /// `Available`, `Associating`, `InUse`, `Unassociating`, ...
    pub status: String,
    /// What it is bound to: (instance type, instance id, private address if any).
    pub bound: Option<(String, String, Option<Ipv4Addr>)>,
}

/// Parses a `DescribeEipAddresses` answer (`EipAddresses.EipAddress[]`, each with
/// `AllocationId`, `IpAddress`, `Status`, `InstanceType`, `InstanceId`, `PrivateIpAddress`).
pub fn parse_eips(body: &serde_json::Value) -> Result<Vec<Eip>, String> {
    let list = body["EipAddresses"]["EipAddress"]
        .as_array()
        .ok_or("no EipAddresses.EipAddress array")?;
    let addr = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))
    };
    list.iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().filter(|s| !s.is_empty());
            let bound = match (text("InstanceType"), text("InstanceId")) {
                (Some(t), Some(i)) => Some((
                    t.to_owned(),
                    i.to_owned(),
                    text("PrivateIpAddress").map(addr).transpose()?,
                )),
                _ => None,
            };
            Ok(Eip {
                id: text("AllocationId")
                    .ok_or("an EIP without AllocationId")?
                    .to_owned(),
                address: addr(text("IpAddress").ok_or("an EIP without IpAddress")?)?,
                status: text("Status").unwrap_or_default().to_owned(),
                bound,
            })
        })
        .collect()
}

/// The next hop of the route entry `DescribeRouteEntryList` lists first
/// (`RouteEntrys.RouteEntry[]`, `Status`, `NextHops.NextHop[]` with `NextHopType` and
/// `NextHopId`): (status, next hop id), or None if there is no such entry.
pub fn parse_route_entry(body: &serde_json::Value) -> Result<Option<(String, String)>, String> {
    let list = body["RouteEntrys"]["RouteEntry"]
        .as_array()
        .ok_or("no RouteEntrys.RouteEntry array")?;
    let Some(entry) = list.first() else {
        return Ok(None);
    };
    let status = entry["Status"].as_str().unwrap_or_default().to_owned();
    let hop = entry["NextHops"]["NextHop"]
        .as_array()
        .and_then(|h| h.first())
        .and_then(|h| h["NextHopId"].as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(Some((status, hop)))
}

/// A HaVip as `DescribeHaVips` describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct HaVip {
    pub id: String,
    pub address: Ipv4Addr,
    pub status: String,
    /// The instances it is associated with.
    pub instances: Vec<String>,
}

/// Parses a `DescribeHaVips` answer (`HaVips.HaVip[]`, each with `HaVipId`, `IpAddress`,
/// `Status`, `AssociatedInstances.associatedInstance[]`).
pub fn parse_havips(body: &serde_json::Value) -> Result<Vec<HaVip>, String> {
    let list = body["HaVips"]["HaVip"]
        .as_array()
        .ok_or("no HaVips.HaVip array")?;
    list.iter()
        .map(|h| {
            let text = |k: &str| h[k].as_str().map(str::to_owned);
            let address = text("IpAddress").ok_or("a HaVip without IpAddress")?;
            Ok(HaVip {
                id: text("HaVipId").ok_or("a HaVip without HaVipId")?,
                address: address
                    .parse()
                    .map_err(|_| format!("{address:?} is not an IPv4 address"))?,
                status: text("Status").unwrap_or_default(),
                instances: h["AssociatedInstances"]["associatedInstance"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

impl AliyunTakeover {
    pub async fn new(
        cfg: &AliyunConfig,
        failover: &FailoverConfig,
        pin_path: &Path,
    ) -> Result<Self, TakeoverError> {
        let call_timeout = Duration::from_millis(failover.call_timeout_ms);
        let md = Metadata::new(&cfg.endpoint, call_timeout)?;
        let creds = credentials(&md, cfg).await?;
        let (region, instance) = md.instance().await?;
        let endpoint = cfg
            .vpc_api_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://vpc-vpc.{region}.aliyuncs.com"));
        Ok(AliyunTakeover {
            vpc: OpenApi::new(&endpoint, VPC_VERSION, creds, call_timeout)?,
            md,
            region,
            instance,
            interface: failover.interface.clone(),
            pin_path: pin_path.to_owned(),
            call_timeout,
            confirm_timeout: Duration::from_millis(failover.confirm_timeout_ms),
        })
    }

    fn garbage(action: &str, why: String) -> crate::providers::client::ApiError {
        crate::providers::client::ApiError::Garbage {
            api: crate::providers::client::Api::Ecs,
            action: action.into(),
            why,
        }
    }

    /// This gateway's NIC (for `failover.interface`) as the metadata describes it.
    async fn my_nic(&self) -> Result<crate::providers::aliyun::Nic, TakeoverError> {
        let mac = crate::providers::nic::mac_of(&self.interface).ok_or_else(|| {
            TakeoverError::Refused(format!(
                "failover.interface {} has no MAC address here",
                self.interface
            ))
        })?;
        self.md
            .nics()
            .await?
            .into_iter()
            .find(|n| n.mac == mac)
            .ok_or_else(|| {
                TakeoverError::Refused(format!(
                    "the metadata lists no NIC with {}'s MAC {mac}",
                    self.interface
                ))
            })
    }

    async fn eip(&self, id: &str) -> Result<Option<Eip>, crate::providers::client::ApiError> {
        const ACTION: &str = "DescribeEipAddresses";
        let body = self
            .vpc
            .call(
                ACTION,
                &[
                    ("RegionId", self.region.clone()),
                    ("AllocationId", id.to_owned()),
                ],
            )
            .await?;
        let list = parse_eips(&body).map_err(|why| Self::garbage(ACTION, why))?;
        Ok(list.into_iter().find(|e| e.id == id))
    }

    async fn route_entry(
        &self,
        table: &str,
        destination: ipnet::Ipv4Net,
    ) -> Result<Option<(String, String)>, crate::providers::client::ApiError> {
        const ACTION: &str = "DescribeRouteEntryList";
        let body = self
            .vpc
            .call(
                ACTION,
                &[
                    ("RegionId", self.region.clone()),
                    ("RouteTableId", table.to_owned()),
                    ("DestinationCidrBlock", destination.to_string()),
                ],
            )
            .await?;
        parse_route_entry(&body).map_err(|why| Self::garbage(ACTION, why))
    }

    /// Preflight of a shard of EIPs: each EIP exists, each address named for it is a secondary
    /// address of this gateway's NIC, each route entry exists. This NIC's id.
    async fn preflight_eips(&self, shard: &ShardConfig) -> Result<String, TakeoverError> {
        let nic = self.my_nic().await?;
        for e in &shard.eips {
            if !nic.private_ipv4s.iter().skip(1).any(|a| *a == e.private) {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: {} (the address {} should be bound to) is not a secondary address of {} (this gateway's NIC): assign it first",
                    shard.name, e.private, e.allocation_id, nic.interface_id
                )));
            }
            if self.eip(&e.allocation_id).await?.is_none() {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: no EIP {} in {}",
                    shard.name, e.allocation_id, self.region
                )));
            }
        }
        for r in &shard.routes {
            if self.route_entry(&r.table, r.destination).await?.is_none() {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: route table {} has no entry for {} (create it, next hop any gateway's NIC)",
                    shard.name, r.table, r.destination
                )));
            }
        }
        Ok(nic.interface_id)
    }

    /// Waits until `done` says the EIP is where it should be (the binding calls are
    /// asynchronous); the state it last saw, if not within the confirm timeout.
    async fn wait_eip(
        &self,
        id: &str,
        address: Ipv4Addr,
        guard: &Guard<'_>,
        retries: &mut u32,
        done: impl Fn(&Eip) -> bool,
    ) -> Result<(), TakeoverError> {
        let asked = Instant::now();
        loop {
            let now = retrying(self.call_timeout, guard, retries, || self.eip(id)).await?;
            match now {
                Some(e) if done(&e) => return Ok(()),
                seen if asked.elapsed() > self.confirm_timeout => {
                    return Err(TakeoverError::Pending {
                        what: format!(
                            "EIP {address} ({id}) is still {}",
                            seen.map_or("gone".to_owned(), |e| format!(
                                "{}, bound to {:?}",
                                e.status, e.bound
                            ))
                        ),
                        ms: self.confirm_timeout.as_millis() as u64,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A shard of EIPs: each EIP bound to this gateway's own address for it (unbound from
    /// wherever it is first: Alibaba Cloud binds an EIP to one thing at a time), each route
    /// entry's next hop moved to this gateway's NIC. Every step checks first, so a takeover
    /// interrupted half-way is finished by the next leader.
    async fn take_eips(
        &self,
        shard: &ShardConfig,
        guard: &Guard<'_>,
        report: &mut TakeoverReport,
    ) -> Result<(), TakeoverError> {
        guard(self.call_timeout)?;
        let nic = self.preflight_eips(shard).await?;
        for e in &shard.eips {
            let id = e.allocation_id.as_str();
            let here = |x: &Eip| {
                x.status == "InUse"
                    && x.bound
                        .as_ref()
                        .is_some_and(|(_, i, p)| *i == nic && *p == Some(e.private))
            };
            let now = retrying(self.call_timeout, guard, &mut report.retries, || {
                self.eip(id)
            })
            .await?
            .ok_or_else(|| TakeoverError::Refused(format!("no EIP {id}")))?;
            if here(&now) {
                report.steps.push(format!(
                    "EIP {} ({id}) already on {nic}/{}",
                    now.address, e.private
                ));
                continue;
            }
            let bound_here = now
                .bound
                .as_ref()
                .is_some_and(|(_, i, p)| *i == nic && *p == Some(e.private));
            // Being bound here already (an earlier attempt's call): only wait.
            let pending_here = bound_here && now.status == "Associating";
            if let Some((kind, instance, private)) = now.bound.as_ref().filter(|_| !pending_here) {
                // Bound elsewhere (or being unbound): unbind, wait until free.
                if now.status != "Unassociating" && !bound_here {
                    let mut params = vec![
                        ("RegionId", self.region.clone()),
                        ("AllocationId", id.to_owned()),
                        ("InstanceId", instance.clone()),
                        ("InstanceType", kind.clone()),
                    ];
                    if let Some(p) = private {
                        params.push(("PrivateIpAddress", p.to_string()));
                    }
                    retrying(self.call_timeout, guard, &mut report.retries, || {
                        self.vpc.call("UnassociateEipAddress", &params)
                    })
                    .await?;
                    report.steps.push(format!(
                        "UnassociateEipAddress {} from {instance}{}",
                        now.address,
                        private.map_or(String::new(), |p| format!("/{p}"))
                    ));
                }
                self.wait_eip(id, now.address, guard, &mut report.retries, |x| {
                    x.status == "Available"
                })
                .await?;
            }
            if !pending_here {
                let params = [
                    ("RegionId", self.region.clone()),
                    ("AllocationId", id.to_owned()),
                    ("InstanceId", nic.clone()),
                    ("InstanceType", "NetworkInterface".to_owned()),
                    ("PrivateIpAddress", e.private.to_string()),
                ];
                retrying(self.call_timeout, guard, &mut report.retries, || {
                    self.vpc.call("AssociateEipAddress", &params)
                })
                .await?;
            }
            let asked = Instant::now();
            self.wait_eip(id, now.address, guard, &mut report.retries, here)
                .await?;
            report.steps.push(format!(
                "AssociateEipAddress {} onto {nic}/{}, in use after {} ms",
                now.address,
                e.private,
                asked.elapsed().as_millis()
            ));
        }
        for r in &shard.routes {
            let entry = retrying(self.call_timeout, guard, &mut report.retries, || {
                self.route_entry(&r.table, r.destination)
            })
            .await?;
            if entry
                .as_ref()
                .is_some_and(|(status, hop)| *hop == nic && status == "Available")
            {
                report
                    .steps
                    .push(format!("{} {} already -> {nic}", r.table, r.destination));
                continue;
            }
            let params = [
                ("RegionId", self.region.clone()),
                ("RouteTableId", r.table.clone()),
                ("DestinationCidrBlock", r.destination.to_string()),
                ("NewNextHopType", "NetworkInterface".to_owned()),
                ("NewNextHopId", nic.clone()),
            ];
            // TaskConflict (another change of the table under way) is retried.
            retrying(self.call_timeout, guard, &mut report.retries, || {
                self.vpc.call("ModifyRouteEntry", &params)
            })
            .await?;
            report.steps.push(format!(
                "ModifyRouteEntry {} {} -> {nic}",
                r.table, r.destination
            ));
        }
        Ok(())
    }

    async fn havip(&self, id: &str) -> Result<Option<HaVip>, crate::providers::client::ApiError> {
        const ACTION: &str = "DescribeHaVips";
        let body = self
            .vpc
            .call(
                ACTION,
                &[
                    ("RegionId", self.region.clone()),
                    ("Filter.1.Key", "HaVipId".to_owned()),
                    ("Filter.1.Value.1", id.to_owned()),
                ],
            )
            .await?;
        let list = parse_havips(&body).map_err(|why| Self::garbage(ACTION, why))?;
        Ok(list.into_iter().find(|h| h.id == id))
    }

    fn check(&self, shard: &ShardConfig, found: Option<HaVip>) -> Result<HaVip, TakeoverError> {
        let id = shard.havip.as_deref().unwrap_or_default();
        let Some(h) = found else {
            return Err(TakeoverError::Refused(format!(
                "shard {}: no HaVip {id} in {}",
                shard.name, self.region
            )));
        };
        if Some(&h.address) != shard.addresses.first() {
            return Err(TakeoverError::Refused(format!(
                "shard {}: HaVip {id}'s address is {}, not {:?}",
                shard.name, h.address, shard.addresses
            )));
        }
        if !h.instances.contains(&self.instance) {
            return Err(TakeoverError::Refused(format!(
                "shard {}: HaVip {id} is not associated with this instance ({}): associate it with every gateway of the shard first (AssociateHaVip; ipnat never does it by itself)",
                shard.name, self.instance
            )));
        }
        Ok(h)
    }

    /// Reads only: the HaVip exists with the shard's address and is associated with this
    /// instance; or, for a shard of EIPs, see `preflight_eips`.
    pub async fn preflight(&self, shard: &ShardConfig) -> Result<(), TakeoverError> {
        let Some(id) = shard.havip.as_deref() else {
            return self.preflight_eips(shard).await.map(|_| ());
        };
        let found = self.havip(id).await?;
        self.check(shard, found).map(|_| ())
    }

    pub async fn take(
        &self,
        shard: &ShardConfig,
        guard: &Guard<'_>,
    ) -> Result<TakeoverReport, TakeoverError> {
        let start = Instant::now();
        let mut report = TakeoverReport::default();
        let Some(id) = shard.havip.as_deref() else {
            self.take_eips(shard, guard, &mut report).await?;
            report.duration_ms = start.elapsed().as_millis() as u64;
            return Ok(report);
        };
        let found = retrying(self.call_timeout, guard, &mut report.retries, || {
            self.havip(id)
        })
        .await?;
        let h = self.check(shard, found)?;
        report.steps.push(format!(
            "HaVip {} ({}, {}) associated with {}",
            h.id, h.address, h.status, self.instance
        ));
        guard(Duration::ZERO)?;
        let net = ipnet::Ipv4Net::new(h.address, 32).expect("a /32");
        let (added, _) = crate::system::reconcile_addresses(
            &[(self.interface.clone(), net)],
            &self.pin_path,
            AddressOwner::Failover,
            true,
        )
        .map_err(|e| TakeoverError::Refused(format!("putting {net} on {}: {e}", self.interface)))?;
        report.steps.push(if added.is_empty() {
            format!("{net} already on {}", self.interface)
        } else {
            format!("{net} put on {}", self.interface)
        });
        let (ifindex, mac) = crate::system::ifindex_of(&self.interface)
            .zip(crate::providers::nic::mac_of(&self.interface))
            .ok_or_else(|| TakeoverError::Refused(format!("no interface {}", self.interface)))?;
        let mac: Vec<u8> = mac
            .split(':')
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        let mac: [u8; 6] = mac.try_into().map_err(|_| {
            TakeoverError::Refused(format!("{}: not an Ethernet MAC", self.interface))
        })?;
        for n in 0..3 {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            crate::system::send_garp(ifindex, mac, h.address).map_err(|e| {
                TakeoverError::Refused(format!("gratuitous ARP on {}: {e}", self.interface))
            })?;
        }
        report.steps.push(format!(
            "gratuitous ARP for {} on {}, 3 times",
            h.address, self.interface
        ));
        report.duration_ms = start.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// The HaVip's address off the interface (if failover put it there). A shard of EIPs
    /// holds nothing on the host (its addresses are this gateway's own).
    pub fn release(&self, shard: &ShardConfig) -> Result<Vec<String>, TakeoverError> {
        let (Some(_), Some(a)) = (&shard.havip, shard.addresses.first()) else {
            return Ok(Vec::new());
        };
        crate::system::release_address(
            &self.pin_path,
            AddressOwner::Failover,
            &self.interface,
            ipnet::Ipv4Net::new(*a, 32).expect("a /32"),
        )
        .map_err(|e| TakeoverError::Refused(format!("removing {a} from {}: {e}", self.interface)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_eip_and_route_answers() {
        let body = serde_json::json!({
            "RequestId": "4EC47282-1B74-4534-BD0E-403F3EE64CAF",
            "TotalCount": 2, "PageNumber": 1, "PageSize": 10,
            "EipAddresses": {"EipAddress": [
                {"AllocationId": "eip-2zeerraiwb7ujsxdc****", "IpAddress": "47.75.XX.XX".replace("XX", "1"),
                 "Status": "InUse", "InstanceType": "NetworkInterface",
                 "InstanceId": "eni-bp1d66qjxb3qoin3****", "PrivateIpAddress": "192.168.0.10",
                 "RegionId": "cn-hangzhou", "Bandwidth": "5"},
                {"AllocationId": "eip-2", "IpAddress": "47.75.2.2", "Status": "Available",
                 "InstanceType": "", "InstanceId": ""}
            ]}
        });
        let e = parse_eips(&body).unwrap();
        assert_eq!(
            e[0].bound,
            Some((
                "NetworkInterface".into(),
                "eni-bp1d66qjxb3qoin3****".into(),
                Some(Ipv4Addr::new(192, 168, 0, 10))
            ))
        );
        assert_eq!((e[1].status.as_str(), &e[1].bound), ("Available", &None));
        assert!(parse_eips(&serde_json::json!({"EipAddresses": {}})).is_err());
        let routes = serde_json::json!({
            "RequestId": "R", "TotalCount": 1,
            "RouteEntrys": {"RouteEntry": [{
                "RouteEntryId": "rte-bp1mnnr2al0naomnp****", "RouteTableId": "vtb-1",
                "DestinationCidrBlock": "0.0.0.0/0", "Status": "Available", "Type": "Custom",
                "NextHops": {"NextHop": [{"NextHopType": "NetworkInterface", "NextHopId": "eni-1", "Weight": 0, "Enabled": 1}]}
            }]}
        });
        assert_eq!(
            parse_route_entry(&routes).unwrap(),
            Some(("Available".into(), "eni-1".into()))
        );
        assert_eq!(
            parse_route_entry(&serde_json::json!({"RouteEntrys": {"RouteEntry": []}})).unwrap(),
            None
        );
        assert!(parse_route_entry(&serde_json::json!({})).is_err());
    }

    #[test]
    fn parses_the_documented_answer() {
        let body = serde_json::json!({
            "RequestId": "C44F62BE-9CE7-4277-B117-39243F34B7E5",
            "TotalCount": 1, "PageNumber": 1, "PageSize": 10,
            "HaVips": {"HaVip": [{
                "HaVipId": "havip-2zeo05qre24nhrqpy****",
                "IpAddress": "192.168.1.99",
                "Status": "InUse",
                "VpcId": "vpc-2zeo05qre24nhrqpy****",
                "VSwitchId": "vsw-2zeo05qre24nhrqpy****",
                "MasterInstanceId": "i-2zeo05qre24nhrqpy****",
                "AssociatedInstances": {"associatedInstance": ["i-2zeo05qre24nhrqpy****", "i-2ze5nrqpyo05qre24****"]},
                "AssociatedEipAddresses": {"associatedEipAddresse": ["47.xx.xx.236"]}
            }]}
        });
        let h = parse_havips(&body).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].address, Ipv4Addr::new(192, 168, 1, 99));
        assert_eq!(h[0].instances.len(), 2);
        assert!(parse_havips(&serde_json::json!({"HaVips": {}})).is_err());
        assert!(
            parse_havips(
                &serde_json::json!({"HaVips": {"HaVip": [{"HaVipId": "h", "IpAddress": "x"}]}})
            )
            .is_err()
        );
    }
}
