//! The README's main job, `cargo xtask lab`, run end to end: its key lines, so that it cannot
//! rot silently.

use std::process::Command;

use ipnat_tests::{lab::ipnat_bin, netns::require_root};

/// The text between `from` and the next step's marker `to` (or the end).
fn step<'a>(out: &'a str, from: &str, to: &str) -> &'a str {
    let start = out
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in:\n{out}"));
    let rest = &out[start..];
    &rest[..rest.find(to).unwrap_or(rest.len())]
}

#[test]
fn the_lab_runs_every_part_and_shows_what_ipnat_did() {
    require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_ipnat-lab"))
        .env("IPNAT_BIN", ipnat_bin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Part six: ten failovers per cloud, within a zone and across zones, each move made once,
    // nothing changed on Alibaba Cloud within a zone.
    assert_eq!(
        text.matches("over 10 failovers: the leader's death to the shard's move")
            .count(),
        4,
        "{text}"
    );
    assert_eq!(
        text.matches("the fake EC2 recorded 20 moves").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("the fake VPC API recorded 30 changes"),
        "{text}"
    );
    assert!(text.contains("each a DescribeHaVips"), "{text}");
    // Part one: the backend saw the internet host through the EIP.
    assert!(text.contains("backend accepted GET / HTTP/1.0"), "{text}");
    // Part two: the instance's service saw its EIP as its own address.
    assert!(
        text.contains("on the instance: local address 198.51.100.10:5060"),
        "{text}"
    );
    assert!(
        text.contains("the internet host saw it as 198.51.100.10"),
        "{text}"
    );
    let part3 = step(&text, "== part three", "\n== ");
    // Without ipnat, nothing gets through, and the VPC's source check counted the drop.
    let before = step(part3, "[1/5]", "[2/5]");
    assert!(before.contains("no reply"), "{before}");
    assert!(before.contains("dev eth0"), "{before}");
    assert!(!before.contains("dropped 0 packet"), "{before}");
    // The imported recipe became steering rules.
    let import = step(part3, "[2/5]", "[3/5]");
    assert!(
        import.contains("source = \"10.0.1.20\"") && import.contains("gateway = \"10.0.1.1\""),
        "{import}"
    );
    // With ipnat: the metadata's secondary appears, marked as ipnat's; both sockets get out
    // as themselves; no ip rule was added.
    let with = step(part3, "[3/5]", "[4/5]");
    assert!(with.contains("10.0.1.21/24   <- added by ipnat"), "{with}");
    for a in ["10.0.1.20", "10.0.1.21"] {
        assert!(
            with.contains(&format!(
                "a socket bound to {a} reached the internet host, which saw it come from {a}"
            )),
            "{with}"
        );
    }
    assert!(!with.contains("lookup 1001"), "{with}");
    // The sync followed the cloud's change and left the user's address alone.
    let sync = step(part3, "[4/5]", "[5/5]");
    assert!(sync.contains("10.0.1.22/24   <- added by ipnat"), "{sync}");
    assert!(sync.contains("10.0.1.99/24"), "{sync}");
    assert!(!sync.contains("10.0.1.21/"), "{sync}");
    // Down: the instance as it was, the user's address kept.
    let down = step(part3, "[5/5]", "done:");
    let after = step(down, "eth1 is back", "done:");
    assert!(
        after.contains("10.0.1.20/24") && after.contains("10.0.1.99/24"),
        "{after}"
    );
    assert!(!after.contains("10.0.1.22"), "{after}");
}
