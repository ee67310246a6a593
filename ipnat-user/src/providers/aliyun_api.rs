//! Alibaba Cloud's OpenAPI (RPC style, signature version 1): what the metadata cannot say.
//!
//! The ECS metadata knows only the primary NIC's EIP (`eipv4`). ECS `DescribeNetworkInterfaces`
//! (version 2014-05-26) lists every NIC of the instance with, for each private address, the
//! EIP associated with it (`PrivateIpSets.PrivateIpSet[].AssociatedPublicIp.PublicIpAddress`).
//! That is all the mapping needs, so VPC `DescribeEipAddresses` is not called.
//!
//! Credentials: the config's keys, else the environment (`ALIBABA_CLOUD_ACCESS_KEY_ID`,
//! `ALIBABA_CLOUD_ACCESS_KEY_SECRET`, `ALIBABA_CLOUD_SECURITY_TOKEN`), else the instance's RAM
//! role from the metadata (`ram/security-credentials/<role>`, with its `SecurityToken`).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use super::{
    aliyun::{Credentials, sign_v1},
    client::{Api, ApiError, ApiHttp, Assign, Pages, percent_encode},
};

/// The ECS API version whose response shapes this module reads.
pub const ECS_VERSION: &str = "2014-05-26";
/// The VPC OpenAPI's version (HaVips).
pub const VPC_VERSION: &str = "2016-04-28";
/// NICs asked for per page (the API's maximum for this call is 500).
const PAGE_SIZE: usize = 100;

/// One NIC as DescribeNetworkInterfaces describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiNic {
    pub id: String,
    pub mac: String,
    /// The instance it is attached to, if any.
    pub instance_id: Option<String>,
    /// Every private address, with the EIP associated with it.
    pub addresses: Vec<(Ipv4Addr, Option<Ipv4Addr>)>,
}

