//! `ipnat eni assign|unassign`: secondary private addresses on a NIC, through the cloud's API
//! (EC2 or ECS `AssignPrivateIpAddresses` / `UnassignPrivateIpAddresses`), after checking the
//! documented limits so that a request that would break one is refused before it is sent: a
//! NIC that is not attached takes at most 10 private addresses; an attached one, what its
//! instance type allows per NIC (EC2 `DescribeInstanceTypes` `ipv4AddressesPerInterface`, ECS
//! `DescribeInstanceTypes` `EniPrivateIpAddressQuantity`). The running `ipnat run` then puts the
//! new addresses on the interface at its next sync (`addresses = true`).

use std::{net::Ipv4Addr, time::Duration};

use serde::Serialize;
use thiserror::Error;

use super::{aliyun, aliyun_api, aws, client::Assign, ec2};
use crate::config::Config;

/// What a NIC not attached to an instance may hold.
pub const UNATTACHED_LIMIT: u32 = 10;

#[derive(Debug, Error)]
pub enum EniError {
    #[error("no [aws] or [aliyun] section in the config: ipnat eni needs a cloud")]
    NoProvider,
    #[error(
        "{nic} has {current} private addresses; {asked} more would make {total}, over {why} ({limit}): nothing was sent"
    )]
    Limit {
        nic: String,
        current: usize,
        asked: usize,
        total: usize,
        limit: u32,
        why: String,
    },
    #[error(
        "{nic} is attached to {instance}, not to this instance: run ipnat eni there (its instance type's quota applies)"
    )]
    OtherInstance { nic: String, instance: String },
    #[error("{address} is not a secondary address of {nic}: nothing was sent")]
    NotSecondary { nic: String, address: Ipv4Addr },
    #[error("nothing to do: ask for at least one address")]
    Empty,
    #[error(transparent)]
    Api(#[from] super::client::ApiError),
    #[error(transparent)]
    Metadata(#[from] super::client::MetadataError),
}

/// What `ipnat eni` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EniOutcome {
    pub nic: String,
    /// Private addresses on the NIC before.
    pub before: usize,
    pub limit: u32,
    /// Where the limit comes from.
    pub limit_why: String,
    pub assigned: Vec<Ipv4Addr>,
    pub unassigned: Vec<Ipv4Addr>,
}

/// A NIC as both clouds describe it: (addresses, primary first; the instance it is on).
struct NicView {
    addresses: Vec<Ipv4Addr>,
    instance: Option<String>,
}

/// The limit for a NIC, and why; an error for a NIC on another instance.
fn limit_for(
    nic: &str,
    view: &NicView,
    this_instance: &str,
    quota: Option<(u32, String)>,
) -> Result<(u32, String), EniError> {
    match &view.instance {
        None => Ok((
            UNATTACHED_LIMIT,
            "the limit of a NIC that is not attached".into(),
        )),
        Some(i) if i == this_instance => Ok(quota.expect("asked for attached NICs")),
        Some(i) => Err(EniError::OtherInstance {
            nic: nic.to_owned(),
            instance: i.clone(),
        }),
    }
}

/// Checks `assign` against the limit, or `unassign` against the NIC's secondary addresses.
fn check(
    nic: &str,
    view: &NicView,
    limit: (u32, String),
    assign: Option<&Assign>,
    unassign: &[Ipv4Addr],
) -> Result<(), EniError> {
    if let Some(a) = assign {
        if a.is_empty() {
            return Err(EniError::Empty);
        }
        let total = view.addresses.len() + a.len();
        if total > limit.0 as usize {
            return Err(EniError::Limit {
                nic: nic.to_owned(),
                current: view.addresses.len(),
                asked: a.len(),
                total,
                limit: limit.0,
                why: limit.1,
            });
        }
    }
    for &address in unassign {
        if !view.addresses.iter().skip(1).any(|a| *a == address) {
            return Err(EniError::NotSecondary {
                nic: nic.to_owned(),
                address,
            });
        }
    }
    Ok(())
}

