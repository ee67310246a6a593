//! Steering against `ip rule`, side by side: unconnected UDP sends (one route lookup per
//! datagram) from N source addresses of a second NIC, with N `ip rule from <addr> lookup 1001`
//! entries (the rc.local recipe), and with N ipnat steering rules instead (no ip rule).
//!
//! The sender picks each datagram's source with IP_PKTINFO, round robin over the N addresses.
//! A sink behind the second NIC counts in XDP what arrives there (the right path); a sink
//! behind the first NIC counts what leaked. Rounds interleave the two setups.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ipnat_tests::{
    benchkit::{Args, attach_sink, sink_counts},
    lab::{Ipnat, cleanup_on_signal},
    netns::{Netns, require_root, veth},
};

const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn source(i: u32) -> Ipv4Addr {
    // 10.1.0.1 .. within 10.1.0.0/16 (gateway 10.1.255.254).
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 1)) + i)
}

/// Runs `ip -batch` with these lines in `ns`.
fn ip_batch(ns: &Netns, lines: &[String]) -> Result<()> {
    let file = std::env::temp_dir().join(format!("ipnat-steer-bench-{}.batch", std::process::id()));
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let r = ns.ip(&["-batch", file.to_str().context("path")?]);
    std::fs::remove_file(&file)?;
    r.map(drop)
}

/// Sends for `secs` from the N sources round robin; returns datagrams sent.
fn send(ns: &Netns, n: u32, secs: f64) -> Result<u64> {
    ns.within(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 9u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(DST.octets()),
            },
            sin_zero: [0; 8],
        };
        let payload = [0u8; 18];
        let mut cbuf = [0u8; 64];
        let (mut sent, start) = (0u64, Instant::now());
        let mut i = 0u32;
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..256 {
                let src = source(i % n);
                i = i.wrapping_add(1);
                // SAFETY: sendmsg with an iovec, a destination and an IP_PKTINFO control
                // message, all on buffers that live through the call.
                let rc = unsafe {
                    let mut iov = libc::iovec {
                        iov_base: payload.as_ptr() as *mut libc::c_void,
                        iov_len: payload.len(),
                    };
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_name = &dst as *const _ as *mut libc::c_void;
                    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = cbuf.as_mut_ptr().cast();
                    msg.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
                    let info = libc::CMSG_DATA(c) as *mut libc::in_pktinfo;
                    (*info).ipi_ifindex = 0;
                    (*info).ipi_spec_dst = libc::in_addr {
                        s_addr: u32::from_ne_bytes(src.octets()),
                    };
                    (*info).ipi_addr = libc::in_addr { s_addr: 0 };
                    libc::sendmsg(fd, &msg, 0)
                };
                if rc >= 0 {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })
}

