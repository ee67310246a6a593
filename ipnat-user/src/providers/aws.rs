//! AWS: the instance metadata service (IMDSv2: a session token from `PUT /latest/api/token`,
//! then GETs carrying it). Every NIC under `network/interfaces/macs/` with its `device-number`,
//! `interface-id`, `local-ipv4s` (primary first), `subnet-ipv4-cidr-block` and
//! `ipv4-associations/<public-ip>` (the EIPs bound to its addresses).
//!
//! From that, the steering rules the rc.local recipe would have written by hand: every address
//! of a secondary NIC (device number > 0) leaves by that NIC, via the subnet's router (the
//! network address + 1, as AWS documents).

use std::net::Ipv4Addr;

use crate::config::MappingConfig;
use aws_credential_types::Credentials;
use ipnet::Ipv4Net;
use serde::Deserialize;

use super::client::{CloudMetadata, MetadataError, MetadataService};

/// From the metadata's `iam/security-credentials/<role>` document.
pub fn credentials_from_role(json: &str) -> Result<Credentials, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc {
        code: String,
        access_key_id: String,
        secret_access_key: String,
        token: String,
    }
    let d: Doc = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if d.code != "Success" {
        return Err(format!("Code {:?}", d.code));
    }
    Ok(Credentials::new(
        d.access_key_id,
        d.secret_access_key,
        Some(d.token),
        None,
        "instance profile",
    ))
}

/// One network interface as the metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
    pub device_number: u32,
    pub interface_id: String,
    /// Primary first.
    pub local_ipv4s: Vec<Ipv4Addr>,
    pub subnet: Ipv4Net,
    /// (public, private) per EIP bound to one of its addresses.
    pub associations: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// Who the instance is, for the EC2 API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub region: String,
    pub instance_id: String,
    pub vpc_id: String,
}

/// AWS's instance metadata service, version 2 (token mode).
pub struct Imdsv2;

impl MetadataService for Imdsv2 {
    const TOKEN_HEADER: &'static str = "X-aws-ec2-metadata-token";
}

/// The IMDSv2 client; `endpoint` is e.g. `http://169.254.169.254`.
pub type Imds = CloudMetadata<Imdsv2>;

impl Imds {
    /// The instance's region, id and VPC (its primary NIC's).
    pub async fn identity(&self) -> Result<Identity, MetadataError> {
        let region = self.get("placement/region").await?.trim().to_owned();
        let instance_id = self.get("instance-id").await?.trim().to_owned();
        let mac = self.get("mac").await?.trim().to_ascii_lowercase();
        let vpc_id = self
            .get(&format!("network/interfaces/macs/{mac}/vpc-id"))
            .await?
            .trim()
            .to_owned();
        Ok(Identity {
            region,
            instance_id,
            vpc_id,
        })
    }

    /// The instance type (e.g. `c5.large`).
    pub async fn instance_type(&self) -> Result<String, MetadataError> {
        Ok(self.get("instance-type").await?.trim().to_owned())
    }

    /// The instance profile's temporary credentials (the first role the metadata lists).
    pub async fn role_credentials(
        &self,
    ) -> Result<aws_credential_types::Credentials, MetadataError> {
        self.role_document(
            "iam/security-credentials/",
            None,
            "role credentials (JSON)",
            credentials_from_role,
        )
        .await
    }

