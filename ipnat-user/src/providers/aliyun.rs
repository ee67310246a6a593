//! Alibaba Cloud: the ECS metadata service in token mode (`PUT /latest/api/token` with
//! `X-aliyun-ecs-metadata-token-ttl-seconds`, then GETs carrying `X-aliyun-ecs-metadata-token`),
//! and the OpenAPI's RPC signature (version 1, HMAC-SHA1), which the EIP association calls need.
//!
//! From the metadata: every NIC under `network/interfaces/macs/` with its
//! `network-interface-id`, `private-ipv4s` (a JSON array), `gateway` and `vswitch-cidr-block`;
//! the primary NIC is the one whose MAC is the instance's `mac`. Every address of a secondary
//! NIC is steered out of it via its `gateway`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::client::{CloudMetadata, MetadataError, MetadataService, percent_encode};
use crate::config::MappingConfig;
use base64::Engine;
use hmac::{Hmac, Mac};
use ipnet::Ipv4Net;
use serde::Deserialize;

/// The signature (version 1) of an RPC-style OpenAPI request: HMAC-SHA1 keyed with
/// `secret + "&"` over `METHOD&%2F&<percent-encoded canonical query>`, base64.
pub fn sign_v1(method: &str, params: &BTreeMap<String, String>, secret: &str) -> String {
    let canonical = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical)
    );
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// An access key, with the security token of temporary (RAM role) credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: Option<String>,
}

impl Credentials {
    /// From the environment, if both variables are set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var("ALIBABA_CLOUD_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("ALIBABA_CLOUD_ACCESS_KEY_SECRET").ok()?;
        Some(Self {
            access_key_id: id,
            access_key_secret: secret,
            security_token: std::env::var("ALIBABA_CLOUD_SECURITY_TOKEN").ok(),
        })
    }

    /// From the metadata's `ram/security-credentials/<role>` document.
    pub fn from_ram_role(json: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Doc {
            access_key_id: String,
            access_key_secret: String,
            security_token: String,
            #[serde(default)]
            code: Option<String>,
        }
        let d: Doc = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if d.code.as_deref().is_some_and(|c| c != "Success") {
            return Err(format!("Code {:?}", d.code));
        }
        Ok(Self {
            access_key_id: d.access_key_id,
            access_key_secret: d.access_key_secret,
            security_token: Some(d.security_token),
        })
    }
}

/// One NIC as the metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
    pub primary: bool,
    pub interface_id: String,
    /// Primary first.
    pub private_ipv4s: Vec<Ipv4Addr>,
    pub gateway: Ipv4Addr,
    pub vswitch: Ipv4Net,
    /// The EIP bound to this NIC's primary address, as far as the metadata knows: only the
    /// instance's primary NIC has one there (`eipv4`); the others need the OpenAPI.
    pub eip: Option<Ipv4Addr>,
}

/// Alibaba Cloud's ECS metadata service (token mode).
pub struct Ecs;

impl MetadataService for Ecs {
    const TOKEN_HEADER: &'static str = "X-aliyun-ecs-metadata-token";
}

/// The ECS metadata client; `endpoint` is e.g. `http://100.100.100.200`.
pub type Metadata = CloudMetadata<Ecs>;

