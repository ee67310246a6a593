//! The fleet's table in etcd: a real etcd server (started by the test, in the gateway's
//! namespace), the real `ipnat` binary writing and following it, real packets through the
//! gateway.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use ipnat_tests::{
    etcd::EtcdServer,
    lab::{BACKEND, BACKEND2, EIP, EIP2, GatewayLab, INET, Ipnat, LabOptions, ipnat_in},
    netns::{Netns, require_root},
};

const PREFIX: &str = "/fleet-test";
const EIP3: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
const BACKEND3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 12);

/// The lab's config without its second mapping (the fleet's table brings it), following
/// `etcd`.
fn config(lab: &GatewayLab, pin: &str, etcd: &EtcdServer) -> String {
    let own = lab.config(pin).replace(
        &format!("[[mapping]]\npublic = \"{EIP2}\"\nprivate = \"{BACKEND2}\"\n"),
        "",
    );
    assert!(!own.contains(&EIP2.to_string()));
    format!(
        "{own}\n[etcd]\nendpoints = [\"{}\"]\nprefix = \"{PREFIX}\"\nrequest_timeout_ms = 1000\ndial_timeout_ms = 500\n",
        etcd.url
    )
}

fn start(lab: &GatewayLab, etcd: &EtcdServer) -> Ipnat {
    let pin = format!("/sys/fs/bpf/ipnat-fleet-{}", std::process::id());
    Ipnat::start(&lab.gw, &config(lab, &pin, etcd), &pin).expect("start ipnat")
}