/// A client of one RPC-style product endpoint, e.g. `https://ecs.cn-hangzhou.aliyuncs.com`.
pub struct OpenApi {
    http: ApiHttp,
    version: &'static str,
    creds: Credentials,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A value used once per request (the service refuses a repeated nonce).
fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

impl OpenApi {
    pub fn new(
        endpoint: &str,
        version: &'static str,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            http: ApiHttp::new(Api::Ecs, endpoint, timeout)?,
            version,
            creds,
        })
    }

    /// The signed query string of `action` with `params`.
    pub fn signed_query(&self, action: &str, params: &[(&str, String)]) -> String {
        let mut all: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        for (k, v) in [
            ("Action", action.to_owned()),
            ("Format", "JSON".to_owned()),
            ("Version", self.version.to_owned()),
            ("AccessKeyId", self.creds.access_key_id.clone()),
            ("SignatureMethod", "HMAC-SHA1".to_owned()),
            ("SignatureVersion", "1.0".to_owned()),
            ("SignatureNonce", nonce()),
            (
                "Timestamp",
                humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            ),
        ] {
            all.insert(k.to_owned(), v);
        }
        if let Some(t) = &self.creds.security_token {
            all.insert("SecurityToken".into(), t.clone());
        }
        let signature = sign_v1("GET", &all, &self.creds.access_key_secret);
        all.insert("Signature".into(), signature);
        all.iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Calls `action`; the parsed JSON body, or the service's error.
    pub async fn call(
        &self,
        action: &str,
        params: &[(&str, String)],
    ) -> Result<serde_json::Value, ApiError> {
        let endpoint = &self.http.endpoint;
        let url = format!("{endpoint}/?{}", self.signed_query(action, params));
        let req = self.http.client.get(&url);
        let (status, text) = self
            .http
            .send(req, &format!("{endpoint}/?Action={action}"))
            .await?;
        let garbage = |why| self.http.garbage(action, why);
        let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            garbage(format!(
                "HTTP {status}, {e}: {:?}",
                text.chars().take(80).collect::<String>()
            ))
        })?;
        if status != 200 {
            let field = |k: &str| body[k].as_str().unwrap_or("").to_owned();
            let code = field("Code");
            let hint = match code.as_str() {
                "SignatureDoesNotMatch" | "InvalidAccessKeyId.NotFound" => {
                    ": check the access key and its secret"
                }
                c if c.starts_with("Throttling") => ": throttled, retried at the next interval",
                "Forbidden.RAM" | "Forbidden" => {
                    ": the RAM policy must allow ecs:DescribeNetworkInterfaces"
                }
                _ => "",
            };
            return Err(ApiError::Api {
                api: Api::Ecs,
                action: action.to_owned(),
                status,
                code,
                message: field("Message"),
                request_id: field("RequestId"),
                hint,
            });
        }
        Ok(body)
    }

    /// Every NIC of `instance_id` in `region`, all pages or an error: never a partial list.
    pub async fn network_interfaces(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Vec<ApiNic>, ApiError> {
        self.network_interfaces_by(region, ("InstanceId", instance_id.to_owned()))
            .await
    }

    /// One NIC by id.
    pub async fn network_interface(&self, region: &str, id: &str) -> Result<ApiNic, ApiError> {
        self.network_interfaces_by(region, ("NetworkInterfaceId.1", id.to_owned()))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::not_found(
                    Api::Ecs,
                    "DescribeNetworkInterfaces",
                    404,
                    "InvalidEniId.NotFound",
                    format!("{id} does not exist"),
                )
            })
    }

    /// The private addresses an instance type allows per NIC (`DescribeInstanceTypes`,
    /// `EniPrivateIpAddressQuantity`).
    pub async fn ips_per_eni(&self, instance_type: &str) -> Result<u32, ApiError> {
        const ACTION: &str = "DescribeInstanceTypes";
        let body = self
            .call(ACTION, &[("InstanceTypes.1", instance_type.to_owned())])
            .await?;
        body["InstanceTypes"]["InstanceType"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["InstanceTypeId"] == instance_type))
            .and_then(|t| t["EniPrivateIpAddressQuantity"].as_u64())
            .map(|n| n as u32)
            .ok_or_else(|| {
                self.http.garbage(
                    ACTION,
                    format!("no EniPrivateIpAddressQuantity for {instance_type}"),
                )
            })
    }

    /// AssignPrivateIpAddresses; the addresses assigned.
    pub async fn assign_private_ips(
        &self,
        region: &str,
        nic: &str,
        what: &Assign,
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        const ACTION: &str = "AssignPrivateIpAddresses";
        let mut p = vec![
            ("RegionId".to_owned(), region.to_owned()),
            ("NetworkInterfaceId".to_owned(), nic.to_owned()),
        ];
        p.extend(what.params("SecondaryPrivateIpAddressCount", "PrivateIpAddress"));
        let params: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let body = self.call(ACTION, &params).await?;
        let list = body["AssignedPrivateIpAddressesSet"]["PrivateIpSet"]["PrivateIpAddress"]
            .as_array()
            .ok_or_else(|| {
                self.http.garbage(
                    ACTION,
                    "no AssignedPrivateIpAddressesSet.PrivateIpSet.PrivateIpAddress".into(),
                )
            })?;
        list.iter()
            .map(|a| {
                a.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    self.http
                        .garbage(ACTION, format!("{a} is not an IPv4 address"))
                })
            })
            .collect()
    }

    /// UnassignPrivateIpAddresses.
    pub async fn unassign_private_ips(
        &self,
        region: &str,
        nic: &str,
        addresses: &[Ipv4Addr],
    ) -> Result<(), ApiError> {
        let mut p = vec![
            ("RegionId".to_owned(), region.to_owned()),
            ("NetworkInterfaceId".to_owned(), nic.to_owned()),
        ];
        p.extend(Assign::List(addresses.to_vec()).params("", "PrivateIpAddress"));
        let params: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.call("UnassignPrivateIpAddresses", &params).await?;
        Ok(())
    }

    async fn network_interfaces_by(
        &self,
        region: &str,
        filter: (&str, String),
    ) -> Result<Vec<ApiNic>, ApiError> {
        const ACTION: &str = "DescribeNetworkInterfaces";
        let garbage = |why| self.http.garbage(ACTION, why);
        // Paged by NextToken (PageNumber is slated for removal): the first request carries
        // only MaxResults, each next one the previous answer's NextToken; an empty or absent
        // NextToken ends the list. A repeated token or NIC, an empty page that promises more,
        // or a count short of TotalCount (where given) is an error: never a partial table.
        let mut nics: Vec<ApiNic> = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::default();
        let mut total = None;
        for page in 1usize.. {
            let mut params = vec![
                ("RegionId", region.to_owned()),
                (filter.0, filter.1.clone()),
                ("MaxResults", PAGE_SIZE.to_string()),
            ];
            if let Some(t) = &token {
                params.push(("NextToken", t.clone()));
            }
            let body = self.call(ACTION, &params).await?;
            let set = body["NetworkInterfaceSets"]["NetworkInterfaceSet"]
                .as_array()
                .ok_or_else(|| garbage("no NetworkInterfaceSets.NetworkInterfaceSet".into()))?;
            for n in set {
                let nic = parse_nic(n).map_err(garbage)?;
                pages.item(page, &nic.id).map_err(garbage)?;
                nics.push(nic);
            }
            if let Some(t) = body["TotalCount"].as_u64() {
                total = Some(t as usize);
            }
            token = pages.next(body["NextToken"].as_str()).map_err(garbage)?;
            match &token {
                None => break,
                Some(_) if set.is_empty() => {
                    return Err(garbage(format!(
                        "page {page} is empty but has a NextToken, after {} NICs",
                        nics.len()
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(total) = total.filter(|&t| t != nics.len()) {
            return Err(garbage(format!(
                "{} NICs on the pages but TotalCount {total} (a page is missing or short)",
                nics.len()
            )));
        }
        Ok(nics)
    }
}

/// The configured credentials (see the module documentation): the config's keys, else the
/// environment, else the instance's RAM role.
pub async fn credentials(
    md: &super::aliyun::Metadata,
    cfg: &crate::config::AliyunConfig,
) -> Result<Credentials, ApiError> {
    Ok(match (&cfg.access_key_id, &cfg.access_key_secret) {
        (Some(id), Some(secret)) => Credentials {
            access_key_id: id.clone(),
            access_key_secret: secret.clone(),
            security_token: None,
        },
        _ => match Credentials::from_env() {
            Some(c) => c,
            None => md
                .ram_credentials(cfg.ram_role.as_deref())
                .await
                .map_err(|e| match e {
                    super::client::MetadataError::Status { status: 404, .. } => {
                        ApiError::NoCredentials(Api::Ecs)
                    }
                    e => e.into(),
                })?,
        },
    })
}

/// An ECS OpenAPI client with the configured credentials (see the module documentation), and
/// the instance's region and id.
pub async fn client(
    md: &super::aliyun::Metadata,
    cfg: &crate::config::AliyunConfig,
    timeout: Duration,
) -> Result<(OpenApi, String, String), ApiError> {
    let creds = credentials(md, cfg).await?;
    let (region, instance) = md.instance().await?;
    let endpoint = cfg
        .api_endpoint
        .clone()
        .unwrap_or_else(|| format!("https://ecs-vpc.{region}.aliyuncs.com"));
    Ok((
        OpenApi::new(&endpoint, ECS_VERSION, creds, timeout)?,
        region,
        instance,
    ))
}

/// Host orientation's mappings from the OpenAPI: every private address of every NIC of this
/// instance with an EIP associated. Credentials as the module documentation says.
pub async fn eip_mappings(
    md: &super::aliyun::Metadata,
    cfg: &crate::config::AliyunConfig,
    timeout: Duration,
) -> Result<Vec<crate::config::MappingConfig>, ApiError> {
    let (api, region, instance) = client(md, cfg, timeout).await?;
    let nics = api.network_interfaces(&region, &instance).await?;
    Ok(nics
        .iter()
        .flat_map(|n| &n.addresses)
        .filter_map(|&(private, eip)| {
            Some(crate::config::MappingConfig {
                public: eip?.into(),
                private: private.into(),
            })
        })
        .collect())
}

fn parse_nic(n: &serde_json::Value) -> Result<ApiNic, String> {
    let text = |v: &serde_json::Value, k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("a NIC without {k}"))
    };
    let addr = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))
    };
    let mut addresses = Vec::new();
    let set = n["PrivateIpSets"]["PrivateIpSet"]
        .as_array()
        .ok_or("a NIC without PrivateIpSets.PrivateIpSet")?;
    for ip in set {
        let private = addr(&text(ip, "PrivateIpAddress")?)?;
        let eip = match ip["AssociatedPublicIp"]["PublicIpAddress"].as_str() {
            Some("") | None => None,
            Some(s) => Some(addr(s)?),
        };
        addresses.push((private, eip));
    }
    Ok(ApiNic {
        id: text(n, "NetworkInterfaceId")?,
        mac: text(n, "MacAddress")?.to_ascii_lowercase(),
        instance_id: n["InstanceId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let n: serde_json::Value = serde_json::from_str(
            r#"{"NetworkInterfaceId":"eni-1","MacAddress":"00:16:3E:00:00:01",
                "PrivateIpSets":{"PrivateIpSet":[
                  {"PrivateIpAddress":"10.0.1.20","Primary":true,
                   "AssociatedPublicIp":{"PublicIpAddress":"47.1.2.3","AllocationId":"eip-1"}},
                  {"PrivateIpAddress":"10.0.1.21","Primary":false,
                   "AssociatedPublicIp":{"PublicIpAddress":"","AllocationId":""}},
                  {"PrivateIpAddress":"10.0.1.22","Primary":false}]}}"#,
        )
        .unwrap();
        let nic = parse_nic(&n).unwrap();
        assert_eq!(nic.mac, "00:16:3e:00:00:01");
        assert_eq!(
            nic.addresses,
            vec![
                (
                    "10.0.1.20".parse().unwrap(),
                    Some("47.1.2.3".parse().unwrap())
                ),
                ("10.0.1.21".parse().unwrap(), None),
                ("10.0.1.22".parse().unwrap(), None),
            ]
        );
        let bad: serde_json::Value =
            serde_json::from_str(r#"{"NetworkInterfaceId":"eni-1","MacAddress":"m","PrivateIpSets":{"PrivateIpSet":[{"PrivateIpAddress":"x"}]}}"#)
                .unwrap();
        assert!(parse_nic(&bad).unwrap_err().contains("not an IPv4 address"));
    }

    #[test]
    fn ram_role_credentials() {
        let c = Credentials::from_ram_role(
            r#"{"AccessKeyId":"STS.a","AccessKeySecret":"s","Expiration":"2026-11-23T10:00:00Z","SecurityToken":"tok","LastUpdated":"x","Code":"Success"}"#,
        )
        .unwrap();
        assert_eq!(c.security_token.as_deref(), Some("tok"));
        assert!(Credentials::from_ram_role("<html>").is_err());
    }

    /// A client of an endpoint nobody listens on (port 1), with these credentials.
    fn api_on_port_1(id: &str, secret: &str, token: &str) -> OpenApi {
        let creds = Credentials {
            access_key_id: id.into(),
            access_key_secret: secret.into(),
            security_token: Some(token.into()),
        };
        OpenApi::new(
            "http://127.0.0.1:1",
            ECS_VERSION,
            creds,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn errors_never_show_the_signed_url() {
        // Nothing listens on port 1: a connection error, whose text must not carry the key,
        // the signature or the token.
        let api = api_on_port_1("LTAIsecretid", "s", "tok3n");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(api.call("DescribeNetworkInterfaces", &[]))
            .unwrap_err();
        let text = format!("{e} {e:?}");
        for secret in ["LTAIsecretid", "Signature", "tok3n"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("Action=DescribeNetworkInterfaces"), "{text}");
    }

    #[test]
    fn requests_are_signed_over_every_parameter() {
        let api = api_on_port_1("id", "secret", "tok");
        let q = api.signed_query(
            "DescribeNetworkInterfaces",
            &[("RegionId", "cn-hangzhou".into())],
        );
        let mut params: BTreeMap<String, String> = q
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let dec = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                };
                (dec(k), dec(v))
            })
            .collect();
        let sig = params.remove("Signature").unwrap();
        assert_eq!(sign_v1("GET", &params, "secret"), sig);
        assert_eq!(params["SecurityToken"], "tok");
        assert_eq!(params["Format"], "JSON");
        assert!(params["Timestamp"].ends_with('Z'));
    }
}
