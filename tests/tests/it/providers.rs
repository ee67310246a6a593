//! Cloud providers against a fake metadata service on loopback: the rules the metadata calls
//! for are applied, and a metadata service that returns garbage or hangs changes nothing.

use std::{sync::atomic::Ordering, time::Duration};

use ipnat_tests::{
    fakecloud::FakeImds,
    lab::{Ipnat, METADATA_MACS, SteerLab},
    netns::{Netns, require_root},
};

fn mac(ns: &Netns, iface: &str) -> String {
    ns.mac(iface).unwrap()
}

fn eth1(lab: &SteerLab) -> String {
    String::from_utf8_lossy(&lab.inst.ip(&["-4", "addr", "show", "eth1"]).unwrap().stdout)
        .into_owned()
}

/// Stops `ipnat` and takes its data plane down: the address ipnat added, `removed`, goes from
/// eth1 (and `down` says so); every one of `kept` (not ipnat's) stays.
fn down_removes_only_its_address(ipnat: &mut Ipnat, lab: &SteerLab, removed: &str, kept: &[&str]) {
    ipnat.stop().unwrap();
    let (ok, out) = ipnat.down().unwrap();
    assert!(
        ok.success() && out.contains(&format!("removed address {removed} on eth1")),
        "{out}"
    );
    let after = eth1(lab);
    assert!(!after.contains(removed), "{after}");
    for k in kept {
        assert!(after.contains(k), "down removed {k}, not ipnat's: {after}");
    }
}

/// The running controller's last sync as `ipnat status` reports it.
fn last_sync(ipnat: &Ipnat) -> Option<ipnat::providers::SyncState> {
    ipnat::dataplane::status(&ipnat.pin_path).unwrap().sync
}

/// Waits until the last sync's result says what `says` looks for.
fn wait_for_sync(ipnat: &Ipnat, what: &str, says: impl Fn(&ipnat::providers::SyncState) -> bool) {
    wait_until(what, || last_sync(ipnat).is_some_and(|s| says(&s)));
}

/// `ipnat run` in `ns` (eth0 and eth1) with the `[section]` provider's
/// metadata at `port`, synced every second with a 500 ms timeout; `top` goes before the
/// interfaces, `more` into the section.
fn start_synced(
    ns: &ipnat_tests::netns::Netns,
    tag: &str,
    section: &str,
    port: u16,
    top: &str,
    more: &str,
) -> (Ipnat, String) {
    let pin = format!("/sys/fs/bpf/ipnat-{tag}-{}", std::process::id());
    let config = format!(
        "pin_path = \"{pin}\"\n{top}[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n\
         [{section}]\nendpoint = \"http://127.0.0.1:{port}\"\ninterval_secs = 1\ntimeout_ms = 500\n{more}"
    );
    (Ipnat::start(ns, &config, &pin).unwrap(), config)
}

fn rules(ipnat: &Ipnat) -> usize {
    ipnat.stats_json().unwrap()["steering"]
        .as_array()
        .unwrap()
        .len()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    ipnat_tests::lab::wait_until(what, || Ok(f())).unwrap();
}

fn udp_ok(lab: &SteerLab, bind: std::net::Ipv4Addr, port: u16) -> bool {
    lab.udp_from(bind, port).is_ok()
}

