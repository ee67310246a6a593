//! Alibaba Cloud's VPC OpenAPI (RPC style, version 2016-04-28, signature v1): the HaVips,
//! the EIPs (bound to one thing at a time, asynchronously) and route entries.

use super::*;

/// An EIP as the fake VPC API holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeEip {
    pub id: String,
    pub address: std::net::Ipv4Addr,
    /// `Available`, `Associating`, `InUse`, `Unassociating`.
    pub status: String,
    /// (instance type, instance id, private address).
    pub bound: Option<(String, String, Option<std::net::Ipv4Addr>)>,
}

/// A fault the fake VPC API injects into the next call of an action (nothing done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpcFault {
    /// 400 `TaskConflict`: another change of the same resource under way.
    TaskConflict,
    /// 400 `Throttling.User`.
    Throttle,
    /// 500 `InternalError`.
    ServerError,
}

/// Called with the EIPs and route entries some time after each change: a fake VPC follows.
pub type VpcHook = Box<dyn Fn(&[FakeEip], &BTreeMap<(String, String), String>) + Send>;

/// A fake VPC OpenAPI serving DescribeHaVips; DescribeEipAddresses, AssociateEipAddress and
/// UnassociateEipAddress (an EIP is bound to one thing at a time; binding and unbinding take
/// [`FakeAliyunVpc::delay_ms`], through `Associating` and `Unassociating`, as documented);
/// DescribeRouteEntryList and ModifyRouteEntry. It checks requests like the real service (known
/// access key, signature v1, a nonce used once, the version, the region) and answers in the
/// documented shapes. Served on loopback in as many namespaces as asked (one state).
#[derive(Clone)]
pub struct FakeAliyunVpc {
    pub port: u16,
    region: String,
    /// `HaVips.HaVip` entries, in the documented shape (see [`FakeAliyunVpc::havip`]).
    pub havips: Arc<Mutex<Vec<serde_json::Value>>>,
    pub eips: Arc<Mutex<Vec<FakeEip>>>,
    /// Each ENI's private addresses (what an EIP may be bound to).
    pub enis: Arc<Mutex<Vec<(String, Vec<std::net::Ipv4Addr>)>>>,
    /// Route entries: (route table, destination) -> next hop ENI.
    pub routes: Arc<Mutex<BTreeMap<(String, String), String>>>,
    /// Faults for the next calls: (action, fault), first match used up.
    pub faults: Arc<Mutex<Vec<(String, VpcFault)>>>,
    /// Every change of where an EIP is bound or a route points, in order.
    pub moves: Arc<Mutex<Vec<String>>>,
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub hooks: Arc<Mutex<Vec<VpcHook>>>,
    /// Access key id -> (secret, security token of temporary credentials).
    pub keys: Arc<Mutex<HashMap<String, AccessKey>>>,
    /// Every action called (signed correctly), in order.
    pub actions: Arc<Mutex<Vec<String>>>,
    nonces: Arc<Mutex<HashSet<String>>>,
    pub hang: Arc<AtomicBool>,
}

fn vpc_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({"Code": code, "Message": message, "RequestId": "FAKE-REQUEST", "HostId": "vpc.fake"})
            .to_string(),
    )
}

impl FakeAliyunVpc {
    pub fn start(ns: &Netns, region: &str) -> Self {
        let mut me = FakeAliyunVpc {
            port: 0,
            region: region.to_owned(),
            havips: Arc::default(),
            eips: Arc::default(),
            enis: Arc::default(),
            routes: Arc::default(),
            faults: Arc::default(),
            moves: Arc::default(),
            delay_ms: Arc::default(),
            hooks: Arc::default(),
            keys: Arc::default(),
            actions: Arc::default(),
            nonces: Arc::default(),
            hang: Arc::new(AtomicBool::new(false)),
        };
        me.port = me.serve_in(ns);
        me
    }

    /// Serves the same API (the same state) on loopback in `ns` too; its port there.
    pub fn serve_in(&self, ns: &Netns) -> u16 {
        let me = self.clone();
        serve(
            ns,
            self.hang.clone(),
            Arc::new(move |r: &Request| me.handle(r)),
        )
    }

