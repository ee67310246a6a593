//! A failover shard's takeover on AWS: the new leader moves the shard's addresses onto its own
//! NIC and points the backends' routes at it, through the EC2 API.
//!
//! 1. Preflight (reads only, before this gateway even campaigns): its NIC's source/destination
//!    check is off (else it could not forward), every address of the shard exists in the
//!    VPC on a NIC of the same subnet (`AssignPrivateIpAddresses` moves addresses within a
//!    subnet only), and each of the shard's EIPs (across zones) exists and the address of
//!    this gateway's that should take it is a secondary address of its NIC
//!    (`DescribeAddresses`).
//! 2. `AssignPrivateIpAddresses` with `AllowReassignment` onto its NIC: an EIP associated with
//!    a secondary private address moves with it (EC2's documentation). Across zones,
//!    `AssociateAddress` with `AllowReassociation` puts each EIP on this gateway's own address
//!    for it (whose mapping this gateway's table holds: the public side changes with the
//!    gateway, the EIP the clients talk to does not).
//! 3. `ReplaceRoute` for each of the shard's routes, at once: the cloud carries the moves out
//!    asynchronously, and the routes need not wait for the addresses (seconds each).
//! 4. Wait until this instance's metadata lists the addresses on the NIC (and each EIP among
//!    its `ipv4-associations`), then have the controller sync at once, which puts them on the
//!    interface (the one writer of addresses; the old leader's sync removes them there).
//!
//! Every step is idempotent, so a takeover interrupted half-way is finished by whoever leads
//! next. Each call is retried with backoff and jitter on throttling, 5xx, transport errors and
//! answers that are not the documented shape; none is made unless the lease has more time left
//! than the call's timeout.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::{Guard, TakeoverError, TakeoverReport, retrying};
use crate::{
    config::{AwsConfig, FailoverConfig, ShardConfig},
    providers::{aws::Imds, ec2::Ec2},
};

/// What a takeover starts from: the NIC holding each of the shard's addresses, and each EIP
/// as the API describes it.
pub struct Plan {
    pub owners: Vec<(Ipv4Addr, String)>,
    pub eips: Vec<(crate::config::EipConfig, crate::providers::ec2::Ec2Address)>,
}

/// This gateway's side of a takeover: its NIC, and the clients to move things onto it.
pub struct AwsTakeover {
    imds: Imds,
    ec2: Ec2,
    mac: String,
    pub nic: String,
    call_timeout: Duration,
    confirm_timeout: Duration,
}

impl AwsTakeover {
    /// Reads who this gateway is (its NIC for `failover.interface`) and makes the clients.
    pub async fn new(aws: &AwsConfig, failover: &FailoverConfig) -> Result<Self, TakeoverError> {
        let call_timeout = Duration::from_millis(failover.call_timeout_ms);
        let imds = Imds::new(&aws.endpoint, call_timeout)?;
        let mac = crate::providers::nic::mac_of(&failover.interface).ok_or_else(|| {
            TakeoverError::Refused(format!(
                "failover.interface {} has no MAC address here",
                failover.interface
            ))
        })?;
        let nic = imds
            .get(&format!("network/interfaces/macs/{mac}/interface-id"))
            .await?
            .trim()
            .to_owned();
        let (ec2, _) = crate::providers::ec2::client(&imds, aws, call_timeout).await?;
        Ok(AwsTakeover {
            imds,
            ec2,
            mac,
            nic,
            call_timeout,
            confirm_timeout: Duration::from_millis(failover.confirm_timeout_ms),
        })
    }

