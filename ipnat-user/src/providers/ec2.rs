//! The EC2 Query API: `DescribeNetworkInterfaces` (version 2016-11-15), signed with SigV4 by
//! the official `aws-sigv4` crate, every page (`NextToken`) or an error.
//!
//! What it is for: a gateway that translates for other instances. The cloud binds each EIP to
//! one of the gateway's own private addresses (the metadata says which); a tag on a backend's
//! NIC (`backend_tag`, value: the EIP) says which backend that EIP serves. The mapping is then
//! the gateway's address <-> the backend NIC's primary private address. The same call on the
//! gateway's own NICs tells whether the source/destination check is off, without which the
//! VPC drops what the gateway forwards.
//!
//! The instance metadata is read with ipnat's own IMDSv2 client rather than `aws-config`'s:
//! the same client serves Alibaba Cloud's metadata, and `aws-config` would bring the SDK's
//! whole configuration chain for four GETs.
//!
//! Credentials: the config's keys, else the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the instance profile's role from the
//! metadata (`iam/security-credentials/<role>`).

use std::{net::Ipv4Addr, time::Duration, time::SystemTime};

use aws_credential_types::Credentials;

use super::client::{Api, ApiError, ApiHttp, Assign, Pages};
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};

/// The API version whose XML this module reads.
pub const EC2_VERSION: &str = "2016-11-15";
/// NICs asked for per page (the API allows 5 to 1000).
const PAGE_SIZE: usize = 1000;

/// From the environment, if both variables are set.
pub fn credentials_from_env() -> Option<Credentials> {
    let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
    Some(Credentials::new(
        id,
        secret,
        std::env::var("AWS_SESSION_TOKEN").ok(),
        None,
        "environment",
    ))
}

/// One NIC as DescribeNetworkInterfaces describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Nic {
    pub id: String,
    pub mac: String,
    /// The instance it is attached to, if any.
    pub instance_id: Option<String>,
    pub subnet_id: String,
    pub vpc_id: String,
    pub source_dest_check: bool,
    /// Every private address (primary first), with the EIP associated with it.
    pub addresses: Vec<(Ipv4Addr, Option<Ipv4Addr>)>,
    /// (key, value)
    pub tags: Vec<(String, String)>,
}

pub struct Ec2 {
    http: ApiHttp,
    region: String,
    creds: Credentials,
}

/// `application/x-www-form-urlencoded` value encoding (RFC 3986 unreserved left alone).
fn form_encode(s: &str) -> String {
    super::client::percent_encode(s)
}

impl Ec2 {
    pub fn new(
        endpoint: &str,
        region: &str,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            http: ApiHttp::new(Api::Ec2, endpoint, timeout)?,
            region: region.to_owned(),
            creds,
        })
    }

    /// Calls `action` (POST, form body, SigV4 in the headers); the parsed response document.
    async fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, ApiError> {
        let mut body = format!("Action={action}&Version={EC2_VERSION}");
        for (k, v) in params {
            body.push_str(&format!("&{}={}", form_encode(k), form_encode(v)));
        }
        let url = format!("{}/", self.http.endpoint);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let identity = self.creds.clone().into();
        let settings = SigningSettings::default();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| ApiError::Sign(e.to_string()))?
            .into();
        let headers = [("content-type", content_type)];
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| ApiError::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| ApiError::Sign(e.to_string()))?
            .into_parts();
        let mut req = self
            .http
            .client
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let (status, text) = self
            .http
            .send(req, &format!("{url}?Action={action}"))
            .await?;
        if status != 200 {
            return Err(api_error(action, status, &text));
        }
        Ok(text)
    }

    /// Every NIC matching `filters` (name, values), all pages or an error.
    pub async fn network_interfaces(
        &self,
        filters: &[(&str, Vec<String>)],
    ) -> Result<Vec<Ec2Nic>, ApiError> {
        const ACTION: &str = "DescribeNetworkInterfaces";
        let garbage = |why| self.http.garbage(ACTION, why);
        let mut params = vec![("MaxResults".to_owned(), PAGE_SIZE.to_string())];
        for (i, (name, values)) in filters.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), (*name).to_owned()));
            for (j, v) in values.iter().enumerate() {
                params.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
            }
        }
        // Every page by NextToken (absent on the last); a token or a NIC seen before means a
        // page came twice: an error, never a partial or doubled table.
        let mut nics: Vec<Ec2Nic> = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::default();
        for page in 1usize.. {
            let mut p = params.clone();
            if let Some(t) = &token {
                p.push(("NextToken".into(), t.clone()));
            }
            let text = self.call(ACTION, &p).await?;
            let (items, next) = parse_nics(&text).map_err(garbage)?;
            for nic in items {
                pages.item(page, &nic.id).map_err(garbage)?;
                nics.push(nic);
            }
            token = pages.next(next.as_deref()).map_err(garbage)?;
            if token.is_none() {
                break;
            }
        }
        Ok(nics)
    }
}

