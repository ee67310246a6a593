//! Where ipnat keeps its state: a fresh machine (no bpffs mounted), pin paths off bpffs, one
//! record directory per data plane (bpffs instance and pin path), `down` against a live
//! controller, `ip netns exec`, and the systemd unit's sandbox.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ipnat_tests::{
    lab::{EIP, GatewayLab, Ipnat, LabOptions, ipnat_bin, udp_exchange},
    netns::{Netns, require_root},
};

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every entry of /run/ipnat (the records of every data plane on the host).
fn records() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/ipnat")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn fs_type(path: &str) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const READ_COMMANDS: [&[&str]; 5] = [
    &["down"],
    &["status"],
    &["stats"],
    &["map", "list"],
    &["steer", "list"],
];

/// On a fresh machine's view (no bpffs at /sys/fs/bpf), a command with nothing to act on
/// mounts nothing, creates nothing, and says only its error.
#[test]
fn commands_with_nothing_to_act_on_only_look_on_a_fresh_machine() {
    require_root();
    let pin = format!("/sys/fs/bpf/{}", unique("ipnat-nosuch"));
    let before = records();
    for cmd in READ_COMMANDS {
        // A private mount namespace without the bpffs, as on a machine that never mounted one;
        // what the command left is looked at from inside it.
        let script = r#"umount /sys/fs/bpf 2>/dev/null; "$@"; echo "rc=$?"; stat -f -c %T /sys/fs/bpf; grep -c ' - bpf ' /proc/self/mountinfo; test -e "$PIN" && echo created; true"#;
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(ipnat_bin())
            .args(cmd)
            .args(["--pin-path", &pin])
            .env("PIN", &pin)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines.contains(&"rc=1"), "{cmd:?}: {stdout}{stderr}");
        assert!(
            stderr.starts_with("ipnat: error: ") && stderr.trim_end().lines().count() == 1,
            "{cmd:?} printed more than its error: {stderr}"
        );
        assert!(
            stderr.contains("no bpffs is mounted at /sys/fs/bpf"),
            "{cmd:?}: {stderr}"
        );
        assert_eq!(
            lines.get(1),
            Some(&"sysfs"),
            "{cmd:?} mounted something: {stdout}"
        );
        assert_eq!(
            lines.get(2),
            Some(&"0"),
            "{cmd:?} mounted a bpffs: {stdout}"
        );
        assert!(!stdout.contains("created"), "{cmd:?} created {pin}");
    }
    // With the host's bpffs: the same, and nothing recorded in /run.
    assert_eq!(fs_type("/sys/fs/bpf"), "bpf_fs");
    for cmd in READ_COMMANDS {
        let stderr = refused(
            Command::new(ipnat_bin())
                .args(cmd)
                .args(["--pin-path", &pin]),
            &[],
        );
        assert!(
            stderr.starts_with("ipnat: error: ") && stderr.trim_end().lines().count() == 1,
            "{cmd:?}: {stderr}"
        );
        assert!(!Path::new(&pin).exists(), "{cmd:?} created {pin}");
        assert_eq!(records(), before, "{cmd:?} recorded something");
    }
}

/// Runs `cmd`, which must fail, and checks that its error says each of `says`; the error.
fn refused(cmd: &mut Command, says: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} succeeded: {err}");
    for s in says {
        assert!(err.contains(s), "{cmd:?}: no {s:?} in: {err}");
    }
    err
}

fn write_config(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("ipnat-state")));
    std::fs::write(&path, text).unwrap();
    path
}