#[test]
fn aws_metadata_drives_steering_and_bad_answers_change_nothing() {
    require_root();
    let lab = SteerLab::new(1, false).unwrap();
    let (imds, m1) = lab
        .aws_metadata("10.0.1.20\n10.0.1.21\n10.0.1.22\n10.0.1.23")
        .unwrap();
    let base = METADATA_MACS;
    imds.set(&format!("{base}{m1}/ipv4-associations/"), "198.51.100.7\n");
    imds.set(
        &format!("{base}{m1}/ipv4-associations/198.51.100.7"),
        "10.0.1.21",
    );

    // The cloud assigned 10.0.1.23 to eth1's NIC too: its router lets it out of v1.
    lab.vpc
        .run(
            "nft",
            &["insert rule inet cloud srccheck iifname \"v1\" ip saddr 10.0.1.23 accept"],
        )
        .unwrap();
    let (mut ipnat, _) = start_synced(&lab.inst, "aws", "aws", imds.port, "", "");
    wait_until("4 rules from the metadata", || rules(&ipnat) == 4);
    // The address the cloud assigned and the host lacked is put on eth1 (10.0.1.23).
    assert!(eth1(&lab).contains("10.0.1.23/24"), "{}", eth1(&lab));
    let extra: std::net::Ipv4Addr = "10.0.1.23".parse().unwrap();
    for (i, a) in lab.eth1.iter().chain([&extra]).enumerate() {
        assert!(udp_ok(&lab, *a, 7200 + i as u16), "{a} is steered");
    }
    let st = ipnat::dataplane::status(&ipnat.pin_path).unwrap();
    // `ipnat status` names the addresses ipnat owns (and only those).
    let owned: Vec<(String, String, &str)> = st
        .addresses
        .iter()
        .map(|a| (a.interface.clone(), a.address.clone(), a.owner))
        .collect();
    assert_eq!(
        owned,
        [(
            "eth1".to_owned(),
            "10.0.1.23/24".to_owned(),
            "provider sync"
        )]
    );
    assert!(
        st.render()
            .contains("added:      10.0.1.23/24 on eth1 (provider sync")
    );
    let sync = st.sync.expect("sync state");
    assert_eq!(
        (sync.provider.as_str(), sync.result.as_str(), sync.rules),
        ("aws", "ok", 4)
    );

    // Garbage, then a metadata service that hangs: errors, and the last good table stays.
    imds.set(&format!("{base}{m1}/local-ipv4s"), "<html>503</html>");
    wait_for_sync(&ipnat, "a failed sync", |s| {
        s.result.contains("not an IPv4 address")
    });
    assert_eq!(rules(&ipnat), 4);
    assert!(
        eth1(&lab).contains("10.0.1.23/24"),
        "garbage removes nothing"
    );
    assert!(udp_ok(&lab, lab.eth1[2], 7210));
    imds.set(
        &format!("{base}{m1}/local-ipv4s"),
        "10.0.1.20\n10.0.1.21\n10.0.1.22\n10.0.1.23",
    );
    imds.hang.store(true, Ordering::Relaxed);
    wait_for_sync(&ipnat, "a timed-out sync", |s| {
        s.result.contains("error") && !s.result.contains("IPv4")
    });
    assert_eq!(rules(&ipnat), 4);
    imds.hang.store(false, Ordering::Relaxed);
    // Expired tokens: 401 on every GET; nothing changes, and a fresh token next time heals.
    imds.expire_tokens.store(true, Ordering::Relaxed);
    wait_for_sync(&ipnat, "a 401", |s| s.result.contains("HTTP 401"));
    assert_eq!(rules(&ipnat), 4);
    assert!(eth1(&lab).contains("10.0.1.23/24"), "a 401 removes nothing");
    imds.expire_tokens.store(false, Ordering::Relaxed);

    // The cloud removes two addresses: their rules go at the next sync, and the address ipnat
    // added goes from eth1; the one it did not add (10.0.1.22, the host's own) stays.
    imds.set(&format!("{base}{m1}/local-ipv4s"), "10.0.1.20\n10.0.1.21");
    wait_until("2 rules", || rules(&ipnat) == 2);
    wait_until("10.0.1.23 removed", || !eth1(&lab).contains("10.0.1.23/24"));
    assert!(eth1(&lab).contains("10.0.1.22/24"));
    assert!(udp_ok(&lab, lab.eth1[0], 7220));
    assert!(*imds.gets.lock().unwrap() > 10);
    // `ipnat down` takes away what ipnat added, and only that.
    imds.set(&format!("{base}{m1}/local-ipv4s"), "10.0.1.20\n10.0.1.23");
    wait_until("10.0.1.23 back", || eth1(&lab).contains("10.0.1.23/24"));
    down_removes_only_its_address(&mut ipnat, &lab, "10.0.1.23/24", &["10.0.1.21/24"]);
}

/// Alibaba Cloud's metadata for the lab's instance: eth0 (eni-0, 10.0.0.10) and eth1 (eni-1)
/// with the private addresses `eth1_ips` (a JSON array); returns the service and eth1's MAC.
fn aliyun_metadata(lab: &SteerLab, eth1_ips: &str) -> (FakeImds, String) {
    lab.aliyun_metadata(eth1_ips).unwrap()
}

