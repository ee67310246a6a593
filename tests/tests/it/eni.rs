//! `ipnat eni assign|unassign` (the real binary) against fake clouds: the documented limits are
//! checked before anything is sent (a refused request leaves the cloud unchanged), then the
//! cloud's API assigns or unassigns, on AWS (EC2, SigV4) and Alibaba Cloud (ECS, signature v1).

use std::net::Ipv4Addr;

use ipnat_tests::{
    fakecloud::{FakeAliyunApi, FakeEc2, FakeEc2Nic, FakeImds},
    lab::ipnat_in,
    netns::{Netns, require_root},
};

/// Runs `ipnat eni <args>` and checks that it succeeds or fails as `ok` says, prints `says`,
/// and leaves the NIC with `count` addresses (a refused request sends nothing).
fn step(
    ns: &Netns,
    config: &str,
    args: &str,
    ok: bool,
    says: &str,
    count: impl Fn() -> usize,
    want: usize,
) -> String {
    let (success, out) = eni(ns, config, args);
    assert_eq!(success, ok, "ipnat eni {args}: {out}");
    assert!(out.contains(says), "ipnat eni {args}: {out}");
    assert_eq!(count(), want, "ipnat eni {args}: {out}");
    out
}

/// `ipnat eni <args> --config <config>` in `ns` (`args` split at white space): (success,
/// stdout + stderr).
fn eni(ns: &Netns, config: &str, args: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!(
        "ipnat-eni-{}-{}.toml",
        std::process::id(),
        ns.name()
    ));
    std::fs::write(&path, config).unwrap();
    let mut all = vec!["eni"];
    all.extend(args.split_whitespace());
    all.extend_from_slice(&["--config", path.to_str().unwrap()]);
    ipnat_in(ns, &all)
}

#[test]
fn aws_eni_assign_checks_the_limits_first() {
    require_root();
    let ns = Netns::new("eniaws").unwrap();
    let imds = FakeImds::start(&ns);
    let ec2 = FakeEc2::start(&ns, "eu-west-1");
    imds.set("mac", "02:00:00:00:00:01");
    imds.set("instance-id", "i-me");
    imds.set("instance-type", "c5.large");
    imds.set("placement/region", "eu-west-1");
    imds.set("network/interfaces/macs/02:00:00:00:00:01/vpc-id", "vpc-1");
    imds.set_aws_role("ipnat", "ASIAENI", "s", "t");
    ec2.keys
        .lock()
        .unwrap()
        .insert("ASIAENI".into(), ("s".into(), Some("t".into())));
    ec2.types.lock().unwrap().insert("c5.large".into(), 10);
    let nic = |id: &str, instance: Option<&str>, n: u8| FakeEc2Nic {
        id: id.into(),
        mac: "02:00:00:00:00:09".into(),
        vpc: "vpc-1".into(),
        subnet: "subnet-1".into(),
        instance: instance.map(str::to_owned),
        source_dest_check: true,
        addresses: (0..n)
            .map(|h| (Ipv4Addr::new(10, 0, 0, 10 + h), None))
            .collect(),
        tags: Vec::new(),
    };
    *ec2.nics.lock().unwrap() = vec![
        nic("eni-me", Some("i-me"), 8),
        nic("eni-free", None, 9),
        nic("eni-other", Some("i-other"), 2),
    ];
    let count = |id: &str| {
        ec2.nics
            .lock()
            .unwrap()
            .iter()
            .find(|n| n.id == id)
            .unwrap()
            .addresses
            .len()
    };
    let config = format!(
        "[[interface]]\nname = \"eth0\"\n[aws]\nendpoint = \"http://127.0.0.1:{}\"\napi_endpoint = \"http://127.0.0.1:{}\"\n",
        imds.port, ec2.port
    );

    let me = || count("eni-me");
    let free = || count("eni-free");
    let other = || count("eni-other");
    #[rustfmt::skip]
    let steps: [(&str, bool, &str, &dyn Fn() -> usize, usize); 8] = [
        ("assign --nic eni-me --count 3", false,
         "eni-me has 8 private addresses; 3 more would make 11, over instance type c5.large's quota per NIC (10): nothing was sent", &me, 8),
        ("assign --nic eni-me --count 2", true, "assigned 10.0.0.100", &me, 10),
        ("assign --nic eni-free --address 10.0.0.200 --address 10.0.0.201", false,
         "over the limit of a NIC that is not attached (10)", &free, 9),
        ("assign --nic eni-other --count 1", false, "attached to i-other", &other, 2),
        ("unassign --nic eni-me --address 10.0.0.10", false,
         "10.0.0.10 is not a secondary address of eni-me", &me, 10),
        ("unassign --nic eni-me --address 10.0.0.100", true, "unassigned 10.0.0.100", &me, 9),
        ("assign --nic eni-nope --count 1", false, "does not exist", &me, 9),
        ("assign --nic eni-free --address 10.0.0.200 --json", true, "\"assigned\"", &free, 10),
    ];
    for (args, ok, says, n, want) in steps {
        let out = step(&ns, &config, args, ok, says, n, want);
        if args == "assign --nic eni-me --count 2" {
            assert!(out.contains("assigned 10.0.0.101"), "{out}");
        }
        if args.ends_with("--json") {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["assigned"][0], "10.0.0.200");
            assert_eq!(v["limit"], 10);
        }
    }
}

