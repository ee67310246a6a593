//! Alibaba Cloud's VPC OpenAPI (RPC style, version 2016-04-28, signature v1): the HaVips.

use super::*;

/// A fake VPC OpenAPI serving DescribeHaVips, checking requests like the real service (known
/// access key, signature v1, a nonce used once, the version, the region) and answering in the
/// documented shapes. Served on loopback in as many namespaces as asked (one state).
#[derive(Clone)]
pub struct FakeAliyunVpc {
    pub port: u16,
    region: String,
    /// `HaVips.HaVip` entries, in the documented shape (see [`FakeAliyunVpc::havip`]).
    pub havips: Arc<Mutex<Vec<serde_json::Value>>>,
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
        self.actions.lock().unwrap().push(q["Action"].clone());
        if q["Action"] != "DescribeHaVips" {
            return vpc_error(
                404,
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
            );
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
        (
            200,
            serde_json::json!({
                "RequestId": "FAKE-REQUEST",
                "TotalCount": list.len(),
                "PageNumber": 1,
                "PageSize": 10,
                "HaVips": {"HaVip": list},
            })
            .to_string(),
        )
    }
}