/// A mapping the EC2 API calls for on a gateway, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backend {
    pub mapping: crate::config::MappingConfig,
    /// The EIP the cloud translates to `mapping.public`.
    pub eip: Ipv4Addr,
    /// The backend's NIC, whose tag names the EIP.
    pub nic: String,
}

/// What a gateway should map, from the EC2 API: the backends, and what looks wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayView {
    pub backends: Vec<Backend>,
    pub warnings: Vec<String>,
}

/// An EC2 client for this instance's region, with the configured credentials (see the module
/// documentation), and who the instance is.
pub async fn client(
    imds: &super::aws::Imds,
    cfg: &crate::config::AwsConfig,
    timeout: Duration,
) -> Result<(Ec2, super::aws::Identity), ApiError> {
    let creds = match (&cfg.access_key_id, &cfg.secret_access_key) {
        (Some(id), Some(secret)) => Credentials::new(id, secret, None, None, "config"),
        _ => match credentials_from_env() {
            Some(c) => c,
            None => imds.role_credentials().await.map_err(|e| match e {
                super::client::MetadataError::Status { status: 404, .. } => {
                    ApiError::NoCredentials(Api::Ec2)
                }
                e => e.into(),
            })?,
        },
    };
    let id = imds.identity().await?;
    let endpoint = cfg
        .api_endpoint
        .clone()
        .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", id.region));
    Ok((Ec2::new(&endpoint, &id.region, creds, timeout)?, id))
}

/// Reads the backends of this gateway (see the module documentation). `nics` are the
/// gateway's own NICs from the metadata, with their EIP associations.
pub async fn gateway_backends(
    imds: &super::aws::Imds,
    nics: &[super::aws::Nic],
    cfg: &crate::config::AwsConfig,
    timeout: Duration,
) -> Result<GatewayView, ApiError> {
    let (ec2, id) = client(imds, cfg, timeout).await?;
    let mut view = GatewayView::default();
    let own = ec2
        .network_interfaces(&[("attachment.instance-id", vec![id.instance_id.clone()])])
        .await?;
    for n in own.iter().filter(|n| n.source_dest_check) {
        view.warnings.push(format!(
            "the source/destination check is on for {} (this gateway's NIC): the VPC drops what it forwards; turn it off (aws ec2 modify-network-interface-attribute --network-interface-id {} --no-source-dest-check)",
            n.id, n.id
        ));
    }
    let tagged = ec2
        .network_interfaces(&[
            ("vpc-id", vec![id.vpc_id.clone()]),
            ("tag-key", vec![cfg.backend_tag.clone()]),
        ])
        .await?;
    let associated: std::collections::HashMap<Ipv4Addr, Ipv4Addr> = nics
        .iter()
        .flat_map(|n| n.associations.iter().copied())
        .collect();
    for b in tagged {
        if b.instance_id.as_deref() == Some(id.instance_id.as_str()) {
            continue;
        }
        let value = b
            .tags
            .iter()
            .find(|(k, _)| *k == cfg.backend_tag)
            .map(|(_, v)| v.trim())
            .unwrap_or("");
        let Ok(eip) = value.parse::<Ipv4Addr>() else {
            view.warnings.push(format!(
                "{}: tag {} = {value:?} is not an EIP",
                b.id, cfg.backend_tag
            ));
            continue;
        };
        let Some(&(private, _)) = b.addresses.first() else {
            view.warnings.push(format!("{}: no private address", b.id));
            continue;
        };
        match associated.get(&eip) {
            Some(&public) => view.backends.push(Backend {
                mapping: crate::config::MappingConfig {
                    public: public.into(),
                    private: private.into(),
                },
                eip,
                nic: b.id,
            }),
            None => view.warnings.push(format!(
                "{}: tag {} names {eip}, which is not associated with an address of this gateway",
                b.id, cfg.backend_tag
            )),
        }
    }
    view.backends.sort_by_key(|b| b.mapping.public);
    Ok(view)
}

