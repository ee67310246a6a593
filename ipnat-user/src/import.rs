//! `ipnat import`: reads what people wrote by hand to make a second NIC's addresses work
//! (rc.local and shell scripts with `ip rule` / `ip route` / `ip addr` / `ifconfig` lines,
//! `ip rule` and `ip route` output, `ifcfg-ethX:N` files) and turns it into the equivalent ipnat
//! configuration: the interfaces, one steering rule per `from <address> lookup <table>` whose
//! table has a default route, with that route's gateway and the interface's subnet.
//!
//! Every line that says something and is not converted is reported with its line number and
//! why. Comments, blank lines and the shebang say nothing and are skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use crate::config::{Block, SteerConfig};

/// One input: its name (for messages) and text.
pub struct Input<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// A line left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub line: usize,
    pub text: String,
    pub why: String,
}

/// What the inputs amount to.
#[derive(Debug, Default)]
pub struct Imported {
    pub interfaces: BTreeSet<String>,
    pub steering: Vec<SteerConfig>,
    /// Addresses the inputs put on interfaces (the config has no list of addresses: printed as
    /// a reminder).
    pub addresses: Vec<(Ipv4Net, String)>,
    pub skipped: Vec<Skipped>,
}

#[derive(Default)]
struct Table {
    /// (gateway, device, line) of its default route.
    default: Option<(Ipv4Addr, String)>,
    /// Connected prefixes in the table, by device.
    connected: Vec<(Ipv4Net, String)>,
}

/// Parses the inputs.
pub fn import(inputs: &[Input<'_>]) -> Imported {
    let mut out = Imported::default();
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    // (source, table, file, line)
    let mut rules: Vec<(Block, String, String, usize)> = Vec::new();
    for input in inputs {
        let lines: Vec<&str> = input.text.lines().collect();
        if is_ifcfg(&lines) {
            ifcfg(input, &lines, &mut out);
            continue;
        }
        for (i, raw) in lines.iter().enumerate() {
            let line = raw.trim();
            let n = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // One line may hold several commands (`a ; b`, `a && b`): each is converted or
            // reported on its own.
            for part in line.split(';').flat_map(|p| p.split("&&")) {
                // Strip what shells put around commands.
                let cmd = part
                    .trim()
                    .trim_start_matches("sudo ")
                    .trim_end_matches("|| true")
                    .trim();
                if cmd.is_empty() {
                    continue;
                }
                let skip = |why: &str| Skipped {
                    file: input.name.to_owned(),
                    line: n,
                    text: cmd.to_owned(),
                    why: why.to_owned(),
                };
                let words: Vec<&str> = cmd.split_whitespace().map(unquote).collect();
                match parse_line(&words) {
                    Parsed::Rule { from, table } => rules.push((from, table, input.name.into(), n)),
                    Parsed::Route {
                        table,
                        dst,
                        via,
                        dev,
                    } => {
                        let Some(dev) = dev else {
                            out.skipped
                                .push(skip("a route without `dev`: which interface is unknown"));
                            continue;
                        };
                        if !is_interface_name(&dev) {
                            out.skipped
                                .push(skip(&format!("{dev:?} is not an interface name")));
                            continue;
                        }
                        out.interfaces.insert(dev.clone());
                        let t = tables.entry(table).or_default();
                        match (dst, via) {
                            (None, Some(gw)) => t.default = Some((gw, dev)),
                            (Some(net), None) => t.connected.push((net, dev)),
                            (None, None) => out
                                .skipped
                                .push(skip("a default route without `via`: no gateway")),
                            (Some(_), Some(_)) => out.skipped.push(skip(
                                "a route to a specific prefix via a gateway: steering sends everything \
                                 off-link to one gateway; add it by hand if it matters",
                            )),
                        }
                    }
                    Parsed::Addr { net, dev } if !is_interface_name(&dev) => {
                        out.skipped
                            .push(skip(&format!("{dev:?} on {net} is not an interface name")));
                    }
                    Parsed::Addr { net, dev } => {
                        out.interfaces.insert(dev.clone());
                        out.addresses.push((net, dev));
                    }
                    Parsed::Ignore => {}
                    Parsed::Unsupported(why) => out.skipped.push(skip(&why)),
                }
            }
        }
    }
    // Indexes, so that many rules cost linear time: sources already steered, and each
    // (interface, gateway)'s subnet from the addresses.
    let mut steered: std::collections::HashSet<Block> = std::collections::HashSet::new();
    let mut subnets: std::collections::HashMap<(String, Ipv4Addr), Option<Ipv4Net>> =
        std::collections::HashMap::new();
    for (from, table, file, line) in rules {
        let skip = |why: String| Skipped {
            file: file.clone(),
            line,
            text: format!("from {from} lookup {table}"),
            why,
        };
        let Some(t) = tables.get(&table) else {
            out.skipped.push(skip(format!(
                "table {table} has no routes in the input (give its `ip route` lines too)"
            )));
            continue;
        };
        let Some((gw, dev)) = t.default.clone() else {
            out.skipped.push(skip(format!(
                "table {table} has no default route: nothing to steer to"
            )));
            continue;
        };
        // The interface's subnet: a connected route of the table, else an address put on the
        // interface that contains the gateway, else the gateway's /24 is a guess we do not make.
        let subnet = t
            .connected
            .iter()
            .find(|(net, d)| *d == dev && net.contains(&gw))
            .map(|(net, _)| *net)
            .or_else(|| {
                *subnets.entry((dev.clone(), gw)).or_insert_with(|| {
                    out.addresses
                        .iter()
                        .find(|(net, d)| *d == dev && net.contains(&gw))
                        .map(|(net, _)| net.trunc())
                })
            });
        let Some(subnet) = subnet else {
            out.skipped.push(skip(format!(
                "the subnet of {dev} is unknown (no connected route in table {table} and no \
                 address on {dev} in the input): add its `ip addr` line or set `subnet` by hand"
            )));
            continue;
        };
        if !steered.insert(from) {
            out.skipped.push(skip(format!(
                "{from} is already steered by an earlier rule"
            )));
            continue;
        }
        out.steering.push(SteerConfig {
            source: from,
            interface: dev,
            gateway: gw,
            subnet: Block(subnet),
        });
    }
    out
}

/// A shell word without the quotes around it (`"eth1"`, `'eth1'`).
fn unquote(w: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = w.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    w
}

/// What the kernel accepts as an interface name: 1 to 15 bytes, no `/`, `:`, whitespace or
/// quotes.
fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| {
            c == '/' || c == ':' || c == '"' || c == '\'' || c.is_whitespace() || c.is_control()
        })
}

