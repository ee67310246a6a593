//! Where mappings and steering rules come from besides the config file: the clouds' metadata.
pub mod aliyun;
pub mod aliyun_api;
pub mod aws;
pub mod ec2;
pub mod eni;

use std::time::Duration;

use thiserror::Error;

/// Why a sync failed; nothing is applied then.
#[derive(Debug, Error)]
pub enum SyncError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Ec2(#[from] ec2::Ec2Error),
    #[error(transparent)]
    Api(#[from] aliyun_api::ApiError),
}

/// The NICs' addresses on the interfaces with their MACs, each with its subnet's prefix
/// length: (interface, address/len).
fn nic_addresses(
    nics: impl IntoIterator<Item = (String, Vec<std::net::Ipv4Addr>, u8)>,
) -> Vec<(String, ipnet::Ipv4Net)> {
    let mut out = Vec::new();
    for (mac, ips, len) in nics {
        if let Some(iface) = aws::ifname_by_mac(&mac) {
            out.extend(
                ips.into_iter()
                    .filter_map(|ip| ipnet::Ipv4Net::new(ip, len).ok())
                    .map(|net| (iface.clone(), net)),
            );
        }
    }
    out
}

/// One sync with the configured provider (nothing without one): the steering rules, mappings
/// and addresses the cloud calls for, on the attached interfaces; an error, never a partial
/// answer. Host orientation maps the cloud's EIP associations; a gateway only what the EC2
/// API's tags say (its EIPs are bound to its own addresses; which backend each serves is the
/// tags' or the config's say).
pub async fn sync(config: &crate::config::Config) -> Result<Synced, SyncError> {
    use crate::config::Orientation;
    let Some((name, endpoint, _, timeout)) = config.provider() else {
        return Ok(Synced::default());
    };
    let timeout = Duration::from_millis(timeout);
    let host = config.orientation == Orientation::Host;
    let mut synced = Synced::default();
    let (rules, missing) = if name == "aws" {
        let imds = aws::Imds::new(endpoint, timeout)?;
        let nics = imds.nics().await?;
        synced.addresses = nic_addresses(
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
        aws::steering_rules(&nics, &aws::ifname_by_mac)
    } else {
        let md = aliyun::Metadata::new(endpoint, timeout)?;
        let nics = md.nics().await?;
        synced.addresses = nic_addresses(nics.iter().map(|n| {
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
        aliyun::steering_rules(&nics, &aws::ifname_by_mac)
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

/// A transport error told once: reqwest's message without its URL (the error that carries it
/// names the URL already), then each cause beneath it ("operation timed out", "Connection
/// refused") that the text does not already hold.
pub(crate) fn transport(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// NICs read at once from a metadata service.
pub const CONCURRENT_NICS: usize = 16;

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("instance metadata at {url}: {why} (is the metadata service reachable from here?)")]
    Http { url: String, why: String },
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
    /// The session token, fetched once and shared by the clones of this client (a sync's
    /// concurrent requests); dropped when the service answers 401, so the next request
    /// fetches a fresh one.
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
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
                why: transport(source),
            })?;
        Ok(Self {
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            ttl_header,
            token_header,
            token: Default::default(),
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<String, MetadataError> {
        let r = req.send().await.map_err(|source| MetadataError::Http {
            url: url.clone(),
            why: transport(source),
        })?;
        let status = r.status().as_u16();
        if status != 200 {
            return Err(MetadataError::Status { url, status });
        }
        r.text().await.map_err(|source| MetadataError::Http {
            url,
            why: transport(source),
        })
    }

    /// The session token (6 hours), fetched on first use.
    async fn token(&self) -> Result<String, MetadataError> {
        if let Some(t) = self.token.lock().expect("token lock").clone() {
            return Ok(t);
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let req = self.client.put(&url).header(self.ttl_header, "21600");
        let t = self.send(req, url).await?;
        *self.token.lock().expect("token lock") = Some(t.clone());
        Ok(t)
    }

    /// `/latest/meta-data/<path>`, with the session token.
    pub async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let token = self.token().await?;
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        let req = self.client.get(&url).header(self.token_header, token);
        let r = self.send(req, url).await;
        if let Err(MetadataError::Status { status: 401, .. }) = r {
            *self.token.lock().expect("token lock") = None;
        }
        r
    }

    /// The error for a credentials document at `path` that was refused: it names the
    /// document's `Code` and nothing else of it (it holds the secret).
    pub fn refused_credentials(&self, path: &str, doc: &str, what: &'static str) -> MetadataError {
        let code = serde_json::from_str::<serde_json::Value>(doc)
            .ok()
            .and_then(|v| v["Code"].as_str().map(str::to_owned));
        let shown = match code {
            Some(code) => format!("Code {code:?} (the rest is not shown: it holds the secret)"),
            None => "a document that is not one (not shown: it may hold the secret)".into(),
        };
        MetadataError::Garbage {
            url: format!("{}/latest/meta-data/{path}", self.endpoint),
            value: shown,
            what,
        }
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

use std::path::Path;

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

    /// The error as `ipnat` prints it (`{:#}`, the whole chain).
    fn printed(e: MetadataError) -> String {
        format!("{:#}", anyhow::Error::from(e))
    }

    #[test]
    fn a_transport_error_names_its_url_once_and_says_why() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A service that accepts and never answers: the request times out.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let md = MetadataClient::new(&endpoint, Duration::from_millis(300), "ttl", "tok").unwrap();
        let err = printed(rt.block_on(md.get("mac")).unwrap_err());
        assert_eq!(err.matches(&endpoint).count(), 1, "{err}");
        assert!(err.contains("timed out"), "{err}");
        // Nothing listening: the connection is refused.
        drop(silent);
        let md = MetadataClient::new(&endpoint, Duration::from_millis(300), "ttl", "tok").unwrap();
        let err = printed(rt.block_on(md.get("mac")).unwrap_err());
        assert_eq!(err.matches(&endpoint).count(), 1, "{err}");
        assert!(err.contains("refused"), "{err}");
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

const SYNC_STATE: &str = "sync.json";

impl SyncState {
    pub fn load(pin_path: &Path) -> Option<Self> {
        let text = crate::state::Records::lookup(pin_path).read(SYNC_STATE)?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        crate::state::Records::lookup(pin_path)
            .write(SYNC_STATE, &serde_json::to_string_pretty(self)?)
            .map_err(std::io::Error::other)
    }

    pub fn remove(pin_path: &Path) {
        crate::state::Records::lookup(pin_path).remove(SYNC_STATE);
    }
}
