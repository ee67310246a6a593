//! Every check of a config, before anything is applied; each error names the key and the
//! value.

use std::{collections::HashMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::*;

impl Config {
    fn validate_steering(&self) -> Result<(), ConfigError> {
        for (i, r) in self.steering.iter().enumerate() {
            if !self.interfaces.iter().any(|f| f.name == r.interface) {
                return Err(ConfigError::Invalid {
                    key: format!("steer[{i}].interface"),
                    value: r.interface.clone(),
                    why: "is not one of the [[interface]]s (ipnat steers on the interfaces it is attached to)".into(),
                });
            }
        }
        validate_steer_rules(&self.steering, &|i| format!("steer[{i}]"))
    }

    /// Checks everything that can be checked without touching the kernel.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: String, value: &dyn std::fmt::Display, why: &str| ConfigError::Invalid {
                key,
                value: value.to_string(),
                why: why.to_owned(),
            };
        if self.interfaces.is_empty() {
            return Err(invalid(
                "interface".into(),
                &"[]",
                "at least one [[interface]] with a name is needed",
            ));
        }
        let mut names = HashMap::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let key = format!("interface[{i}].name");
            if iface.name.is_empty() || iface.name.len() >= libc::IFNAMSIZ {
                return Err(invalid(key, &iface.name, "not a valid interface name"));
            }
            if let Some(j) = names.insert(iface.name.as_str(), i) {
                return Err(invalid(
                    key,
                    &iface.name,
                    &format!("already listed as interface[{j}]"),
                ));
            }
        }
        crate::state::check_pin_path(&self.pin_path)
            .map_err(|why| invalid("pin_path".into(), &self.pin_path.display(), &why))?;
        validate_mappings(&self.mappings, &|i| format!("mapping[{i}]"))?;
        self.validate_steering()?;
        if self.internal.len() > ipnat_common::MAX_INTERNAL_PREFIXES as usize {
            return Err(invalid(
                "internal".into(),
                &self.internal.len(),
                &format!("more than {} prefixes", ipnat_common::MAX_INTERNAL_PREFIXES),
            ));
        }
        if self.orientation == Orientation::Host {
            for (i, m) in self.mappings.iter().enumerate() {
                let internal: Vec<Ipv4Net> = self.internal.iter().map(|b| b.0).collect();
                validate_host_public(&internal, m.public).map_err(|e| match e {
                    ConfigError::Invalid { value, why, .. } => ConfigError::Invalid {
                        key: format!("mapping[{i}].public"),
                        value,
                        why,
                    },
                    other => other,
                })?;
            }
        }
        if self.aws.is_some() && self.aliyun.is_some() {
            return Err(invalid(
                "aliyun".into(),
                &"[aliyun]",
                "one provider at a time: the config also has [aws]",
            ));
        }
        if let Some(Provider {
            cloud,
            endpoint,
            interval_secs: interval,
            timeout_ms: timeout,
        }) = self.provider()
        {
            let name = cloud.name();
            if !endpoint.starts_with("http://") {
                return Err(invalid(
                    format!("{name}.endpoint"),
                    &endpoint,
                    "must be an http:// URL (the metadata service does not speak TLS)",
                ));
            }
            if interval == 0 || timeout == 0 {
                return Err(invalid(
                    format!("{name}.interval_secs"),
                    &interval,
                    "interval and timeout must be positive",
                ));
            }
            // Bounded so that every deadline computed from them (backoff: four intervals)
            // stays representable.
            if interval > MAX_INTERVAL_SECS {
                return Err(invalid(
                    format!("{name}.interval_secs"),
                    &interval,
                    &format!("at most {MAX_INTERVAL_SECS} (a day)"),
                ));
            }
            if timeout > MAX_TIMEOUT_MS {
                return Err(invalid(
                    format!("{name}.timeout_ms"),
                    &timeout,
                    &format!("at most {MAX_TIMEOUT_MS} (ten minutes)"),
                ));
            }
        }
        if let Some(a) = &self.aws {
            both_or_neither(
                "aws",
                &a.access_key_id,
                &a.secret_access_key,
                "secret_access_key",
            )?;
            if a.api && self.orientation == Orientation::Host {
                return Err(invalid(
                    "aws.api".into(),
                    &a.api,
                    "the EC2 API serves gateway orientation (host orientation reads its EIPs from the metadata)",
                ));
            }
        }
        if let Some(a) = &self.aliyun {
            both_or_neither(
                "aliyun",
                &a.access_key_id,
                &a.access_key_secret,
                "access_key_secret",
            )?;
            for (key, endpoint) in [
                ("aliyun.api_endpoint", &a.api_endpoint),
                ("aliyun.vpc_api_endpoint", &a.vpc_api_endpoint),
            ] {
                if let Some(e) = endpoint
                    && !(e.starts_with("https://") || e.starts_with("http://"))
                {
                    return Err(invalid(key.into(), e, "must be an https:// URL"));
                }
            }
        }
        if let Some(e) = &self.etcd {
            e.validate()?;
        }
        if let Some(a) = &self.announce {
            if self.orientation == Orientation::Host {
                return Err(invalid(
                    "announce".into(),
                    &"[announce]",
                    "announcing serves gateways (orientation = \"gateway\"); a host's addresses are its own",
                ));
            }
            let names: Vec<String> = self.interfaces.iter().map(|i| i.name.clone()).collect();
            a.validate(&names)?;
        }
        if let Some(f) = &self.failover {
            if self.orientation == Orientation::Host {
                return Err(invalid(
                    "failover".into(),
                    &"[failover]",
                    "failover moves a gateway's addresses (orientation = \"gateway\")",
                ));
            }
            if self.etcd.is_none() {
                return Err(invalid(
                    "failover".into(),
                    &"[failover]",
                    "needs [etcd]: the shards' leaders are elected there",
                ));
            }
            let Some(provider) = self.provider() else {
                return Err(invalid(
                    "failover".into(),
                    &"[failover]",
                    "needs [aws] or [aliyun]: the cloud's metadata and API move the addresses",
                ));
            };
            let names: Vec<String> = self.interfaces.iter().map(|i| i.name.clone()).collect();
            f.validate(&names, provider.cloud)?;
        }
        if self.metrics_listen != "off"
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics_listen".into(),
                &self.metrics_listen,
                "not an address:port (e.g. 127.0.0.1:9469), or \"off\"",
            ));
        }
        if self.max_mappings == 0 || self.max_mappings > MAX_MAPPINGS_LIMIT {
            return Err(invalid(
                "max_mappings".into(),
                &self.max_mappings,
                &format!("must be 1 to {MAX_MAPPINGS_LIMIT}"),
            ));
        }
        // [announce]'s self-check takes one entry (see dataplane::PROBE_MAPPING).
        let probe = usize::from(self.announce.is_some());
        if self.mappings.len() + probe > self.max_mappings as usize {
            return Err(invalid(
                "mapping".into(),
                &self.mappings.len(),
                &format!(
                    "more mappings than max_mappings = {}{}; raise it",
                    self.max_mappings,
                    if probe > 0 {
                        " less the one [announce]'s self-check takes"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(())
    }
}

/// The error for `key = value`, and why it is refused.
/// A section's access key: its id and its secret (named `secret`) both given, or neither. The
/// error never shows the secret.
fn both_or_neither(
    section: &str,
    id: &Option<String>,
    secret: &Option<String>,
    secret_name: &str,
) -> Result<(), ConfigError> {
    if id.is_some() == secret.is_some() {
        return Ok(());
    }
    Err(invalid(
        format!("{section}.{secret_name}"),
        &"<hidden>",
        &format!("access_key_id and {secret_name} go together"),
    ))
}

pub(super) fn invalid(key: String, value: &dyn std::fmt::Display, why: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        why: why.to_owned(),
    }
}

/// Checks a set of steering rules on their own (gateway inside the subnet, a subnet that is a
/// block, sources that do not overlap, the table's capacity); `name(i)` names rule `i` in
/// the errors (e.g. `steer[3]`).
pub fn validate_steer_rules(
    rules: &[SteerConfig],
    name: &dyn Fn(usize) -> String,
) -> Result<(), ConfigError> {
    for (i, r) in rules.iter().enumerate() {
        if !r.subnet.0.contains(&r.gateway) {
            return Err(invalid(
                format!("{}.gateway", name(i)),
                &r.gateway,
                &format!("is outside the subnet {}", r.subnet),
            ));
        }
        if r.subnet.is_host() {
            return Err(invalid(
                format!("{}.subnet", name(i)),
                &r.subnet,
                "must be the interface's subnet (a block), not one address",
            ));
        }
    }
    let sources: Vec<(usize, Block)> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.source))
        .collect();
    if let Some(((j, a), (i, b))) = first_overlap(&sources) {
        return Err(invalid(
            format!("{}.source", name(i)),
            &b,
            &format!("overlaps {a} of {}", name(j)),
        ));
    }
    if rules.len() > ipnat_common::MAX_STEER_RULES as usize {
        return Err(invalid(
            "steer".into(),
            &rules.len(),
            &format!("more than {} rules", ipnat_common::MAX_STEER_RULES),
        ));
    }
    Ok(())
}