/// `ipnat fleet ARGS... --etcd URL --prefix PREFIX` in `ns`.
fn fleet(ns: &Netns, etcd: &EtcdServer, args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = vec!["fleet"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--etcd", &etcd.url, "--prefix", PREFIX]);
    ipnat_in(ns, &all)
}

/// Waits up to 10 s for `ok` on the status's `fleet` object.
fn wait_fleet(
    lab: &GatewayLab,
    ipnat: &Ipnat,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    ipnat.wait_status(&lab.gw, "fleet", what, ok)
}

/// The private address the data plane maps `public` to, if any.
fn served(ipnat: &Ipnat, public: Ipv4Addr) -> Option<String> {
    let stats = ipnat.stats_json().unwrap();
    ipnat_tests::lab::mapping_stats(&stats, public)
        .map(|m| m["private"].as_str().unwrap().to_owned())
}

/// Waits up to 10 s until the data plane maps `public` to `want` (None: not at all).
fn wait_served(ipnat: &Ipnat, public: Ipv4Addr, want: Option<&str>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(ipnat, public).as_deref() != want {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gateway lab (with a third backend address) and an etcd in the gateway's namespace.
fn lab_with_etcd() -> (GatewayLab, EtcdServer) {
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    lab.backend
        .ip(&["addr", "add", &format!("{BACKEND3}/24"), "dev", "eth0"])
        .unwrap();
    let etcd = EtcdServer::start(&lab.gw, 2379).unwrap();
    (lab, etcd)
}

/// A datagram from the internet host to `public` arrives at `private` on the backend, from the
/// internet host's address (translated by the gateway, both ways checked by the kernel).
fn reaches(lab: &GatewayLab, public: Ipv4Addr, private: Ipv4Addr) -> bool {
    let port = 7100;
    let server = lab
        .backend
        .within(move || Ok(UdpSocket::bind((private, port))?))
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let client = lab.inet.within(|| Ok(UdpSocket::bind((INET, 0))?)).unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..5 {
        client.send_to(b"fleet", (public, port)).unwrap();
        if let Ok((n, peer)) = server.recv_from(&mut buf) {
            return &buf[..n] == b"fleet" && peer.ip() == INET;
        }
    }
    false
}

#[test]
fn the_fleets_table_is_served_and_bad_entries_in_etcd_change_nothing() {
    require_root();
    let (lab, etcd) = lab_with_etcd();
    let (ok, out) = fleet(
        &lab.gw,
        &etcd,
        &["map", "add", &EIP2.to_string(), &BACKEND2.to_string()],
    );
    assert!(ok, "{out}");
    let mut ipnat = start(&lab, &etcd);
    let f = wait_fleet(&lab, &ipnat, "the fleet's table served", |f| {
        f["revision"].as_i64() >= Some(2) && f["lag_ms"] == 0
    });
    assert_eq!(f["mappings"], 1, "{f}");
    assert_eq!(served(&ipnat, EIP2).as_deref(), Some("10.0.1.11"));
    assert_eq!(
        served(&ipnat, EIP).as_deref(),
        Some("10.0.1.10"),
        "the config's own"
    );
    assert!(
        reaches(&lab, EIP2, BACKEND2),
        "a mapping from etcd translates"
    );
    assert!(reaches(&lab, EIP, BACKEND));

    // Garbage, then a conflicting value, written behind ipnat's back: refused by key, the
    // table served stays, and the gateway knows it is stale.
    let served_rev = f["revision"].as_i64().unwrap();
    for (key, value, why) in [
        (
            format!("{PREFIX}/mappings/{EIP3}"),
            "garbage".to_owned(),
            "not a mapping",
        ),
        (
            format!("{PREFIX}/mappings/{EIP3}"),
            format!(r#"{{"public":"{EIP3}","private":"{BACKEND2}"}}"#),
            "already mapped by",
        ),
    ] {
        etcd.ctl(&["put", &key, &value]).unwrap();
        let f = wait_fleet(&lab, &ipnat, "the bad entry refused", |f| {
            f["refused"]["why"]
                .as_str()
                .is_some_and(|w| w.contains(why))
        });
        assert_eq!(f["refused"]["key"], key.as_str(), "{f}");
        assert_eq!(f["stale"], true, "{f}");
        assert_eq!(f["revision"].as_i64(), Some(served_rev), "{f}");
        assert_eq!(served(&ipnat, EIP3), None);
        assert_eq!(served(&ipnat, EIP2).as_deref(), Some("10.0.1.11"));
        assert!(
            reaches(&lab, EIP2, BACKEND2),
            "the last good table keeps translating"
        );
        let (_, listed) = fleet(&lab.gw, &etcd, &["list"]);
        assert!(
            listed.contains("REFUSED") && listed.contains(&key),
            "{listed}"
        );
        let metrics = ipnat_tests::lab::metrics(&lab.gw).unwrap();
        for line in [
            "ipnat_fleet_refused 1".to_owned(),
            format!("ipnat_fleet_revision {served_rev}"),
        ] {
            assert!(metrics.contains(&line), "{line} in\n{metrics}");
        }
    }
    // A write through ipnat is refused while the table is broken, naming the key.
    let (ok, out) = fleet(
        &lab.gw,
        &etcd,
        &["map", "add", "198.51.100.30", "10.0.1.30"],
    );
    assert!(
        !ok && out.contains(&format!("{PREFIX}/mappings/{EIP3}")),
        "{out}"
    );
    // Removing the bad entry: served again, current.
    let (ok, out) = fleet(&lab.gw, &etcd, &["map", "del", &EIP3.to_string()]);
    assert!(ok, "{out}");
    let f = wait_fleet(&lab, &ipnat, "served again after the fix", |f| {
        f["refused"].is_null() && f["stale"] == false && f["revision"] == f["newest_seen"]
    });
    let metrics = ipnat_tests::lab::metrics(&lab.gw).unwrap();
    for line in [
        "ipnat_fleet_refused 0".to_owned(),
        "ipnat_fleet_connected 1".to_owned(),
        format!("ipnat_fleet_revision {}", f["revision"]),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // Changed and removed through ipnat fleet: every change reaches the data plane.
    let (ok, out) = fleet(
        &lab.gw,
        &etcd,
        &[
            "map",
            "add",
            &EIP2.to_string(),
            &BACKEND3.to_string(),
            "--replace",
        ],
    );
    assert!(ok, "{out}");
    wait_served(&ipnat, EIP2, Some("10.0.1.12"), "changed");
    assert!(reaches(&lab, EIP2, BACKEND3));
    // etcd gone, and the controller killed and restarted meanwhile: it serves the fleet's
    // last good table at once, and the data plane kept translating throughout.
    let mut etcd = etcd;
    etcd.kill().unwrap();
    wait_fleet(&lab, &ipnat, "the lost connection reported", |f| {
        f["connected"] == false
    });
    assert_eq!(served(&ipnat, EIP2).as_deref(), Some("10.0.1.12"));
    ipnat.kill().unwrap();
    let pin = ipnat.pin_path.to_string_lossy().into_owned();
    ipnat.spawn(&lab.gw, &config(&lab, &pin, &etcd)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        served(&ipnat, EIP2).as_deref(),
        Some("10.0.1.12"),
        "restored"
    );
    assert!(reaches(&lab, EIP2, BACKEND3));
    etcd.resume().unwrap();
    wait_fleet(&lab, &ipnat, "watching again", |f| {
        f["connected"] == true && f["lag_ms"] == 0
    });
    let (ok, out) = fleet(&lab.gw, &etcd, &["map", "del", &EIP2.to_string()]);
    assert!(ok, "{out}");
    wait_served(&ipnat, EIP2, None, "removed");
    assert_eq!(
        served(&ipnat, EIP).as_deref(),
        Some("10.0.1.10"),
        "the config's own stays"
    );
}

#[test]
fn a_watch_that_resumes_after_etcd_compacted_its_history_reads_everything_again() {
    require_root();
    let (lab, mut etcd) = lab_with_etcd();
    let (ok, out) = fleet(
        &lab.gw,
        &etcd,
        &["map", "add", &EIP2.to_string(), &BACKEND2.to_string()],
    );
    assert!(ok, "{out}");
    let ipnat = start(&lab, &etcd);
    wait_fleet(&lab, &ipnat, "served", |f| {
        f["mappings"] == 1 && f["lag_ms"] == 0
    });
    // The controller frozen (its data plane keeps translating), etcd restarted, the table
    // changed twice and the history compacted: the watch cannot resume where it stopped.
    let pid = nix::unistd::Pid::from_raw(ipnat.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    etcd.kill().unwrap();
    etcd.resume().unwrap();
    let (ok, out) = fleet(
        &lab.gw,
        &etcd,
        &["map", "add", &EIP3.to_string(), &BACKEND3.to_string()],
    );
    assert!(ok, "{out}");
    let (ok, out) = fleet(&lab.gw, &etcd, &["map", "del", &EIP2.to_string()]);
    assert!(ok, "{out}");
    let rev = etcd.revision().unwrap();
    etcd.ctl(&["compact", &rev.to_string()]).unwrap();
    assert!(
        reaches(&lab, EIP2, BACKEND2),
        "the frozen controller's table still translates"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let f = wait_fleet(&lab, &ipnat, "the whole table read again", |f| {
        f["revision"].as_i64() >= Some(rev) && f["connected"] == true
    });
    assert_eq!(f["mappings"], 1, "{f}");
    assert_eq!(served(&ipnat, EIP2), None, "{f}");
    assert_eq!(served(&ipnat, EIP3).as_deref(), Some("10.0.1.12"));
    assert!(reaches(&lab, EIP3, BACKEND3));
}

#[test]
fn of_two_concurrent_conflicting_fleet_writes_exactly_one_succeeds() {
    require_root();
    let ns = Netns::new("etcd").unwrap();
    let etcd = EtcdServer::start(&ns, 2379).unwrap();
    let bin = ipnat_tests::lab::ipnat_bin();
    let rounds = 20;
    for i in 0..rounds {
        // Two public addresses for one private one: whichever commits second must see the
        // first and refuse.
        let private = format!("10.0.3.{i}");
        let children: Vec<_> = [100 + i, 150 + i]
            .iter()
            .map(|last| {
                ns.command(bin.to_str().unwrap())
                    .args([
                        "fleet",
                        "map",
                        "add",
                        &format!("198.51.100.{last}"),
                        &private,
                    ])
                    .args(["--etcd", &etcd.url, "--prefix", PREFIX])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ok = outs.iter().filter(|o| o.status.success()).count();
        let text: Vec<String> = outs.iter().map(ipnat_tests::netns::printed).collect();
        assert_eq!(ok, 1, "round {i}: {text:?}");
        assert!(
            text.iter().any(|t| t.contains("already mapped by")),
            "round {i}: the loser names the winner: {text:?}"
        );
    }
    let (ok, out) = fleet(&ns, &etcd, &["list", "--json"]);
    assert!(ok, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed["mappings"].as_array().unwrap().len(),
        rounds as usize,
        "{listed}"
    );
    assert!(listed["refused"].is_null(), "{listed}");
}
