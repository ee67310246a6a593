//! One sync with the configured cloud (what its metadata and API call for, as steering rules,
//! mappings and addresses), its retry schedule, and the record of its outcome.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{aliyun, aliyun_api, aws, client::MetadataError, ec2, nic};

/// Why a sync failed; nothing is applied then.
#[derive(Debug, Error)]
pub enum SyncError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Api(#[from] super::client::ApiError),
}

/// One sync with the configured provider (nothing without one): the steering rules, mappings
/// and addresses the cloud calls for, on the attached interfaces; an error, never a partial
/// answer. Host orientation maps the cloud's EIP associations; a gateway only what the EC2
/// API's tags say (its EIPs are bound to its own addresses; which backend each serves is the
/// tags' or the config's say).
pub async fn sync(config: &crate::config::Config) -> Result<Synced, SyncError> {
    use crate::config::{Cloud, Orientation};
    let Some(provider) = config.provider() else {
        return Ok(Synced::default());
    };
    let (endpoint, timeout) = (
        provider.endpoint,
        Duration::from_millis(provider.timeout_ms),
    );
    let host = config.orientation == Orientation::Host;
    let mut synced = Synced::default();
    let (rules, missing) = if provider.cloud == Cloud::Aws {
        let imds = aws::Imds::new(endpoint, timeout)?;
        let nics = imds.nics().await?;
        synced.addresses = nic::addresses(
            nics.iter()
                .map(|n| (n.mac.clone(), n.local_ipv4s.clone(), n.subnet.prefix_len())),
        );
        match &config.aws {
            Some(a) if a.api => {
                let view = ec2::gateway_backends(&imds, &nics, a, timeout).await?;
                synced.mappings = view.backends.iter().map(|b| b.mapping).collect();
                synced.backends = view.backends;
                synced.warnings = view.warnings;
            }
            _ if host => synced.mappings = aws::mappings(&nics),
            _ => {}
        }
        nic::steering_rules(aws::secondaries(&nics), &nic::ifname_by_mac)
    } else {
        let md = aliyun::Metadata::new(endpoint, timeout)?;
        let nics = md.nics().await?;
        synced.addresses = nic::addresses(nics.iter().map(|n| {
            (
                n.mac.clone(),
                n.private_ipv4s.clone(),
                n.vswitch.prefix_len(),
            )
        }));
        match &config.aliyun {
            Some(a) if host && a.openapi => {
                synced.mappings = aliyun_api::eip_mappings(&md, a, timeout).await?;
            }
            _ if host => synced.mappings = aliyun::mappings(&nics),
            _ => {}
        }
        nic::steering_rules(aliyun::secondaries(&nics), &nic::ifname_by_mac)
    };
    for mac in missing {
        tracing::warn!(%mac, "the metadata lists a secondary NIC that has no interface here (yet)");
    }
    for r in rules {
        if config.interfaces.iter().any(|i| i.name == r.interface) {
            synced.rules.push(r);
        } else {
            tracing::warn!(interface = %r.interface, source = %r.source, "not steered: the interface is not one of the [[interface]]s");
        }
    }
    Ok(synced)
}

/// How long to wait after the `failures`-th failed sync in a row: 1 s, 2 s, 4 s, ... (a
/// transient error is retried soon), at most four intervals (a cloud that throttles or is
/// down is asked less often than usual, within the metadata services' rate limits), times
/// `jitter` in [0.8, 1.2] so that a fleet that failed together does not retry together.
pub fn retry_delay(interval: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = Duration::from_secs(1u64 << failures.saturating_sub(1).min(20));
    let cap = interval.saturating_mul(4).max(Duration::from_secs(1));
    exp.min(cap).mul_f64(jitter.clamp(0.8, 1.2))
}

/// A factor in [0.8, 1.2] from the clock's nanoseconds: spreading retries needs no better
/// randomness.
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.8 + 0.4 * f64::from(nanos % 1_000_000) / 1_000_000.0
}

/// The outcome of the last provider syncs, kept where `ipnat status` finds it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub provider: String,
    pub last_attempt_unix: u64,
    /// 0: never.
    pub last_success_unix: u64,
    /// `ok`, or the last error.
    pub result: String,
    /// Steering rules the provider contributes.
    pub rules: usize,
    /// Mappings the provider contributes (host orientation: the cloud's EIP associations).
    #[serde(default)]
    pub mappings: usize,
    /// Failed syncs since the last success (0 after a success).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When the next sync is due.
    #[serde(default)]
    pub next_attempt_unix: u64,
    /// What the last successful sync asked for, kept so that a restarted controller applies
    /// it at once instead of removing it until its first sync.
    #[serde(default)]
    pub last_good: Synced,
}

/// What one successful provider sync asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// Steering rules for the secondary NICs' addresses.
    pub rules: Vec<crate::config::SteerConfig>,
    /// Host orientation: EIP <-> private address, from the cloud's associations.
    pub mappings: Vec<crate::config::MappingConfig>,
    /// The NICs' addresses: (interface, address/prefix length).
    pub addresses: Vec<(String, ipnet::Ipv4Net)>,
    /// Gateway orientation: which EIP each mapping stands for, and whose tag says so.
    #[serde(default)]
    pub backends: Vec<ec2::Backend>,
    /// What the cloud's answers show to be wrong (e.g. a source/destination check left on).
    #[serde(default)]
    pub warnings: Vec<String>,
}

const SYNC_STATE: &str = "sync.json";

impl SyncState {
    pub fn load(pin_path: &Path) -> Option<Self> {
        crate::state::Records::lookup(pin_path).read_json(SYNC_STATE)
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path).write_json(SYNC_STATE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_four_intervals() {
        let i = Duration::from_secs(30);
        let d: Vec<u64> = (1..=9).map(|f| retry_delay(i, f, 1.0).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 120, 120]);
        assert_eq!(retry_delay(i, 3, 1.2), Duration::from_millis(4800));
        assert_eq!(retry_delay(i, 3, 0.5), Duration::from_millis(3200));
        assert_eq!(retry_delay(i, u32::MAX, 1.0), Duration::from_secs(120));
        let j = jitter();
        assert!((0.8..=1.2).contains(&j));
    }
}