/// Pin paths that are empty, relative, hold what bpffs refuses, or are not on a bpffs are
/// refused by `check` and `run`, and `run` mounts nothing over their parent.
#[test]
fn pin_paths_off_bpffs_are_refused_and_nothing_is_mounted_over_them() {
    require_root();
    let ns = Netns::new("pin").unwrap();
    let config = |pin: &str| {
        format!(
            "pin_path = \"{pin}\"\n[[interface]]\nname = \"lo\"\n[[mapping]]\npublic = \"198.51.100.10\"\nprivate = \"10.0.1.10\"\n"
        )
    };
    for (pin, want) in [
        ("", "is empty"),
        ("ipnat", "not absolute"),
        ("/sys/fs/bpf/ipnat.eth0", "bpffs refuses names with a dot"),
        ("/sys/fs/bpf/../ipnat", "plain components"),
    ] {
        let path = write_config(&config(pin));
        refused(
            Command::new(ipnat_bin())
                .arg("check")
                .arg("--config")
                .arg(&path),
            &["pin_path", want],
        );
        refused(
            Command::new(ipnat_bin()).args(["status", "--pin-path", pin]),
            &[],
        );
        let _ = std::fs::remove_file(path);
    }
    // A directory that is not a bpffs, with something in it that a mount would hide.
    let parent = std::env::temp_dir().join(unique("ipnat-notbpf"));
    std::fs::create_dir(&parent).unwrap();
    std::fs::write(parent.join("keep"), "mine").unwrap();
    let pin = parent.join("pins");
    let path = write_config(&config(pin.to_str().unwrap()));
    refused(
        Command::new(ipnat_bin())
            .arg("check")
            .arg("--config")
            .arg(&path),
        &["is not on a bpffs"],
    );
    let before = records();
    refused(
        ns.command(ipnat_bin().to_str().unwrap())
            .arg("run")
            .arg("--config")
            .arg(&path),
        &["is not on a bpffs"],
    );
    assert_ne!(
        fs_type(parent.to_str().unwrap()),
        "bpf_fs",
        "a bpffs was mounted over it"
    );
    assert_eq!(
        std::fs::read_to_string(parent.join("keep")).unwrap(),
        "mine"
    );
    assert!(!pin.exists());
    assert_eq!(records(), before);
    let _ = std::fs::remove_file(path);
    std::fs::remove_dir_all(parent).unwrap();
}

/// A controller started in `ns` by `sh -c SCRIPT` (which must exec ipnat run with `$CONFIG`,
/// printing `pid=N` of it first); waits until it is running or has exited.
struct Shell {
    child: Child,
    pid: i32,
    log: std::sync::mpsc::Receiver<String>,
}

