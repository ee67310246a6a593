//! The EC2 API (Query, SigV4, XML), as its documentation describes it.

use super::*;

/// A NIC as the fake EC2 API holds it.
#[derive(Clone, Debug)]
pub struct FakeEc2Nic {
    pub id: String,
    pub mac: String,
    pub vpc: String,
    pub instance: Option<String>,
    pub source_dest_check: bool,
    /// Primary first: (private address, associated EIP).
    pub addresses: Vec<(std::net::Ipv4Addr, Option<std::net::Ipv4Addr>)>,
    pub tags: Vec<(String, String)>,
}

impl FakeEc2Nic {
    fn xml(&self) -> String {
        let ips: String = self
            .addresses
            .iter()
            .enumerate()
            .map(|(i, (p, e))| {
                let assoc = e.map_or(String::new(), |e| {
                    format!("<association><publicIp>{e}</publicIp><ipOwnerId>amazon</ipOwnerId></association>")
                });
                format!("<item><privateIpAddress>{p}</privateIpAddress><primary>{}</primary>{assoc}</item>", i == 0)
            })
            .collect();
        let tags: String = self
            .tags
            .iter()
            .map(|(k, v)| format!("<item><key>{k}</key><value>{v}</value></item>"))
            .collect();
        let attachment = self.instance.as_ref().map_or(String::new(), |i| {
            format!("<attachment><instanceId>{i}</instanceId><deviceIndex>0</deviceIndex><status>attached</status></attachment>")
        });
        format!(
            "<item><networkInterfaceId>{}</networkInterfaceId><vpcId>{}</vpcId><macAddress>{}</macAddress>\
             <privateIpAddress>{}</privateIpAddress><sourceDestCheck>{}</sourceDestCheck>{attachment}\
             <privateIpAddressesSet>{ips}</privateIpAddressesSet><tagSet>{tags}</tagSet></item>",
            self.id,
            self.vpc,
            self.mac,
            self.addresses
                .first()
                .map_or(String::new(), |a| a.0.to_string()),
            self.source_dest_check
        )
    }

    fn matches(&self, name: &str, values: &[String]) -> Option<bool> {
        Some(match name {
            "vpc-id" => values.contains(&self.vpc),
            "attachment.instance-id" => self.instance.as_ref().is_some_and(|i| values.contains(i)),
            "network-interface-id" => values.contains(&self.id),
            "tag-key" => self.tags.iter().any(|(k, _)| values.contains(k)),
            _ => return None,
        })
    }
}

/// A fake EC2 Query API serving DescribeNetworkInterfaces (2016-11-15), checking requests like
/// the real service: a known access key, the session token of temporary credentials, the
/// SigV4 signature over what was sent (recomputed with the official `aws-sigv4`), the region
/// of the credential scope; filters applied; answers in the documented XML and error shapes.
/// One NIC a page, with `NextToken`s, so that clients must follow them.
pub struct FakeEc2 {
    pub port: u16,
    pub nics: Arc<Mutex<Vec<FakeEc2Nic>>>,
    pub keys: Arc<Mutex<HashMap<String, AccessKey>>>,
    /// A canned answer for one page (1-based): (page, HTTP status, body).
    pub fail_page: Arc<Mutex<Option<(u64, u16, String)>>>,
    /// A page served wrong (see [`PageFault`]).
    pub page_fault: Arc<Mutex<Option<PageFault>>>,
    pub hang: Arc<AtomicBool>,
    /// Requests that passed the checks.
    pub calls: Arc<Mutex<usize>>,
    /// Instance type -> private addresses per NIC (DescribeInstanceTypes).
    pub types: Arc<Mutex<HashMap<String, u32>>>,
}

fn ec2_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fake-request</RequestID></Response>"
        ),
    )
}

