//! `ipnat eni assign|unassign` (the real binary) against fake clouds: the documented limits are
//! checked before anything is sent (a refused request leaves the cloud unchanged), then the
//! cloud's API assigns or unassigns, on AWS (EC2, SigV4) and Alibaba Cloud (ECS, signature v1).

use std::net::Ipv4Addr;

use ipnat_tests::{
    fakecloud::{FakeAliyunApi, FakeEc2, FakeEc2Nic, FakeImds},
    lab::ipnat_in,
    netns::{Netns, require_root},
};

/// `ipnat eni <args> --config <config>` in `ns`: (success, stdout + stderr).
fn eni(ns: &Netns, config: &str, args: &[&str]) -> (bool, String) {
    let path = std::env::temp_dir().join(format!(
        "ipnat-eni-{}-{}.toml",
        std::process::id(),
        ns.name()
    ));
    std::fs::write(&path, config).unwrap();
    let mut all = vec!["eni"];
    all.extend_from_slice(args);
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

    let (ok, out) = eni(&ns, &config, &["assign", "--nic", "eni-me", "--count", "3"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("eni-me has 8 private addresses; 3 more would make 11, over instance type c5.large's quota per NIC (10): nothing was sent"),
        "{out}"
    );
    assert_eq!(count("eni-me"), 8);
    let (ok, out) = eni(&ns, &config, &["assign", "--nic", "eni-me", "--count", "2"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("assigned 10.0.0.100") && out.contains("assigned 10.0.0.101"),
        "{out}"
    );
    assert_eq!(count("eni-me"), 10);

    let (ok, out) = eni(
        &ns,
        &config,
        &[
            "assign",
            "--nic",
            "eni-free",
            "--address",
            "10.0.0.200",
            "--address",
            "10.0.0.201",
        ],
    );
    assert!(
        !ok && out.contains("over the limit of a NIC that is not attached (10)"),
        "{out}"
    );
    assert_eq!(count("eni-free"), 9);
    let (ok, out) = eni(
        &ns,
        &config,
        &[
            "assign",
            "--nic",
            "eni-free",
            "--address",
            "10.0.0.200",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["assigned"][0], "10.0.0.200");
    assert_eq!(v["limit"], 10);

    let (ok, out) = eni(
        &ns,
        &config,
        &["assign", "--nic", "eni-other", "--count", "1"],
    );
    assert!(!ok && out.contains("attached to i-other"), "{out}");
    let (ok, out) = eni(
        &ns,
        &config,
        &["unassign", "--nic", "eni-me", "--address", "10.0.0.10"],
    );
    assert!(
        !ok && out.contains("10.0.0.10 is not a secondary address of eni-me"),
        "{out}"
    );
    assert_eq!(count("eni-me"), 10);
    let (ok, out) = eni(
        &ns,
        &config,
        &["unassign", "--nic", "eni-me", "--address", "10.0.0.100"],
    );
    assert!(ok && out.contains("unassigned 10.0.0.100"), "{out}");
    assert_eq!(count("eni-me"), 9);
    let (ok, out) = eni(
        &ns,
        &config,
        &["assign", "--nic", "eni-nope", "--count", "1"],
    );
    assert!(!ok && out.contains("does not exist"), "{out}");
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
    let (ok, out) = eni(&ns, &config, &["assign", "--nic", "eni-1", "--count", "2"]);
    assert!(
        !ok && out.contains("over instance type ecs.g7.large's quota per NIC (6)"),
        "{out}"
    );
    assert_eq!(count(), 5);
    let (ok, out) = eni(
        &ns,
        &config,
        &["assign", "--nic", "eni-1", "--address", "10.0.1.77"],
    );
    assert!(ok && out.contains("assigned 10.0.1.77"), "{out}");
    assert_eq!(count(), 6);
    let (ok, out) = eni(
        &ns,
        &config,
        &["unassign", "--nic", "eni-1", "--address", "10.0.1.77"],
    );
    assert!(ok && out.contains("unassigned 10.0.1.77"), "{out}");
    assert_eq!(count(), 5);
    // A wrong secret: the service's refusal, nothing changed.
    let bad = config.replace(
        "access_key_secret = \"secret\"",
        "access_key_secret = \"nope\"",
    );
    let (ok, out) = eni(&ns, &bad, &["assign", "--nic", "eni-1", "--count", "1"]);
    assert!(!ok && out.contains("SignatureDoesNotMatch"), "{out}");
    assert_eq!(count(), 5);
}