#[test]
fn aliyun_eni_assign_checks_the_limits_first() {
    require_root();
    let ns = Netns::new("enialiyun").unwrap();
    let md = FakeImds::start(&ns);
    let api = FakeAliyunApi::start(&ns, "cn-hangzhou", "i-me");
    md.set("region-id", "cn-hangzhou");
    md.set("instance-id", "i-me");
    md.set("instance/instance-type", "ecs.g7.large");
    api.keys
        .lock()
        .unwrap()
        .insert("LTAIfake".into(), ("secret".into(), None));
    api.types.lock().unwrap().insert("ecs.g7.large".into(), 6);
    let addrs = |n: u8| -> Vec<(String, String)> {
        (0..n)
            .map(|h| (format!("10.0.1.{}", 20 + h), String::new()))
            .collect()
    };
    let mut mine = FakeAliyunApi::nic("eni-1", "00:16:3e:00:00:01", &addrs(5));
    mine["InstanceId"] = "i-me".into();
    *api.nics.lock().unwrap() = vec![mine];
    let count = || {
        api.nics.lock().unwrap()[0]["PrivateIpSets"]["PrivateIpSet"]
            .as_array()
            .unwrap()
            .len()
    };
    // Credentials from the config this time.
    let config = format!(
        "[[interface]]\nname = \"eth0\"\n[aliyun]\nendpoint = \"http://127.0.0.1:{}\"\napi_endpoint = \"http://127.0.0.1:{}\"\n\
         access_key_id = \"LTAIfake\"\naccess_key_secret = \"secret\"\n",
        md.port, api.port
    );
    // A wrong secret: the service's refusal, nothing changed.
    let bad = config.replace(
        "access_key_secret = \"secret\"",
        "access_key_secret = \"nope\"",
    );
    #[rustfmt::skip]
    let steps = [
        (&config, "assign --nic eni-1 --count 2", false, "over instance type ecs.g7.large's quota per NIC (6)", 5),
        (&config, "assign --nic eni-1 --address 10.0.1.77", true, "assigned 10.0.1.77", 6),
        (&config, "unassign --nic eni-1 --address 10.0.1.77", true, "unassigned 10.0.1.77", 5),
        (&bad, "assign --nic eni-1 --count 1", false, "SignatureDoesNotMatch", 5),
    ];
    for (config, args, ok, says, want) in steps {
        step(&ns, config, args, ok, says, count, want);
    }
}