impl FakeEc2 {
    pub fn start(ns: &Netns, region: &str) -> Self {
        let nics: Arc<Mutex<Vec<FakeEc2Nic>>> = Arc::default();
        let keys: Arc<Mutex<HashMap<String, AccessKey>>> = Arc::default();
        let fail_page: Arc<Mutex<Option<(u64, u16, String)>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new(0));
        let (n, k, f, c) = (nics.clone(), keys.clone(), fail_page.clone(), calls.clone());
        let page_fault: Arc<Mutex<Option<PageFault>>> = Arc::default();
        let pf = page_fault.clone();
        let types: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let t = types.clone();
        let region = region.to_owned();
        let port = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let p = port.clone();
        let served = serve(
            ns,
            hang.clone(),
            Arc::new(move |r: &Request| {
                let port = p.load(Ordering::Relaxed);
                if let Err(e) = check_sigv4(r, port, &region, &k.lock().unwrap()) {
                    return e;
                }
                let form = parse_form(&r.body);
                if form.get("Version").map(String::as_str) != Some("2016-11-15") {
                    return ec2_error(400, "InvalidParameterValue", "Version.");
                }
                *c.lock().unwrap() += 1;
                let action = form.get("Action").cloned().unwrap_or_default();
                if action == "DescribeInstanceTypes" {
                    let name = form.get("InstanceType.1").cloned().unwrap_or_default();
                    let Some(q) = t.lock().unwrap().get(&name).copied() else {
                        return ec2_error(
                            400,
                            "InvalidInstanceType",
                            &format!(
                                "The following supplied instance types do not exist: [{name}]"
                            ),
                        );
                    };
                    return (
                        200,
                        format!(
                            "<DescribeInstanceTypesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId><instanceTypeSet><item><instanceType>{name}</instanceType><networkInfo><maximumNetworkInterfaces>3</maximumNetworkInterfaces><ipv4AddressesPerInterface>{q}</ipv4AddressesPerInterface></networkInfo></item></instanceTypeSet></DescribeInstanceTypesResponse>"
                        ),
                    );
                }
                if action == "AssignPrivateIpAddresses" || action == "UnassignPrivateIpAddresses" {
                    let id = form.get("NetworkInterfaceId").cloned().unwrap_or_default();
                    let mut nics = n.lock().unwrap();
                    let Some(nic) = nics.iter_mut().find(|x| x.id == id) else {
                        return ec2_error(
                            400,
                            "InvalidNetworkInterfaceID.NotFound",
                            &format!("The networkInterface ID '{id}' does not exist"),
                        );
                    };
                    let listed: Vec<std::net::Ipv4Addr> = (1..)
                        .map_while(|i| {
                            form.get(&format!("PrivateIpAddress.{i}"))
                                .and_then(|a| a.parse().ok())
                        })
                        .collect();
                    if action == "UnassignPrivateIpAddresses" {
                        nic.addresses.retain(|(a, _)| !listed.contains(a));
                        return (200, "<UnassignPrivateIpAddressesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId><return>true</return></UnassignPrivateIpAddressesResponse>".into());
                    }
                    let new: Vec<std::net::Ipv4Addr> =
                        match form.get("SecondaryPrivateIpAddressCount") {
                            Some(k) => {
                                let o = nic.addresses[0].0.octets();
                                (100..250u8)
                                    .map(|h| std::net::Ipv4Addr::new(o[0], o[1], o[2], h))
                                    .filter(|a| !nic.addresses.iter().any(|(x, _)| x == a))
                                    .take(k.parse().unwrap_or(0))
                                    .collect()
                            }
                            None => listed,
                        };
                    nic.addresses.extend(new.iter().map(|a| (*a, None)));
                    let items: String = new
                        .iter()
                        .map(|a| format!("<item><privateIpAddress>{a}</privateIpAddress></item>"))
                        .collect();
                    return (
                        200,
                        format!(
                            "<AssignPrivateIpAddressesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId><networkInterfaceId>{id}</networkInterfaceId><assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet><return>true</return></AssignPrivateIpAddressesResponse>"
                        ),
                    );
                }
                if action != "DescribeNetworkInterfaces" {
                    return ec2_error(
                        400,
                        "InvalidAction",
                        "The action is not valid for this web service.",
                    );
                }
                let mut filters = Vec::new();
                for i in 1.. {
                    let Some(name) = form.get(&format!("Filter.{i}.Name")) else {
                        break;
                    };
                    let values: Vec<String> = (1..)
                        .map_while(|j| form.get(&format!("Filter.{i}.Value.{j}")).cloned())
                        .collect();
                    filters.push((name.clone(), values));
                }
                let mut selected = Vec::new();
                for nic in n.lock().unwrap().iter() {
                    let mut keep = true;
                    for (name, values) in &filters {
                        match nic.matches(name, values) {
                            Some(m) => keep &= m,
                            None => {
                                return ec2_error(
                                    400,
                                    "InvalidParameterValue",
                                    &format!("The filter '{name}' is invalid"),
                                );
                            }
                        }
                    }
                    if keep {
                        selected.push(nic.xml());
                    }
                }
                let page: u64 = form
                    .get("NextToken")
                    .and_then(|t| t.strip_prefix("page-"))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(1);
                if let Some((fp, status, body)) = f.lock().unwrap().clone()
                    && fp == page
                {
                    return (status, body);
                }
                let (item, next) = PageFault::serve(*pf.lock().unwrap(), page, &selected);
                let item = item.unwrap_or_default();
                let next = next
                    .map(|t| format!("<nextToken>{t}</nextToken>"))
                    .unwrap_or_default();
                (
                    200,
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeNetworkInterfacesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake-request</requestId><networkInterfaceSet>{item}</networkInterfaceSet>{next}</DescribeNetworkInterfacesResponse>"
                    ),
                )
            }),
        );
        port.store(served, Ordering::Relaxed);
        Self {
            port: served,
            nics,
            keys,
            fail_page,
            page_fault,
            hang,
            calls,
            types,
        }
    }
}