#[test]
fn aliyun_metadata_drives_steering() {
    require_root();
    let lab = SteerLab::new(1, false).unwrap();
    let (meta, m1) = aliyun_metadata(&lab, r#"["10.0.1.20","10.0.1.21","10.0.1.22"]"#);
    let base = METADATA_MACS;
    let (ipnat, _) = start_synced(&lab.inst, "aliyun", "aliyun", meta.port, "", "");
    std::thread::sleep(Duration::from_millis(1500));
    let sync = last_sync(&ipnat);
    assert_eq!(rules(&ipnat), 3, "{sync:?}");
    for (i, a) in lab.eth1.iter().enumerate() {
        assert!(udp_ok(&lab, *a, 7300 + i as u16), "{a} is steered");
    }
    // A broken JSON array changes nothing.
    meta.set(&format!("{base}{m1}/private-ipv4s"), "[\"10.0.1.20\",");
    wait_for_sync(&ipnat, "a failed sync", |s| {
        s.provider == "aliyun" && s.result.contains("JSON array")
    });
    assert_eq!(rules(&ipnat), 3);
}

/// A reload starts a sync at once, whatever the sync's schedule (an interval of an hour here,
/// or a backoff after failures): a config that fixes the provider's settings takes effect now.
#[test]
fn a_reload_starts_a_sync_at_once() {
    require_root();
    let lab = SteerLab::new(1, false).unwrap();
    let (meta, m1) = aliyun_metadata(&lab, r#"["10.0.1.20","10.0.1.21"]"#);
    let base = METADATA_MACS;
    let pin = format!("/sys/fs/bpf/ipnat-resync-{}", std::process::id());
    let config = |timeout_ms: u32| {
        format!(
            "pin_path = \"{pin}\"\n[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n\
             [aliyun]\nendpoint = \"http://127.0.0.1:{}\"\ninterval_secs = 3600\ntimeout_ms = {timeout_ms}\n",
            meta.port
        )
    };
    let mut ipnat = Ipnat::start(&lab.inst, &config(500), &pin).unwrap();
    wait_until("the first sync", || rules(&ipnat) == 2);
    // The cloud assigns a third address; the next scheduled sync is an hour away.
    meta.set(
        &format!("{base}{m1}/private-ipv4s"),
        r#"["10.0.1.20","10.0.1.21","10.0.1.22"]"#,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rules(&ipnat), 2, "synced before the reload");
    ipnat.reload(&config(600)).unwrap();
    wait_until("a sync right after the reload", || rules(&ipnat) == 3);
}

fn lo_has(ns: &Netns, addr: std::net::Ipv4Addr) -> bool {
    let out = ns.ip(&["-4", "addr", "show", "dev", "lo"]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/32 "))
}

fn mappings(ipnat: &Ipnat) -> usize {
    ipnat.stats_json().unwrap()["mappings"]
        .as_array()
        .unwrap()
        .len()
}

/// Host orientation with nothing but `[aws]`: the EIP associations in the metadata become the
/// mappings and the instance's local addresses, the secondary NIC's addresses are steered, a
/// removed association takes its address away, a hung metadata service changes nothing, and a
/// controller restarted while it hangs keeps the last good state.
#[test]
fn aws_associations_become_the_host_orientations_eips() {
    use ipnat_tests::{
        hostlab::{EIP0, EIP1, HostLab, INET, PRIV0, PRIV1},
        lab::{tcp_exchange_at, tcp_exchange_from},
    };
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    require_root();
    let lab = HostLab::new().unwrap();
    let imds = FakeImds::start(&lab.inst);
    let (m0, m1) = (mac(&lab.inst, "eth0"), mac(&lab.inst, "eth1"));
    let base = METADATA_MACS;
    imds.set(base, &format!("{m0}/\n{m1}/\n"));
    let priv1: Vec<String> = PRIV1.iter().map(|a| a.to_string()).collect();
    for (m, dn, ips, subnet) in [
        (&m0, "0", PRIV0.to_string(), "10.0.0.0/24"),
        (&m1, "1", priv1.join("\n"), "10.0.1.0/24"),
    ] {
        imds.set(&format!("{base}{m}/device-number"), dn);
        imds.set(&format!("{base}{m}/interface-id"), &format!("eni-{dn}"));
        imds.set(&format!("{base}{m}/local-ipv4s"), &ips);
        imds.set(&format!("{base}{m}/subnet-ipv4-cidr-block"), subnet);
    }
    let associate = |m: &str, pairs: &[(Ipv4Addr, Ipv4Addr)]| {
        let list: Vec<String> = pairs.iter().map(|(e, _)| e.to_string()).collect();
        imds.set(&format!("{base}{m}/ipv4-associations/"), &list.join("\n"));
        for (e, p) in pairs {
            imds.set(&format!("{base}{m}/ipv4-associations/{e}"), &p.to_string());
        }
    };
    associate(&m0, &[(EIP0, PRIV0)]);
    let eth1_pairs: Vec<(Ipv4Addr, Ipv4Addr)> = EIP1.into_iter().zip(PRIV1).collect();
    associate(&m1, &eth1_pairs);

    let (mut ipnat, config) = start_synced(
        &lab.inst,
        "awshost",
        "aws",
        imds.port,
        "orientation = \"host\"\ninternal = [\"10.0.0.0/16\"]\n",
        "",
    );
    wait_until("4 mappings from the associations", || mappings(&ipnat) == 4);
    wait_until("the EIPs on lo", || {
        lo_has(&lab.inst, EIP0) && EIP1.iter().all(|e| lo_has(&lab.inst, *e))
    });
    assert_eq!(rules(&ipnat), 3);
    for (i, eip) in [EIP0, EIP1[1]].into_iter().enumerate() {
        let port = 7300 + i as u16;
        let x = tcp_exchange_at(
            &lab.inet,
            None,
            &lab.inst,
            Ipv4Addr::UNSPECIFIED,
            eip,
            port,
            b"in",
            10,
        )
        .unwrap();
        assert_eq!(x.server_local, SocketAddr::from((eip, port)));
        let x = tcp_exchange_from(&lab.inst, Some(eip), &lab.inet, INET, port + 10, b"out", 10)
            .unwrap();
        assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(eip));
    }
    let sync = last_sync(&ipnat).unwrap();
    assert_eq!((sync.result.as_str(), sync.mappings), ("ok", 4));

    // The cloud disassociates the third EIP: its mapping and address go at the next sync.
    associate(&m1, &eth1_pairs[..2]);
    wait_until("3 mappings", || mappings(&ipnat) == 3);
    wait_until("EIP removed from lo", || !lo_has(&lab.inst, EIP1[2]));

    // A metadata service that hangs changes nothing, also across a controller restart.
    imds.hang.store(true, Ordering::Relaxed);
    ipnat.kill().unwrap();
    ipnat.spawn(&lab.inst, &config).unwrap();
    wait_for_sync(&ipnat, "a timed-out sync", |s| s.result.contains("error"));
    assert_eq!(mappings(&ipnat), 3);
    assert!(lo_has(&lab.inst, EIP1[1]) && lo_has(&lab.inst, EIP0));
    let x = tcp_exchange_at(
        &lab.inet,
        None,
        &lab.inst,
        Ipv4Addr::UNSPECIFIED,
        EIP1[1],
        7320,
        b"x",
        10,
    )
    .unwrap();
    assert_eq!(x.server_local, SocketAddr::from((EIP1[1], 7320)));
    imds.hang.store(false, Ordering::Relaxed);
    // The secondary NIC detached in the cloud: only its entries go (its mappings, addresses on
    // lo and steering rules); eth0's EIP stays.
    imds.set(base, &format!("{m0}/\n"));
    wait_until("1 mapping", || mappings(&ipnat) == 1);
    wait_until("eth1's EIP gone", || !lo_has(&lab.inst, EIP1[1]));
    assert_eq!(rules(&ipnat), 0);
    assert!(lo_has(&lab.inst, EIP0));
    let x = tcp_exchange_at(
        &lab.inet,
        None,
        &lab.inst,
        Ipv4Addr::UNSPECIFIED,
        EIP0,
        7330,
        b"x",
        10,
    )
    .unwrap();
    assert_eq!(x.server_local, SocketAddr::from((EIP0, 7330)));
    ipnat.stop().unwrap();
    let (ok, out) = ipnat.down().unwrap();
    assert!(ok.success(), "{out}");
    assert!(!lo_has(&lab.inst, EIP0), "{out}");
}

/// Host orientation on Alibaba Cloud with `openapi = true`: the RAM role's temporary
/// credentials from the metadata sign DescribeNetworkInterfaces, every NIC's EIPs (the
/// metadata knows only the primary's) become mappings and addresses on lo; a wrong
/// signature, a failing page, garbage and throttling change nothing; a disassociation is
/// followed once the API heals.
#[test]
fn aliyun_openapi_gives_every_nics_eips_and_bad_answers_change_nothing() {
    use ipnat_tests::{
        fakecloud::{FakeAliyunApi, PageFault},
        hostlab::{EIP0, EIP1, HostLab, INET, PRIV0, PRIV1},
        lab::{tcp_exchange_at, tcp_exchange_from},
    };
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    require_root();
    let lab = HostLab::new().unwrap();
    let md = FakeImds::start(&lab.inst);
    let api = FakeAliyunApi::start(&lab.inst, "cn-hangzhou", "i-fake1");
    let (m0, m1) = (mac(&lab.inst, "eth0"), mac(&lab.inst, "eth1"));
    let base = METADATA_MACS;
    md.set("mac", &m0);
    md.set("eipv4", &EIP0.to_string());
    md.set("region-id", "cn-hangzhou");
    md.set("instance-id", "i-fake1");
    md.set(base, &format!("{m0}/\n{m1}/\n"));
    let priv1: Vec<String> = PRIV1.iter().map(|a| format!("\"{a}\"")).collect();
    for (m, id, ips, gw, cidr) in [
        (
            &m0,
            "eni-0",
            format!("[\"{PRIV0}\"]"),
            "10.0.0.1",
            "10.0.0.0/24",
        ),
        (
            &m1,
            "eni-1",
            format!("[{}]", priv1.join(",")),
            "10.0.1.1",
            "10.0.1.0/24",
        ),
    ] {
        md.set(&format!("{base}{m}/network-interface-id"), id);
        md.set(&format!("{base}{m}/private-ipv4s"), &ips);
        md.set(&format!("{base}{m}/gateway"), gw);
        md.set(&format!("{base}{m}/vswitch-cidr-block"), cidr);
    }
    let role = |secret: &str| md.set_aliyun_role("ipnat-role", "STS.fake", secret, "sts-token");
    role("sts-secret");
    api.keys.lock().unwrap().insert(
        "STS.fake".into(),
        ("sts-secret".into(), Some("sts-token".into())),
    );
    let set_nics = |eth1_eips: usize| {
        let eth1: Vec<(String, String)> = PRIV1
            .iter()
            .zip(EIP1)
            .enumerate()
            .map(|(i, (p, e))| {
                let e = if i < eth1_eips {
                    e.to_string()
                } else {
                    String::new()
                };
                (p.to_string(), e)
            })
            .collect();
        *api.nics.lock().unwrap() = vec![
            FakeAliyunApi::nic(
                "eni-0",
                &m0.to_uppercase(),
                &[(PRIV0.to_string(), EIP0.to_string())],
            ),
            FakeAliyunApi::nic("eni-1", &m1.to_uppercase(), &eth1),
        ];
    };
    set_nics(3);

    let (ipnat, _) = start_synced(
        &lab.inst,
        "aliapi",
        "aliyun",
        md.port,
        "orientation = \"host\"\ninternal = [\"10.0.0.0/16\"]\n",
        &format!(
            "openapi = true\napi_endpoint = \"http://127.0.0.1:{}\"\n",
            api.port
        ),
    );
    wait_until("4 mappings from the OpenAPI", || mappings(&ipnat) == 4);
    wait_until("the EIPs on lo", || {
        EIP1.iter().all(|e| lo_has(&lab.inst, *e))
    });
    let x = tcp_exchange_at(
        &lab.inet,
        None,
        &lab.inst,
        Ipv4Addr::UNSPECIFIED,
        EIP1[2],
        7400,
        b"in",
        10,
    )
    .unwrap();
    assert_eq!(x.server_local, SocketAddr::from((EIP1[2], 7400)));
    let x = tcp_exchange_from(&lab.inst, Some(EIP1[2]), &lab.inet, INET, 7401, b"out", 10).unwrap();
    assert_eq!(x.server_saw_peer.ip(), IpAddr::V4(EIP1[2]));

    let status = || last_sync(&ipnat).unwrap();
    // The sync reports `says`, and the table and the addresses are as they were.
    let refused = |what: &str, says: &str| {
        wait_until(what, || status().result.contains(says));
        assert_eq!(mappings(&ipnat), 4, "{what}");
        assert!(
            EIP1.iter().all(|e| lo_has(&lab.inst, *e)) && lo_has(&lab.inst, EIP0),
            "{what}"
        );
    };
    // Credentials rotated wrongly: the service refuses the signature.
    role("stale-secret");
    refused("wrong signature", "SignatureDoesNotMatch");
    role("sts-secret");
    // A page missing in the middle (HTTP 500 on page 2 of 2).
    *api.fail_page.lock().unwrap() = Some((
        2,
        500,
        "{\"Code\":\"InternalError\",\"Message\":\"The request processing has failed due to some unknown error.\",\"RequestId\":\"X\"}".into(),
    ));
    refused("a failing page", "InternalError");
    // Garbage, then throttling.
    *api.fail_page.lock().unwrap() = Some((1, 200, "<html>oops</html>".into()));
    refused("garbage", "not its documented JSON");
    *api.fail_page.lock().unwrap() = Some((
        1,
        400,
        "{\"Code\":\"Throttling.User\",\"Message\":\"Request was denied due to user flow control.\",\"RequestId\":\"X\"}".into(),
    ));
    refused("throttling", "Throttling.User");
    *api.fail_page.lock().unwrap() = None;
    // Paged by NextToken: page 2 repeating page 1, then page 2 missing (page 3's NICs in its
    // place): errors, never a partial table.
    *api.page_fault.lock().unwrap() = Some(PageFault::Repeat(2));
    refused("a repeated page", "a page came twice");
    *api.page_fault.lock().unwrap() = Some(PageFault::Skip(2));
    refused("a missing page", "a page is missing");
    *api.page_fault.lock().unwrap() = None;
    // Healed, and the third EIP disassociated.
    set_nics(2);
    wait_until("3 mappings", || mappings(&ipnat) == 3);
    wait_until("the third EIP gone from lo", || !lo_has(&lab.inst, EIP1[2]));
    assert_eq!(status().result, "ok");
    assert!(*api.calls.lock().unwrap() >= 4, "two pages a sync");
}

/// A gateway on AWS with `api = true`: the EC2 API (SigV4 with the instance profile's
/// temporary credentials) lists the backends' NICs tagged with the EIP they are served by; each
/// becomes a mapping from the gateway's address that EIP is associated with; `ipnat status`
/// says which EIP each stands for and warns about a source/destination check left on. A wrong
/// signature, a failing page, garbage and throttling change nothing.
#[test]
fn ec2_api_tags_give_a_gateway_its_backends_and_bad_answers_change_nothing() {
    use ipnat_tests::{
        fakecloud::{FakeEc2, FakeEc2Nic},
        netns::veth,
    };
    use std::net::Ipv4Addr;
    require_root();
    let gw = Netns::new("ec2gw").unwrap();
    let other = Netns::new("ec2peer").unwrap();
    veth(&gw, "eth0", &other, "eth0").unwrap();
    for a in ["10.0.0.5/24", "10.0.0.6/24", "10.0.0.7/24"] {
        gw.ip(&["addr", "add", a, "dev", "eth0"]).unwrap();
    }
    let imds = FakeImds::start(&gw);
    let ec2 = FakeEc2::start(&gw, "eu-west-1");
    let m0 = mac(&gw, "eth0");
    let base = METADATA_MACS;
    imds.set("mac", &m0);
    imds.set("instance-id", "i-gw");
    imds.set("placement/region", "eu-west-1");
    imds.set(base, &format!("{m0}/\n"));
    imds.set(&format!("{base}{m0}/device-number"), "0");
    imds.set(&format!("{base}{m0}/interface-id"), "eni-gw");
    imds.set(&format!("{base}{m0}/vpc-id"), "vpc-1");
    imds.set(
        &format!("{base}{m0}/local-ipv4s"),
        "10.0.0.5\n10.0.0.6\n10.0.0.7",
    );
    imds.set(&format!("{base}{m0}/subnet-ipv4-cidr-block"), "10.0.0.0/24");
    imds.set(
        &format!("{base}{m0}/ipv4-associations/"),
        "198.51.100.6\n198.51.100.7\n",
    );
    imds.set(
        &format!("{base}{m0}/ipv4-associations/198.51.100.6"),
        "10.0.0.6",
    );
    imds.set(
        &format!("{base}{m0}/ipv4-associations/198.51.100.7"),
        "10.0.0.7",
    );
    let role =
        |secret: &str| imds.set_aws_role("ipnat-gateway", "ASIAFAKE", secret, "session-token");
    role("right");
    ec2.keys.lock().unwrap().insert(
        "ASIAFAKE".into(),
        ("right".into(), Some("session-token".into())),
    );
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let nic =
        |id: &str, vpc: &str, instance: Option<&str>, addr: &str, tag: Option<&str>| FakeEc2Nic {
            id: id.into(),
            mac: "02:00:00:00:00:01".into(),
            vpc: vpc.into(),
            subnet: "subnet-1".into(),
            instance: instance.map(str::to_owned),
            source_dest_check: true,
            addresses: vec![(ip(addr), None)],
            tags: tag
                .map(|t| vec![("ipnat:eip".to_owned(), t.to_owned())])
                .unwrap_or_default(),
        };
    let mut own = nic("eni-gw", "vpc-1", Some("i-gw"), "10.0.0.5", None);
    own.addresses
        .push((ip("10.0.0.6"), Some(ip("198.51.100.6"))));
    own.addresses
        .push((ip("10.0.0.7"), Some(ip("198.51.100.7"))));
    *ec2.nics.lock().unwrap() = vec![
        own,
        nic(
            "eni-b1",
            "vpc-1",
            Some("i-b1"),
            "10.0.1.10",
            Some("198.51.100.6"),
        ),
        nic(
            "eni-b2",
            "vpc-1",
            Some("i-b2"),
            "10.0.1.11",
            Some("198.51.100.7"),
        ),
        // Names an EIP the gateway does not have: skipped, with a warning.
        nic(
            "eni-b3",
            "vpc-1",
            Some("i-b3"),
            "10.0.1.12",
            Some("198.51.100.99"),
        ),
        // Another VPC, and an untagged NIC: not backends.
        nic(
            "eni-x",
            "vpc-2",
            Some("i-x"),
            "10.9.0.10",
            Some("198.51.100.6"),
        ),
        nic("eni-y", "vpc-1", Some("i-y"), "10.0.1.13", None),
    ];

    let pin = format!("/sys/fs/bpf/ipnat-ec2-{}", std::process::id());
    let config = format!(
        "pin_path = \"{pin}\"\n[[interface]]\nname = \"eth0\"\n\
         [aws]\nendpoint = \"http://127.0.0.1:{}\"\ninterval_secs = 1\ntimeout_ms = 500\n\
         addresses = false\napi = true\napi_endpoint = \"http://127.0.0.1:{}\"\n",
        imds.port, ec2.port
    );
    let ipnat = Ipnat::start(&gw, &config, &pin).unwrap();
    let table = || {
        let mut t: Vec<(String, String)> = ipnat.stats_json().unwrap()["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["public"].as_str().unwrap().to_owned(),
                    m["private"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        t.sort();
        t
    };
    let want = vec![
        ("10.0.0.6".to_owned(), "10.0.1.10".to_owned()),
        ("10.0.0.7".to_owned(), "10.0.1.11".to_owned()),
    ];
    wait_until("the two backends", || table() == want);
    let status = || {
        let out = gw
            .run(
                ipnat_tests::lab::ipnat_bin().to_str().unwrap(),
                &["status", "--pin-path", &pin],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let st = status();
    assert!(
        st.contains("10.0.0.6 <-> 10.0.1.10 stands for EIP 198.51.100.6 (tagged on eni-b1)"),
        "{st}"
    );
    assert!(
        st.contains("source/destination check is on for eni-gw"),
        "{st}"
    );
    assert!(
        st.contains("eni-b3: tag ipnat:eip names 198.51.100.99"),
        "{st}"
    );

    let result = || last_sync(&ipnat).unwrap().result;
    // The sync reports `says`, and the table is as it was.
    let refused = |what: &str, says: &str| {
        wait_until(what, || result().contains(says));
        assert_eq!(table(), want, "{what}");
    };
    // Rotated credentials the API does not accept; a failing second page; garbage; throttling.
    role("wrong");
    refused("SignatureDoesNotMatch", "SignatureDoesNotMatch");
    role("right");
    *ec2.fail_page.lock().unwrap() = Some((
        2,
        500,
        "<Response><Errors><Error><Code>InternalError</Code><Message>An internal error has occurred.</Message></Error></Errors><RequestID>x</RequestID></Response>".into(),
    ));
    refused("InternalError", "InternalError");
    *ec2.fail_page.lock().unwrap() = Some((1, 200, "<html>maintenance</html>".into()));
    refused("garbage", "not its documented XML");
    *ec2.fail_page.lock().unwrap() = Some((
        1,
        503,
        "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>".into(),
    ));
    refused("throttled", "RequestLimitExceeded");
    // Four kinds of failure in a row: retried with a growing delay.
    let sync = last_sync(&ipnat).unwrap();
    assert!(sync.consecutive_failures >= 4, "{sync:?}");
    assert!(sync.next_attempt_unix > sync.last_attempt_unix, "{sync:?}");
    // Healed; the second backend's tag removed, the source/destination check turned off.
    *ec2.fail_page.lock().unwrap() = None;
    {
        let mut nics = ec2.nics.lock().unwrap();
        nics[2].tags.clear();
        nics[0].source_dest_check = false;
    }
    wait_until("one backend", || table().len() == 1);
    assert_eq!(result(), "ok");
    let sync = last_sync(&ipnat).unwrap();
    assert_eq!(sync.consecutive_failures, 0);
    assert!(!status().contains("source/destination check"));
    // Page 2 repeating page 1 (EC2 gives no total to count a missing page against): an error,
    // never a partial table.
    *ec2.page_fault.lock().unwrap() = Some(ipnat_tests::fakecloud::PageFault::Repeat(2));
    wait_until("a repeated page", || result().contains("a page came twice"));
    assert_eq!(table().len(), 1);
    *ec2.page_fault.lock().unwrap() = None;
    wait_until("healed", || result() == "ok");
}

/// Addresses ipnat adds from the cloud's metadata, the first of them the primary of its
/// subnet on eth1, and the admin's own added after it in the same subnet, on a host with
/// `promote_secondaries` 0: the cloud removing ipnat's primary, and `ipnat down`, remove only
/// ipnat's addresses; the admin's stays, and promote_secondaries is put back.
#[test]
fn removing_ipnats_addresses_never_removes_the_admins() {
    require_root();
    let lab = SteerLab::new(1, false).unwrap();
    // Only the cloud's addresses, and ipnat puts them there.
    lab.inst.ip(&["addr", "flush", "dev", "eth1"]).unwrap();
    for conf in ["all", "default", "eth1"] {
        lab.inst
            .sysctl(&format!("net.ipv4.conf.{conf}.promote_secondaries"), "0")
            .unwrap();
    }
    let promote = || {
        let out = lab
            .inst
            .run("sysctl", &["-n", "net.ipv4.conf.eth1.promote_secondaries"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (imds, m1) = lab.aws_metadata("10.0.1.20\n10.0.1.21").unwrap();
    let base = METADATA_MACS;
    let (mut ipnat, _) = start_synced(&lab.inst, "promote", "aws", imds.port, "", "");
    wait_until("ipnat's addresses", || {
        let e = eth1(&lab);
        e.contains("10.0.1.20/24") && e.contains("10.0.1.21/24")
    });
    // The admin's own, a secondary of ipnat's primary.
    lab.inst
        .ip(&["addr", "add", "10.0.1.99/24", "dev", "eth1"])
        .unwrap();
    assert_eq!(promote(), "1", "raised where ipnat adds addresses");
    // The cloud takes ipnat's primary away.
    imds.set(&format!("{base}{m1}/local-ipv4s"), "10.0.1.21");
    wait_until("10.0.1.20 removed", || !eth1(&lab).contains("10.0.1.20/24"));
    std::thread::sleep(Duration::from_millis(1500));
    let now = eth1(&lab);
    assert!(
        now.contains("10.0.1.99/24") && now.contains("10.0.1.21/24"),
        "the admin's address went with ipnat's: {now}"
    );
    down_removes_only_its_address(&mut ipnat, &lab, "10.0.1.21/24", &["10.0.1.99/24"]);
    assert_eq!(promote(), "0", "down puts promote_secondaries back");
}
