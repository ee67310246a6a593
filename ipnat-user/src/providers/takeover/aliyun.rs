//! A failover shard's takeover on Alibaba Cloud, through a HaVip.
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

/// This gateway's side of a HaVip takeover.
pub struct AliyunTakeover {
    vpc: OpenApi,
    region: String,
    instance: String,
    interface: String,
    pin_path: PathBuf,
    call_timeout: Duration,
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
            region,
            instance,
            interface: failover.interface.clone(),
            pin_path: pin_path.to_owned(),
            call_timeout,
        })
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
        let list =
            parse_havips(&body).map_err(|why| crate::providers::client::ApiError::Garbage {
                api: crate::providers::client::Api::Ecs,
                action: ACTION.into(),
                why,
            })?;
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
    /// instance.
    pub async fn preflight(&self, shard: &ShardConfig) -> Result<(), TakeoverError> {
        let id = shard.havip.as_deref().unwrap_or_default();
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
        let id = shard.havip.as_deref().unwrap_or_default();
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

    /// The HaVip's address off the interface (if failover put it there).
    pub fn release(&self, shard: &ShardConfig) -> Result<Vec<String>, TakeoverError> {
        let Some(a) = shard.addresses.first() else {
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