impl Metadata {
    /// Every NIC, or the first error: never a partial answer.
    pub async fn nics(&self) -> Result<Vec<Nic>, MetadataError> {
        let primary_mac = self.get("mac").await?.trim().to_ascii_lowercase();
        // No EIP: 404.
        let eip = match self.get("eipv4").await {
            Ok(v) => Some(
                v.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| self.garbage("eipv4", &v, "an IPv4 address"))?,
            ),
            Err(MetadataError::Status { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        let base = "network/interfaces/macs/";
        let macs = self.get(base).await?;
        let mut nics = Vec::new();
        for line in macs.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mac = line.trim_end_matches('/').to_ascii_lowercase();
            let p = |leaf: &str| format!("{base}{mac}/{leaf}");
            let interface_id = self
                .get(&p("network-interface-id"))
                .await?
                .trim()
                .to_owned();
            let ips = self.get(&p("private-ipv4s")).await?;
            let list: Vec<String> = serde_json::from_str(ips.trim()).map_err(|_| {
                self.garbage(&p("private-ipv4s"), &ips, "a JSON array of addresses")
            })?;
            let mut private_ipv4s = Vec::new();
            for ip in &list {
                private_ipv4s.push(
                    ip.parse()
                        .map_err(|_| self.garbage(&p("private-ipv4s"), ip, "an IPv4 address"))?,
                );
            }
            let gw = self.get(&p("gateway")).await?;
            let gateway = gw
                .trim()
                .parse()
                .map_err(|_| self.garbage(&p("gateway"), &gw, "an IPv4 address"))?;
            let cidr = self.get(&p("vswitch-cidr-block")).await?;
            let vswitch: Ipv4Net = cidr
                .trim()
                .parse()
                .map_err(|_| self.garbage(&p("vswitch-cidr-block"), &cidr, "a CIDR block"))?;
            let primary = mac == primary_mac;
            nics.push(Nic {
                eip: eip.filter(|_| primary),
                primary,
                mac,
                interface_id,
                private_ipv4s,
                gateway,
                vswitch,
            });
        }
        Ok(nics)
    }
}

impl Metadata {
    /// The instance's region and id.
    pub async fn instance(&self) -> Result<(String, String), MetadataError> {
        let region = self.get("region-id").await?.trim().to_owned();
        let id = self.get("instance-id").await?.trim().to_owned();
        Ok((region, id))
    }

    /// The instance type (e.g. `ecs.g7.large`).
    pub async fn instance_type(&self) -> Result<String, MetadataError> {
        Ok(self.get("instance/instance-type").await?.trim().to_owned())
    }

    /// The temporary credentials of the instance's RAM role (`role`, or the first listed).
    pub async fn ram_credentials(&self, role: Option<&str>) -> Result<Credentials, MetadataError> {
        self.role_document(
            "ram/security-credentials/",
            role,
            "RAM role credentials (JSON)",
            Credentials::from_ram_role,
        )
        .await
    }
}

/// Host orientation's mappings from the metadata: the primary NIC's EIP <-> its primary
/// address (the first of `private-ipv4s`).
pub fn mappings(nics: &[Nic]) -> Vec<MappingConfig> {
    nics.iter()
        .filter_map(|n| {
            Some(MappingConfig {
                public: n.eip?.into(),
                private: (*n.private_ipv4s.first()?).into(),
            })
        })
        .collect()
}

/// The NICs whose addresses are steered: the secondary ones, via their vSwitch's gateway.
pub fn secondaries(nics: &[Nic]) -> impl Iterator<Item = super::nic::Secondary<'_>> {
    nics.iter()
        .filter(|n| !n.primary)
        .map(|n| super::nic::Secondary {
            mac: &n.mac,
            addresses: &n.private_ipv4s,
            gateway: n.gateway,
            subnet: n.vswitch,
        })
}

#[cfg(test)]
mod tests {

    /// A metadata service on loopback that hands out a token and answers every GET with
    /// `body`, for `requests` requests.
    fn serve(body: &'static str, requests: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let answer = if req.starts_with(b"PUT") {
                    "token"
                } else {
                    body
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn a_refused_credentials_document_is_never_echoed() {
        let doc = r#"{"Code": "Failed", "AccessKeyId": "STS.id", "AccessKeySecret": "TOPSECRETvalue", "SecurityToken": "tok", "Expiration": "2026-12-04T00:00:00Z"}"#;
        let endpoint = serve(doc, 2);
        let md = Metadata::new(&endpoint, std::time::Duration::from_secs(5)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(md.ram_credentials(Some("role")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Failed"), "{err}");
        assert!(
            !err.contains("TOPSECRET") && !err.contains("STS.id"),
            "{err}"
        );
    }

    use super::*;

    #[test]
    fn signature_matches_alibaba_clouds_published_example() {
        let params: BTreeMap<String, String> = [
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("AccessKeyId", "testid"),
            ("Version", "2014-05-26"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            sign_v1("GET", &params, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    #[test]
    fn percent_encoding_follows_the_openapi_rules() {
        assert_eq!(percent_encode("a b*c~d/e"), "a%20b%2Ac~d%2Fe");
    }
}