    /// Every NIC of the instance, or the first error: never a partial answer.
    pub async fn nics(&self) -> Result<Vec<Nic>, MetadataError> {
        let base = "network/interfaces/macs/";
        let macs = self.get(base).await?;
        let mut list = Vec::new();
        for line in macs.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mac = line.trim_end_matches('/').to_ascii_lowercase();
            if !is_mac(&mac) {
                return Err(self.garbage(base, line, "a MAC address"));
            }
            list.push(mac);
        }
        // The NICs are read concurrently, a few at a time.
        let mut nics = Vec::with_capacity(list.len());
        let mut running = tokio::task::JoinSet::new();
        for mac in list {
            if running.len() >= super::client::CONCURRENT_NICS {
                nics.push(joined(running.join_next().await)?);
            }
            let me = self.clone();
            running.spawn(async move { me.nic(mac).await });
        }
        while let Some(r) = running.join_next().await {
            nics.push(joined(Some(r))?);
        }
        nics.sort_by_key(|n| n.device_number);
        Ok(nics)
    }

    async fn nic(&self, mac: String) -> Result<Nic, MetadataError> {
        let prefix = format!("network/interfaces/macs/{mac}/");
        let p = |leaf: &str| format!("{prefix}{leaf}");
        let dn = self.get(&p("device-number")).await?;
        let device_number = dn
            .trim()
            .parse()
            .map_err(|_| self.garbage(&p("device-number"), &dn, "a device number"))?;
        let interface_id = self.get(&p("interface-id")).await?.trim().to_owned();
        let ips = self.get(&p("local-ipv4s")).await?;
        let mut local_ipv4s = Vec::new();
        for l in ips.lines().map(str::trim).filter(|l| !l.is_empty()) {
            local_ipv4s.push(
                l.parse()
                    .map_err(|_| self.garbage(&p("local-ipv4s"), l, "an IPv4 address"))?,
            );
        }
        let cidr = self.get(&p("subnet-ipv4-cidr-block")).await?;
        let subnet: Ipv4Net = cidr
            .trim()
            .parse()
            .map_err(|_| self.garbage(&p("subnet-ipv4-cidr-block"), &cidr, "a CIDR block"))?;
        // A NIC without EIPs has no `ipv4-associations/`: a 404 there means none.
        let mut associations = Vec::new();
        match self.get(&p("ipv4-associations/")).await {
            Ok(list) => {
                for public in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let pub_ip: Ipv4Addr = public.trim_end_matches('/').parse().map_err(|_| {
                        self.garbage(&p("ipv4-associations/"), public, "an IPv4 address")
                    })?;
                    let leaf = p(&format!("ipv4-associations/{pub_ip}"));
                    let private = self.get(&leaf).await?;
                    let priv_ip = private
                        .trim()
                        .parse()
                        .map_err(|_| self.garbage(&leaf, &private, "an IPv4 address"))?;
                    associations.push((pub_ip, priv_ip));
                }
            }
            Err(MetadataError::Status { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(Nic {
            mac,
            device_number,
            interface_id,
            local_ipv4s,
            subnet,
            associations,
        })
    }
}

/// A finished NIC task's result (a panicked task is reported as garbage, never ignored).
fn joined(
    r: Option<Result<Result<Nic, MetadataError>, tokio::task::JoinError>>,
) -> Result<Nic, MetadataError> {
    match r {
        Some(Ok(nic)) => nic,
        Some(Err(e)) => Err(MetadataError::Garbage {
            url: String::new(),
            value: e.to_string(),
            what: "a finished request",
        }),
        None => Err(MetadataError::Garbage {
            url: String::new(),
            value: String::new(),
            what: "a NIC",
        }),
    }
}

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':')
            .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
}

/// Host orientation's mappings from the metadata: every EIP association (public <-> the
/// private address it is bound to), on every NIC.
pub fn mappings(nics: &[Nic]) -> Vec<MappingConfig> {
    nics.iter()
        .flat_map(|n| &n.associations)
        .map(|&(public, private)| MappingConfig {
            public: public.into(),
            private: private.into(),
        })
        .collect()
}

/// The NICs whose addresses are steered: the secondary ones (device number > 0), via their
/// subnet's router (its first address).
pub fn secondaries(nics: &[Nic]) -> impl Iterator<Item = super::nic::Secondary<'_>> {
    nics.iter()
        .filter(|n| n.device_number > 0)
        .map(|n| super::nic::Secondary {
            mac: &n.mac,
            addresses: &n.local_ipv4s,
            gateway: Ipv4Addr::from(u32::from(n.subnet.network()) + 1),
            subnet: n.subnet,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_credentials() {
        let c = credentials_from_role(
            r#"{"Code":"Success","LastUpdated":"2026-11-23T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-11-23T06:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "ASIA1");
        assert_eq!(c.session_token(), Some("t"));
        assert!(credentials_from_role(r#"{"Code":"Failure"}"#).is_err());
    }
    use super::*;

    #[test]
    fn secondary_nics_become_steering_rules_via_the_subnet_router() {
        let nic = |dn: u32, mac: &str, ips: &[&str], subnet: &str| Nic {
            mac: mac.into(),
            device_number: dn,
            interface_id: format!("eni-{dn}"),
            local_ipv4s: ips.iter().map(|i| i.parse().unwrap()).collect(),
            subnet: subnet.parse().unwrap(),
            associations: vec![],
        };
        let nics = [
            nic(0, "0a:00:00:00:00:01", &["10.0.0.10"], "10.0.0.0/24"),
            nic(
                1,
                "0a:00:00:00:00:02",
                &["10.0.1.20", "10.0.1.21"],
                "10.0.1.0/24",
            ),
            nic(2, "0a:00:00:00:00:03", &["10.0.2.5"], "10.0.2.0/24"),
        ];
        let (rules, missing) = crate::providers::nic::steering_rules(secondaries(&nics), &|mac| {
            (mac == "0a:00:00:00:00:02").then(|| "eth1".to_owned())
        });
        assert_eq!(missing, ["0a:00:00:00:00:03"]);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].source.to_string(), "10.0.1.21");
        assert_eq!(rules[1].gateway, Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(rules[1].subnet.to_string(), "10.0.1.0/24");
        assert!(is_mac("0a:00:00:00:00:02") && !is_mac("<html>"));
    }
}
