//! A fake cloud for the provider tests and benchmarks: an instance metadata service and
//! Alibaba Cloud's ECS OpenAPI, on loopback in a namespace.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{Read, Write},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::netns::Netns;

/// One HTTP request as a fake sees it.
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// The query's parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    /// The request head, lower-cased (for header checks).
    pub head_lower: String,
    head: String,
    pub body: String,
    /// Headers the handler adds to its reply (`Name: value`).
    pub reply_headers: std::cell::RefCell<Vec<String>>,
}

impl Request {
    /// A header's value (first of that name), as sent.
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head_lower
            .lines()
            .position(|l| l.starts_with(&prefix))
            .and_then(|i| self.head.lines().nth(i))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    }
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// Serves HTTP/1.1 on 127.0.0.1 (a free port) in `ns`, one thread a connection, one request a
/// connection; while `hang` is set it answers nothing (a client times out). Returns the port.
fn serve(ns: &Netns, hang: Arc<AtomicBool>, handler: Arc<Handler>) -> u16 {
    let listener = ns.within(|| Ok(TcpListener::bind("127.0.0.1:0")?)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (hang, handler) = (hang.clone(), handler.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                let end = loop {
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break head.len(),
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                };
                let mut body = head.split_off(end);
                let length = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0usize);
                while body.len() < length {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                    }
                }
                if hang.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(2));
                    return;
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let mut words = text.split_whitespace();
                let method = words.next().unwrap_or("").to_owned();
                let target = words.next().unwrap_or("");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let query = parse_form(query);
                let req = Request {
                    method,
                    path: path.to_owned(),
                    query,
                    head_lower: text.to_ascii_lowercase(),
                    head: text.clone(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    reply_headers: Default::default(),
                };
                let (status, body) = handler(&req);
                let extra: String = req
                    .reply_headers
                    .borrow()
                    .iter()
                    .map(|h| format!("{h}\r\n"))
                    .collect();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// `a=1&b=2`, percent-decoded.
pub fn parse_form(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A fake instance metadata service (AWS IMDSv2 or Alibaba Cloud's token mode): a token from
/// PUT /latest/api/token, then GETs that must carry it; 404 for what it does not hold.
pub struct FakeImds {
    pub port: u16,
    pub data: Arc<Mutex<HashMap<String, String>>>,
    /// While set, the service answers nothing (a client times out).
    pub hang: Arc<AtomicBool>,
    /// GETs answered.
    pub gets: Arc<Mutex<usize>>,
    /// While set, every token is expired: GETs get 401, as the real service answers.
    pub expire_tokens: Arc<AtomicBool>,
}

impl FakeImds {
    /// Serves on 127.0.0.1 (a free port) in `ns`.
    pub fn start(ns: &Netns) -> Self {
        let data: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(Mutex::new(0));
        let expire_tokens = Arc::new(AtomicBool::new(false));
        let (d, g, e) = (data.clone(), gets.clone(), expire_tokens.clone());
        let port = serve(
            ns,
            hang.clone(),
            Arc::new(move |r: &Request| {
                let token_ok = r.head_lower.contains("x-aws-ec2-metadata-token: token-1")
                    || r.head_lower
                        .contains("x-aliyun-ecs-metadata-token: token-1");
                if r.method == "PUT" && r.path == "/latest/api/token" {
                    // A TTL of 1 to 21600 s is required, and echoed on the reply.
                    let ttl = [
                        "x-aws-ec2-metadata-token-ttl-seconds",
                        "x-aliyun-ecs-metadata-token-ttl-seconds",
                    ]
                    .into_iter()
                    .find_map(|h| r.header(h).map(|v| (h, v)));
                    match ttl {
                        Some((h, v))
                            if v.parse::<u32>().is_ok_and(|t| (1..=21600).contains(&t)) =>
                        {
                            r.reply_headers.borrow_mut().push(format!("{h}: {v}"));
                            (200, "token-1".to_owned())
                        }
                        _ => (400, String::new()),
                    }
                } else if !token_ok || e.load(Ordering::Relaxed) {
                    // No token, or (while `expire_tokens`) an expired one.
                    (401, String::new())
                } else {
                    *g.lock().unwrap() += 1;
                    let key = r.path.trim_start_matches("/latest/meta-data/");
                    match d.lock().unwrap().get(key) {
                        Some(b) => (200, b.clone()),
                        None => (404, String::new()),
                    }
                }
            }),
        );
        Self {
            port,
            data,
            hang,
            gets,
            expire_tokens,
        }
    }

    pub fn set(&self, key: &str, value: &str) {
        self.data
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
    }

    pub fn remove(&self, key: &str) {
        self.data.lock().unwrap().remove(key);
    }
}

/// A fake ECS OpenAPI (RPC style, `Format=JSON`) serving DescribeNetworkInterfaces for one
/// instance, checking requests like the real service: known access key, security token for
/// temporary credentials, signature (v1), a nonce used once, and answering with the real
/// error shapes (`{"Code","Message","RequestId"}`). It pages DescribeNetworkInterfaces by
/// `NextToken` (the documented way; page numbers are ignored) with one NIC per page whatever
/// `MaxResults` asked, so that clients must follow the tokens.
pub struct FakeAliyunApi {
    pub port: u16,
    /// A page served wrong (see [`PageFault`]).
    pub page_fault: Arc<Mutex<Option<PageFault>>>,
    /// `NetworkInterfaceSet` entries, in the documented shape (see [`FakeAliyunApi::nic`]).
    pub nics: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Access key id -> (secret, security token of temporary credentials).
    pub keys: Arc<Mutex<HashMap<String, AccessKey>>>,
    /// A canned answer for one page: (page number, HTTP status, body).
    pub fail_page: Arc<Mutex<Option<(u64, u16, String)>>>,
    pub hang: Arc<AtomicBool>,
    /// Requests that passed the checks.
    pub calls: Arc<Mutex<usize>>,
    /// Instance type -> private addresses per NIC (DescribeInstanceTypes).
    pub types: Arc<Mutex<HashMap<String, u32>>>,
}

/// A page of a fake API served wrong, by its number (from 1).
#[derive(Clone, Copy, Debug)]
pub enum PageFault {
    /// Page N answers with page N-1's NICs again.
    Repeat(u64),
    /// Page N answers with page N+1's NICs (page N is missing).
    Skip(u64),
}

/// An access key's secret and, for temporary credentials, its security token.
pub type AccessKey = (String, Option<String>);

fn api_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({"Code": code, "Message": message, "RequestId": "FAKE-REQUEST", "HostId": "ecs.fake"})
            .to_string(),
    )
}

impl FakeAliyunApi {
    pub fn start(ns: &Netns, region: &str, instance: &str) -> Self {
        let nics: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let keys: Arc<Mutex<HashMap<String, AccessKey>>> = Arc::default();
        let fail_page: Arc<Mutex<Option<(u64, u16, String)>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new(0));
        let nonces: Arc<Mutex<HashSet<String>>> = Arc::default();
        let types: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let page_fault: Arc<Mutex<Option<PageFault>>> = Arc::default();
        let (n, k, f, c) = (nics.clone(), keys.clone(), fail_page.clone(), calls.clone());
        let t = types.clone();
        let pf = page_fault.clone();
        let (region, instance) = (region.to_owned(), instance.to_owned());
        let port = serve(
            ns,
            hang.clone(),
            Arc::new(move |r: &Request| {
                let q = &r.query;
                for p in [
                    "Action",
                    "Format",
                    "Version",
                    "AccessKeyId",
                    "SignatureMethod",
                    "SignatureVersion",
                    "SignatureNonce",
                    "Timestamp",
                    "Signature",
                ] {
                    if !q.contains_key(p) {
                        return api_error(
                            400,
                            "MissingParameter",
                            &format!("{p} is mandatory for this action."),
                        );
                    }
                }
                let Some((secret, token)) = k.lock().unwrap().get(&q["AccessKeyId"]).cloned()
                else {
                    return api_error(
                        404,
                        "InvalidAccessKeyId.NotFound",
                        "Specified access key is not found.",
                    );
                };
                let mut signed = q.clone();
                let signature = signed.remove("Signature").unwrap();
                if ipnat::providers::aliyun::sign_v1(&r.method, &signed, &secret) != signature {
                    return api_error(
                        400,
                        "SignatureDoesNotMatch",
                        "Specified signature is not matched with our calculation.",
                    );
                }
                if token.is_some() && q.get("SecurityToken") != token.as_ref() {
                    return api_error(
                        400,
                        "InvalidSecurityToken.Mismatch",
                        "Specified SecurityToken mismatch with the AccessKey.",
                    );
                }
                if !nonces.lock().unwrap().insert(q["SignatureNonce"].clone()) {
                    return api_error(
                        400,
                        "SignatureNonceUsed",
                        "Specified signature nonce was used already.",
                    );
                }
                if q["Format"] != "JSON" || q["Version"] != "2014-05-26" {
                    return api_error(400, "InvalidParameter", "Format and Version.");
                }
                *c.lock().unwrap() += 1;
                let action = q["Action"].as_str();
                if action == "DescribeInstanceTypes" {
                    let name = q.get("InstanceTypes.1").cloned().unwrap_or_default();
                    let quota = t.lock().unwrap().get(&name).copied();
                    let set: Vec<serde_json::Value> = quota
                        .map(|n| serde_json::json!({"InstanceTypeId": name, "EniPrivateIpAddressQuantity": n}))
                        .into_iter()
                        .collect();
                    return (
                        200,
                        serde_json::json!({"RequestId": "FAKE-REQUEST", "InstanceTypes": {"InstanceType": set}})
                            .to_string(),
                    );
                }
                if q.get("RegionId") != Some(&region) {
                    return api_error(
                        400,
                        "InvalidRegionId.NotFound",
                        "The specified RegionId does not exist.",
                    );
                }
                let mut nics = n.lock().unwrap();
                if action == "AssignPrivateIpAddresses" || action == "UnassignPrivateIpAddresses" {
                    let id = q.get("NetworkInterfaceId").cloned().unwrap_or_default();
                    let Some(nic) = nics
                        .iter_mut()
                        .find(|x| x["NetworkInterfaceId"] == id.as_str())
                    else {
                        return api_error(
                            404,
                            "InvalidEniId.NotFound",
                            "The specified ENI does not exist.",
                        );
                    };
                    let listed: Vec<String> = (1..)
                        .map_while(|i| q.get(&format!("PrivateIpAddress.{i}")).cloned())
                        .collect();
                    let set = nic["PrivateIpSets"]["PrivateIpSet"].as_array_mut().unwrap();
                    if action == "UnassignPrivateIpAddresses" {
                        set.retain(|x| !listed.iter().any(|a| x["PrivateIpAddress"] == a.as_str()));
                        return (
                            200,
                            serde_json::json!({"RequestId": "FAKE-REQUEST"}).to_string(),
                        );
                    }
                    let new: Vec<String> = match q.get("SecondaryPrivateIpAddressCount") {
                        Some(k) => {
                            let base = set[0]["PrivateIpAddress"]
                                .as_str()
                                .unwrap_or("10.0.0.1")
                                .to_owned();
                            let prefix = &base[..base.rfind('.').unwrap()];
                            (100..250)
                                .map(|h| format!("{prefix}.{h}"))
                                .filter(|a| {
                                    !set.iter().any(|x| x["PrivateIpAddress"] == a.as_str())
                                })
                                .take(k.parse().unwrap_or(0))
                                .collect()
                        }
                        None => listed,
                    };
                    for a in &new {
                        set.push(serde_json::json!({"PrivateIpAddress": a, "Primary": false}));
                    }
                    return (
                        200,
                        serde_json::json!({"RequestId": "FAKE-REQUEST", "NetworkInterfaceId": id,
                            "AssignedPrivateIpAddressesSet": {"PrivateIpSet": {"PrivateIpAddress": new}}})
                        .to_string(),
                    );
                }
                if action != "DescribeNetworkInterfaces" {
                    return api_error(
                        400,
                        "InvalidAction.NotFound",
                        "Specified api is not found, please check your url and method.",
                    );
                }
                // Filters: one NIC by id, or the instance's (a NIC without InstanceId counts as
                // the instance's).
                let selected: Vec<serde_json::Value> =
                    if let Some(id) = q.get("NetworkInterfaceId.1") {
                        nics.iter()
                            .filter(|x| x["NetworkInterfaceId"] == id.as_str())
                            .cloned()
                            .collect()
                    } else if q.get("InstanceId") == Some(&instance) {
                        nics.iter()
                            .filter(|x| x["InstanceId"].as_str().is_none_or(|i| i == instance))
                            .cloned()
                            .collect()
                    } else {
                        return api_error(400, "InvalidParameter", "InstanceId.");
                    };
                // Paged by NextToken, as documented: `page-N` names page N (from 1).
                let page: u64 = match q.get("NextToken") {
                    None => 1,
                    Some(t) => match t.strip_prefix("page-").and_then(|p| p.parse().ok()) {
                        Some(p) => p,
                        None => {
                            return api_error(
                                400,
                                "InvalidNextToken.Malformed",
                                "The specified NextToken is invalid.",
                            );
                        }
                    },
                };
                let fault = *pf.lock().unwrap();
                let index = match fault {
                    Some(PageFault::Repeat(p)) if p == page => page - 1,
                    Some(PageFault::Skip(p)) if p == page => page + 1,
                    _ => page,
                };
                if let Some((p, status, body)) = f.lock().unwrap().clone()
                    && p == page
                {
                    return (status, body);
                }
                let set: Vec<serde_json::Value> = selected
                    .get((index as usize).wrapping_sub(1))
                    .cloned()
                    .into_iter()
                    .collect();
                let next = if (index as usize) < selected.len() {
                    format!("page-{}", page + 1)
                } else {
                    String::new()
                };
                (
                    200,
                    serde_json::json!({
                        "RequestId": "FAKE-REQUEST",
                        "TotalCount": selected.len(),
                        "NextToken": next,
                        "NetworkInterfaceSets": {"NetworkInterfaceSet": set},
                    })
                    .to_string(),
                )
            }),
        );
        Self {
            port,
            page_fault,
            nics,
            keys,
            fail_page,
            hang,
            calls,
            types,
        }
    }

    /// A NIC in DescribeNetworkInterfaces' shape: (private address, associated EIP or "").
    pub fn nic(id: &str, mac: &str, addresses: &[(String, String)]) -> serde_json::Value {
        let set: Vec<serde_json::Value> = addresses
            .iter()
            .enumerate()
            .map(|(i, (p, e))| {
                serde_json::json!({
                    "PrivateIpAddress": p,
                    "Primary": i == 0,
                    "AssociatedPublicIp": {"PublicIpAddress": e, "AllocationId": if e.is_empty() { "" } else { "eip-fake" }},
                })
            })
            .collect();
        serde_json::json!({
            "NetworkInterfaceId": id,
            "MacAddress": mac,
            "Type": if id.ends_with('0') { "Primary" } else { "Secondary" },
            "PrivateIpAddress": addresses.first().map(|a| a.0.clone()).unwrap_or_default(),
            "PrivateIpSets": {"PrivateIpSet": set},
        })
    }
}

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
                let index = match *pf.lock().unwrap() {
                    Some(PageFault::Repeat(p)) if p == page => page - 1,
                    Some(PageFault::Skip(p)) if p == page => page + 1,
                    _ => page,
                };
                let item = selected
                    .get((index as usize).wrapping_sub(1))
                    .cloned()
                    .unwrap_or_default();
                let next = if (index as usize) < selected.len() {
                    format!("<nextToken>page-{}</nextToken>", page + 1)
                } else {
                    String::new()
                };
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