impl Ec2 {
    /// One NIC by id.
    pub async fn network_interface(&self, id: &str) -> Result<Ec2Nic, ApiError> {
        self.network_interfaces(&[("network-interface-id", vec![id.to_owned()])])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::not_found(
                    Api::Ec2,
                    "DescribeNetworkInterfaces",
                    400,
                    "InvalidNetworkInterfaceID.NotFound",
                    format!("The networkInterface ID '{id}' does not exist"),
                )
            })
    }

    /// The private IPv4 addresses an instance type allows per NIC (`DescribeInstanceTypes`).
    pub async fn ipv4_per_interface(&self, instance_type: &str) -> Result<u32, ApiError> {
        const ACTION: &str = "DescribeInstanceTypes";
        let text = self
            .call(
                ACTION,
                &[("InstanceType.1".into(), instance_type.to_owned())],
            )
            .await?;
        let garbage = |why| self.http.garbage(ACTION, why);
        let doc = roxmltree::Document::parse(&text).map_err(|e| garbage(e.to_string()))?;
        doc.descendants()
            .find(|n| n.has_tag_name("ipv4AddressesPerInterface"))
            .and_then(|n| n.text())
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| garbage(format!("no ipv4AddressesPerInterface for {instance_type}")))
    }

    /// AssignPrivateIpAddresses; the addresses assigned.
    pub async fn assign_private_ips(
        &self,
        nic: &str,
        what: &Assign,
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        const ACTION: &str = "AssignPrivateIpAddresses";
        let mut p = vec![("NetworkInterfaceId".to_owned(), nic.to_owned())];
        p.extend(what.params("SecondaryPrivateIpAddressCount", "PrivateIpAddress"));
        let text = self.call(ACTION, &p).await?;
        let garbage = |why| self.http.garbage(ACTION, why);
        let doc = roxmltree::Document::parse(&text).map_err(|e| garbage(e.to_string()))?;
        let mut out = Vec::new();
        for n in doc
            .descendants()
            .filter(|n| n.has_tag_name("privateIpAddress"))
        {
            let t = n.text().unwrap_or("").trim();
            out.push(
                t.parse()
                    .map_err(|_| garbage(format!("{t:?} is not an IPv4 address")))?,
            );
        }
        Ok(out)
    }

    /// AssignPrivateIpAddresses with AllowReassignment: `addresses` move to `nic` from
    /// whichever NIC of the subnet holds them (an EIP associated with one moves with it). The
    /// move is asynchronous: the answer says it was accepted, the metadata when it is done.
    pub async fn reassign_private_ips(
        &self,
        nic: &str,
        addresses: &[Ipv4Addr],
    ) -> Result<(), ApiError> {
        let mut p = vec![
            ("NetworkInterfaceId".to_owned(), nic.to_owned()),
            ("AllowReassignment".to_owned(), "true".to_owned()),
        ];
        p.extend(Assign::List(addresses.to_vec()).params("", "PrivateIpAddress"));
        self.call("AssignPrivateIpAddresses", &p).await?;
        Ok(())
    }

    /// DescribeAddresses for one EIP by its allocation id: its public address and what it is
    /// associated with now.
    pub async fn address(&self, allocation_id: &str) -> Result<Ec2Address, ApiError> {
        const ACTION: &str = "DescribeAddresses";
        let text = self
            .call(
                ACTION,
                &[("AllocationId.1".to_owned(), allocation_id.to_owned())],
            )
            .await?;
        let found = parse_addresses(&text).map_err(|why| self.http.garbage(ACTION, why))?;
        found
            .into_iter()
            .find(|a| a.allocation_id == allocation_id)
            .ok_or_else(|| {
                self.http
                    .garbage(ACTION, format!("the answer does not list {allocation_id}"))
            })
    }

    /// AssociateAddress with `AllowReassociation`: the EIP `allocation_id` goes to `private`
    /// on `nic`, from wherever it was.
    pub async fn associate_address(
        &self,
        allocation_id: &str,
        nic: &str,
        private: Ipv4Addr,
    ) -> Result<(), ApiError> {
        self.call(
            "AssociateAddress",
            &[
                ("AllocationId".to_owned(), allocation_id.to_owned()),
                ("NetworkInterfaceId".to_owned(), nic.to_owned()),
                ("PrivateIpAddress".to_owned(), private.to_string()),
                ("AllowReassociation".to_owned(), "true".to_owned()),
            ],
        )
        .await?;
        Ok(())
    }

    /// ReplaceRoute: `destination` in route table `table` goes to `nic`.
    pub async fn replace_route(
        &self,
        table: &str,
        destination: ipnet::Ipv4Net,
        nic: &str,
    ) -> Result<(), ApiError> {
        self.call(
            "ReplaceRoute",
            &[
                ("RouteTableId".to_owned(), table.to_owned()),
                ("DestinationCidrBlock".to_owned(), destination.to_string()),
                ("NetworkInterfaceId".to_owned(), nic.to_owned()),
            ],
        )
        .await?;
        Ok(())
    }

    /// UnassignPrivateIpAddresses.
    pub async fn unassign_private_ips(
        &self,
        nic: &str,
        addresses: &[Ipv4Addr],
    ) -> Result<(), ApiError> {
        let mut p = vec![("NetworkInterfaceId".to_owned(), nic.to_owned())];
        p.extend(Assign::List(addresses.to_vec()).params("", "PrivateIpAddress"));
        self.call("UnassignPrivateIpAddresses", &p).await?;
        Ok(())
    }
}

