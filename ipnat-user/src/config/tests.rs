//! The config's unit tests.

use super::*;

const GOOD: &str = r#"
        [[interface]]
        name = "eth0"
        [[mapping]]
        public = "198.51.100.10"
        private = "10.0.1.10"
    "#;

#[test]
fn parses_with_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
    assert_eq!(c.interfaces[0].name, "eth0");
    assert_eq!(c.mappings[0].public, Ipv4Addr::new(198, 51, 100, 10).into());
    assert!(c.fast_path);
}

fn err(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn blocks_in_non_unicast_space_are_refused_like_single_addresses() {
    for (public, private) in [
        ("127.0.0.0/24", "10.0.2.0/24"),
        ("224.0.0.0/24", "10.0.2.0/24"),
        ("0.0.0.0/8", "10.0.0.0/8"),
        ("255.255.255.0/24", "10.0.2.0/24"),
        ("198.51.100.0/24", "127.0.1.0/24"),
        ("0.0.0.0", "10.0.2.1"),
        ("239.1.2.3", "10.0.2.1"),
    ] {
        let text = format!(
            "[[interface]]\nname = \"eth0\"\n[[mapping]]\npublic = \"{public}\"\nprivate = \"{private}\"\n"
        );
        let e = err(&text);
        assert!(e.contains("must be unicast"), "{public} <-> {private}: {e}");
    }
    let text = "[[interface]]\nname = \"eth0\"\n[[mapping]]\npublic = \"120.0.0.0/25\"\nprivate = \"10.0.1.0/25\"\n";
    Config::parse(text).unwrap();
}

#[test]
fn durations_are_bounded() {
    for (key, value, want) in [
        ("interval_secs", "9223372036854775807", "aws.interval_secs"),
        ("interval_secs", "86401", "aws.interval_secs"),
        ("timeout_ms", "9223372036854775807", "aws.timeout_ms"),
    ] {
        let text = format!("{GOOD}\n[aws]\n{key} = {value}\n");
        let e = err(&text);
        assert!(
            e.contains(want) && e.contains("at most"),
            "{key} = {value}: {e}"
        );
    }
    Config::parse(&format!("{GOOD}\n[aws]\ninterval_secs = 86400\n")).unwrap();
}

#[test]
fn rejects_duplicates_and_chains_naming_the_key() {
    let dup_public =
        format!("{GOOD}\n[[mapping]]\npublic = \"198.51.100.10\"\nprivate = \"10.0.1.11\"\n");
    assert_eq!(
        err(&dup_public),
        "mapping[1].public = \"198.51.100.10\": already mapped by mapping[0]"
    );
    let dup_private =
        format!("{GOOD}\n[[mapping]]\npublic = \"198.51.100.11\"\nprivate = \"10.0.1.10\"\n");
    assert!(err(&dup_private).starts_with("mapping[1].private = \"10.0.1.10\""));
    let chain = format!("{GOOD}\n[[mapping]]\npublic = \"10.0.1.10\"\nprivate = \"10.0.1.12\"\n");
    assert!(
        err(&chain).contains("overlaps the private side 10.0.1.10 of mapping[0]"),
        "{}",
        err(&chain)
    );
}

#[test]
fn rejects_garbage_and_unknown_keys() {
    assert!(err("[[mapping]]\npublic = \"1.2.3\"\nprivate = \"10.0.0.1\"").contains("not valid"));
    assert!(err(&format!("{GOOD}\nbogus = 1\n")).contains("unknown field"));
    assert!(err("").starts_with("interface"));
    let mcast =
        "[[interface]]\nname=\"a\"\n[[mapping]]\npublic = \"224.0.0.1\"\nprivate = \"10.0.0.1\"";
    assert!(err(mcast).contains("unicast"));
}

fn with(public: &str, private: &str) -> String {
    format!("{GOOD}\n[[mapping]]\npublic = \"{public}\"\nprivate = \"{private}\"\n")
}

#[test]
fn block_mappings_are_checked_for_size_host_bits_and_overlaps() {
    let c = Config::parse(&with("120.0.0.0/25", "10.0.2.0/25")).unwrap();
    assert_eq!(c.mappings[1].public.to_string(), "120.0.0.0/25");
    assert_eq!(c.mappings[1].private.prefix_len(), 25);
    assert_eq!(
        err(&with("120.0.0.0/25", "10.0.2.0/24")),
        "mapping[1].private = \"10.0.2.0/24\": is a /24 but the public side 120.0.0.0/25 \
             is a /25: blocks map host bits one to one and must be the same size"
    );
    assert!(err(&with("120.0.0.1/25", "10.0.2.0/25")).contains("host bits set"));
    assert!(err(&with("0.0.0.0/0", "0.0.0.0/0")).contains("/0"));
    // A block over an existing single mapping, on either side.
    assert_eq!(
        err(&with("198.51.100.0/24", "10.0.2.0/24")),
        "mapping[1].public = \"198.51.100.0/24\": overlaps 198.51.100.10 of mapping[0]"
    );
    assert!(
        err(&with("120.0.0.0/24", "10.0.1.0/24"))
            .starts_with("mapping[1].private = \"10.0.1.0/24\"")
    );
    // A public block that covers a private address.
    assert!(
        err(&with("10.0.0.0/16", "172.16.0.0/16"))
            .contains("overlaps the private side 10.0.1.10 of mapping[0]")
    );
}

#[test]
fn the_example_parses_and_states_the_defaults() {
    let example = Config::parse(include_str!("../../../ipnat.example.toml")).unwrap();
    let minimal = Config::parse(GOOD).unwrap();
    assert_eq!(example.pin_path, minimal.pin_path);
    assert_eq!(example.fast_path, minimal.fast_path);
    assert_eq!(example.metrics_listen, minimal.metrics_listen);
    assert_eq!(example.max_mappings, minimal.max_mappings);
    assert_eq!(example.orientation, minimal.orientation);
    assert_eq!(example.orientation, Orientation::Gateway);
    assert_eq!(example.internal, minimal.internal);
    assert_eq!(example.interfaces[0].xdp, minimal.interfaces[0].xdp);
    assert!(minimal.interfaces[0].xdp, "native XDP by default");
}

#[test]
fn host_orientation_keeps_public_addresses_outside_the_internal_prefixes() {
    let host = format!("orientation = \"host\"\n{GOOD}");
    let c = Config::parse(&host).unwrap();
    assert_eq!(c.orientation, Orientation::Host);
    assert_eq!(c.internal.len(), DEFAULT_INTERNAL.len());
    let inside = format!(
        "orientation = \"host\"\n{}",
        with("100.64.1.1", "10.0.1.20")
    );
    assert_eq!(
        err(&inside),
        "mapping[1].public = \"100.64.1.1\": is inside the internal prefix 100.64.0.0/10: \
             in host orientation the public side is the EIP the cloud translates, outside the \
             internal prefixes"
    );
    // The same mapping is fine on a gateway, and with narrower internal prefixes.
    Config::parse(&with("100.64.1.1", "10.0.1.20")).unwrap();
    Config::parse(&format!(
        "orientation = \"host\"\ninternal = [\"10.0.0.0/16\"]\n{}",
        with("100.64.1.1", "10.0.1.20")
    ))
    .unwrap();
    assert!(err(&format!("orientation = \"router\"\n{GOOD}")).contains("unknown variant"));
    assert!(err(&format!("internal = [\"10.0.0.1/8\"]\n{GOOD}")).contains("host bits"));
}

#[test]
fn steering_rules_are_checked() {
    let base = "[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n";
    let rule = |src: &str, iface: &str, gw: &str, subnet: &str| {
        format!(
            "[[steer]]\nsource = \"{src}\"\ninterface = \"{iface}\"\ngateway = \"{gw}\"\nsubnet = \"{subnet}\"\n"
        )
    };
    let good = format!(
        "{base}{}",
        rule("10.0.1.20/30", "eth1", "10.0.1.1", "10.0.1.0/24")
    );
    assert_eq!(Config::parse(&good).unwrap().steering[0].interface, "eth1");
    let e = |t: String| Config::parse(&t).unwrap_err().to_string();
    assert!(
        e(format!(
            "{base}{}",
            rule("10.0.1.20", "eth9", "10.0.1.1", "10.0.1.0/24")
        ))
        .starts_with("steer[0].interface = \"eth9\"")
    );
    assert!(
        e(format!(
            "{base}{}",
            rule("10.0.1.20", "eth1", "10.0.2.1", "10.0.1.0/24")
        ))
        .contains("outside the subnet 10.0.1.0/24")
    );
    assert!(
        e(format!(
            "{base}{}{}",
            rule("10.0.1.20/30", "eth1", "10.0.1.1", "10.0.1.0/24"),
            rule("10.0.1.21", "eth1", "10.0.1.1", "10.0.1.0/24")
        ))
        .contains("steer[1].source = \"10.0.1.21\": overlaps 10.0.1.20/30 of steer[0]")
    );
}

#[test]
fn the_etcd_section_is_checked_key_by_key() {
    let with = |section: &str| format!("{GOOD}\n[etcd]\n{section}\n");
    let ok = Config::parse(&with(r#"endpoints = ["http://10.0.0.5:2379"]"#)).unwrap();
    let etcd = ok.etcd.unwrap();
    assert_eq!(etcd.prefix, "/ipnat");
    assert_eq!(
        (etcd.dial_timeout_ms, etcd.request_timeout_ms),
        (2000, 5000)
    );
    for (section, says) in [
        ("endpoints = []", "etcd.endpoints = \"[]\""),
        (r#"endpoints = ["10.0.0.5:2379"]"#, "etcd.endpoints[0]"),
        (
            "endpoints = [\"http://a:2379\"]\nca_file = \"/ca.pem\"",
            "must be an https:// URL (ca_file turns TLS on)",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nprefix = \"ipnat\"",
            "etcd.prefix",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nprefix = \"/ipnat/\"",
            "etcd.prefix",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nuser = \"u\"",
            "go together",
        ),
        (
            "endpoints = [\"http://a:2379\"]\npassword = \"p\"\nuser = \"u\"\npassword_file = \"/p\"",
            "not both",
        ),
        (
            "endpoints = [\"http://a:2379\"]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"",
            "needs TLS",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nrequest_timeout_ms = 0",
            "must be 1 to",
        ),
        (
            "endpoints = [\"http://a:2379\"]\nsecret = 1",
            "unknown field",
        ),
    ] {
        let e = err(&with(section));
        assert!(e.contains(says), "{section}: {e}");
        assert!(!e.contains("\"p\""), "the password is never shown: {e}");
    }
}

#[test]
fn the_announce_section_is_checked_key_by_key_and_the_example_states_its_defaults() {
    let two = "[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth1\"\n";
    let with = |section: &str| format!("{two}\n[announce]\n{section}\n");
    let ok = Config::parse(&with("outward = \"eth0\"\ninward = \"eth1\"")).unwrap();
    let a = ok.announce.unwrap();
    assert_eq!(
        (a.table, a.protocol),
        (DEFAULT_ANNOUNCE_TABLE, DEFAULT_ANNOUNCE_PROTOCOL)
    );
    assert_eq!((a.check_interval_ms, a.stale_grace_ms), (1000, 3000));
    // The example's commented section, uncommented, has exactly these defaults.
    let example = include_str!("../../../ipnat.example.toml");
    let rest = &example[example.find("# [announce]").unwrap()..];
    let section: String = rest[..rest.find("\n\n").unwrap_or(rest.len())]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("# #"))
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let example: AnnounceConfig = toml::from_str(&section).unwrap();
    assert_eq!((example.table, example.protocol), (a.table, a.protocol));
    assert_eq!(
        (example.check_interval_ms, example.stale_grace_ms),
        (a.check_interval_ms, a.stale_grace_ms)
    );
    for (section, says) in [
        (
            "outward = \"eth0\"\ninward = \"eth1\"\ntable = 254",
            "announce.table = \"254\"",
        ),
        (
            "outward = \"eth0\"\ninward = \"eth1\"\nprotocol = 4",
            "announce.protocol",
        ),
        (
            "outward = \"eth9\"\ninward = \"eth1\"",
            "announce.outward = \"eth9\"",
        ),
        (
            "outward = \"eth0\"\ninward = \"eth0\"",
            "is the outward interface too",
        ),
        (
            "outward = \"eth0\"\ninward = \"eth1\"\ninward_sessions = [\"inside\"]",
            "bird_socket and the sessions it reports",
        ),
        (
            "outward = \"eth0\"\ninward = \"eth1\"\npeers = [\"10.0.0.2:9469\"]",
            "announce.peers[0]",
        ),
        (
            "outward = \"eth0\"\ninward = \"eth1\"\ncheck_interval_ms = 10",
            "100 to 60000",
        ),
    ] {
        let e = err(&with(section));
        assert!(e.contains(says), "{section}: {e}");
    }
    // Host orientation owns its addresses: nothing to announce.
    let host = format!(
        "orientation = \"host\"\n{}",
        with("outward = \"eth0\"\ninward = \"eth1\"")
    );
    assert!(err(&host).contains("announcing serves gateways"));
    // The self-check's probe takes one entry of the tables.
    let full = format!(
        "max_mappings = 1\n{}\n[[mapping]]\npublic = \"198.51.100.10\"\nprivate = \"10.0.1.10\"\n",
        with("outward = \"eth0\"\ninward = \"eth1\"")
    );
    assert!(
        err(&full).contains("less the one [announce]'s self-check takes"),
        "{}",
        err(&full)
    );
    // Its addresses are nobody else's.
    assert!(err(&with_mapping(two, "0.0.0.1", "10.0.1.10")).contains("this network"));
}

fn with_mapping(base: &str, public: &str, private: &str) -> String {
    format!("{base}\n[[mapping]]\npublic = \"{public}\"\nprivate = \"{private}\"\n")
}

#[test]
fn the_failover_section_is_checked_key_by_key_and_needs_etcd_and_a_cloud() {
    let base = "[[interface]]\nname = \"eth0\"\n[etcd]\nendpoints = [\"http://a:2379\"]\n[aws]\n";
    let shard = "[[failover.shard]]\nname = \"web\"\naddresses = [\"10.0.0.50\"]\n[[failover.shard.route]]\ntable = \"rtb-1\"\ndestination = \"0.0.0.0/0\"\n";
    let with = |keys: &str, shards: &str| {
        format!("{base}\n[failover]\ninterface = \"eth0\"\n{keys}\n{shards}")
    };
    let ok = Config::parse(&with("name = \"gw-a\"", shard)).unwrap();
    let f = ok.failover.unwrap();
    assert_eq!(f.node_name(), "gw-a");
    assert_eq!(
        (
            f.lease_ttl_s,
            f.fence_margin_ms,
            f.call_timeout_ms,
            f.confirm_timeout_ms,
            f.hold_down_s,
        ),
        (5, 500, 2000, 15000, 60)
    );
    assert_eq!(f.shards[0].prefer, None);
    assert_eq!(f.shards[0].routes[0].table, "rtb-1");
    // The example's commented section, uncommented, is valid and has these defaults.
    let example = include_str!("../../../ipnat.example.toml");
    let section: String = example[example.find("# [failover]").unwrap()..]
        .lines()
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let e = Config::parse(&format!("{base}\n{section}"))
        .unwrap()
        .failover
        .unwrap();
    assert_eq!(
        (
            e.lease_ttl_s,
            e.fence_margin_ms,
            e.call_timeout_ms,
            e.confirm_timeout_ms,
            e.hold_down_s,
        ),
        (
            f.lease_ttl_s,
            f.fence_margin_ms,
            f.call_timeout_ms,
            f.confirm_timeout_ms,
            f.hold_down_s,
        )
    );
    assert_eq!(e.shards[0].prefer.as_deref(), Some("gw-a"));
    assert_eq!(
        e.shards[0].eips[0].allocation_id,
        "eipalloc-0123456789abcdef0"
    );
    // A shard across zones needs no moving address.
    let zones = shard.replace(
        "addresses = [\"10.0.0.50\"]\n",
        "[[failover.shard.eip]]\nallocation_id = \"eipalloc-01\"\nprivate = \"10.0.0.60\"\n",
    );
    assert!(Config::parse(&with("", &zones)).is_ok());
    let second = |name: &str, address: &str| {
        format!("{shard}[[failover.shard]]\nname = \"{name}\"\naddresses = [\"{address}\"]\n")
    };
    for (keys, shards, says) in [
        ("lease_ttl_s = 1", shard.to_owned(), "failover.lease_ttl_s"),
        (
            "call_timeout_ms = 2500",
            shard.to_owned(),
            "a leader makes no call that could outlive its lease",
        ),
        (
            "fence_margin_ms = 3000",
            shard.to_owned(),
            "half the lease's TTL",
        ),
        ("", String::new(), "at least one [[failover.shard]]"),
        ("", second("web", "10.0.0.51"), "names another shard too"),
        ("", second("api", "10.0.0.50"), "is in shard \"web\" too"),
        (
            "",
            second("api", "0.0.0.9"),
            "not an address a NIC can hold",
        ),
        (
            "",
            shard.replace("rtb-1", "main"),
            "failover.shard[0].route[0].table",
        ),
        (
            "",
            shard.replace("0.0.0.0/0", "10.1.2.3/16"),
            "did you mean 10.1.0.0/16?",
        ),
        ("name = \"gw a\"", shard.to_owned(), "failover.name"),
        ("hold_down_s = 0", shard.to_owned(), "failover.hold_down_s"),
        (
            "",
            shard.replace("addresses = [\"10.0.0.50\"]\n", ""),
            "a shard moves at least one address (or, across zones, one [[failover.shard.eip]])",
        ),
        (
            "",
            format!(
                "{shard}[[failover.shard.eip]]\nallocation_id = \"eip-1\"\nprivate = \"10.0.0.60\"\n"
            ),
            "failover.shard[0].eip[0].allocation_id",
        ),
        (
            "",
            format!(
                "{shard}[[failover.shard.eip]]\nallocation_id = \"eipalloc-01\"\nprivate = \"10.0.0.50\"\n"
            ),
            "an EIP's private address is this gateway's own and never moves",
        ),
        (
            "",
            format!(
                "{shard}[[failover.shard.eip]]\nallocation_id = \"eipalloc-01\"\nprivate = \"10.0.0.60\"\n[[failover.shard.eip]]\nallocation_id = \"eipalloc-01\"\nprivate = \"10.0.0.61\"\n"
            ),
            "failover.shard[0].eip[1]",
        ),
        (
            "",
            shard.replace(
                "[[failover.shard.route]]",
                "prefer = \"gw/a\"\n[[failover.shard.route]]",
            ),
            "failover.shard[0].prefer",
        ),
    ] {
        let e = err(&with(keys, &shards));
        assert!(e.contains(says), "{keys} {shards}: {e}");
    }
    let e = err(&with("", shard).replace("interface = \"eth0\"\n\n", "interface = \"eth9\"\n\n"));
    assert!(e.contains("failover.interface"), "{e}");
    let e = err(&with("", shard).replace("[etcd]\nendpoints = [\"http://a:2379\"]\n", ""));
    assert!(e.contains("needs [etcd]"), "{e}");
    let e = err(&with("", shard).replace("[aws]\n", ""));
    assert!(e.contains("needs [aws] or [aliyun]"), "{e}");
    // Alibaba Cloud: a shard is a HaVip, its routes follow it.
    let aliyun = |shards: &str| with("", shards).replace("[aws]\n", "[aliyun]\n");
    let havip =
        "[[failover.shard]]\nname = \"web\"\naddresses = [\"10.0.0.60\"]\nhavip = \"havip-1\"\n";
    assert!(Config::parse(&aliyun(havip)).is_ok());
    // Or, across zones, EIPs bound to each gateway's own address, routes moved.
    let eips = "[[failover.shard]]\nname = \"web\"\n[[failover.shard.eip]]\nallocation_id = \"eip-1\"\nprivate = \"10.0.0.52\"\n[[failover.shard.route]]\ntable = \"vtb-1\"\ndestination = \"0.0.0.0/0\"\n";
    assert!(Config::parse(&aliyun(eips)).is_ok());
    for (shards, says) in [
        (
            shard.to_owned(),
            "secondary addresses do not move on Alibaba Cloud",
        ),
        (
            shard.replace("addresses = [\"10.0.0.50\"]\n", ""),
            "a shard is a HaVip (havip-...) associated with every gateway of the shard, or EIPs",
        ),
        (
            eips.replace("vtb-1", "rtb-1"),
            "a route table's id (vtb-...)",
        ),
        (
            eips.replace("eip-1", "eipalloc-1"),
            "an EIP's allocation id (eip-...)",
        ),
        (
            format!(
                "{havip}[[failover.shard.eip]]\nallocation_id = \"eip-1\"\nprivate = \"10.0.0.52\"\n"
            ),
            "bind the EIP to the HaVip",
        ),
        (havip.replace("havip-1", "vip-1"), "a HaVip's id"),
        (
            havip.replace("[\"10.0.0.60\"]", "[\"10.0.0.60\", \"10.0.0.61\"]"),
            "one address: the HaVip's",
        ),
        (
            format!(
                "{havip}[[failover.shard.route]]\ntable = \"rtb-1\"\ndestination = \"0.0.0.0/0\"\n"
            ),
            "next hop type HaVip",
        ),
    ] {
        let e = err(&aliyun(&shards));
        assert!(e.contains(says), "{shards}: {e}");
    }
    let e = err(&with("", havip));
    assert!(e.contains("HaVips are Alibaba Cloud's"), "{e}");
}
