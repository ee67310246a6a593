//! The controller: restarts that keep traffic flowing, reloads, and the CLI against a running
//! data plane. Real binary, real packets, in namespaces.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ipnat_tests::{
    lab::{BACKEND, EIP, EIP2, GatewayLab, INET, LabOptions},
    netns::require_root,
};

const PORT: u16 = 6000;

type Worker<T> = std::thread::JoinHandle<std::io::Result<T>>;

/// A sequence-numbered UDP stream from the internet host to the EIP, echoed by the backend.
/// Returns (sequence numbers sent, the backend saw from INET, echoes seen from the EIP,
/// anything else seen).
struct Stream {
    stop: Arc<AtomicBool>,
    sender: Worker<(u32, BTreeSet<u32>, Vec<String>)>,
    echo: Worker<(BTreeSet<u32>, Vec<String>)>,
}

impl Stream {
    fn start(lab: &GatewayLab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let server = lab
            .backend
            .within(|| Ok(UdpSocket::bind((BACKEND, PORT))?))
            .unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop_echo = stop.clone();
        let echo = std::thread::spawn(move || {
            let (mut seen, mut odd) = (BTreeSet::new(), Vec::new());
            let mut buf = [0u8; 64];
            let mut idle_since = None;
            loop {
                match server.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        idle_since = None;
                        if n != 4 || peer != SocketAddr::from((INET, PORT)) {
                            odd.push(format!("backend got {n} bytes from {peer}"));
                            continue;
                        }
                        seen.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                        server.send_to(&buf[..4], peer)?;
                    }
                    Err(_) if stop_echo.load(Ordering::Relaxed) => {
                        // Drain for a moment after the sender stopped.
                        let t = *idle_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_millis(300) {
                            return Ok((seen, odd));
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        let client = lab
            .inet
            .within(|| Ok(UdpSocket::bind((INET, PORT))?))
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let stop_send = stop.clone();
        let sender = std::thread::spawn(move || {
            let (mut sent, mut back, mut odd) = (0u32, BTreeSet::new(), Vec::new());
            let mut buf = [0u8; 64];
            let mut drain_until = None;
            loop {
                if stop_send.load(Ordering::Relaxed) {
                    let t = *drain_until
                        .get_or_insert_with(|| Instant::now() + Duration::from_millis(500));
                    if Instant::now() > t {
                        return Ok((sent, back, odd));
                    }
                } else {
                    client.send_to(&sent.to_be_bytes(), (EIP, PORT))?;
                    sent += 1;
                }
                // Pacing (a few thousand datagrams a second), then the replies so far.
                std::thread::sleep(Duration::from_micros(250));
                while let Ok((n, from)) = client.recv_from(&mut buf) {
                    if n != 4 || from != SocketAddr::from((EIP, PORT)) {
                        odd.push(format!("internet host got {n} bytes from {from}"));
                        continue;
                    }
                    back.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                }
            }
        });
        Self { stop, sender, echo }
    }

    fn finish(self) -> (u32, BTreeSet<u32>, BTreeSet<u32>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, back, mut odd) = self.sender.join().unwrap().unwrap();
        let (seen, odd2) = self.echo.join().unwrap().unwrap();
        odd.extend(odd2);
        (sent, seen, back, odd)
    }
}

fn assert_complete(sent: u32, seen: &BTreeSet<u32>, back: &BTreeSet<u32>, odd: &[String]) {
    println!(
        "{sent} datagrams sent; {} arrived, {} echoes came back",
        seen.len(),
        back.len()
    );
    assert!(
        odd.is_empty(),
        "mistranslated: {:?}",
        &odd[..odd.len().min(5)]
    );
    for (got, way) in [(seen, "on the way in"), (back, "on the way back")] {
        assert_none_lost(sent, got, way);
    }
}

/// Every one of datagrams `0..sent` is in `got`.
fn assert_none_lost(sent: u32, got: &BTreeSet<u32>, where_: &str) {
    let missing: Vec<u32> = (0..sent).filter(|s| !got.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} lost {where_}, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

fn dnat_packets(stats: &serde_json::Value) -> u64 {
    ipnat_tests::lab::mapping_stats(&stats, EIP).unwrap()["dnat_packets"]
        .as_u64()
        .unwrap()
}

#[test]
fn killing_and_restarting_the_controller_loses_no_packet() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let stream = Stream::start(&lab);
    std::thread::sleep(Duration::from_millis(400));
    let before = dnat_packets(&ipnat.stats_json().unwrap());
    // SIGKILL: no cleanup at all. Then start again: the new controller adopts the pins.
    ipnat.kill().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ipnat
        .spawn(&lab.gw, &lab.config(&ipnat.pin_path.to_string_lossy()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Once more, with the config changed while the controller is down (the second mapping
    // moves to another backend address): the stream's mapping is untouched throughout.
    ipnat.kill().unwrap();
    let changed = lab
        .config(&ipnat.pin_path.to_string_lossy())
        .replace("private = \"10.0.1.11\"", "private = \"10.0.1.12\"");
    std::thread::sleep(Duration::from_millis(200));
    ipnat.spawn(&lab.gw, &changed).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (sent, seen, back, odd) = stream.finish();
    assert!(sent > 1000, "only {sent} datagrams sent");
    assert_complete(sent, &seen, &back, &odd);
    let stats = ipnat.stats_json().unwrap();
    let after = dnat_packets(&stats);
    assert!(
        after >= u64::from(sent) && after > before,
        "counters continue across restarts: {before} then {after} for {sent} sent"
    );
    let second = ipnat_tests::lab::mapping_stats(&stats, EIP2).unwrap();
    assert_eq!(
        second["private"], "10.0.1.12",
        "the changed config was applied"
    );
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_last_good_table() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let pin = ipnat.pin_path.to_string_lossy().into_owned();
    let stream = Stream::start(&lab);
    let wait_for = |ipnat: &ipnat_tests::lab::Ipnat, private: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = ipnat.stats_json().unwrap();
            let m = ipnat_tests::lab::mapping_stats(&stats, EIP2).cloned();
            if m.as_ref().is_some_and(|m| m["private"] == private) {
                return;
            }
            assert!(Instant::now() < deadline, "not reloaded: {stats}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ipnat
        .reload(&lab.config(&pin).replace("10.0.1.11", "10.0.1.13"))
        .unwrap();
    wait_for(&ipnat, "10.0.1.13");
    // Garbage, then a conflicting mapping: refused, the table stays as it was.
    let conflicting = format!(
        "{}\n[[mapping]]\npublic = \"{EIP}\"\nprivate = \"10.0.1.99\"\n",
        lab.config(&pin)
    );
    for bad in ["this is not toml", &conflicting] {
        ipnat.reload(bad).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        wait_for(&ipnat, "10.0.1.13");
    }
    // No signal needed: a changed file is reloaded, a broken one refused.
    ipnat
        .rewrite_config(&lab.config(&pin).replace("10.0.1.11", "10.0.1.14"))
        .unwrap();
    wait_for(&ipnat, "10.0.1.14");
    ipnat.rewrite_config("[[mapping]]\npublic = 1").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    wait_for(&ipnat, "10.0.1.14");
    let (sent, seen, back, odd) = stream.finish();
    assert_complete(sent, &seen, &back, &odd);
}

#[test]
fn churning_a_mapping_never_loses_or_mistranslates_a_packet() {
    require_root();
    let (lab, running) = GatewayLab::started(LabOptions::default());
    let (a, b) = (BACKEND, ipnat_tests::lab::BACKEND2);
    // The backend listens on both addresses the EIP will alternate between.
    let socks: Vec<UdpSocket> = [a, b]
        .into_iter()
        .map(|addr| {
            let s = lab
                .backend
                .within(move || Ok(UdpSocket::bind((addr, PORT))?))
                .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .collect();
    let receivers: Vec<_> = socks
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 16];
                while let Ok((n, peer)) = s.recv_from(&mut buf) {
                    assert_eq!(peer.ip(), std::net::IpAddr::V4(INET));
                    got.push(u32::from_be_bytes(buf[..n.min(4)].try_into().unwrap()));
                }
                got
            })
        })
        .collect();
    // A second owner of the tables (the test), flipping EIP between the two addresses as fast
    // as it can while the stream runs.
    let stop = Arc::new(AtomicBool::new(false));
    let pin = running.pin_path.clone();
    let stop_churn = stop.clone();
    let churn = std::thread::spawn(move || {
        let mut tables = ipnat::dataplane::Tables::open_pinned(&pin).unwrap();
        let mapping = |private: std::net::Ipv4Addr| ipnat::config::MappingConfig {
            public: EIP.into(),
            private: private.into(),
        };
        let (mut changes, start) = (0u64, Instant::now());
        while !stop_churn.load(Ordering::Relaxed) {
            let private = if changes % 2 == 0 { b } else { a };
            tables.apply(&[mapping(private)]).unwrap();
            changes += 1;
        }
        (changes, start.elapsed())
    });
    let client = lab
        .inet
        .within(|| Ok(UdpSocket::bind((INET, PORT))?))
        .unwrap();
    let mut sent = 0u32;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        client.send_to(&sent.to_be_bytes(), (EIP, PORT)).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    let (changes, took) = churn.join().unwrap();
    let got: Vec<Vec<u32>> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
    println!(
        "{changes} mapping changes in {took:?} ({:.0}/s) while {sent} datagrams flowed; {} reached {a}, {} reached {b}",
        changes as f64 / took.as_secs_f64(),
        got[0].len(),
        got[1].len()
    );
    assert!(changes > 1000, "only {changes} changes");
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both translations were in use"
    );
    let all: BTreeSet<u32> = got.iter().flatten().copied().collect();
    assert_eq!(
        all.len(),
        got[0].len() + got[1].len(),
        "no datagram delivered twice"
    );
    assert_none_lost(sent, &all, "between the two private addresses");
    // Every translation was counted on the one mapping, whatever its private side.
    let stats = running.stats_json().unwrap();
    let m = &stats["mappings"].as_array().unwrap()[0];
    assert_eq!(m["dnat_packets"].as_u64(), Some(u64::from(sent)), "{stats}");
}

#[test]
fn growing_the_tables_on_restart_keeps_traffic_and_counters() {
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let pin = ipnat.pin_path.to_string_lossy().into_owned();
    let sized = |n: u32| format!("max_mappings = {n}\n{}", lab.config(&pin));
    // Restart at a fixed size first, then grow it under traffic.
    ipnat.stop().unwrap();
    ipnat.spawn(&lab.gw, &sized(1024)).unwrap();
    let capacity = |ipnat: &ipnat_tests::lab::Ipnat| {
        ipnat.stats_json().unwrap()["memory"]["capacity"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(capacity(&ipnat), 1024);
    let stream = Stream::start(&lab);
    std::thread::sleep(Duration::from_millis(400));
    let before = dnat_packets(&ipnat.stats_json().unwrap());
    ipnat.kill().unwrap();
    ipnat.spawn(&lab.gw, &sized(100_000)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let (sent, seen, back, odd) = stream.finish();
    assert_complete(sent, &seen, &back, &odd);
    let stats = ipnat.stats_json().unwrap();
    assert_eq!(capacity(&ipnat), 100_000, "{stats}");
    let after = dnat_packets(&stats);
    // The rebuild copies the counters while packets still flow through the old tables, and
    // adds what the old tables counted after the copy once every link runs the new programs:
    // every datagram counted once. (Before that was done, the increments of the window were
    // lost: 65 of 8,344 in one run, 946 of 11,112 in another while the whole suite ran.)
    assert!(
        after > before,
        "counters carried over: {before} then {after}"
    );
    assert_eq!(
        after,
        u64::from(sent),
        "every datagram counted once: {stats}"
    );
}

#[test]
fn a_second_controller_on_the_same_data_plane_is_refused() {
    require_root();
    let (lab, first) = GatewayLab::started(LabOptions::default());
    let pin = first.pin_path.to_string_lossy().into_owned();
    let err = ipnat_tests::lab::Ipnat::start(&lab.gw, &lab.config(&pin), &pin)
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("`ipnat run` (pid")
            && err.to_string().contains("one controller per data plane"),
        "{err}"
    );
    // The first one still owns and runs it.
    assert_eq!(
        first.stats_json().unwrap()["mappings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let x =
        ipnat_tests::lab::udp_exchange(&lab.inet, &lab.backend, EIP, 5500, b"still here").unwrap();
    assert_eq!(x.client_saw_peer.ip(), std::net::IpAddr::V4(EIP));
}

/// An upgrade across a map layout change, under traffic: the pinned data plane is doctored to
/// look like an older ipnat's (layout version 4, 19 outcome counters instead of 23), and a
/// controller of this version adopts it: new maps are built, the tables, counters and settings
/// carried over, the programs swapped link by link; no datagram is lost.
#[test]
fn an_older_map_layout_is_migrated_under_traffic() {
    use aya::maps::{Array, MapData};
    use ipnat_common::{SCHEMA_VERSION, Settings, names};
    require_root();
    let (lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let pin = ipnat.pin_path.clone();
    let stream = Stream::start(&lab);
    std::thread::sleep(Duration::from_millis(400));
    let before = dnat_packets(&ipnat.stats_json().unwrap());
    ipnat.kill().unwrap();
    // What an older binary left pinned.
    let mut settings: Array<MapData, Settings> =
        aya::maps::Map::from_map_data(MapData::from_pin(pin.join(names::SETTINGS)).unwrap())
            .unwrap()
            .try_into()
            .unwrap();
    let mut s = settings.get(&0, 0).unwrap();
    s.schema = 4;
    settings.set(0, s, 0).unwrap();
    ipnat_tests::testrun::pin_old_reason_counters(&pin.join(names::REASON_COUNTERS), 19, |i| {
        if i == 2 { 100_000 } else { 0 }
    })
    .unwrap();
    ipnat
        .spawn(&lab.gw, &lab.config(&pin.to_string_lossy()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let (sent, seen, back, odd) = stream.finish();
    assert_complete(sent, &seen, &back, &odd);
    let stats = ipnat.stats_json().unwrap();
    let after = dnat_packets(&stats);
    // Increments the old programs made between the copy and the swap of their links are lost
    // (documented): a few percent at most here.
    assert!(
        after > before && after + u64::from(sent) / 25 >= u64::from(sent),
        "mapping counters carried over: {before} then {after} for {sent} sent"
    );
    // The old outcome counters carried over (reason 2, `dnat`, was 100,000 per CPU), and the
    // four new outcomes exist.
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    assert!(
        stats["reasons"]["dnat"].as_u64().unwrap() >= 100_000 * cpus,
        "{stats}"
    );
    assert!(stats["reasons"]["pass_private_socket"].is_u64(), "{stats}");
    let st = ipnat::dataplane::status(&pin).unwrap();
    assert_eq!(st.schema, SCHEMA_VERSION);
}

/// More idle connections to the metrics port than the controller may open files: the
/// controller's own work goes on (a reload applies), the data plane translates, and a scrape
/// works again once the idle connections time out.
#[test]
fn idle_metrics_connections_never_starve_the_controller() {
    require_root();
    let lab = GatewayLab::new(LabOptions::default()).unwrap();
    let pin = format!("/sys/fs/bpf/ipnat-fds-{}", std::process::id());
    let mut ipnat =
        ipnat_tests::lab::Ipnat::start_limited(&lab.gw, &lab.config(&pin), &pin, Some(256))
            .unwrap();
    let idle: Vec<std::net::TcpStream> = lab
        .gw
        .within(|| {
            (0..400)
                .map(|_| Ok(std::net::TcpStream::connect("127.0.0.1:9469")?))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // A reload that adds a mapping must apply (it opens the config file).
    let more = format!(
        "{}\n[[mapping]]\npublic = \"198.51.100.12\"\nprivate = \"10.0.1.12\"\n",
        lab.config(&pin)
    );
    ipnat.reload(&more).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ipnat.stats_json().unwrap()["mappings"]
        .as_array()
        .unwrap()
        .len()
        != 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not apply with the metrics port flooded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let x = ipnat_tests::lab::udp_exchange(&lab.inet, &lab.backend, EIP, 7400, b"flooded").unwrap();
    assert_eq!(x.response, b"dedoolf");
    // The idle ones are closed after the header timeout; a scrape then works.
    let deadline = std::time::Instant::now() + ipnat::metrics::HEADER_TIMEOUT * 3;
    loop {
        if ipnat_tests::lab::metrics(&lab.gw).is_ok_and(|m| m.contains("ipnat_mappings 3")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scrape after the idle ones"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
}

/// The ids of the BPF maps and programs process `pid` holds open (its fds' `map_id` and
/// `prog_id` lines in /proc/PID/fdinfo).
fn bpf_ids_held_by(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut maps, mut progs) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        for line in info.lines() {
            let id = |v: &str| v.trim().parse::<u32>().unwrap();
            if let Some(v) = line.strip_prefix("map_id:") {
                maps.insert(id(v));
            } else if let Some(v) = line.strip_prefix("prog_id:") {
                progs.insert(id(v));
            }
        }
    }
    (maps, progs)
}

/// `ipnat run` creates the product's maps and programs only; the benchmarks' are in an object
/// of their own that only `ipnat bench` and the forwarding benchmark load.
#[test]
fn run_creates_no_benchmark_program_or_map() {
    require_root();
    let (_lab, mut ipnat) = GatewayLab::started(LabOptions::default());
    let (map_ids, prog_ids) = bpf_ids_held_by(ipnat.pid().unwrap());
    let maps: BTreeSet<String> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| map_ids.contains(&m.id()))
        .map(|m| m.name_as_str().unwrap_or("?").to_owned())
        .collect();
    let progs: BTreeSet<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| prog_ids.contains(&p.id()))
        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
        .collect();
    ipnat.stop().unwrap();
    // The kernel keeps 15 characters of a name.
    let product: BTreeSet<String> = ipnat::dataplane::MAP_NAMES
        .iter()
        .map(|n| n[..n.len().min(15)].to_owned())
        .collect();
    // Besides them, the loader's map of the object's constants (.rodata).
    let ipnat_maps: BTreeSet<String> = maps
        .iter()
        .filter(|m| !m.starts_with('.'))
        .cloned()
        .collect();
    assert_eq!(ipnat_maps, product, "the maps `ipnat run` holds: {maps:?}");
    assert!(!progs.is_empty(), "no programs seen: {prog_ids:?}");
    assert!(
        progs.iter().all(|p| !p.contains("bench")),
        "benchmark programs loaded by `ipnat run`: {progs:?}"
    );
}