impl Shell {
    fn start(script: &str, config: &Path) -> Result<Self, String> {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .env("IPNAT", ipnat_bin())
            .env("CONFIG", config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let pid = first
            .trim()
            .strip_prefix("pid=")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut me = Self {
            child,
            pid,
            log: rx,
        };
        let mut seen = String::new();
        loop {
            match me.log.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let ready = line.contains("ipnat running");
                    seen.push_str(&line);
                    seen.push('\n');
                    if ready {
                        return Ok(me);
                    }
                }
                Err(_) => {
                    me.stop();
                    return Err(seen);
                }
            }
        }
    }

    /// SIGTERM to the controller; waits for the shell.
    fn stop(&mut self) {
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// The same pin path on two bpffs instances (one mounted in each controller's own mount
/// namespace) is two data planes: two controllers, each translating for its namespace.
#[test]
fn the_same_pin_path_on_two_bpffs_instances_is_two_data_planes() {
    require_root();
    let pin = format!("/sys/fs/bpf/{}", unique("ipnat-twofs"));
    let labs = [
        GatewayLab::new(LabOptions::default()).unwrap(),
        GatewayLab::new(LabOptions::default()).unwrap(),
    ];
    let configs: Vec<PathBuf> = labs.iter().map(|l| write_config(&l.config(&pin))).collect();
    let mut running = Vec::new();
    for (lab, config) in labs.iter().zip(&configs) {
        // Its own bpffs; `down` in the same mount namespace once the controller has stopped.
        let script = format!(
            "mount -t bpf bpf /sys/fs/bpf || exit 1; nsenter --net={ns} -- \"$IPNAT\" run --config \"$CONFIG\" & echo pid=$!; wait $!; nsenter --net={ns} -- \"$IPNAT\" down --pin-path {pin} >/dev/null",
            ns = lab.gw.path()
        );
        let wrapped = format!("exec unshare -m --propagation private sh -c '{script}'");
        running.push(
            Shell::start(&wrapped, config)
                .unwrap_or_else(|log| panic!("second controller refused:\n{log}")),
        );
    }
    for lab in &labs {
        let ex = udp_exchange(&lab.inet, &lab.backend, EIP, 7001, b"two bpffs").unwrap();
        assert_eq!(ex.server_saw_peer.ip(), ipnat_tests::lab::INET);
        assert_eq!(ex.response, b"sffpb owt");
    }
    for mut r in running {
        r.stop();
    }
    for c in configs {
        let _ = std::fs::remove_file(c);
    }
}

/// `ipnat down` while `ipnat run` owns the data plane is refused, naming its pid; the data
/// plane keeps translating and the controller keeps running.
#[test]
fn down_is_refused_while_a_controller_runs() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let pid = ipnat.pid().unwrap();
    let (status, out) = ipnat.down().unwrap();
    assert!(!status.success(), "{out}");
    assert!(
        out.starts_with("ipnat: error: ") && out.contains(&format!("`ipnat run` (pid {pid}) owns")),
        "{out}"
    );
    assert!(ipnat.pin_path.exists());
    ipnat::dataplane::status(&ipnat.pin_path).unwrap();
    let ex = udp_exchange(&lab.inet, &lab.backend, EIP, 7002, b"still here").unwrap();
    assert_eq!(ex.response, b"ereh llits");
    // A second controller on the same data plane is refused too.
    let second = Ipnat::start(
        &lab.gw,
        &lab.config(ipnat.pin_path.to_str().unwrap()),
        ipnat.pin_path.to_str().unwrap(),
    );
    let err = format!("{:#}", second.err().expect("a second controller started"));
    assert!(err.contains(&format!("(pid {pid}) owns")), "{err}");
    // Once stopped, `down` takes it all apart.
    ipnat.stop().unwrap();
    let (status, out) = ipnat.down().unwrap();
    assert!(status.success(), "{out}");
    assert!(!ipnat.pin_path.exists());
}