/// Assigns (`assign`) or unassigns (`unassign`) private addresses on `nic`, with the config's
/// provider and credentials.
pub async fn run(
    config: &Config,
    nic: &str,
    assign: Option<Assign>,
    unassign: Vec<Ipv4Addr>,
) -> Result<EniOutcome, EniError> {
    if assign.is_none() && unassign.is_empty() {
        return Err(EniError::Empty);
    }
    let Some(crate::config::Provider {
        cloud,
        endpoint,
        timeout_ms: timeout,
        ..
    }) = config.provider()
    else {
        return Err(EniError::NoProvider);
    };
    let timeout = Duration::from_millis(timeout);
    let mut out = EniOutcome {
        nic: nic.to_owned(),
        before: 0,
        limit: 0,
        limit_why: String::new(),
        assigned: Vec::new(),
        unassigned: Vec::new(),
    };
    if cloud == crate::config::Cloud::Aws {
        let cfg = config.aws.as_ref().expect("provider aws");
        let imds = aws::Imds::new(endpoint, timeout)?;
        let (api, id) = ec2::client(&imds, cfg, timeout).await?;
        let n = api.network_interface(nic).await?;
        let view = NicView {
            addresses: n.addresses.iter().map(|a| a.0).collect(),
            instance: n.instance_id.clone(),
        };
        let quota = match &view.instance {
            Some(i) if *i == id.instance_id => {
                let t = imds.instance_type().await?;
                let q = api.ipv4_per_interface(&t).await?;
                Some((q, format!("instance type {t}'s quota per NIC")))
            }
            _ => None,
        };
        let limit = limit_for(nic, &view, &id.instance_id, quota)?;
        check(nic, &view, limit.clone(), assign.as_ref(), &unassign)?;
        (out.before, out.limit, out.limit_why) = (view.addresses.len(), limit.0, limit.1);
        if let Some(a) = &assign {
            out.assigned = api.assign_private_ips(nic, a).await?;
        }
        if !unassign.is_empty() {
            api.unassign_private_ips(nic, &unassign).await?;
            out.unassigned = unassign;
        }
    } else {
        let cfg = config.aliyun.as_ref().expect("provider aliyun");
        let md = aliyun::Metadata::new(endpoint, timeout)?;
        let (api, region, instance) = aliyun_api::client(&md, cfg, timeout).await?;
        let n = api.network_interface(&region, nic).await?;
        let view = NicView {
            addresses: n.addresses.iter().map(|a| a.0).collect(),
            instance: n.instance_id.clone(),
        };
        let quota = match &view.instance {
            Some(i) if *i == instance => {
                let t = md.instance_type().await?;
                let q = api.ips_per_eni(&t).await?;
                Some((q, format!("instance type {t}'s quota per NIC")))
            }
            _ => None,
        };
        let limit = limit_for(nic, &view, &instance, quota)?;
        check(nic, &view, limit.clone(), assign.as_ref(), &unassign)?;
        (out.before, out.limit, out.limit_why) = (view.addresses.len(), limit.0, limit.1);
        if let Some(a) = &assign {
            out.assigned = api.assign_private_ips(&region, nic, a).await?;
        }
        if !unassign.is_empty() {
            api.unassign_private_ips(&region, nic, &unassign).await?;
            out.unassigned = unassign;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: usize, instance: Option<&str>) -> NicView {
        NicView {
            addresses: (0..n as u8)
                .map(|i| Ipv4Addr::new(10, 0, 0, 10 + i))
                .collect(),
            instance: instance.map(str::to_owned),
        }
    }

    #[test]
    fn limits_are_checked_before_anything_is_sent() {
        let unattached = view(8, None);
        let l = limit_for("eni-1", &unattached, "i-me", None).unwrap();
        assert_eq!(l.0, 10);
        check(
            "eni-1",
            &unattached,
            l.clone(),
            Some(&Assign::Count(2)),
            &[],
        )
        .unwrap();
        let e = check("eni-1", &unattached, l, Some(&Assign::Count(3)), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "eni-1 has 8 private addresses; 3 more would make 11, over the limit of a NIC that is not attached (10): nothing was sent"
        );
        let mine = view(4, Some("i-me"));
        let quota = Some((4, "instance type c5.large's quota per NIC".to_owned()));
        let l = limit_for("eni-2", &mine, "i-me", quota).unwrap();
        assert!(
            check(
                "eni-2",
                &mine,
                l.clone(),
                Some(&Assign::List(vec![Ipv4Addr::new(10, 0, 0, 99)])),
                &[]
            )
            .unwrap_err()
            .to_string()
            .contains("over instance type c5.large's quota per NIC (4)")
        );
        // The primary address cannot be unassigned; a secondary one can.
        assert!(
            check(
                "eni-2",
                &mine,
                l.clone(),
                None,
                &[Ipv4Addr::new(10, 0, 0, 10)]
            )
            .is_err()
        );
        check("eni-2", &mine, l, None, &[Ipv4Addr::new(10, 0, 0, 11)]).unwrap();
        assert!(matches!(
            limit_for("eni-3", &view(1, Some("i-other")), "i-me", None),
            Err(EniError::OtherInstance { .. })
        ));
    }
}