/// The error an EC2 error document describes.
fn api_error(action: &str, status: u16, text: &str) -> ApiError {
    let doc = roxmltree::Document::parse(text);
    let find = |name: &str| {
        doc.as_ref()
            .ok()
            .and_then(|d| d.descendants().find(|n| n.has_tag_name(name)))
            .and_then(|n| n.text())
            .unwrap_or("")
            .to_owned()
    };
    let code = find("Code");
    if code.is_empty() {
        return ApiError::Garbage {
            api: Api::Ec2,
            action: action.to_owned(),
            why: format!(
                "HTTP {status}: {:?}",
                text.chars().take(80).collect::<String>()
            ),
        };
    }
    let hint = match code.as_str() {
        "SignatureDoesNotMatch" | "AuthFailure" | "InvalidClientTokenId" => {
            ": check the access key, its secret and the clock"
        }
        "RequestLimitExceeded" | "Throttling" => ": throttled, retried at the next interval",
        "UnauthorizedOperation" => {
            ": the IAM policy must allow this action (see the README's list of the calls ipnat makes)"
        }
        _ => "",
    };
    ApiError::Api {
        api: Api::Ec2,
        action: action.to_owned(),
        status,
        code,
        message: find("Message"),
        request_id: {
            let id = find("RequestID");
            if id.is_empty() { find("requestId") } else { id }
        },
        hint,
    }
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text_of<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name).and_then(|c| c.text()).map(str::trim)
}

/// The NICs of one DescribeNetworkInterfaces page, and its NextToken.
/// An EIP as DescribeAddresses describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Address {
    pub allocation_id: String,
    pub public: Ipv4Addr,
    /// The NIC and private address it is associated with, if any.
    pub association: Option<(String, Ipv4Addr)>,
}

