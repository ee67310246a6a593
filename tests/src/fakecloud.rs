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
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
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
                let query = query
                    .split('&')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (percent_decode(k), percent_decode(v))
                    })
                    .collect();
                let req = Request {
                    method,
                    path: path.to_owned(),
                    query,
                    head_lower: text.to_ascii_lowercase(),
                };
                let (status, body) = handler(&req);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
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
}

impl FakeImds {
    /// Serves on 127.0.0.1 (a free port) in `ns`.
    pub fn start(ns: &Netns) -> Self {
        let data: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(Mutex::new(0));
        let (d, g) = (data.clone(), gets.clone());
        let port = serve(
            ns,
            hang.clone(),
            Arc::new(move |r: &Request| {
                let token_ok = r.head_lower.contains("x-aws-ec2-metadata-token: token-1")
                    || r.head_lower
                        .contains("x-aliyun-ecs-metadata-token: token-1");
                if r.method == "PUT" && r.path == "/latest/api/token" {
                    (200, "token-1".to_owned())
                } else if !token_ok {
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
/// error shapes (`{"Code","Message","RequestId"}`). It serves one NIC per page whatever the
/// PageSize asked, so that clients must follow TotalCount.
pub struct FakeAliyunApi {
    pub port: u16,
    /// `NetworkInterfaceSet` entries, in the documented shape (see [`FakeAliyunApi::nic`]).
    pub nics: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Access key id -> (secret, security token of temporary credentials).
    pub keys: Arc<Mutex<HashMap<String, AccessKey>>>,
    /// A canned answer for one page: (page number, HTTP status, body).
    pub fail_page: Arc<Mutex<Option<(u64, u16, String)>>>,
    pub hang: Arc<AtomicBool>,
    /// Requests that passed the checks.
    pub calls: Arc<Mutex<usize>>,
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
        let (n, k, f, c) = (nics.clone(), keys.clone(), fail_page.clone(), calls.clone());
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
                if q["Action"] != "DescribeNetworkInterfaces" {
                    return api_error(
                        400,
                        "InvalidAction.NotFound",
                        "Specified api is not found, please check your url and method.",
                    );
                }
                if q.get("RegionId") != Some(&region) || q.get("InstanceId") != Some(&instance) {
                    return api_error(400, "InvalidParameter", "RegionId and InstanceId.");
                }
                *c.lock().unwrap() += 1;
                let page: u64 = q
                    .get("PageNumber")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1);
                if let Some((p, status, body)) = f.lock().unwrap().clone()
                    && p == page
                {
                    return (status, body);
                }
                let nics = n.lock().unwrap();
                let set: Vec<serde_json::Value> =
                    nics.get(page as usize - 1).cloned().into_iter().collect();
                (
                    200,
                    serde_json::json!({
                        "RequestId": "FAKE-REQUEST",
                        "TotalCount": nics.len(),
                        "PageNumber": page,
                        "PageSize": 1,
                        "NetworkInterfaceSets": {"NetworkInterfaceSet": set},
                    })
                    .to_string(),
                )
            }),
        );
        Self {
            port,
            nics,
            keys,
            fail_page,
            hang,
            calls,
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