    /// A HaVip in the documented shape.
    pub fn havip(id: &str, address: &str, instances: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "HaVipId": id,
            "IpAddress": address,
            "Status": if instances.is_empty() { "Available" } else { "InUse" },
            "VpcId": "vpc-1",
            "VSwitchId": "vsw-1",
            "MasterInstanceId": instances.first().copied().unwrap_or(""),
            "AssociatedInstances": {"associatedInstance": instances},
            "AssociatedEipAddresses": {"associatedEipAddresse": []},
        })
    }

    fn handle(&self, r: &Request) -> (u16, String) {
        if let Err(e) = check_rpc_v1(
            r,
            &self.keys.lock().unwrap(),
            &self.nonces,
            "2016-04-28",
            vpc_error,
        ) {
            return e;
        }
        let q = &r.query;
        if q.get("RegionId") != Some(&self.region) {
            return vpc_error(
                400,
                "InvalidRegionId.NotFound",
                "The specified RegionId does not exist.",
            );
        }
        let action = q["Action"].clone();
        self.actions.lock().unwrap().push(action.clone());
        let fault = take_fault(&self.faults, &action);
        match fault {
            Some(VpcFault::TaskConflict) => {
                return vpc_error(
                    400,
                    "TaskConflict",
                    "The operation conflicts with other tasks. Try again later.",
                );
            }
            Some(VpcFault::Throttle) => {
                return vpc_error(
                    400,
                    "Throttling.User",
                    "Request was denied due to user flow control.",
                );
            }
            Some(VpcFault::ServerError) => {
                return vpc_error(
                    500,
                    "InternalError",
                    "The request processing has failed due to some unknown error.",
                );
            }
            None => {}
        }
        match action.as_str() {
            "DescribeHaVips" => {}
            "DescribeEipAddresses" => return self.describe_eips(q),
            "AssociateEipAddress" | "UnassociateEipAddress" => return self.bind(&action, q),
            "DescribeRouteEntryList" => return self.describe_routes(q),
            "ModifyRouteEntry" => return self.modify_route(q),
            _ => {
                return vpc_error(
                    404,
                    "InvalidAction.NotFound",
                    "Specified api is not found, please check your url and method.",
                );
            }
        }
        let wanted: Option<&String> = (q.get("Filter.1.Key").map(String::as_str)
            == Some("HaVipId"))
        .then(|| q.get("Filter.1.Value.1"))
        .flatten();
        let list: Vec<serde_json::Value> = self
            .havips
            .lock()
            .unwrap()
            .iter()
            .filter(|h| wanted.is_none_or(|w| h["HaVipId"] == **w))
            .cloned()
            .collect();
        Self::listed("HaVips", "HaVip", list)
    }

    /// A list answer in the documented shape: `{set: {item: [...]}}`, one page of all.
    fn listed(set: &str, item: &str, list: Vec<serde_json::Value>) -> (u16, String) {
        let mut body = serde_json::json!({
            "RequestId": "FAKE-REQUEST",
            "TotalCount": list.len(),
            "PageNumber": 1,
            "PageSize": list.len().max(10),
        });
        body[set] = serde_json::json!({ item: list });
        (200, body.to_string())
    }

    fn ok() -> (u16, String) {
        (
            200,
            serde_json::json!({"RequestId": "FAKE-REQUEST"}).to_string(),
        )
    }

    /// Tells the hooks about the state as it is now.
    fn notify(&self) {
        let eips = self.eips.lock().unwrap().clone();
        let routes = self.routes.lock().unwrap().clone();
        for h in self.hooks.lock().unwrap().iter() {
            h(&eips, &routes);
        }
    }

    /// After the delay, the EIP `id` in state `from` goes to `to` (unbound if `unbind`); the
    /// hooks are told.
    fn settle(&self, id: String, from: &'static str, to: &'static str, unbind: bool) {
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(me.delay_ms.load(Ordering::Relaxed)));
            {
                let mut eips = me.eips.lock().unwrap();
                let Some(e) = eips.iter_mut().find(|e| e.id == id && e.status == from) else {
                    return;
                };
                e.status = to.to_owned();
                if unbind {
                    e.bound = None;
                }
            }
            me.notify();
        });
    }

    fn describe_eips(&self, q: &BTreeMap<String, String>) -> (u16, String) {
        let wanted: Vec<&str> = q
            .get("AllocationId")
            .map(|a| a.split(',').collect())
            .unwrap_or_default();
        let list: Vec<serde_json::Value> = self
            .eips
            .lock()
            .unwrap()
            .iter()
            .filter(|e| wanted.is_empty() || wanted.contains(&e.id.as_str()))
            .map(|e| {
                let (kind, instance, private) = e.bound.clone().unwrap_or_default();
                serde_json::json!({
                    "AllocationId": e.id,
                    "IpAddress": e.address.to_string(),
                    "Status": e.status,
                    "InstanceType": kind,
                    "InstanceId": instance,
                    "PrivateIpAddress": private.map(|p| p.to_string()).unwrap_or_default(),
                    "RegionId": self.region,
                    "Bandwidth": "5",
                    "InternetChargeType": "PayByTraffic",
                    "Mode": "NAT",
                })
            })
            .collect();
        Self::listed("EipAddresses", "EipAddress", list)
    }

    fn bind(&self, action: &str, q: &BTreeMap<String, String>) -> (u16, String) {
        let id = q.get("AllocationId").cloned().unwrap_or_default();
        let instance = q.get("InstanceId").cloned().unwrap_or_default();
        let kind = q
            .get("InstanceType")
            .cloned()
            .unwrap_or_else(|| "EcsInstance".to_owned());
        let private: Option<std::net::Ipv4Addr> =
            q.get("PrivateIpAddress").and_then(|p| p.parse().ok());
        let mut eips = self.eips.lock().unwrap();
        let Some(e) = eips.iter_mut().find(|e| e.id == id) else {
            return vpc_error(
                404,
                "InvalidAllocationId.NotFound",
                "Specified allocation ID is not found",
            );
        };
        let show = |b: &Option<(String, String, Option<std::net::Ipv4Addr>)>| {
            b.as_ref()
                .map_or("(unbound)".to_owned(), |(_, i, p)| match p {
                    Some(p) => format!("{i}/{p}"),
                    None => i.clone(),
                })
        };
        if action == "AssociateEipAddress" {
            if e.status != "Available" {
                return vpc_error(
                    400,
                    "IncorrectEipStatus",
                    "The current status of the resource does not support this operation.",
                );
            }
            if kind != "NetworkInterface" {
                return vpc_error(
                    400,
                    "InvalidParameter",
                    "The fake binds to NetworkInterface only.",
                );
            }
            let enis = self.enis.lock().unwrap();
            let Some((_, addresses)) = enis.iter().find(|(n, _)| *n == instance) else {
                return vpc_error(
                    400,
                    "InvalidInstanceId.NotFound",
                    "The specified instance does not exist.",
                );
            };
            if !private.is_some_and(|p| addresses.contains(&p)) {
                return vpc_error(
                    400,
                    "InvalidParams.PrivateIpAddress",
                    "The specified private IP address is not on the network interface.",
                );
            }
            let was = show(&e.bound);
            e.bound = Some((kind, instance, private));
            e.status = "Associating".into();
            self.moves.lock().unwrap().push(format!(
                "EIP {} {was} -> {}",
                e.address,
                show(&e.bound)
            ));
            drop(eips);
            self.settle(id, "Associating", "InUse", false);
        } else {
            if e.status != "InUse" {
                return vpc_error(
                    400,
                    "IncorrectEipStatus",
                    "The current status of the resource does not support this operation.",
                );
            }
            if e.bound
                .as_ref()
                .is_none_or(|(_, i, p)| *i != instance || (private.is_some() && *p != private))
            {
                return vpc_error(
                    400,
                    "InvalidAssociation.NotFound",
                    "The EIP is not bound to the specified instance.",
                );
            }
            self.moves.lock().unwrap().push(format!(
                "EIP {} {} -> (unbound)",
                e.address,
                show(&e.bound)
            ));
            e.status = "Unassociating".into();
            drop(eips);
            self.settle(id, "Unassociating", "Available", true);
        }
        Self::ok()
    }

    fn describe_routes(&self, q: &BTreeMap<String, String>) -> (u16, String) {
        let table = q.get("RouteTableId").cloned().unwrap_or_default();
        let dst = q.get("DestinationCidrBlock").cloned();
        let list: Vec<serde_json::Value> = self
            .routes
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, d), _)| *t == table && dst.as_ref().is_none_or(|x| x == d))
            .map(|((t, d), hop)| {
                serde_json::json!({
                    "RouteEntryId": format!("rte-{}", d.replace(['.', '/'], "")),
                    "RouteTableId": t,
                    "DestinationCidrBlock": d,
                    "Type": "Custom",
                    "Status": "Available",
                    "NextHops": {"NextHop": [{"NextHopType": "NetworkInterface", "NextHopId": hop, "Weight": 0, "Enabled": 1}]},
                })
            })
            .collect();
        Self::listed("RouteEntrys", "RouteEntry", list)
    }

    fn modify_route(&self, q: &BTreeMap<String, String>) -> (u16, String) {
        let key = (
            q.get("RouteTableId").cloned().unwrap_or_default(),
            q.get("DestinationCidrBlock").cloned().unwrap_or_default(),
        );
        let hop = q.get("NewNextHopId").cloned().unwrap_or_default();
        if q.get("NewNextHopType").map(String::as_str) != Some("NetworkInterface")
            || !self.enis.lock().unwrap().iter().any(|(n, _)| *n == hop)
        {
            return vpc_error(
                400,
                "InvalidNextHop.NotFound",
                "The specified next hop does not exist.",
            );
        }
        let mut routes = self.routes.lock().unwrap();
        let Some(target) = routes.get_mut(&key) else {
            return vpc_error(
                400,
                "InvalidRouteEntryId.NotFound",
                "The specified routeEntry does not exist.",
            );
        };
        if *target != hop {
            self.moves
                .lock()
                .unwrap()
                .push(format!("{} {} {target} -> {hop}", key.0, key.1));
            *target = hop;
        }
        drop(routes);
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(me.delay_ms.load(Ordering::Relaxed)));
            me.notify();
        });
        Self::ok()
    }
}