/// Host orientation: a public address must lie outside the internal prefixes. Inside one it
/// would be reached untranslated from that prefix while the cloud translates it from outside:
/// one address, two meanings. (The private side belongs there; the public one does not.)
pub fn validate_host_public(internal: &[Ipv4Net], public: Block) -> Result<(), ConfigError> {
    match internal
        .iter()
        .find(|p| p.contains(&public.0) || public.0.contains(*p))
    {
        Some(p) => Err(ConfigError::Invalid {
            key: "public".into(),
            value: public.to_string(),
            why: format!(
                "is inside the internal prefix {p}: in host orientation the public side is the EIP the cloud translates, outside the internal prefixes"
            ),
        }),
        None => Ok(()),
    }
}

/// The longest sync interval accepted.
pub const MAX_INTERVAL_SECS: u64 = 86_400;
/// The longest cloud call timeout accepted.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Why no address of `block` may be translated, if one may not: the unspecified and the
/// broadcast address, loopback and multicast space. One rule for single addresses and blocks
/// (a block is refused when it holds any such address).
pub fn not_unicast(block: Block) -> Option<&'static str> {
    const SPECIAL: [(Ipv4Addr, u8, &str); 4] = [
        (
            Ipv4Addr::UNSPECIFIED,
            8,
            "\"this network\" (0.0.0.0/8), never a packet's address (ipnat's self-check probe uses it)",
        ),
        (
            Ipv4Addr::BROADCAST,
            32,
            "the broadcast address 255.255.255.255",
        ),
        (
            Ipv4Addr::new(127, 0, 0, 0),
            8,
            "loopback space (127.0.0.0/8)",
        ),
        (
            Ipv4Addr::new(224, 0, 0, 0),
            4,
            "multicast space (224.0.0.0/4)",
        ),
    ];
    SPECIAL.iter().find_map(|&(addr, len, what)| {
        let special = Ipv4Net::new(addr, len).expect("a valid prefix");
        (block.0.contains(&special.network()) || special.contains(&block.0.network()))
            .then_some(what)
    })
}