    /// Checks, with reads only, that this gateway could take `shard` over (see the module
    /// documentation); the NIC holding each address now, and each EIP as it is now.
    pub async fn preflight(&self, shard: &ShardConfig) -> Result<Plan, TakeoverError> {
        let mine = self.ec2.network_interface(&self.nic).await?;
        if mine.source_dest_check {
            return Err(TakeoverError::Refused(format!(
                "source/destination check is on for {} (this gateway's NIC): it would drop every forwarded packet; turn it off (ModifyNetworkInterfaceAttribute SourceDestCheck=false)",
                self.nic
            )));
        }
        let mut eips = Vec::new();
        for e in &shard.eips {
            if !mine.addresses.iter().skip(1).any(|(a, _)| *a == e.private) {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: {} (the address {} should take) is not a secondary address of {} (this gateway's NIC): assign it first",
                    shard.name, e.private, e.allocation_id, self.nic
                )));
            }
            let now = match self.ec2.address(&e.allocation_id).await {
                Err(crate::providers::client::ApiError::Api { code, .. })
                    if code == "InvalidAllocationID.NotFound" =>
                {
                    return Err(TakeoverError::Refused(format!(
                        "shard {}: the EIP {} does not exist in this account and region",
                        shard.name, e.allocation_id
                    )));
                }
                r => r?,
            };
            eips.push((e.clone(), now));
        }
        let mut owners = Vec::new();
        if shard.addresses.is_empty() {
            return Ok(Plan { owners, eips });
        }
        let values: Vec<String> = shard.addresses.iter().map(|a| a.to_string()).collect();
        let holders = self
            .ec2
            .network_interfaces(&[
                ("vpc-id", vec![mine.vpc_id.clone()]),
                ("addresses.private-ip-address", values),
            ])
            .await?;
        for a in &shard.addresses {
            let Some(holder) = holders
                .iter()
                .find(|n| n.addresses.iter().any(|(x, _)| x == a))
            else {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: no NIC in {} holds {a} (assign it to one first, e.g. `ipnat eni assign`)",
                    shard.name, mine.vpc_id
                )));
            };
            if holder.subnet_id != mine.subnet_id {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: {a} is on {} in {}, this gateway's NIC {} is in {}: addresses move within one subnet (one zone)",
                    shard.name, holder.id, holder.subnet_id, self.nic, mine.subnet_id
                )));
            }
            if holder.addresses.first().is_some_and(|(x, _)| x == a) {
                return Err(TakeoverError::Refused(format!(
                    "shard {}: {a} is the primary address of {}, which never moves",
                    shard.name, holder.id
                )));
            }
            owners.push((*a, holder.id.clone()));
        }
        Ok(Plan { owners, eips })
    }

    /// Moves `shard` onto this gateway; `synced` is called once the metadata lists the
    /// addresses (the controller then syncs at once). `guard` says whether the lease still
    /// allows a call of the given length.
    pub async fn take(
        &self,
        shard: &ShardConfig,
        guard: &Guard<'_>,
        synced: &(dyn Fn() + Send + Sync),
    ) -> Result<TakeoverReport, TakeoverError> {
        let start = Instant::now();
        let mut report = TakeoverReport::default();
        guard(self.call_timeout)?;
        let Plan { owners, eips } = self.preflight(shard).await?;
        let moving: Vec<Ipv4Addr> = owners
            .iter()
            .filter(|(_, nic)| *nic != self.nic)
            .map(|(a, _)| *a)
            .collect();
        if moving.is_empty() {
            // (A shard across zones may have no address to move at all.)
            if !shard.addresses.is_empty() {
                report
                    .steps
                    .push(format!("{:?} already on {}", shard.addresses, self.nic));
            }
        } else {
            retrying(self.call_timeout, guard, &mut report.retries, || {
                self.ec2.reassign_private_ips(&self.nic, &moving)
            })
            .await?;
            let from: Vec<String> = owners
                .iter()
                .filter(|(_, nic)| *nic != self.nic)
                .map(|(a, nic)| format!("{a} from {nic}"))
                .collect();
            report.steps.push(format!(
                "AssignPrivateIpAddresses (AllowReassignment) onto {}: {}",
                self.nic,
                from.join(", ")
            ));
        }
        for (e, now) in &eips {
            let here = (self.nic.clone(), e.private);
            if now.association.as_ref() == Some(&here) {
                report.steps.push(format!(
                    "{} ({}) already on {}/{}",
                    now.public, e.allocation_id, self.nic, e.private
                ));
                continue;
            }
            retrying(self.call_timeout, guard, &mut report.retries, || {
                self.ec2
                    .associate_address(&e.allocation_id, &self.nic, e.private)
            })
            .await?;
            report.steps.push(format!(
                "AssociateAddress (AllowReassociation) {} onto {}/{} from {}",
                now.public,
                self.nic,
                e.private,
                now.association
                    .as_ref()
                    .map_or("nowhere".to_owned(), |(n, a)| format!("{n}/{a}"))
            ));
        }
        let asked = Instant::now();
        // The routes at once, without waiting for the moves above to be carried out: this
        // gateway leads, so the routes belong to it whatever the addresses' progress, and the
        // cloud carries out both at the same time (each can take seconds).
        for r in &shard.routes {
            retrying(self.call_timeout, guard, &mut report.retries, || {
                self.ec2.replace_route(&r.table, r.destination, &self.nic)
            })
            .await?;
            report.steps.push(format!(
                "ReplaceRoute {} {} -> {}",
                r.table, r.destination, self.nic
            ));
        }
        // Confirmed when the metadata lists every address on this NIC and every EIP as
        // associated with its address here.
        loop {
            guard(Duration::ZERO)?;
            let mut missing: Vec<Ipv4Addr> = Vec::new();
            for (e, now) in &eips {
                let path = format!(
                    "network/interfaces/macs/{}/ipv4-associations/{}",
                    self.mac, now.public
                );
                let listed = self.imds.get(&path).await.unwrap_or_default();
                if listed.trim().parse::<Ipv4Addr>().ok() != Some(e.private) {
                    missing.push(now.public);
                }
            }
            let listed = self
                .imds
                .get(&format!("network/interfaces/macs/{}/local-ipv4s", self.mac))
                .await
                .unwrap_or_default();
            let listed: Vec<Ipv4Addr> = listed
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            missing.extend(shard.addresses.iter().filter(|a| !listed.contains(a)));
            if missing.is_empty() {
                break;
            }
            if asked.elapsed() > self.confirm_timeout {
                return Err(TakeoverError::NotConfirmed {
                    nic: self.nic.clone(),
                    missing,
                    ms: self.confirm_timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.steps.push(format!(
            "the metadata lists them on {} after {} ms",
            self.nic,
            asked.elapsed().as_millis()
        ));
        synced();
        report.duration_ms = start.elapsed().as_millis() as u64;
        Ok(report)
    }
}
