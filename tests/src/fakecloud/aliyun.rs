//! Alibaba Cloud's ECS OpenAPI (RPC style, signature v1), as its documentation describes it.

use super::*;

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
                if let Err(e) =
                    check_rpc_v1(r, &k.lock().unwrap(), &nonces, "2014-05-26", api_error)
                {
                    return e;
                }
                let q = &r.query;
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
                if let Some((p, status, body)) = f.lock().unwrap().clone()
                    && p == page
                {
                    return (status, body);
                }
                let (item, next) = PageFault::serve(*pf.lock().unwrap(), page, &selected);
                let set: Vec<serde_json::Value> = item.into_iter().collect();
                let next = next.unwrap_or_default();
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
