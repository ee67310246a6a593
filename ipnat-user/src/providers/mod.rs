//! Where mappings and steering rules come from besides the config file: the clouds' metadata.
pub mod aliyun;
pub mod aliyun_api;
pub mod aws;
pub mod ec2;
pub mod eni;

use std::time::Duration;

use thiserror::Error;

/// NICs read at once from a metadata service.
pub const CONCURRENT_NICS: usize = 16;

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("instance metadata at {url}: {source} (is the metadata service reachable from here?)")]
    Http { url: String, source: reqwest::Error },
    #[error("instance metadata at {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("instance metadata at {url} returned {value:?}, which is not {what}")]
    Garbage {
        url: String,
        value: String,
        what: &'static str,
    },
}

/// A metadata service in token mode (AWS IMDSv2 and Alibaba Cloud's ECS metadata work alike):
/// `PUT /latest/api/token` with a TTL header, then GETs under `/latest/meta-data/` carrying
/// the token in another header.
#[derive(Clone)]
pub struct MetadataClient {
    client: reqwest::Client,
    endpoint: String,
    ttl_header: &'static str,
    token_header: &'static str,
}

impl MetadataClient {
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        ttl_header: &'static str,
        token_header: &'static str,
    ) -> Result<Self, MetadataError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // The metadata service must be reached directly, never through a proxy.
            .no_proxy()
            .build()
            .map_err(|source| MetadataError::Http {
                url: endpoint.to_owned(),
                source,
            })?;
        Ok(Self {
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            ttl_header,
            token_header,
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<String, MetadataError> {
        let r = req.send().await.map_err(|source| MetadataError::Http {
            url: url.clone(),
            source,
        })?;
        let status = r.status().as_u16();
        if status != 200 {
            return Err(MetadataError::Status { url, status });
        }
        r.text()
            .await
            .map_err(|source| MetadataError::Http { url, source })
    }

    /// A session token.
    pub async fn token(&self) -> Result<String, MetadataError> {
        let url = format!("{}/latest/api/token", self.endpoint);
        let req = self.client.put(&url).header(self.ttl_header, "21600");
        self.send(req, url).await
    }

    /// `/latest/meta-data/<path>`.
    pub async fn get(&self, token: &str, path: &str) -> Result<String, MetadataError> {
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        let req = self.client.get(&url).header(self.token_header, token);
        self.send(req, url).await
    }

    /// The error for a value at `path` that is not `what`.
    pub fn garbage(&self, path: &str, value: &str, what: &'static str) -> MetadataError {
        MetadataError::Garbage {
            url: format!("{}/latest/meta-data/{path}", self.endpoint),
            value: value.chars().take(80).collect(),
            what,
        }
    }
}

use std::path::{Path, PathBuf};

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

use serde::{Deserialize, Serialize};

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

pub fn state_path(pin_path: &Path) -> PathBuf {
    crate::host::state_path(pin_path)
        .with_extension("")
        .with_extension("sync.json")
}

impl SyncState {
    pub fn load(pin_path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_path(pin_path)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        let path = state_path(pin_path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::host::write_atomic(&path, &serde_json::to_string_pretty(self)?)
    }

    pub fn remove(pin_path: &Path) {
        let _ = std::fs::remove_file(state_path(pin_path));
    }
}