/// Under plain `ip netns exec` (a fresh /sys without the host's bpffs) `ipnat run` refuses,
/// naming the fix, and changes nothing: two of them alike.
#[test]
fn under_ip_netns_exec_run_refuses_and_names_the_fix() {
    require_root();
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    let pin = format!("/sys/fs/bpf/{}", unique("ipnat-exec"));
    let config = write_config(&lab.config(&pin));
    let before = records();
    let children: Vec<Child> = (0..2)
        .map(|_| {
            Command::new("ip")
                .args(["netns", "exec", lab.gw.name()])
                .arg(ipnat_bin())
                .arg("run")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("no bpffs is mounted at /sys/fs/bpf in this mount namespace")
                && err.contains("nsenter --net=/run/netns/NAME"),
            "{err}"
        );
    }
    assert_eq!(records(), before);
    assert!(!Path::new(&pin).exists());
    let links = lab.gw.ip(&["link", "show", "ext0"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("xdp"));
    let _ = std::fs::remove_file(config);
}

/// Two gateways in two network namespaces on one host, the documented way (each entered with
/// its network namespace only, each with its own pin path on the host's bpffs), translate side
/// by side, and each `down` takes apart only its own.
#[test]
fn two_gateways_in_two_namespaces_translate_side_by_side() {
    require_root();
    let a = GatewayLab::new(LabOptions::default()).unwrap();
    let b = GatewayLab::new(LabOptions::default()).unwrap();
    let mut ia = a.start_ipnat().unwrap();
    let ib = b.start_ipnat().unwrap();
    for (lab, port) in [(&a, 7003), (&b, 7004)] {
        let ex = udp_exchange(&lab.inet, &lab.backend, EIP, port, b"side by side").unwrap();
        assert_eq!(ex.server_saw_peer.ip(), ipnat_tests::lab::INET);
    }
    ia.stop().unwrap();
    // `down` of a's data plane from b's namespace is refused: its interfaces, addresses and
    // settings are a's namespace's.
    refused(
        b.gw.command(ipnat_bin().to_str().unwrap()).args([
            "down",
            "--pin-path",
            ia.pin_path.to_str().unwrap(),
        ]),
        &["is attached to interfaces of network namespace"],
    );
    assert!(ia.pin_path.exists());
    let (status, out) = ia.down().unwrap();
    assert!(status.success(), "{out}");
    let ex = udp_exchange(&b.inet, &b.backend, EIP, 7005, b"b goes on").unwrap();
    assert_eq!(ex.response, b"no seog b");
    drop(ib);
}

/// The systemd unit's sandbox, as far as a machine whose PID 1 is not systemd allows: a
/// private mount namespace with everything read-only but what the unit makes writable
/// (ReadWritePaths=, RuntimeDirectory=), a private /tmp, the unit's LimitNOFILE=. `ipnat run`
/// starts there in host orientation (which writes records in /run/ipnat), stops, and `ipnat
/// down` then puts back the addresses and sysctls exactly.
#[test]
fn the_service_runs_in_its_units_sandbox_and_down_restores_everything() {
    require_root();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/ipnat.service"
    ))
    .unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(values("ProtectSystem"), ["strict"]);
    let exec = values("ExecStart");
    assert_eq!(
        exec.first().map(String::as_str),
        Some("/usr/sbin/ipnat"),
        "ExecStart"
    );
    let mut writable = values("ReadWritePaths");
    for dir in values("RuntimeDirectory") {
        writable.push(format!("/run/{dir}"));
    }
    let nofile = values("LimitNOFILE");
    assert_eq!(nofile.len(), 1, "LimitNOFILE");

    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    let pin = format!("/sys/fs/bpf/{}", unique("ipnat-unit"));
    let config = format!(
        "pin_path = \"{pin}\"\norientation = \"host\"\ninternal = [\"10.0.0.0/16\"]\n[[interface]]\nname = \"int0\"\n[[mapping]]\npublic = \"{EIP}\"\nprivate = \"10.0.1.1\"\n"
    );
    // Not under /tmp: the unit's /tmp is private.
    let config_path = PathBuf::from(format!("/run/{}.toml", unique("ipnat-unit")));
    std::fs::write(&config_path, config).unwrap();
    let snapshot = || {
        let addrs = lab.gw.ip(&["-4", "addr", "show"]).unwrap();
        let mut sysctls = Vec::new();
        for key in [
            "int0/arp_ignore",
            "int0/arp_announce",
            "all/arp_ignore",
            "all/arp_announce",
        ] {
            let out = lab
                .gw
                .run("cat", &[&format!("/proc/sys/net/ipv4/conf/{key}")])
                .unwrap();
            sysctls.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        (String::from_utf8_lossy(&addrs.stdout).into_owned(), sysctls)
    };
    let before = snapshot();

    // The unit's view: every mount read-only but the API file systems, then the writable paths.
    // systemd creates the runtime directory (RuntimeDirectoryMode=) before the service starts.
    let mut script = String::from("set -e\n");
    for dir in &writable {
        script.push_str(&format!("mkdir -p -m 0700 {dir}\n"));
    }
    script.push_str(
        "awk '{print $5}' /proc/self/mountinfo | grep -Ev '^/(proc|sys|dev)(/|$)' | sort -u | while read -r m; do mount -o remount,bind,ro \"$m\" 2>/dev/null || true; done\n",
    );
    for dir in &writable {
        script.push_str(&format!(
            "mount --bind {dir} {dir}; mount -o remount,bind,rw {dir}\n"
        ));
    }
    if values("PrivateTmp") == ["yes"] {
        // A checkout under /tmp (the unit's binary is in /usr/sbin): keep the binary reachable
        // through an open descriptor once /tmp is private.
        script.push_str(
            "case \"$IPNAT\" in /tmp/*) exec 9<\"$IPNAT\"; IPNAT=/proc/self/fd/9;; esac\n\
             mount -t tmpfs tmpfs /tmp\n",
        );
    }
    // systemd (PID 1) may raise the limit past this process's hard limit; here it is capped.
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1;
    let n = nofile[0].parse::<u64>().expect("LimitNOFILE=N").min(hard);
    script.push_str(&format!(
        "exec prlimit --nofile={n}:{n} nsenter --net={ns} -- \"$IPNAT\" run --config \"$CONFIG\"\n",
        ns = lab.gw.path()
    ));
    let wrapped = format!(
        "echo pid=$$; exec unshare -m --propagation private sh -c '{}'",
        script.replace('\'', "'\\''")
    );
    let mut running = Shell::start(&wrapped, &config_path)
        .unwrap_or_else(|log| panic!("ipnat run failed in the unit's sandbox:\n{log}"));
    let during = snapshot();
    assert_ne!(during, before, "host orientation changed nothing?");
    assert!(during.0.contains(&EIP.to_string()), "{}", during.0);
    running.stop();
    // The data plane and its records outlive the stop (RuntimeDirectoryPreserve=yes).
    assert_eq!(values("RuntimeDirectoryPreserve"), ["yes"]);
    assert!(Path::new(&pin).exists());
    let out = lab
        .gw
        .command(ipnat_bin().to_str().unwrap())
        .args(["down", "--pin-path", &pin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(), before);
    assert!(!Path::new(&pin).exists());
    let _ = std::fs::remove_file(config_path);
}

/// Creates a map with the bpf(2) syscall directly (nothing of ipnat's) and pins it at `path`.
fn pin_foreign_map(path: &Path, map_type: u32, key: u32, value: u32, entries: u32) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let bpf = |cmd: libc::c_long, attr: &mut [u64; 16]| unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    // union bpf_attr, BPF_MAP_CREATE: map_type, key_size, value_size, max_entries (u32 each).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map_type) | u64::from(key) << 32;
    attr[1] = u64::from(value) | u64::from(entries) << 32;
    let fd = bpf(BPF_MAP_CREATE, &mut attr);
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // BPF_OBJ_PIN: pathname (u64 pointer), bpf_fd (u32).
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd as u64;
    let r = bpf(BPF_OBJ_PIN, &mut attr);
    assert!(r == 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    unsafe { libc::close(fd as i32) };
}

/// A map someone else pinned under one of ipnat's map names (another type, or another value
/// size) is never adopted: `ipnat run` refuses in one line naming the pin and what it is, and
/// leaves the directory, the foreign map and /run/ipnat as they were (no pins created beside
/// it, no records).
#[test]
fn a_foreign_map_under_an_ipnat_pin_name_is_refused_and_nothing_is_left() {
    use ipnat::state::Records;
    use ipnat_common::names;
    use std::os::unix::fs::DirBuilderExt;
    require_root();
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    // (the name, a hash map for an array, a 4-byte value for the settings' struct)
    for (name, map_type, key, value) in [(names::DNAT_MAP, 2, 4, 16), (names::SETTINGS, 2, 4, 4)] {
        let pin = format!("/sys/fs/bpf/{}", unique("ipnat-foreign"));
        std::fs::DirBuilder::new().mode(0o700).create(&pin).unwrap();
        let foreign = Path::new(&pin).join(name);
        pin_foreign_map(&foreign, map_type, key, value, 8);
        let err = Ipnat::start(&lab.gw, &lab.config(&pin), &pin)
            .err()
            .expect("ipnat adopted a foreign map");
        let log = format!("{err:#}");
        let error: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(error.len(), 1, "{log}");
        assert!(
            error[0].contains(&format!(
                "{}: refusing to adopt it: an array map",
                foreign.display()
            )) && error[0].contains("not ipnat's"),
            "{log}"
        );
        assert!(
            !log.contains("verifier") && !log.contains("refused program"),
            "{log}"
        );
        let left: Vec<String> = std::fs::read_dir(&pin)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [name], "{log}");
        // (this data plane's records only: other tests may run beside this one)
        assert!(!Records::lookup(Path::new(&pin)).exist(), "{log}");
        std::fs::remove_file(&foreign).unwrap();
        std::fs::remove_dir(&pin).unwrap();
    }
}
