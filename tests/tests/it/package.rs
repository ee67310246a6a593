//! The Debian package (`cargo xtask deb`; `cargo xtask test` builds one from the debug build
//! and passes it as `IPNAT_DEB`): installed with dpkg, it runs, documents itself, checks its
//! config, and on purge takes apart the data plane it left running and leaves nothing behind.

use std::{path::Path, process::Command};

use ipnat_tests::{
    lab::{EIP, GatewayLab, Ipnat, LabOptions, udp_exchange},
    netns::require_root,
};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = ipnat_tests::netns::printed(&out);
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", "ipnat"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("ii"))
}

/// Purges the package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "ipnat"]).output();
    }
}

#[test]
fn the_package_installs_runs_and_purges_without_a_trace() {
    require_root();
    let deb = std::env::var("IPNAT_DEB").expect(
        "IPNAT_DEB is not set: run the tests with `cargo xtask test`, which builds the package",
    );
    if installed() {
        // Left by an interrupted run of this test.
        sh(Command::new("dpkg").args(["--purge", "ipnat"]));
    }
    let _purge = Purge;
    sh(Command::new("dpkg").args(["-i", &deb]));
    let files: Vec<String> = sh(Command::new("dpkg").args(["-L", "ipnat"]))
        .lines()
        .map(str::to_owned)
        .collect();
    for f in [
        "/usr/sbin/ipnat",
        "/lib/systemd/system/ipnat.service",
        "/lib/systemd/system/ipnat@.service",
        "/etc/ipnat/ipnat.toml",
        "/usr/share/man/man8/ipnat.8.gz",
        "/usr/share/man/man8/ipnat-run.8.gz",
    ] {
        assert!(
            files.iter().any(|l| l == f),
            "{f} not in the package: {files:?}"
        );
        assert!(Path::new(f).exists(), "{f}");
    }
    let conffiles = std::fs::read_to_string("/var/lib/dpkg/info/ipnat.conffiles").unwrap();
    assert_eq!(conffiles.trim(), "/etc/ipnat/ipnat.toml");
    let version = sh(Command::new("/usr/sbin/ipnat").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("ipnat {}", env!("CARGO_PKG_VERSION"))
    );
    let page = sh(Command::new("zcat").arg("/usr/share/man/man8/ipnat.8.gz"));
    assert!(
        page.contains(".TH ipnat 8") && page.contains("down"),
        "{page}"
    );
    assert!(
        page.contains("/run/ipnat"),
        "the page says where the state lives"
    );
    let check =
        sh(Command::new("/usr/sbin/ipnat").args(["check", "--config", "/etc/ipnat/ipnat.toml"]));
    assert!(check.contains("config OK"), "{check}");
    // The units start the installed binary.
    for unit in ["ipnat.service", "ipnat@.service"] {
        let text = std::fs::read_to_string(format!("/lib/systemd/system/{unit}")).unwrap();
        assert!(
            text.contains("\nExecStart=/usr/sbin/ipnat run --config /etc/ipnat/"),
            "{unit}"
        );
    }

    // A gateway in a network namespace, as ipnat@NAME.service runs one, left running after its
    // controller stopped: removing the package takes its data plane apart.
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    let name = lab.gw.name().to_owned();
    let pin = format!("/sys/fs/bpf/ipnat-pkg-{}", std::process::id());
    let conf = format!("/etc/ipnat/{name}.toml");
    std::fs::write(&conf, lab.config(&pin)).unwrap();
    // The installed binary (not the process-wide IPNAT_BIN: the other tests share this process).
    let mut gw = Ipnat::start_binary(
        &lab.gw,
        &lab.config(&pin),
        &pin,
        Path::new("/usr/sbin/ipnat"),
    )
    .unwrap();
    gw.stop().unwrap();
    let ex = udp_exchange(&lab.inet, &lab.backend, EIP, 7010, b"pinned").unwrap();
    assert_eq!(ex.response, b"dennip");
    assert!(Path::new(&pin).exists());
    sh(Command::new("dpkg").args(["--purge", "ipnat"]));
    assert!(
        !Path::new(&pin).exists(),
        "purge left the data plane at {pin}"
    );
    let links = sh(Command::new("ip").args(["-n", &name, "link", "show", "ext0"]));
    assert!(!links.contains("xdp"), "{links}");
    drop(gw);
    std::fs::remove_file(&conf).unwrap();
    let _ = std::fs::remove_dir("/etc/ipnat");
    assert!(!installed());
    for f in files.iter().filter(|f| !Path::new(f).is_dir()) {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    assert!(!Path::new("/etc/ipnat").exists());
}
