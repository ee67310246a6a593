//! Control plane against a fake cloud: the time to read the metadata of an instance with N
//! NICs of M addresses each (AWS IMDSv2, one request per value), to turn it into steering rules,
//! and to write them into the kernel; and the time to load mappings. Prints figures only.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnat::{
    config::MappingConfig,
    dataplane::Dataplane,
    providers::{
        aws::{Imds, secondaries},
        nic::steering_rules,
    },
};
use ipnat_tests::{
    benchkit::Args,
    fakecloud::FakeImds,
    netns::{Netns, require_root},
};

fn main() -> Result<()> {
    require_root();
    let args = Args::from_env();
    let get = |name: &str, default: &str| args.get(name, default);
    let nics: u32 = get("--nics", "1000").parse()?;
    let per_nic: u32 = get("--addresses", "20").parse()?;
    let json_out = get("--json-out", "");

    let ns = Netns::new("sync")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let cloud = FakeImds::start(&ns);
    let mac = |i: u32| {
        format!(
            "0a:00:00:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        )
    };
    let base = "network/interfaces/macs/";
    let list: String = (0..nics).map(|i| format!("{}/\n", mac(i))).collect();
    cloud.set(base, &list);
    for i in 0..nics {
        let m = mac(i);
        let (a, b) = ((i >> 8) as u8, i as u8);
        let ips: String = (0..per_nic)
            .map(|h| format!("10.{a}.{b}.{}\n", 10 + h))
            .collect();
        cloud.set(&format!("{base}{m}/device-number"), &i.to_string());
        cloud.set(&format!("{base}{m}/interface-id"), &format!("eni-{i}"));
        cloud.set(&format!("{base}{m}/local-ipv4s"), &ips);
        cloud.set(
            &format!("{base}{m}/subnet-ipv4-cidr-block"),
            &format!("10.{a}.{b}.0/24"),
        );
    }
    let endpoint = format!("http://127.0.0.1:{}", cloud.port);
    let (fetched, fetch_time) = ns.within(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let start = Instant::now();
        let nics =
            rt.block_on(async { Imds::new(&endpoint, Duration::from_secs(5))?.nics().await })?;
        Ok((nics, start.elapsed()))
    })?;
    let requests = *cloud.gets.lock().unwrap();
    let t = Instant::now();
    let (rules, _) = steering_rules(secondaries(&fetched), &|_| Some("lo".to_owned()));
    let compute_time = t.elapsed();
    let mut dp = Dataplane::load(None, 1024).context("load the data plane")?;
    let with_index: Vec<_> = rules.iter().cloned().map(|r| (r, 1u32)).collect();
    let t = Instant::now();
    dp.tables.apply_steering(&with_index)?;
    let apply_time = t.elapsed();
    let t = Instant::now();
    dp.tables.apply_steering(&with_index)?;
    let reapply_time = t.elapsed();

    // Loading mappings: 1,000 / 100,000 / 1,000,000.
    let mut loads = Vec::new();
    for n in [1_000u32, 100_000, 1_000_000] {
        let mut dp = Dataplane::load(None, n)?;
        let mappings: Vec<MappingConfig> = (0..n)
            .map(|i| MappingConfig {
                public: std::net::Ipv4Addr::from(0x6440_0000 + i).into(),
                private: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            })
            .collect();
        let t = Instant::now();
        dp.tables.apply(&mappings)?;
        let load = t.elapsed();
        // A reload or sync that changes nothing: the installed table is read and diffed.
        let t = Instant::now();
        dp.tables.apply(&mappings)?;
        loads.push((n, load, t.elapsed(), dp.tables.memory().total_bytes));
    }

    println!(
        "fake cloud: {nics} NICs x {per_nic} addresses: metadata read in {:.2} s ({requests} requests), \
         {} rules computed in {:.1} ms, written in {:.2} s, rewritten unchanged in {:.2} s",
        fetch_time.as_secs_f64(),
        rules.len(),
        compute_time.as_secs_f64() * 1e3,
        apply_time.as_secs_f64(),
        reapply_time.as_secs_f64()
    );
    for (n, took, again, bytes) in &loads {
        println!(
            "{n:>9} mappings loaded in {:.2} s, re-applied unchanged in {:.2} s, {:.1} MiB of map memory",
            took.as_secs_f64(),
            again.as_secs_f64(),
            *bytes as f64 / (1 << 20) as f64
        );
    }
    if !json_out.is_empty() {
        let report = serde_json::json!({
            "nics": nics, "addresses_per_nic": per_nic, "metadata_requests": requests,
            "metadata_read_s": fetch_time.as_secs_f64(), "rules": rules.len(),
            "rules_write_s": apply_time.as_secs_f64(), "rules_rewrite_s": reapply_time.as_secs_f64(),
            "mapping_loads": loads.iter().map(|(n, t, again, b)| serde_json::json!({"mappings": n, "seconds": t.as_secs_f64(), "unchanged_seconds": again.as_secs_f64(), "map_bytes": b})).collect::<Vec<_>>(),
        });
        std::fs::write(&json_out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
