//! The `ipnat` binary's commands against a running data plane, bad input included: a clear
//! message, a non-zero exit, and tables unchanged.

use std::{net::Ipv4Addr, process::Output};

use ipnat_tests::{
    lab::{
        BACKEND, BACKEND2, EIP, EIP2, GatewayLab, LabOptions, ipnat_bin, tcp_exchange, udp_exchange,
    },
    netns::require_root,
};

fn ipnat(args: &[&str]) -> Output {
    std::process::Command::new(ipnat_bin())
        .args(args)
        .output()
        .expect("run ipnat")
}

fn ok(args: &[&str]) -> String {
    let out = ipnat(args);
    let text = ipnat_tests::netns::printed(&out);
    assert!(out.status.success(), "ipnat {args:?} failed: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = ipnat(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ipnat {args:?} should fail");
    assert!(err.starts_with("ipnat: error: "), "{err}");
    err
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

#[test]
fn check_refuses_bad_configs_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("ipnat-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let base = "[[interface]]\nname = \"eth0\"\n[[mapping]]\npublic = \"198.51.100.10\"\nprivate = \"10.0.1.10\"\n";
    let good = write("good.toml", base);
    assert!(
        ok(&["check", "--config", &good])
            .contains("config OK: gateway orientation, 1 interface(s), 1 mapping(s)")
    );
    for (name, text, want) in [
        ("malformed.toml", "[[interface]\nname=", "is not valid"),
        (
            "dup.toml",
            &format!("{base}[[mapping]]\npublic = \"198.51.100.10\"\nprivate = \"10.0.1.11\"\n"),
            "mapping[1].public = \"198.51.100.10\": already mapped by mapping[0]",
        ),
        (
            "sizes.toml",
            &format!("{base}[[mapping]]\npublic = \"120.0.0.0/24\"\nprivate = \"10.0.2.0/25\"\n"),
            "must be the same size",
        ),
        (
            "unknown.toml",
            &format!("{base}colour = \"blue\"\n"),
            "unknown field `colour`",
        ),
    ] {
        let p = write(name, text);
        let err = fails(&["check", "--config", &p]);
        assert!(err.contains(want), "{name}: {err}");
    }
    let err = fails(&["check", "--config", "/nonexistent/ipnat.toml"]);
    assert!(
        err.contains("cannot read config file /nonexistent/ipnat.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn commands_against_no_data_plane_say_so() {
    require_root();
    for cmd in ["stats", "status", "down"] {
        let err = fails(&[cmd, "--pin-path", "/sys/fs/bpf/ipnat-nosuch"]);
        assert!(
            err.contains("ipnat run") || err.contains("nothing is pinned there"),
            "{cmd}: {err}"
        );
    }
    assert!(!std::path::Path::new("/sys/fs/bpf/ipnat-nosuch").exists());
}

#[test]
fn map_status_and_stats_against_a_running_data_plane() {
    require_root();
    let (lab, running) = GatewayLab::started(LabOptions::default());
    let pin = running.pin_path.to_string_lossy().into_owned();
    let pin = pin.as_str();

    let st = json(&["status", "--json", "--pin-path", pin]);
    assert_eq!(st["mappings"], 2);
    assert_eq!(st["fast_path"], true);
    assert_eq!(st["attached"].as_array().unwrap().len(), 6, "{st}");
    assert!(ok(&["status", "--pin-path", pin]).contains("ext0     xdp     xdp native"));

    let list = |pin: &str| json(&["map", "list", "--json", "--pin-path", pin]);
    let before = list(pin);
    assert_eq!(before.as_array().unwrap().len(), 2);
    // Refused, each with its reason, and nothing changes.
    for (args, want) in [
        (
            vec!["--public", "198.51.100.10", "--private", "10.0.1.50"],
            "the new mapping.public = \"198.51.100.10\": already mapped by installed mapping 198.51.100.10 <-> 10.0.1.10",
        ),
        (
            vec!["--public", "198.51.100.50", "--private", "10.0.1.11"],
            "already mapped by installed mapping 198.51.100.11 <-> 10.0.1.11",
        ),
        (
            vec!["--public", "198.51.100.0/24", "--private", "10.9.0.0/24"],
            "overlaps",
        ),
        (
            vec!["--public", "1.2.3", "--private", "10.0.1.50"],
            "not an IPv4 address",
        ),
    ] {
        let mut a = vec!["map", "add", "--pin-path", pin];
        a.extend(args);
        let out = ipnat(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{a:?}: {err}");
    }
    let err = fails(&["map", "del", "--public", "198.51.100.99", "--pin-path", pin]);
    assert!(
        err.contains("no mapping has the public side 198.51.100.99"),
        "{err}"
    );
    assert_eq!(list(pin), before, "tables unchanged");

    // Move the second backend address to a new public address, and use it.
    let new_eip = Ipv4Addr::new(198, 51, 100, 20);
    assert!(
        ok(&[
            "map",
            "del",
            "--public",
            &EIP2.to_string(),
            "--pin-path",
            pin
        ])
        .contains("removed mapping 2")
    );
    let added = ok(&[
        "map",
        "add",
        "--public",
        &new_eip.to_string(),
        "--private",
        "10.0.1.11",
        "--pin-path",
        pin,
    ]);
    assert!(
        added.contains("added mapping") && added.contains("198.51.100.20 <-> 10.0.1.11"),
        "{added}"
    );
    let x = tcp_exchange(
        &lab.inet,
        &lab.backend,
        new_eip,
        8400,
        b"via the new mapping",
        1000,
    )
    .unwrap();
    assert_eq!(x.client_saw_peer.ip(), std::net::IpAddr::V4(new_eip));
    assert_eq!(x.server_local.ip(), std::net::IpAddr::V4(BACKEND2));
    // The counters say exactly what was sent: five datagrams each way through the first
    // mapping (the backend's unbound UDP socket answers from its primary address).
    for i in 0..5 {
        let x = udp_exchange(&lab.inet, &lab.backend, EIP, 5400 + i, b"counted").unwrap();
        assert_eq!(x.client_saw_peer.ip(), std::net::IpAddr::V4(EIP));
    }
    let stats = json(&["stats", "--json", "--pin-path", pin]);
    let m = ipnat_tests::lab::mapping_stats(&stats, EIP)
        .unwrap()
        .clone();
    assert_eq!(m["private"], BACKEND.to_string());
    assert_eq!(
        (m["dnat_packets"].as_u64(), m["snat_packets"].as_u64()),
        (Some(5), Some(5)),
        "{stats}"
    );
    let new = ipnat_tests::lab::mapping_stats(&stats, new_eip).unwrap();
    assert!(new["dnat_packets"].as_u64().unwrap() >= 3, "{stats}");

    // The metrics endpoint (in the gateway's namespace) says the same.
    let metrics = ipnat_tests::lab::metrics(&lab.gw).unwrap();
    assert!(
        metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
        "{metrics}"
    );
    for (direction, n) in [("in", 5), ("out", 5)] {
        let line = format!(
            "ipnat_mapping_packets_total{{public=\"{EIP}\",private=\"{BACKEND}\",direction=\"{direction}\"}} {n}"
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    let forwarded = stats["reasons"]["forwarded"].as_u64().unwrap();
    assert!(forwarded > 0);
    assert!(metrics.contains("ipnat_mappings 2"), "{metrics}");
    assert!(
        metrics.contains("ipnat_packets_total{outcome=\"forwarded\"}"),
        "{metrics}"
    );
}

/// Without root (nobody, no capabilities) every command that touches the kernel says what it
/// lacks before trying; the offline ones still work.
#[test]
fn without_privileges_the_commands_say_what_is_missing() {
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(ipnat_bin())
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["run", "--config", "/nonexistent.toml"][..],
        &["status"],
        &["stats"],
        &["map", "list"],
        &["steer", "list"],
        &["down"],
    ] {
        let out = as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains("needs root, or at least CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN)"),
            "{args:?}: {err}"
        );
    }
    let out = as_nobody(&["import", "-"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("needs root"));
}

/// Output into a pipe that closes early ends the command quietly: no panic, no message.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let path = std::env::temp_dir().join(format!("ipnat-cli-pipe-{}.toml", std::process::id()));
    let mut text = String::from("[[interface]]\nname = \"eth0\"\n");
    for i in 0..20_000u32 {
        text.push_str(&format!(
            "[[mapping]]\npublic = \"{}\"\nprivate = \"{}\"\n",
            Ipv4Addr::from(0x7800_0000 + i),
            Ipv4Addr::from(0x0a00_0000 + i)
        ));
    }
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("\"$0\" check --config \"$1\" | head -n 1")
        .arg(ipnat_bin())
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("config OK"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
    assert!(stderr.is_empty(), "{stderr}");
    std::fs::remove_file(path).unwrap();
}

/// `ipnat import` of a file that is not UTF-8 names the line.
#[test]
fn import_names_the_line_that_is_not_utf8() {
    let path = std::env::temp_dir().join(format!("ipnat-cli-latin1-{}", std::process::id()));
    std::fs::write(
        &path,
        b"ip rule add from 10.0.1.27 lookup 1001\n# caf\xe9\n",
    )
    .unwrap();
    let err = fails(&["import", path.to_str().unwrap()]);
    assert!(
        err.contains(&format!("{}:2: not UTF-8", path.display())),
        "{err}"
    );
    std::fs::remove_file(path).unwrap();
}
