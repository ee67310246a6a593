//! Cloud failover on AWS (the fake EC2 API and a VPC in namespaces that obeys it, the real
//! etcd): the primary of a shard dies, the standby is elected, moves the shard's address and
//! the backends' route to itself through the API, and the connections through the shard's
//! address survive; faults of the API during the takeover are retried; the old primary,
//! back, stays standby.

use std::time::{Duration, Instant};

use ipnat_tests::{
    fakecloud::{Ec2Fault, VpcFault},
    lab::{
        Ipnat,
        failover::{
            FO_BACKEND, FO_EIP, FO_INET, FailoverLab, HAVIP_ADDRESS, SHARD_ADDRESS, SecurityGroup,
            eip_private, fo_name, fo_nic,
        },
        fleet_traffic::{DownloadReport, Traffic, TrafficReport, tcp_downloads},
        ipnat_in, udp_exchange_at,
    },
    netns::require_root,
};

/// A datagram each way through the shard's address: the backend sees the internet host, the
/// internet host sees the shard's address (never the backend's), in both directions.
fn translated_both_ways(lab: &FailoverLab, port: u16) {
    translated_both_ways_at(lab, SHARD_ADDRESS, port)
}

fn translated_both_ways_at(lab: &FailoverLab, public: std::net::Ipv4Addr, port: u16) {
    let x = udp_exchange_at(
        &lab.inet,
        Some(FO_INET),
        &lab.backend,
        FO_BACKEND,
        public,
        port,
        b"in",
    )
    .unwrap();
    assert_eq!(
        (x.server_saw_peer.ip(), x.client_saw_peer.ip()),
        (FO_INET.into(), public.into())
    );
    let x = udp_exchange_at(
        &lab.backend,
        Some(FO_BACKEND),
        &lab.inet,
        FO_INET,
        FO_INET,
        port + 1,
        b"out",
    )
    .unwrap();
    assert_eq!(x.server_saw_peer.ip(), std::net::IpAddr::from(public));
}

