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
                return vpc_error(
                    400,
                    "MissingParameter",
                    &format!("{p} is mandatory for this action."),
                );
            }
        }
        let Some((secret, token)) = self.keys.lock().unwrap().get(&q["AccessKeyId"]).cloned()
        else {
            return vpc_error(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            );
        };
        let mut signed = q.clone();
        let signature = signed.remove("Signature").unwrap();
        if ipnat::providers::aliyun::sign_v1(&r.method, &signed, &secret) != signature {
            return vpc_error(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation.",
            );
        }
        if token.is_some() && q.get("SecurityToken") != token.as_ref() {
            return vpc_error(
                400,
                "InvalidSecurityToken.Mismatch",
                "Specified SecurityToken mismatch with the AccessKey.",
            );
        }
        if !self
            .nonces
            .lock()
            .unwrap()
            .insert(q["SignatureNonce"].clone())
        {
            return vpc_error(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            );
        }
        if q["Format"] != "JSON" || q["Version"] != "2016-04-28" {
            return vpc_error(400, "InvalidParameter", "Format and Version.");
        }
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
