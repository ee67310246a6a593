//! A fake cloud for the provider tests and benchmarks: an instance metadata service and
//! Alibaba Cloud's ECS OpenAPI, on loopback in a namespace.
//!
//! `mod.rs` holds the HTTP serving they share; one file per service: `imds.rs` (the instance
//! metadata, both clouds' shape), `aliyun.rs` (the ECS OpenAPI), `ec2.rs` (the EC2 API).

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

mod aliyun;
mod aliyun_vpc;
mod ec2;
mod imds;

pub use aliyun::*;
pub use aliyun_vpc::*;
pub use ec2::*;
pub use imds::*;

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

/// A page of a fake API served wrong, by its number (from 1).
#[derive(Clone, Copy, Debug)]
pub enum PageFault {
    /// Page N answers with page N-1's NICs again.
    Repeat(u64),
    /// Page N answers with page N+1's NICs (page N is missing).
    Skip(u64),
}

impl PageFault {
    /// The page served when page `page` of `items` is asked for (one item a page) under
    /// `fault`: the item, and the token of the next page (`page-N`) unless it is the last.
    pub fn serve<T: Clone>(
        fault: Option<Self>,
        page: u64,
        items: &[T],
    ) -> (Option<T>, Option<String>) {
        let index = match fault {
            Some(PageFault::Repeat(p)) if p == page => page - 1,
            Some(PageFault::Skip(p)) if p == page => page + 1,
            _ => page,
        };
        let item = items.get((index as usize).wrapping_sub(1)).cloned();
        let next = ((index as usize) < items.len()).then(|| format!("page-{}", page + 1));
        (item, next)
    }
}

/// An access key's secret and, for temporary credentials, its security token.
pub type AccessKey = (String, Option<String>);

/// Checks an RPC-style Alibaba Cloud request (ECS, VPC) like the services do: the common
/// parameters present, a known access key, signature v1 over what was sent, the security
/// token of temporary credentials, a nonce used once, JSON and `version`. The error answer
/// (built by `error`) otherwise.
fn check_rpc_v1(
    r: &Request,
    keys: &HashMap<String, AccessKey>,
    nonces: &Mutex<HashSet<String>>,
    version: &str,
    error: fn(u16, &str, &str) -> (u16, String),
) -> Result<(), (u16, String)> {
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
            return Err(error(
                400,
                "MissingParameter",
                &format!("{p} is mandatory for this action."),
            ));
        }
    }
    let Some((secret, token)) = keys.get(&q["AccessKeyId"]).cloned() else {
        return Err(error(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        ));
    };
    let mut signed = q.clone();
    let signature = signed.remove("Signature").unwrap_or_default();
    if ipnat::providers::aliyun::sign_v1(&r.method, &signed, &secret) != signature {
        return Err(error(
            400,
            "SignatureDoesNotMatch",
            "Specified signature is not matched with our calculation.",
        ));
    }
    if token.is_some() && q.get("SecurityToken") != token.as_ref() {
        return Err(error(
            400,
            "InvalidSecurityToken.Mismatch",
            "Specified SecurityToken mismatch with the AccessKey.",
        ));
    }
    if !nonces.lock().unwrap().insert(q["SignatureNonce"].clone()) {
        return Err(error(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        ));
    }
    if q["Format"] != "JSON" || q["Version"] != version {
        return Err(error(400, "InvalidParameter", "Format and Version."));
    }
    Ok(())
}

/// The first fault queued for `action` in `faults` (action, fault), taken off the queue.
pub(crate) fn take_fault<F>(faults: &Mutex<Vec<(String, F)>>, action: &str) -> Option<F> {
    let mut faults = faults.lock().unwrap();
    let i = faults.iter().position(|(a, _)| a == action)?;
    Some(faults.remove(i).1)
}