/// Checks a request's SigV4 `Authorization` like EC2 does; the error response otherwise.
fn check_sigv4(
    r: &Request,
    port: u16,
    region: &str,
    keys: &HashMap<String, AccessKey>,
) -> Result<(), (u16, String)> {
    use aws_sigv4::{
        http_request::{SignableBody, SignableRequest, SigningSettings, sign},
        sign::v4,
    };
    let auth = r.header("authorization").unwrap_or_default();
    let field = |name: &str| {
        auth.split([' ', ','])
            .find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{name}="))
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let credential = field("Credential");
    let scope: Vec<&str> = credential.split('/').collect();
    if !auth.starts_with("AWS4-HMAC-SHA256 ") || scope.len() != 5 {
        return Err(ec2_error(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ));
    }
    let Some((secret, token)) = keys.get(scope[0]).cloned() else {
        return Err(ec2_error(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ));
    };
    if scope[2] != region || scope[3] != "ec2" {
        return Err(ec2_error(
            403,
            "SignatureDoesNotMatch",
            &format!(
                "Credential should be scoped to a valid region, not '{}'.",
                scope[2]
            ),
        ));
    }
    if token.is_some() && r.header("x-amz-security-token") != token {
        return Err(ec2_error(
            401,
            "AuthFailure",
            "The security token included in the request is invalid.",
        ));
    }
    let date = r.header("x-amz-date").unwrap_or_default();
    let rfc3339 = if date.len() == 16 {
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &date[0..4],
            &date[4..6],
            &date[6..8],
            &date[9..11],
            &date[11..13],
            &date[13..15]
        )
    } else {
        String::new()
    };
    let Ok(time) = humantime::parse_rfc3339(&rfc3339) else {
        return Err(ec2_error(400, "MissingParameter", "X-Amz-Date."));
    };
    let creds = aws_credential_types::Credentials::new(scope[0], secret, token, None, "fake");
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let content_type = r.header("content-type").unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/");
    let headers = [("content-type", content_type.as_str())];
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(r.body.as_bytes()),
    )
    .unwrap();
    let expected = sign(signable, &params).unwrap().signature().to_owned();
    if expected != field("Signature") {
        return Err(ec2_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}