/// A DescribeAddresses response document.
pub fn parse_addresses(text: &str) -> Result<Vec<Ec2Address>, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !root.has_tag_name("DescribeAddressesResponse") {
        return Err(format!("root element {:?}", root.tag_name().name()));
    }
    let addr = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))
    };
    let set = child(root, "addressesSet").ok_or("no addressesSet")?;
    let mut out = Vec::new();
    for item in set.children().filter(|c| c.has_tag_name("item")) {
        let allocation_id = text_of(item, "allocationId")
            .ok_or("an address without allocationId")?
            .to_owned();
        let public = addr(text_of(item, "publicIp").ok_or("an address without publicIp")?)?;
        let association = match (
            text_of(item, "networkInterfaceId"),
            text_of(item, "privateIpAddress"),
        ) {
            (Some(nic), Some(p)) if !nic.is_empty() => Some((nic.to_owned(), addr(p)?)),
            _ => None,
        };
        out.push(Ec2Address {
            allocation_id,
            public,
            association,
        });
    }
    Ok(out)
}

pub fn parse_nics(text: &str) -> Result<(Vec<Ec2Nic>, Option<String>), String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !root.has_tag_name("DescribeNetworkInterfacesResponse") {
        return Err(format!("root element {:?}", root.tag_name().name()));
    }
    let addr = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))
    };
    let set = child(root, "networkInterfaceSet").ok_or("no networkInterfaceSet")?;
    let mut nics = Vec::new();
    for item in set.children().filter(|c| c.has_tag_name("item")) {
        let id = text_of(item, "networkInterfaceId").ok_or("a NIC without networkInterfaceId")?;
        let mac = text_of(item, "macAddress")
            .unwrap_or("")
            .to_ascii_lowercase();
        let instance_id = child(item, "attachment")
            .and_then(|a| text_of(a, "instanceId"))
            .map(str::to_owned);
        let source_dest_check = text_of(item, "sourceDestCheck") != Some("false");
        let subnet_id = text_of(item, "subnetId").unwrap_or("").to_owned();
        let vpc_id = text_of(item, "vpcId").unwrap_or("").to_owned();
        let mut addresses = Vec::new();
        if let Some(ips) = child(item, "privateIpAddressesSet") {
            for ip in ips.children().filter(|c| c.has_tag_name("item")) {
                let private = addr(
                    text_of(ip, "privateIpAddress")
                        .ok_or("an address item without privateIpAddress")?,
                )?;
                let eip = match child(ip, "association").and_then(|a| text_of(a, "publicIp")) {
                    Some(p) if !p.is_empty() => Some(addr(p)?),
                    _ => None,
                };
                let primary = text_of(ip, "primary") == Some("true");
                if primary {
                    addresses.insert(0, (private, eip));
                } else {
                    addresses.push((private, eip));
                }
            }
        }
        let mut tags = Vec::new();
        if let Some(ts) = child(item, "tagSet") {
            for t in ts.children().filter(|c| c.has_tag_name("item")) {
                tags.push((
                    text_of(t, "key").unwrap_or("").to_owned(),
                    text_of(t, "value").unwrap_or("").to_owned(),
                ));
            }
        }
        nics.push(Ec2Nic {
            id: id.to_owned(),
            mac,
            instance_id,
            subnet_id,
            vpc_id,
            source_dest_check,
            addresses,
            tags,
        });
    }
    let next = text_of(root, "nextToken")
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok((nics, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>fc45294c-ab00-4ad7-a7d1-2c13b4b3aa11</requestId>
    <networkInterfaceSet>
        <item>
            <networkInterfaceId>eni-0f7db2a1</networkInterfaceId>
            <subnetId>subnet-7c5b4115</subnetId>
            <vpcId>vpc-3c313154</vpcId>
            <macAddress>02:74:B0:72:79:61</macAddress>
            <privateIpAddress>10.0.1.20</privateIpAddress>
            <sourceDestCheck>false</sourceDestCheck>
            <attachment><instanceId>i-1</instanceId><deviceIndex>0</deviceIndex></attachment>
            <privateIpAddressesSet>
                <item><privateIpAddress>10.0.1.21</privateIpAddress><primary>false</primary></item>
                <item>
                    <privateIpAddress>10.0.1.20</privateIpAddress><primary>true</primary>
                    <association><publicIp>3.3.3.3</publicIp><ipOwnerId>amazon</ipOwnerId></association>
                </item>
            </privateIpAddressesSet>
            <tagSet><item><key>ipnat:eip</key><value>3.3.3.4</value></item></tagSet>
        </item>
    </networkInterfaceSet>
    <nextToken>page-2</nextToken>
</DescribeNetworkInterfacesResponse>"#;

    #[test]
    fn parses_the_documented_xml() {
        let (nics, next) = parse_nics(PAGE).unwrap();
        assert_eq!(next.as_deref(), Some("page-2"));
        let n = &nics[0];
        assert_eq!(n.mac, "02:74:b0:72:79:61");
        assert_eq!(n.instance_id.as_deref(), Some("i-1"));
        assert!(!n.source_dest_check);
        assert_eq!(
            n.addresses,
            vec![
                (
                    "10.0.1.20".parse().unwrap(),
                    Some("3.3.3.3".parse().unwrap())
                ),
                ("10.0.1.21".parse().unwrap(), None),
            ]
        );
        assert_eq!(n.tags, vec![("ipnat:eip".into(), "3.3.3.4".into())]);
        assert!(parse_nics("<html/>").is_err());
        assert!(parse_nics("not xml").is_err());
    }

    #[test]
    fn parses_the_documented_describe_addresses_xml() {
        let doc = r#"<DescribeAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
   <requestId>f7de5e98-491a-4c19-a92d-908d6EXAMPLE</requestId>
   <addressesSet>
      <item>
         <publicIp>203.0.113.41</publicIp>
         <allocationId>eipalloc-08229861</allocationId>
         <domain>vpc</domain>
         <instanceId>i-0598c7d356eba48d7</instanceId>
         <associationId>eipassoc-f0229899</associationId>
         <networkInterfaceId>eni-ef229886</networkInterfaceId>
         <networkInterfaceOwnerId>053230519467</networkInterfaceOwnerId>
         <privateIpAddress>10.0.0.228</privateIpAddress>
      </item>
      <item>
         <publicIp>198.51.100.2</publicIp>
         <allocationId>eipalloc-0000002</allocationId>
         <domain>vpc</domain>
      </item>
   </addressesSet>
</DescribeAddressesResponse>"#;
        let a = parse_addresses(doc).unwrap();
        assert_eq!(
            a,
            vec![
                Ec2Address {
                    allocation_id: "eipalloc-08229861".into(),
                    public: "203.0.113.41".parse().unwrap(),
                    association: Some(("eni-ef229886".into(), "10.0.0.228".parse().unwrap())),
                },
                Ec2Address {
                    allocation_id: "eipalloc-0000002".into(),
                    public: "198.51.100.2".parse().unwrap(),
                    association: None,
                },
            ]
        );
        assert!(parse_addresses(PAGE).is_err(), "another action's answer");
        assert!(
            parse_addresses("<DescribeAddressesResponse><addressesSet><item><publicIp>x</publicIp><allocationId>a</allocationId></item></addressesSet></DescribeAddressesResponse>").is_err()
        );
    }

    #[test]
    fn error_documents_name_their_code() {
        let e = api_error(
            "DescribeNetworkInterfaces",
            503,
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>r-1</RequestID></Response>",
        );
        let text = e.to_string();
        assert!(
            text.contains(
                "HTTP 503, RequestLimitExceeded: Request limit exceeded. (request r-1): throttled"
            ),
            "{text}"
        );
        assert!(matches!(
            api_error("X", 500, "<html>"),
            ApiError::Garbage { api: Api::Ec2, .. }
        ));
    }
}