/// Whether gateway `i`'s eth0 holds `address` (`a.b.c.d/len`).
fn has_address(lab: &FailoverLab, i: usize, address: &str) -> bool {
    let out = lab.gateways[i]
        .ip(&["-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(address)
}

fn shard(section: &serde_json::Value) -> serde_json::Value {
    section["shards"][0].clone()
}

/// gw-a started and leading the shard, gw-b standing by behind it.
fn pair(lab: &FailoverLab) -> (Ipnat, Ipnat) {
    let a = lab.start_ipnat(0).unwrap();
    a.wait_status(
        &lab.gateways[0],
        "failover",
        "gw-a leads and took the shard over",
        |f| {
            let s = shard(f);
            s["role"] == "leader" && s["last_takeover"]["result"] == "ok"
        },
    );
    let b = lab.start_ipnat(1).unwrap();
    b.wait_status(
        &lab.gateways[1],
        "failover",
        "gw-b stands by behind gw-a",
        |f| {
            let s = shard(f);
            s["role"] == "standby" && s["leader"] == fo_name(0)
        },
    );
    (a, b)
}

/// What a failover under traffic showed.
struct Failover {
    inbound: TrafficReport,
    outbound: DownloadReport,
    /// From the primary's death until the API holds the address and the route on gw-b.
    moved: Duration,
    /// gw-b's status of the shard once it leads.
    shard: serde_json::Value,
}

/// Every download both ways (8 in, 8 out) completed across the failover.
fn assert_all_completed(f: &Failover) {
    assert_eq!(f.inbound.downloads.complete, 8, "{:?}", f.inbound.downloads);
    assert_eq!(f.outbound.complete, 8, "{:?}", f.outbound);
}

/// 8 downloads from the backend through the shard's address (inbound), 8 downloads from the
/// internet by the backend (outbound), a UDP stream inbound; 2 s in, gw-a dies: its controller
/// SIGKILLed and its NIC gone from the VPC (its bridge port blocked).
fn primary_dies_under_traffic(lab: &FailoverLab, a: &mut Ipnat, b: &Ipnat, port: u16) -> Failover {
    primary_dies_under_traffic_at(lab, a, b, SHARD_ADDRESS, port, &|| {
        lab.holder().as_deref() == Some("eni-b") && lab.route_target().as_deref() == Some("eni-b")
    })
}

/// [`primary_dies_under_traffic`] through `public`, the shard moved once `moved` says so.
fn primary_dies_under_traffic_at(
    lab: &FailoverLab,
    a: &mut Ipnat,
    b: &Ipnat,
    public: std::net::Ipv4Addr,
    port: u16,
    moved: &dyn Fn() -> bool,
) -> Failover {
    let mut took = Duration::ZERO;
    let (inbound, outbound) = under_traffic(lab, public, port, &mut || {
        let killed = Instant::now();
        a.kill().unwrap();
        lab.block(0, true).unwrap();
        let deadline = killed + Duration::from_secs(20);
        while !moved() {
            assert!(
                Instant::now() < deadline,
                "no takeover 20 s after the primary died"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        took = killed.elapsed();
    });
    let status = b.wait_status(&lab.gateways[1], "failover", "gw-b leads", |f| {
        let s = shard(f);
        s["role"] == "leader" && s["last_takeover"]["result"] == "ok"
    });
    let f = Failover {
        inbound,
        outbound,
        moved: took,
        shard: shard(&status),
    };
    eprintln!(
        "takeover: the shard moved to gw-b {} ms after gw-a died; gw-b's record: {}; inbound TCP {}; outbound TCP {:?}; UDP {:?}",
        f.moved.as_millis(),
        f.shard["last_takeover"],
        f.inbound.downloads.summary(),
        f.outbound,
        f.inbound.flows[0]
    );
    f
}

/// 8 downloads from the backend through `public` (inbound) with a UDP stream, 8 downloads from
/// the internet by the backend (outbound); 2 s in, `during` runs; then every transfer ends.
fn under_traffic(
    lab: &FailoverLab,
    public: std::net::Ipv4Addr,
    port: u16,
    during: &mut dyn FnMut(),
) -> (TrafficReport, DownloadReport) {
    let traffic = Traffic::start(
        &lab.inet,
        &[FO_INET],
        &lab.backend,
        (public, FO_BACKEND),
        port,
        (8, 4 << 20, Duration::from_millis(20)),
        (1, 200, 9.0),
    )
    .unwrap();
    let outbound = tcp_downloads(
        &lab.backend,
        &[FO_BACKEND],
        &lab.inet,
        (FO_INET, FO_INET),
        port + 100,
        8,
        4 << 20,
        Duration::from_millis(20),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    during();
    (traffic.join().unwrap(), outbound.join().unwrap())
}

fn moves(lab: &FailoverLab) -> Vec<String> {
    lab.ec2()
        .moves
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.what.clone())
        .collect()
}

#[test]
fn the_standby_takes_the_shard_over_through_the_api_and_no_connection_is_lost() {
    require_root();
    let lab = FailoverLab::new(300, SecurityGroup::Untracked).unwrap();
    let (mut a, b) = pair(&lab);
    let leads = |i: usize| {
        let text = ipnat_tests::lab::metrics(&lab.gateways[i]).unwrap();
        text.lines()
            .find(|l| l.starts_with("ipnat_failover_leader{shard=\"web\"}"))
            .map(|l| l.ends_with(" 1"))
            .unwrap_or_else(|| panic!("no failover_leader metric: {text}"))
    };
    assert!(leads(0) && !leads(1));
    // gw-a took over what it already held: nothing moved.
    assert_eq!(lab.holder().as_deref(), Some("eni-a"));
    assert!(moves(&lab).is_empty());
    translated_both_ways(&lab, 8190);
    // The API throttles the first move, answers the second with an error although it made
    // it, and fails the first route change: each is retried, and nothing moves twice.
    lab.ec2().faults.lock().unwrap().extend([
        ("AssignPrivateIpAddresses".to_owned(), Ec2Fault::Throttle),
        (
            "AssignPrivateIpAddresses".to_owned(),
            Ec2Fault::DoneButError,
        ),
        ("ReplaceRoute".to_owned(), Ec2Fault::ServerError),
        // Answered after 1 s, past the call's 700 ms timeout: the client gives up, retries,
        // and the late call changes nothing the retry did not.
        ("ReplaceRoute".to_owned(), Ec2Fault::Slow(1000)),
    ]);
    let f = primary_dies_under_traffic(&lab, &mut a, &b, 8100);
    assert_all_completed(&f);
    assert_eq!(f.shard["last_takeover"]["report"]["retries"], 4);
    assert_eq!(
        moves(&lab),
        [
            format!("{SHARD_ADDRESS} eni-a -> eni-b"),
            "rtb-private 0.0.0.0/0 eni-a -> eni-b".to_owned()
        ]
    );
    translated_both_ways(&lab, 8192);
    assert!(leads(1));
    // The address is on gw-b's interface (its sync ran at once).
    assert!(has_address(&lab, 1, &format!("{SHARD_ADDRESS}/24")));

    // gw-a comes back: it stands by behind gw-b and moves nothing back.
    lab.block(0, false).unwrap();
    let a2 = lab.start_ipnat(0).unwrap();
    a2.wait_status(&lab.gateways[0], "failover", "gw-a, back, stands by", |f| {
        let s = shard(f);
        s["role"] == "standby" && s["leader"] == fo_name(1)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(moves(&lab).len(), 2, "nothing moved back");
    assert_eq!(lab.holder(), Some(fo_nic(1)));

    // Moved back on purpose, under traffic: `ipnat fleet move` (from any host that reaches
    // etcd). A gateway that does not stand by for the shard is refused, nothing asked.
    let fleet_move = |to: &str| {
        ipnat_in(
            &lab.gateways[0],
            &[
                "fleet",
                "move",
                "web",
                "--to",
                to,
                "--etcd",
                &lab.etcd.url,
                "--timeout-s",
                "20",
            ],
        )
    };
    let (ok, out) = ipnat_in(
        &lab.gateways[0],
        &["fleet", "list", "--etcd", &lab.etcd.url],
    );
    assert!(
        ok && out.contains("failover shard web: gw-b leads; standing by: gw-a"),
        "{out}"
    );
    let (ok, out) = fleet_move("gw-c");
    assert!(
        !ok && out.contains("gw-c does not stand by for shard web (in line: gw-b, gw-a)"),
        "{out}"
    );
    let (ok, out) = fleet_move("gw-b");
    assert!(
        ok && out.contains("gw-b leads shard web already: nothing changed"),
        "{out}"
    );
    let mut said = String::new();
    let (inbound, outbound) = under_traffic(&lab, SHARD_ADDRESS, 8400, &mut || {
        let (ok, out) = fleet_move("gw-a");
        assert!(ok, "{out}");
        said = out;
    });
    eprintln!(
        "moved back: {said}; inbound TCP {}; outbound TCP {outbound:?}; UDP {:?}",
        inbound.downloads.summary(),
        inbound.flows[0]
    );
    assert!(
        said.contains("gw-a leads shard web and has taken it over"),
        "{said}"
    );
    assert_eq!(inbound.downloads.complete, 8, "{:?}", inbound.downloads);
    assert_eq!(outbound.complete, 8, "{outbound:?}");
    let st = a2.wait_status(&lab.gateways[0], "failover", "gw-a leads again", |f| {
        shard(f)["role"] == "leader" && shard(f)["last_takeover"]["result"] == "ok"
    });
    b.wait_status(&lab.gateways[1], "failover", "gw-b handed over", |f| {
        let s = shard(f);
        s["role"] == "standby"
            && s["leader"] == fo_name(0)
            && s["last_move"]["what"] == "handed the shard over"
            && s["last_move"]["to"] == "gw-a"
    });
    // One move each way, never two holders: the fake records every move.
    assert_eq!(
        moves(&lab),
        [
            format!("{SHARD_ADDRESS} eni-a -> eni-b"),
            "rtb-private 0.0.0.0/0 eni-a -> eni-b".to_owned(),
            format!("{SHARD_ADDRESS} eni-b -> eni-a"),
            "rtb-private 0.0.0.0/0 eni-b -> eni-a".to_owned(),
        ],
        "{st}"
    );
    translated_both_ways(&lab, 8194);
    let (ok, out) = fleet_move("gw-a");
    assert!(ok && out.contains("already"), "{out}");
}

/// Real clouds take seconds to carry a move out: with the fake VPC and metadata following the
/// API 3 s after each change (longer than the 2 s lease), the new leader keeps its lease while
/// it waits for the metadata to list the address, then moves the route; connections survive
/// the longer gap.
#[test]
fn a_move_the_cloud_carries_out_slower_than_the_lease_still_completes() {
    require_root();
    let lab = FailoverLab::new(3000, SecurityGroup::Untracked).unwrap();
    let (mut a, b) = pair(&lab);
    let f = primary_dies_under_traffic(&lab, &mut a, &b, 8100);
    assert_all_completed(&f);
    let steps = f.shard["last_takeover"]["report"]["steps"].to_string();
    assert!(
        steps.contains("the metadata lists them on eni-b after"),
        "{steps}"
    );
    let waited: u64 = steps
        .split("after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        waited >= 2500,
        "the metadata followed after {waited} ms: {steps}"
    );
    assert_eq!(moves(&lab).len(), 2, "{:?}", moves(&lab));
    // gw-b's route change was asked for without waiting for its address's move to be carried
    // out (the cloud carries both out at once).
    let at = |action: &str| {
        lab.ec2()
            .actions
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(a, _)| a == action)
            .map(|(_, t)| *t)
            .unwrap()
    };
    let between = at("ReplaceRoute")
        .duration_since(at("AssignPrivateIpAddresses"))
        .unwrap();
    assert!(
        between < Duration::from_millis(2500),
        "ReplaceRoute came {between:?} after AssignPrivateIpAddresses: it waited for the address"
    );
    translated_both_ways(&lab, 8192);
}

/// With security groups that track connections per NIC, what the move breaks: replies to
/// connections the backends opened through gw-a reach gw-b's NIC, which never saw them open,
/// and are dropped. Connections to the services survive (the group admits them by their
/// ports on any NIC), and new connections through gw-b work.
#[test]
fn with_tracked_security_groups_the_backends_connections_to_the_internet_break_on_a_move() {
    require_root();
    let lab = FailoverLab::new(300, SecurityGroup::Tracked).unwrap();
    let (mut a, b) = pair(&lab);
    translated_both_ways(&lab, 8190);
    let f = primary_dies_under_traffic(&lab, &mut a, &b, 8100);
    assert_eq!(f.inbound.downloads.complete, 8, "{:?}", f.inbound.downloads);
    assert_eq!(
        f.outbound.complete, 0,
        "replies to the backends' connections are dropped by gw-b's group: {:?}",
        f.outbound
    );
    assert_eq!(f.outbound.resets, 0, "{:?}", f.outbound);
    // Seen open through gw-b's NIC, a connection works.
    translated_both_ways(&lab, 8192);
    let again = tcp_downloads(
        &lab.backend,
        &[FO_BACKEND],
        &lab.inet,
        (FO_INET, FO_INET),
        8300,
        2,
        1 << 20,
        Duration::ZERO,
    )
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(again.complete, 2, "{again:?}");
}

/// The same on Alibaba Cloud, whose security groups track connections per NIC too: the HaVip
/// moves, the services' connections survive, the backends' connections to the internet stall
/// (their replies reach a NIC that never saw them open), new ones work.
#[test]
fn on_alibaba_cloud_tracked_security_groups_break_the_backends_connections_to_the_internet_too() {
    require_root();
    let lab = FailoverLab::aliyun(SecurityGroup::Tracked).unwrap();
    let (mut a, b) = pair(&lab);
    translated_both_ways_at(&lab, HAVIP_ADDRESS, 8190);
    let f = primary_dies_under_traffic_at(&lab, &mut a, &b, HAVIP_ADDRESS, 8100, &|| {
        lab.havip_owner() == Some(1)
    });
    assert_eq!(f.inbound.downloads.complete, 8, "{:?}", f.inbound.downloads);
    assert_eq!(
        f.outbound.complete, 0,
        "replies to the backends' connections are dropped by gw-b's group: {:?}",
        f.outbound
    );
    assert_eq!(f.outbound.resets, 0, "{:?}", f.outbound);
    translated_both_ways_at(&lab, HAVIP_ADDRESS, 8192);
}

/// What the API was asked to change (every call but the reads).
fn changes_asked(lab: &FailoverLab) -> Vec<String> {
    lab.ec2()
        .actions
        .lock()
        .unwrap()
        .iter()
        .filter(|(a, _)| !a.starts_with("Describe"))
        .map(|(a, _)| a.clone())
        .collect()
}

/// A gateway that could not take its shard over does not campaign, says why in status, and
/// asks the API to change nothing: its NIC's source/destination check on, the shard's address
/// on no NIC of the VPC, the address in another subnet than its NIC.
#[test]
fn a_gateway_that_could_not_take_its_shard_over_is_refused_before_any_change() {
    require_root();
    let lab = FailoverLab::new(0, SecurityGroup::Untracked).unwrap();
    let nic = |id: &str, f: &dyn Fn(&mut ipnat_tests::fakecloud::FakeEc2Nic)| {
        let mut nics = lab.ec2().nics.lock().unwrap();
        f(nics.iter_mut().find(|n| n.id == id).unwrap());
    };
    let refused = |i: usize, says: &str| {
        let g = lab.start_ipnat(i).unwrap();
        let st = g.wait_status(&lab.gateways[i], "failover", "refused", |f| {
            shard(f)["role"] == "refused"
        });
        let detail = shard(&st)["detail"].as_str().unwrap_or("").to_owned();
        assert!(detail.contains(says), "{detail}");
        drop(g);
    };
    nic("eni-a", &|n| n.source_dest_check = true);
    refused(0, "source/destination check is on for eni-a");
    nic("eni-a", &|n| n.source_dest_check = false);
    // gw-b's NIC in another subnet than the address's.
    nic("eni-b", &|n| n.subnet = "subnet-other".into());
    refused(1, "addresses move within one subnet");
    nic("eni-b", &|n| n.subnet = "subnet-public".into());
    // The address on no NIC at all.
    nic("eni-a", &|n| n.addresses.truncate(1));
    refused(1, "no NIC in vpc-1 holds 10.0.0.50");
    assert_eq!(changes_asked(&lab), Vec::<String>::new());
    assert!(moves(&lab).is_empty());

    // A cloud that does not answer is no verdict: the preflight, throttled three times, is
    // tried again soon (a standby refused for 10 s would leave the shard without one), and
    // the gateway never shows as refused.
    nic("eni-a", &|n| n.addresses.push((SHARD_ADDRESS, None)));
    lab.ec2()
        .faults
        .lock()
        .unwrap()
        .extend((0..3).map(|_| ("DescribeNetworkInterfaces".to_owned(), Ec2Fault::Throttle)));
    let g = lab.start_ipnat(0).unwrap();
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let st = g.wait_status(
        &lab.gateways[0],
        "failover",
        "gw-a leads after the throttling",
        |f| {
            let s = shard(f);
            let mut seen = seen.lock().unwrap();
            let now = format!("{}: {}", s["role"], s["detail"]);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            s["role"] == "leader" && s["last_takeover"]["result"] == "ok"
        },
    );
    let seen = seen.into_inner().unwrap();
    assert!(
        !seen.iter().any(|r| r.starts_with("\"refused\"")),
        "{seen:#?}"
    );
    assert!(lab.ec2().faults.lock().unwrap().is_empty(), "{st}");
}

/// The new leader dies half-way through its takeover (the address moved, the route not yet:
/// the API throttles it): the next leader finishes the job, whatever was done before.
#[test]
fn a_takeover_interrupted_half_way_is_finished_by_the_next_leader() {
    require_root();
    let lab = FailoverLab::new(100, SecurityGroup::Untracked).unwrap();
    let (mut a, mut b) = pair(&lab);
    lab.ec2()
        .faults
        .lock()
        .unwrap()
        .extend((0..100).map(|_| ("ReplaceRoute".to_owned(), Ec2Fault::Throttle)));
    a.kill().unwrap();
    lab.block(0, true).unwrap();
    // gw-b moved the address and is stuck retrying the route: it dies there.
    b.wait_status(&lab.gateways[1], "failover", "gw-b leads", |f| {
        shard(f)["role"] == "leader"
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(lab.holder().as_deref() == Some("eni-b")
        && changes_asked(&lab)
            .iter()
            .filter(|a| *a == "ReplaceRoute")
            .count()
            >= 2)
    {
        assert!(Instant::now() < deadline, "gw-b never got to the route");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.kill().unwrap();
    lab.block(1, true).unwrap();
    assert_eq!(
        lab.route_target().as_deref(),
        Some("eni-a"),
        "not moved yet"
    );
    lab.ec2().faults.lock().unwrap().clear();
    // gw-a comes back, is elected (gw-b's lease expires), and finishes: the address comes
    // back to its NIC, the route is where it should be.
    lab.block(0, false).unwrap();
    let a2 = lab.start_ipnat(0).unwrap();
    let st = a2.wait_status(&lab.gateways[0], "failover", "gw-a leads again", |f| {
        shard(f)["role"] == "leader" && shard(f)["last_takeover"]["result"] == "ok"
    });
    assert_eq!(lab.holder().as_deref(), Some("eni-a"), "{st}");
    assert_eq!(lab.route_target().as_deref(), Some("eni-a"));
    assert_eq!(
        moves(&lab),
        [
            format!("{SHARD_ADDRESS} eni-a -> eni-b"),
            format!("{SHARD_ADDRESS} eni-b -> eni-a"),
        ]
    );
    translated_both_ways(&lab, 8190);
}

/// The leader cut off from etcd (not from the VPC) stops claiming the shard before etcd can
/// elect another (its fence: the send time of its last acknowledged renewal + TTL - margin),
/// so the two never claim it at once; the new leader moves it; back in touch, the old one
/// stands by.
#[test]
fn a_leader_cut_off_from_etcd_stops_claiming_before_another_is_elected() {
    require_root();
    let lab = FailoverLab::new(100, SecurityGroup::Untracked).unwrap();
    let (a, b) = pair(&lab);
    let etcd_port = lab.etcd.url.rsplit(':').next().unwrap().to_owned();
    let cut = |on: bool| {
        lab.gateways[0]
            .run(
                "iptables",
                &[
                    if on { "-I" } else { "-D" },
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "--dport",
                    &etcd_port,
                    "-j",
                    "DROP",
                ],
            )
            .unwrap();
    };
    cut(true);
    let cut_at = std::time::SystemTime::now();
    let st = b.wait_status(&lab.gateways[1], "failover", "gw-b leads", |f| {
        shard(f)["role"] == "leader" && shard(f)["last_takeover"]["result"] == "ok"
    });
    let old = a.wait_status(
        &lab.gateways[0],
        "failover",
        "gw-a gave the shard up",
        |f| shard(f)["role"] != "leader",
    );
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    let stopped = shard(&old)["led_until_unix_ms"].as_i64().unwrap();
    let first_change = lab
        .ec2()
        .actions
        .lock()
        .unwrap()
        .iter()
        .find(|(a, t)| !a.starts_with("Describe") && *t > cut_at)
        .map(|(_, t)| ms(*t))
        .unwrap();
    eprintln!(
        "gw-a stopped claiming {} ms after the cut; gw-b's first change {} ms after it; {st}; gw-a: {old}",
        stopped - ms(cut_at),
        first_change - ms(cut_at)
    );
    assert!(
        stopped < first_change,
        "gw-a stopped claiming at {stopped}, after gw-b's first change at {first_change}"
    );
    assert_eq!(lab.holder().as_deref(), Some("eni-b"));
    // Back in touch with etcd, gw-a stands by; nothing moves back.
    cut(false);
    a.wait_status(
        &lab.gateways[0],
        "failover",
        "gw-a stands by behind gw-b",
        |f| shard(f)["role"] == "standby" && shard(f)["leader"] == fo_name(1),
    );
    assert_eq!(moves(&lab).len(), 2, "{:?}", moves(&lab));
    translated_both_ways(&lab, 8190);
}

/// On Alibaba Cloud the shard is a HaVip associated with both gateways: the new leader puts
/// its address on its interface and announces it by gratuitous ARP, the VPC (its router's
/// neighbour table here) delivers there, the backends' route (next hop the HaVip) follows,
/// and no connection is lost; no API call changes anything. The old leader, back, has dropped
/// the address before it could answer ARP for it, and stands by.
#[test]
fn on_alibaba_cloud_the_standby_announces_the_havip_and_no_connection_is_lost() {
    require_root();
    let lab = FailoverLab::aliyun(SecurityGroup::Untracked).unwrap();
    let (mut a, b) = pair(&lab);
    translated_both_ways_at(&lab, HAVIP_ADDRESS, 8190);
    assert_eq!(lab.havip_owner(), Some(0));
    // The takeover's check of the HaVip is throttled twice: retried.
    let api = lab.vpc_api.as_ref().unwrap();
    api.faults.lock().unwrap().extend([
        ("DescribeHaVips".to_owned(), VpcFault::Throttle),
        ("DescribeHaVips".to_owned(), VpcFault::ServerError),
    ]);
    let f = primary_dies_under_traffic_at(&lab, &mut a, &b, HAVIP_ADDRESS, 8100, &|| {
        lab.havip_owner() == Some(1)
    });
    assert_all_completed(&f);
    assert_eq!(
        f.shard["last_takeover"]["report"]["retries"], 2,
        "{}",
        f.shard
    );
    let steps = f.shard["last_takeover"]["report"]["steps"].to_string();
    assert!(steps.contains("gratuitous ARP for 10.0.0.60"), "{steps}");
    assert!(
        api.actions
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "DescribeHaVips"),
        "{:?}",
        api.actions.lock().unwrap()
    );
    translated_both_ways_at(&lab, HAVIP_ADDRESS, 8192);
    // gw-a restarts while still cut off: it drops the HaVip's address first thing.
    let has_havip = |i: usize| has_address(&lab, i, &format!("{HAVIP_ADDRESS}/32"));
    assert!(has_havip(0) && has_havip(1));
    let a2 = lab.start_ipnat(0).unwrap();
    assert!(
        !has_havip(0),
        "an old leader's HaVip address is gone at start"
    );
    lab.block(0, false).unwrap();
    a2.wait_status(&lab.gateways[0], "failover", "gw-a, back, stands by", |f| {
        let s = shard(f);
        s["role"] == "standby" && s["leader"] == fo_name(1)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lab.havip_owner(), Some(1));
    translated_both_ways_at(&lab, HAVIP_ADDRESS, 8194);
}

/// A standby may wait for hours, longer than the instance profile's temporary credentials
/// last: elected, it takes the shard over with the credentials the metadata serves then.
#[test]
fn a_standby_takes_over_with_the_credentials_of_the_moment_it_is_elected() {
    require_root();
    let mut lab = FailoverLab::new(100, SecurityGroup::Untracked).unwrap();
    lab.role_credentials = true;
    let (mut a, b) = pair(&lab);
    // The profile's credentials rotate while gw-b stands by; the old ones stop working.
    lab.rotate_role(2);
    assert!(a.status(&lab.gateways[0])["controller_pid"].is_string());
    a.kill().unwrap();
    lab.block(0, true).unwrap();
    // gw-a's status says that no controller runs: its recorded leadership is nobody's now.
    let st = a.status(&lab.gateways[0]);
    assert!(st["controller_pid"].is_null(), "{st}");
    let pin = FailoverLab::pin(0);
    let (ok, text) = ipnat_in(&lab.gateways[0], &["status", "--pin-path", &pin]);
    assert!(ok, "{text}");
    assert!(
        text.contains("controller: not running")
            && text.contains("(no controller runs: this gateway leads nothing; as last recorded:)"),
        "{text}"
    );
    let st = b.wait_status(
        &lab.gateways[1],
        "failover",
        "gw-b took the shard over",
        |f| shard(f)["role"] == "leader" && shard(f)["last_takeover"]["result"] == "ok",
    );
    assert_eq!(lab.holder().as_deref(), Some("eni-b"), "{st}");
    assert_eq!(lab.route_target().as_deref(), Some("eni-b"));
}

/// A shard's `prefer`red gateway gets it back once it has stood by for the hold-down: on
/// Alibaba Cloud the leader drops the HaVip's address before it gives its lease up, the
/// preferred gateway announces it, connections survive. Until the hold-down has passed,
/// nothing moves.
#[test]
fn the_preferred_gateway_gets_its_shard_back_after_the_hold_down() {
    require_root();
    let lab = FailoverLab::aliyun(SecurityGroup::Untracked).unwrap();
    let prefer = |i: usize| {
        let config = lab.config_with(i, "hold_down_s = 4", "prefer = \"gw-a\"\n");
        ipnat_tests::lab::Ipnat::start(&lab.gateways[i], &config, &FailoverLab::pin(i)).unwrap()
    };
    // gw-b starts alone and takes the HaVip; gw-a, preferred, comes later.
    let b = prefer(1);
    b.wait_status(&lab.gateways[1], "failover", "gw-b leads", |f| {
        shard(f)["role"] == "leader" && shard(f)["last_takeover"]["result"] == "ok"
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.havip_owner() != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the VPC never learnt gw-b holds the HaVip"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = prefer(0);
    let standing = a.wait_status(&lab.gateways[0], "failover", "gw-a stands by", |f| {
        shard(f)["role"] == "standby" && shard(f)["leader"] == fo_name(1)
    });
    let since = shard(&standing)["role_since_unix_ms"].as_u64().unwrap();
    let mut moved_after = 0u64;
    let (inbound, outbound) = under_traffic(&lab, HAVIP_ADDRESS, 8500, &mut || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.havip_owner() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "the shard never went back to gw-a"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        moved_after = ipnat::fleet::unix_ms() - since;
    });
    eprintln!(
        "gw-a got the shard back {moved_after} ms after it stood by; inbound TCP {}; outbound TCP {outbound:?}; UDP {:?}",
        inbound.downloads.summary(),
        inbound.flows[0]
    );
    assert!(
        moved_after >= 4000,
        "moved {moved_after} ms after gw-a stood by: before the hold-down"
    );
    assert_eq!(inbound.downloads.complete, 8, "{:?}", inbound.downloads);
    assert_eq!(outbound.complete, 8, "{outbound:?}");
    a.wait_status(&lab.gateways[0], "failover", "gw-a leads", |f| {
        shard(f)["role"] == "leader" && shard(f)["last_takeover"]["result"] == "ok"
    });
    let st = b.wait_status(&lab.gateways[1], "failover", "gw-b handed over", |f| {
        shard(f)["role"] == "standby" && shard(f)["leader"] == fo_name(0)
    });
    let moved = &shard(&st)["last_move"];
    assert_eq!(
        (&moved["what"], &moved["to"], &moved["by"]),
        (
            &"handed the shard over".into(),
            &"gw-a".into(),
            &"gw-b: the shard prefers gw-a".into()
        ),
        "{st}"
    );
    assert!(
        !has_address(&lab, 1, &format!("{HAVIP_ADDRESS}/32")),
        "gw-b dropped the HaVip's address"
    );
    translated_both_ways_at(&lab, HAVIP_ADDRESS, 8196);
}

/// AWS across zones: gw-b's NIC is in another subnet, so no address can move to it; its
/// takeover re-associates the EIP with its own address (`AssociateAddress`), which its table
/// maps to the same backend. The clients talk to the EIP throughout: no connection is lost.
/// A gateway whose NIC lacks the address its config names for the EIP is refused first.
#[test]
fn across_zones_the_standby_reassociates_the_eip_with_its_own_address_and_no_connection_is_lost() {
    require_root();
    let lab = FailoverLab::zones(300).unwrap();
    // gw-b naming an address its NIC does not hold: refused, nothing asked.
    let wrong = lab
        .config(1, "")
        .replace(
            &format!("private = \"{}\"", eip_private(1)),
            "private = \"10.0.0.53\"",
        )
        .replace(
            &format!("public = \"{}\"", eip_private(1)),
            "public = \"10.0.0.53\"",
        );
    let g = Ipnat::start(&lab.gateways[1], &wrong, &FailoverLab::pin(1)).unwrap();
    let st = g.wait_status(&lab.gateways[1], "failover", "refused", |f| {
        shard(f)["role"] == "refused"
    });
    let detail = shard(&st)["detail"].as_str().unwrap_or("").to_owned();
    assert!(
        detail.contains(
            "10.0.0.53 (the address eipalloc-0web should take) is not a secondary address of eni-b"
        ),
        "{detail}"
    );
    drop(g);
    assert_eq!(changes_asked(&lab), Vec::<String>::new());

    let (mut a, b) = pair(&lab);
    translated_both_ways_at(&lab, FO_EIP, 8190);
    let f = primary_dies_under_traffic_at(&lab, &mut a, &b, FO_EIP, 8100, &|| {
        lab.eip_holder() == Some((fo_nic(1), eip_private(1)))
            && lab.route_target().as_deref() == Some("eni-b")
    });
    assert_all_completed(&f);
    let steps = f.shard["last_takeover"]["report"]["steps"].to_string();
    assert!(
        steps.contains("AssociateAddress (AllowReassociation) 198.51.100.50 onto eni-b/10.0.0.52 from eni-a/10.0.0.50"),
        "{steps}"
    );
    assert_eq!(
        moves(&lab),
        [
            format!(
                "EIP {FO_EIP} eni-a/{SHARD_ADDRESS} -> eni-b/{}",
                eip_private(1)
            ),
            "rtb-private 0.0.0.0/0 eni-a -> eni-b".to_owned()
        ]
    );
    assert!(!changes_asked(&lab).contains(&"AssignPrivateIpAddresses".to_owned()));
    assert_eq!(
        lab.holder(),
        Some(fo_nic(0)),
        "gw-a's own address stays its own"
    );
    translated_both_ways_at(&lab, FO_EIP, 8192);
}

/// Alibaba Cloud across zones (no HaVip: it lives in one vSwitch): the standby unbinds the EIP
/// from gw-a's address, binds it to its own (both asynchronous, each waited for) and moves the
/// route entry, through a throttled binding and a route table busy with another task
/// (`TaskConflict`): retried, every connection survives.
#[test]
fn on_alibaba_cloud_across_zones_the_standby_rebinds_the_eip_and_moves_the_route_entry() {
    require_root();
    let lab = FailoverLab::aliyun_zones(300).unwrap();
    let (mut a, b) = pair(&lab);
    translated_both_ways_at(&lab, FO_EIP, 8190);
    let api = lab.vpc_api.as_ref().unwrap();
    api.faults.lock().unwrap().extend([
        ("AssociateEipAddress".to_owned(), VpcFault::Throttle),
        ("ModifyRouteEntry".to_owned(), VpcFault::TaskConflict),
        ("ModifyRouteEntry".to_owned(), VpcFault::TaskConflict),
    ]);
    let route = || {
        api.routes
            .lock()
            .unwrap()
            .get(&("vtb-private".to_owned(), "0.0.0.0/0".to_owned()))
            .cloned()
    };
    let f = primary_dies_under_traffic_at(&lab, &mut a, &b, FO_EIP, 8100, &|| {
        lab.aliyun_eip_holder() == Some((fo_nic(1), eip_private(1)))
            && route().as_deref() == Some("eni-b")
    });
    assert_all_completed(&f);
    let report = &f.shard["last_takeover"]["report"];
    assert_eq!(report["retries"], 3, "{report}");
    let steps = report["steps"].to_string();
    for step in [
        "UnassociateEipAddress 198.51.100.50 from eni-a/10.0.0.50",
        "AssociateEipAddress 198.51.100.50 onto eni-b/10.0.0.52",
        "ModifyRouteEntry vtb-private 0.0.0.0/0 -> eni-b",
    ] {
        assert!(steps.contains(step), "{step}: {steps}");
    }
    // Bound to one address at a time, each move once.
    assert_eq!(
        *api.moves.lock().unwrap(),
        [
            format!("EIP {FO_EIP} eni-a/10.0.0.50 -> (unbound)"),
            format!("EIP {FO_EIP} (unbound) -> eni-b/10.0.0.52"),
            "vtb-private 0.0.0.0/0 eni-a -> eni-b".to_owned(),
        ]
    );
    translated_both_ways_at(&lab, FO_EIP, 8192);
}