fn main() -> Result<()> {
    require_root();
    cleanup_on_signal();
    let args = Args::from_env();
    let get = |name: &str, default: &str| args.get(name, default);
    let counts: Vec<u32> = get("--sources", "1,100,1000,10000")
        .split(',')
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    let rounds: usize = get("--rounds", "3").parse()?;
    let secs: f64 = get("--secs", "1").parse()?;
    let json_out = get("--json-out", "");

    let mut rows = Vec::new();
    for &n in &counts {
        // A fresh instance per N: eth0 (default route) and eth1 with the N addresses.
        let inst = Netns::new("sinst")?;
        let peer = Netns::new("speer")?;
        veth(&inst, "eth0", &peer, "p0")?;
        veth(&inst, "eth1", &peer, "p1")?;
        inst.ip(&["addr", "add", "10.0.0.10/24", "dev", "eth0"])?;
        inst.ip(&["route", "add", "default", "via", "10.0.0.1"])?;
        peer.ip(&["addr", "add", "10.0.0.1/24", "dev", "p0"])?;
        peer.ip(&["addr", "add", "10.1.255.254/16", "dev", "p1"])?;
        let addrs: Vec<String> = (0..n)
            .map(|i| format!("addr add {}/16 dev eth1", source(i)))
            .collect();
        ip_batch(&inst, &addrs)?;
        // The peer answers ARP and counts; both ends count what arrives.
        let right = attach_sink(&peer, "p1", DST)?;
        let wrong = attach_sink(&peer, "p0", DST)?;
        let mut results: Vec<(&str, f64, f64)> = Vec::new();
        for round in 0..rounds {
            for setup in ["ip rule", "ipnat"] {
                let mut ipnat = None;
                if setup == "ip rule" {
                    let mut lines =
                        vec!["route add default via 10.1.255.254 dev eth1 table 1001".to_owned()];
                    lines.extend((0..n).map(|i| {
                        format!("rule add from {} lookup 1001 pref {}", source(i), 1000 + i)
                    }));
                    ip_batch(&inst, &lines)?;
                } else {
                    let pin = format!(
                        "/sys/fs/bpf/ipnat-steerbench-{}-{n}-{round}",
                        std::process::id()
                    );
                    let mut config = format!(
                        "pin_path = \"{pin}\"\nmetrics_listen = \"off\"\n[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n"
                    );
                    for i in 0..n {
                        config.push_str(&format!(
                            "[[steer]]\nsource = \"{}\"\ninterface = \"eth1\"\ngateway = \"10.1.255.254\"\nsubnet = \"10.1.0.0/16\"\n",
                            source(i)
                        ));
                    }
                    ipnat = Some(Ipnat::start(&inst, &config, &pin)?);
                }
                // Warm the neighbours, then measure.
                send(&inst, n, 0.1)?;
                std::thread::sleep(Duration::from_millis(100));
                let (r0, w0) = (sink_counts(&right)?.0, sink_counts(&wrong)?.0);
                let start = Instant::now();
                let sent = send(&inst, n, secs)?;
                let took = start.elapsed().as_secs_f64();
                std::thread::sleep(Duration::from_millis(100));
                let (r1, w1) = (sink_counts(&right)?.0, sink_counts(&wrong)?.0);
                if w1 > w0 {
                    bail!(
                        "{setup}, {n} sources: {} datagrams left by the wrong NIC",
                        w1 - w0
                    );
                }
                let pps = sent as f64 / took;
                let delivered = (r1 - r0) as f64 / sent.max(1) as f64;
                eprintln!(
                    "{n:>6} sources, round {}: {setup:<8} {:>9.0} sends/s, {:.1}% arrived by eth1",
                    round + 1,
                    pps,
                    delivered * 100.0
                );
                results.push((setup, pps, delivered));
                if setup == "ip rule" {
                    let mut lines = vec!["route flush table 1001".to_owned()];
                    lines.extend((0..n).map(|i| format!("rule del pref {}", 1000 + i)));
                    ip_batch(&inst, &lines)?;
                } else if let Some(mut i) = ipnat.take() {
                    i.stop()?;
                    let (ok, out) = i.down()?;
                    if !ok.success() {
                        bail!("ipnat down: {out}");
                    }
                }
            }
        }
        let med = |setup: &str| {
            let mut v: Vec<f64> = results
                .iter()
                .filter(|r| r.0 == setup)
                .map(|r| r.1)
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (rules, ipnat) = (med("ip rule"), med("ipnat"));
        rows.push(serde_json::json!({"sources": n, "ip_rule_sends_per_s": rules, "ipnat_sends_per_s": ipnat, "ipnat_vs_ip_rule": ipnat / rules}));
        drop((right, wrong, inst, peer));
    }
    println!(
        "{:>8} {:>14} {:>14} {:>16}",
        "sources", "ip rule /s", "ipnat /s", "ipnat x ip rule"
    );
    for r in &rows {
        println!(
            "{:>8} {:>14.0} {:>14.0} {:>16.2}",
            r["sources"],
            r["ip_rule_sends_per_s"].as_f64().unwrap_or(0.0),
            r["ipnat_sends_per_s"].as_f64().unwrap_or(0.0),
            r["ipnat_vs_ip_rule"].as_f64().unwrap_or(0.0)
        );
    }
    if !json_out.is_empty() {
        std::fs::write(&json_out, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