enum Parsed {
    Rule {
        from: Block,
        table: String,
    },
    Route {
        table: String,
        dst: Option<Ipv4Net>,
        via: Option<Ipv4Addr>,
        dev: Option<String>,
    },
    Addr {
        net: Ipv4Net,
        dev: String,
    },
    /// Says nothing ipnat needs (e.g. `ip rule` output's default rules).
    Ignore,
    Unsupported(String),
}

fn value_after<'a>(words: &[&'a str], keys: &[&str]) -> Option<&'a str> {
    words
        .windows(2)
        .find(|w| keys.contains(&w[0]))
        .map(|w| w[1])
}

fn parse_net(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>()
        .ok()
        .or_else(|| s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

fn parse_line(words: &[&str]) -> Parsed {
    let unsupported = |why: &str| Parsed::Unsupported(why.to_owned());
    let Some(&first) = words.first() else {
        return Parsed::Ignore;
    };
    // `ip rule` output: "32765:	from 10.0.1.21 lookup 1001".
    if first.ends_with(':') && first[..first.len() - 1].parse::<u32>().is_ok() {
        return rule(&words[1..]);
    }
    let rest = match first {
        "ip" | "/sbin/ip" | "/usr/sbin/ip" | "/bin/ip" | "/usr/bin/ip" => &words[1..],
        "ifconfig" | "/sbin/ifconfig" => return ifconfig(&words[1..]),
        "default" => return route(words, "main"),
        _ if parse_net(first).is_some() => return route(words, "main"),
        _ => {
            return unsupported(
                "not an ip/ifconfig command or their output: ipnat leaves it to you",
            );
        }
    };
    let rest: Vec<&str> = rest
        .iter()
        .copied()
        .filter(|w| *w != "-4" && *w != "-f" && *w != "inet")
        .collect();
    match (rest.first().copied(), rest.get(1).copied()) {
        (Some("rule" | "ru"), Some("add" | "a" | "append" | "replace")) => rule(&rest[2..]),
        (Some("rule" | "ru"), Some("del" | "delete" | "flush")) => {
            unsupported("removes rules: nothing to convert")
        }
        (Some("route" | "r" | "ro"), Some("add" | "a" | "append" | "replace" | "change")) => {
            let table = value_after(&rest, &["table", "lookup"]).unwrap_or("main");
            route(&rest[2..], table)
        }
        (Some("route" | "r" | "ro"), Some("del" | "delete" | "flush")) => {
            unsupported("removes routes: nothing to convert")
        }
        (Some("addr" | "address" | "a"), Some("add" | "replace")) => addr(&rest[2..]),
        (Some("link"), _) => Parsed::Ignore,
        _ => unsupported("an ip command ipnat does not convert"),
    }
}

fn rule(words: &[&str]) -> Parsed {
    let table = value_after(words, &["lookup", "table"]);
    let from = value_after(words, &["from"]);
    match (from, table) {
        (Some("all"), _) => Parsed::Ignore, // the default rules (local, main, default)
        (Some(f), Some(t)) => match f.parse::<Block>() {
            Ok(b) => {
                if words
                    .iter()
                    .any(|w| matches!(*w, "to" | "iif" | "oif" | "fwmark" | "tos"))
                {
                    Parsed::Unsupported(
                        "a rule that also matches on destination, interface, mark or TOS: \
                         steering matches the source only"
                            .into(),
                    )
                } else {
                    Parsed::Rule {
                        from: b,
                        table: t.into(),
                    }
                }
            }
            Err(e) => Parsed::Unsupported(e),
        },
        _ => Parsed::Unsupported("a rule without `from <address>` and a table".into()),
    }
}

fn route(words: &[&str], table: &str) -> Parsed {
    let table = value_after(words, &["table"]).unwrap_or(table).to_owned();
    if matches!(table.as_str(), "local" | "255") {
        return Parsed::Ignore;
    }
    let dst = match words.first().copied() {
        Some("default") | Some("0.0.0.0/0") => None,
        Some(w) => match parse_net(w) {
            Some(n) => Some(n.trunc()),
            None => return Parsed::Unsupported(format!("{w:?} is not a destination")),
        },
        None => return Parsed::Unsupported("an empty route".into()),
    };
    let via = match value_after(words, &["via"]).map(str::parse::<Ipv4Addr>) {
        Some(Ok(g)) => Some(g),
        Some(Err(_)) => return Parsed::Unsupported("`via` is not an IPv4 address".into()),
        None => None,
    };
    if table == "main" && !(dst.is_some() && via.is_none()) {
        // Routes of the main table other than connected ones are the kernel's business.
        return Parsed::Ignore;
    }
    Parsed::Route {
        table,
        dst,
        via,
        dev: value_after(words, &["dev"]).map(str::to_owned),
    }
}

fn addr(words: &[&str]) -> Parsed {
    let (Some(a), Some(dev)) = (words.first(), value_after(words, &["dev"])) else {
        return Parsed::Unsupported("an address without `dev`".into());
    };
    match a.parse::<Ipv4Net>() {
        // `eth1:0` labels are aliases of eth1.
        Ok(net) => Parsed::Addr {
            net,
            dev: dev.split(':').next().unwrap_or(dev).to_owned(),
        },
        Err(_) => Parsed::Unsupported(format!("{a:?} is not an address/prefix length")),
    }
}

fn netmask_len(mask: &str) -> Option<u8> {
    let m = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    (m.leading_ones() + m.trailing_zeros() == 32).then(|| m.leading_ones() as u8)
}

fn ifconfig(words: &[&str]) -> Parsed {
    let (Some(dev), Some(a)) = (words.first(), words.get(1)) else {
        return Parsed::Unsupported("ifconfig without an interface and an address".into());
    };
    let dev = dev.split(':').next().unwrap_or(dev).to_owned();
    let len = match value_after(words, &["netmask"]) {
        Some(m) => match netmask_len(m) {
            Some(l) => l,
            None => return Parsed::Unsupported(format!("netmask {m:?} is not a netmask")),
        },
        None if a.contains('/') => {
            return match a.parse::<Ipv4Net>() {
                Ok(net) => Parsed::Addr { net, dev },
                Err(_) => Parsed::Unsupported(format!("{a:?} is not an address")),
            };
        }
        None => {
            return Parsed::Unsupported("ifconfig without a netmask: the subnet is unknown".into());
        }
    };
    match a
        .parse::<Ipv4Addr>()
        .ok()
        .and_then(|ip| Ipv4Net::new(ip, len).ok())
    {
        Some(net) => Parsed::Addr { net, dev },
        None => Parsed::Unsupported(format!("{a:?} is not an IPv4 address")),
    }
}

fn is_ifcfg(lines: &[&str]) -> bool {
    lines.iter().any(|l| l.trim_start().starts_with("DEVICE="))
        && lines.iter().any(|l| l.trim_start().starts_with("IPADDR"))
}

/// An `ifcfg-ethX:N` file: DEVICE, IPADDR(n), NETMASK(n) or PREFIX(n).
fn ifcfg(input: &Input<'_>, lines: &[&str], out: &mut Imported) {
    let mut vars: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        match l.split_once('=') {
            Some((k, v)) => {
                vars.insert(
                    k.trim().to_owned(),
                    (v.trim().trim_matches(['"', '\'']).to_owned(), i + 1),
                );
            }
            None => out.skipped.push(Skipped {
                file: input.name.into(),
                line: i + 1,
                text: l.into(),
                why: "not KEY=VALUE".into(),
            }),
        }
    }
    let dev = vars
        .get("DEVICE")
        .map(|(d, _)| d.split(':').next().unwrap_or(d).to_owned())
        .unwrap_or_default();
    let mut used = BTreeSet::from(["DEVICE".to_owned()]);
    for (key, (value, line)) in &vars {
        let Some(suffix) = key.strip_prefix("IPADDR") else {
            continue;
        };
        used.insert(key.clone());
        let len = vars
            .get(&format!("PREFIX{suffix}"))
            .and_then(|(p, _)| p.parse::<u8>().ok())
            .or_else(|| {
                vars.get(&format!("NETMASK{suffix}"))
                    .and_then(|(m, _)| netmask_len(m))
            });
        used.insert(format!("PREFIX{suffix}"));
        used.insert(format!("NETMASK{suffix}"));
        match (value.parse::<Ipv4Addr>(), len) {
            (Ok(ip), Some(len)) if Ipv4Net::new(ip, len).is_ok() => {
                out.interfaces.insert(dev.clone());
                out.addresses
                    .push((Ipv4Net::new(ip, len).expect("checked"), dev.clone()));
            }
            _ => out.skipped.push(Skipped {
                file: input.name.into(),
                line: *line,
                text: format!("{key}={value}"),
                why: "an address without a valid PREFIX or NETMASK".into(),
            }),
        }
    }
    for (key, (value, line)) in &vars {
        if used.contains(key) {
            continue;
        }
        let why = match key.as_str() {
            "GATEWAY" => {
                "a gateway of the main table: the kernel's business (steering gateways come from `ip route ... table N`)"
            }
            "BOOTPROTO" | "ONBOOT" | "TYPE" | "NM_CONTROLLED" | "USERCTL" | "IPV6INIT"
            | "HWADDR" | "NAME" | "UUID" => "interface management, not ipnat's",
            _ => "a setting ipnat does not convert",
        };
        out.skipped.push(Skipped {
            file: input.name.into(),
            line: *line,
            text: format!("{key}={value}"),
            why: why.into(),
        });
    }
}

impl Imported {
    /// The equivalent config, as TOML with comments.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from("# Generated by `ipnat import`; check it with `ipnat check`.\n\n");
        let _ = writeln!(
            s,
            "# Attach to every interface the kernel may route steered sources through (the one\n\
             # the main table's default route uses too, if it is not listed here)."
        );
        // The tables through the TOML serializer: whatever the inputs held is quoted right.
        #[derive(serde::Serialize)]
        struct Tables<'a> {
            interface: Vec<crate::config::InterfaceConfig>,
            steer: &'a [SteerConfig],
        }
        let tables = Tables {
            interface: self
                .interfaces
                .iter()
                .map(|name| crate::config::InterfaceConfig {
                    name: name.clone(),
                    xdp: true,
                })
                .collect(),
            steer: &self.steering,
        };
        s.push_str(&toml::to_string(&tables).expect("plain tables serialize"));
        s.push('\n');
        if !self.addresses.is_empty() {
            let _ = writeln!(
                s,
                "# Addresses the inputs put on interfaces. The config has no list of addresses: keep\n\
                 # them configured (your distribution's network configuration), or let the [aws] or\n\
                 # [aliyun] provider put the cloud's addresses on the NICs."
            );
            for (net, dev) in &self.addresses {
                let _ = writeln!(s, "#   {net} on {dev}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Imported {
        import(&[Input {
            name: "rc.local",
            text,
        }])
    }

    #[test]
    fn quoted_names_several_commands_a_line_and_bad_names() {
        let out = run(
            "ip rule add from 10.0.1.27 lookup 1001 ; ip rule add from 10.0.1.28 lookup 1001\n\
             ip route add default via 10.0.1.1 dev \"eth1\" table 1001 && ip route add 10.0.1.0/24 dev 'eth1' table 1001\n\
             ip addr add 10.0.1.5/24 dev \"bad/name\"\n",
        );
        let sources: Vec<String> = out.steering.iter().map(|r| r.source.to_string()).collect();
        assert_eq!(sources, ["10.0.1.27", "10.0.1.28"]);
        assert_eq!(out.interfaces.iter().collect::<Vec<_>>(), ["eth1"]);
        assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
        assert_eq!(out.skipped[0].line, 3);
        assert!(out.skipped[0].why.contains("not an interface name"));
        // What it writes is TOML the config reads back as the same rules.
        let config = crate::config::Config::parse(&out.render()).unwrap();
        assert_eq!(config.steering, out.steering);
        assert_eq!(config.interfaces[0].name, "eth1");
    }

    #[test]
    fn alibaba_cloud_recipe() {
        let out = run("#!/bin/sh\n\
            # secondary ENI\n\
            ip -4 route add default via 192.168.1.253 dev eth1 metric 1001\n\
            ip -4 route add default via 192.168.1.253 dev eth1 table 1001\n\
            ip -4 rule add from 192.168.1.204 lookup 1001\n\
            ip -4 rule add from 192.168.1.205 lookup 1001\n\
            ip addr add 192.168.1.205/24 dev eth1\n\
            touch /var/lock/subsys/local\n");
        assert_eq!(out.steering.len(), 2, "{:?}", out.skipped);
        let r = &out.steering[1];
        assert_eq!(r.source.to_string(), "192.168.1.205");
        assert_eq!(r.interface, "eth1");
        assert_eq!(r.gateway, Ipv4Addr::new(192, 168, 1, 253));
        assert_eq!(r.subnet.to_string(), "192.168.1.0/24");
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.skipped[0].line, 8);
        assert!(out.skipped[0].why.contains("not an ip/ifconfig command"));
        // The rendered config parses and validates (with eth0 added, as the comment says).
        let text = format!("[[interface]]\nname = \"eth0\"\n{}", out.render());
        let c = crate::config::Config::parse(&text).unwrap();
        assert_eq!(c.steering.len(), 2);
    }

    #[test]
    fn aws_recipe_and_ip_output() {
        let out = run("ip route add default via 10.0.1.1 dev eth1 table 1000\n\
            ip route add 10.0.1.0/24 dev eth1 src 10.0.1.20 table 1000\n\
            ip rule add from 10.0.1.20 lookup 1000\n\
            0:\tfrom all lookup local\n\
            32765:\tfrom 10.0.1.21 lookup 1000\n\
            32766:\tfrom all lookup main\n\
            ip rule add from 10.0.1.99 to 8.8.8.8 lookup 1000\n\
            ip rule add from 10.0.1.30 lookup 2000\n");
        let sources: Vec<String> = out.steering.iter().map(|r| r.source.to_string()).collect();
        assert_eq!(sources, ["10.0.1.20", "10.0.1.21"]);
        assert_eq!(out.steering[0].subnet.to_string(), "10.0.1.0/24");
        let why: Vec<(usize, &str)> = out
            .skipped
            .iter()
            .map(|s| (s.line, s.why.as_str()))
            .collect();
        assert!(
            why.iter()
                .any(|(l, w)| *l == 7 && w.contains("destination")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|(l, w)| *l == 8 && w.contains("table 2000 has no routes")),
            "{why:?}"
        );
    }

    #[test]
    fn ifconfig_and_ifcfg() {
        let out = import(&[
            Input {
                name: "rc.local",
                text: "ifconfig eth1:0 10.0.1.21 netmask 255.255.255.0 up\nip route add default via 10.0.1.1 dev eth1 table 7\nip rule add from 10.0.1.21/32 table 7\n",
            },
            Input {
                name: "ifcfg-eth1:1",
                text: "DEVICE=eth1:1\nBOOTPROTO=static\nIPADDR=10.0.1.22\nNETMASK=255.255.255.0\nGATEWAY=10.0.1.1\n",
            },
        ]);
        assert_eq!(out.steering.len(), 1);
        assert_eq!(out.steering[0].subnet.to_string(), "10.0.1.0/24");
        assert!(
            out.addresses
                .iter()
                .any(|(n, d)| n.to_string() == "10.0.1.22/24" && d == "eth1")
        );
        let ifcfg: Vec<&Skipped> = out
            .skipped
            .iter()
            .filter(|s| s.file == "ifcfg-eth1:1")
            .collect();
        assert_eq!(ifcfg.len(), 2, "BOOTPROTO and GATEWAY reported: {ifcfg:?}");
        assert!(ifcfg.iter().all(|s| s.line > 0));
    }
}