/// Checks a set of mappings on their own (addresses, sizes, overlaps, capacity of the block
/// tables); `name(i)` names mapping `i` in the errors (e.g. `mapping[3]`).
pub fn validate_mappings(
    mappings: &[MappingConfig],
    name: &dyn Fn(usize) -> String,
) -> Result<(), ConfigError> {
    let mut prefixes = 0usize;
    for (i, m) in mappings.iter().enumerate() {
        for (field, block) in [("public", m.public), ("private", m.private)] {
            if let Some(what) = not_unicast(block) {
                return Err(invalid(
                    format!("{}.{field}", name(i)),
                    &block,
                    &format!("must be unicast: it holds {what}"),
                ));
            }
        }
        if m.public.prefix_len() != m.private.prefix_len() {
            return Err(invalid(
                format!("{}.private", name(i)),
                &m.private,
                &format!(
                    "is a /{} but the public side {} is a /{}: blocks map host bits one \
                     to one and must be the same size",
                    m.private.prefix_len(),
                    m.public,
                    m.public.prefix_len()
                ),
            ));
        }
        if m.public == m.private {
            return Err(invalid(
                format!("{}.private", name(i)),
                &m.private,
                "equals the public address",
            ));
        }
        if !m.public.is_host() {
            prefixes += 1;
        }
    }
    let publics: Vec<(usize, Block)> = mappings
        .iter()
        .enumerate()
        .map(|(i, m)| (i, m.public))
        .collect();
    let privates: Vec<(usize, Block)> = mappings
        .iter()
        .enumerate()
        .map(|(i, m)| (i, m.private))
        .collect();
    for (side, blocks) in [("public", &publics), ("private", &privates)] {
        if let Some(((j, a), (i, b))) = first_overlap(blocks) {
            let why = if a == b {
                format!("already mapped by {}", name(j))
            } else {
                format!("overlaps {a} of {}", name(j))
            };
            return Err(invalid(format!("{}.{side}", name(i)), &b, &why));
        }
    }
    // No address may be public in one mapping and private in another: the two
    // translations would chain and neither side could tell which one applies.
    let n = mappings.len();
    let both: Vec<(usize, Block)> = publics
        .iter()
        .copied()
        .chain(privates.iter().map(|&(i, b)| (i + n, b)))
        .collect();
    if let Some(((x, a), (y, b))) = first_overlap(&both) {
        // One of the two is a public block, the other a private one.
        let ((pi, pb), (qi, qb)) = if x < n {
            ((x, a), (y - n, b))
        } else {
            ((y, b), (x - n, a))
        };
        return Err(invalid(
            format!("{}.public", name(pi)),
            &pb,
            &format!("overlaps the private side {qb} of {}", name(qi)),
        ));
    }
    if prefixes > ipnat_common::MAX_PREFIXES as usize {
        return Err(invalid(
            "mapping".into(),
            &prefixes,
            &format!("more than {} block mappings", ipnat_common::MAX_PREFIXES),
        ));
    }
    Ok(())
}

/// The first pair of overlapping blocks in `blocks` (index, block), if any. O(n log n).
fn first_overlap(blocks: &[(usize, Block)]) -> Option<((usize, Block), (usize, Block))> {
    let mut sorted: Vec<(usize, Block)> = blocks.to_vec();
    sorted.sort_by_key(|(i, b)| (b.range().0, *i));
    let mut widest = *sorted.first()?;
    for &cur in &sorted[1..] {
        if cur.1.range().0 <= widest.1.range().1 {
            let (a, b) = if widest.0 < cur.0 {
                (widest, cur)
            } else {
                (cur, widest)
            };
            return Some((a, b));
        }
        if cur.1.range().1 > widest.1.range().1 {
            widest = cur;
        }
    }
    None
}
