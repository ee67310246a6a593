//! A failover shard's takeover: what a newly elected leader does through its cloud's API to
//! hold the shard (`aws.rs`: move the addresses, or re-associate the EIPs, and the routes to
//! its NIC; `aliyun.rs`: announce the HaVip, or re-bind the EIPs and move the route entries),
//! what it undoes when it stops leading, and the retry policy both share.

use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::client::ApiError;
use crate::{
    config::{Config, ShardConfig},
    fleet::leader::Fenced,
};

mod aliyun;
mod aws;

pub use aliyun::AliyunTakeover;
pub use aws::AwsTakeover;

/// Whether the lease still allows a call that may take the given time.
pub type Guard<'a> = dyn Fn(Duration) -> Result<(), Fenced> + Send + Sync + 'a;

#[derive(Debug, Error)]
pub enum TakeoverError {
    #[error("fenced: {0}")]
    Fenced(#[from] Fenced),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Metadata(#[from] super::client::MetadataError),
    #[error("refused before any change: {0}")]
    Refused(String),
    #[error(
        "the metadata does not list {missing:?} on {nic} {ms} ms after the move was accepted (failover.confirm_timeout_ms)"
    )]
    NotConfirmed {
        nic: String,
        missing: Vec<Ipv4Addr>,
        ms: u64,
    },
    #[error("{what} {ms} ms after the call was accepted (failover.confirm_timeout_ms)")]
    Pending { what: String, ms: u64 },
}

/// What one takeover did, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverReport {
    /// What each step did, in order.
    pub steps: Vec<String>,
    /// Calls that were retried (throttled, 5xx, ...).
    pub retries: u32,
    pub duration_ms: u64,
}

/// Whether a failed call may succeed if made again.
fn retryable(e: &ApiError) -> bool {
    match e {
        ApiError::Http { .. } | ApiError::Garbage { .. } => true,
        ApiError::Api { status, code, .. } => {
            *status >= 500
                || matches!(
                    code.as_str(),
                    "RequestLimitExceeded"
                        | "Throttling"
                        | "Throttling.User"
                        | "Throttling.Api"
                        | "ThrottlingException"
                        // Alibaba Cloud: another change of the same route table or EIP is
                        // under way (ModifyRouteEntry's documentation: retry).
                        | "TaskConflict"
                        | "OperationConflict"
                        | "IncorrectEipStatus"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "Unavailable"
                        | "IncorrectState"
                        | "ConcurrentTagAccess"
                )
        }
        _ => false,
    }
}

/// Backoff before retry `n` (from 1): 100 ms doubling to at most 2 s, times `jitter`.
pub fn backoff(n: u32, jitter: f64) -> Duration {
    Duration::from_millis((100u64 << n.saturating_sub(1).min(5)).min(2_000))
        .mul_f64(jitter.clamp(0.5, 1.5))
}

/// Makes `call` until it succeeds, fails for good, or the lease has too little left.
pub(crate) async fn retrying<T, F: Future<Output = Result<T, ApiError>>>(
    call_timeout: Duration,
    guard: &Guard<'_>,
    retries: &mut u32,
    call: impl Fn() -> F,
) -> Result<T, TakeoverError> {
    let mut n = 0;
    loop {
        guard(call_timeout)?;
        match call().await {
            Ok(t) => return Ok(t),
            Err(e) if retryable(&e) => {
                n += 1;
                *retries += 1;
                tracing::warn!("{e}; retrying");
                tokio::time::sleep(backoff(n, crate::providers::jitter())).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// This gateway's side of a takeover, on the configured cloud.
pub enum Takeover {
    Aws(AwsTakeover),
    Aliyun(AliyunTakeover),
}

impl Takeover {
    /// Reads who this gateway is and makes the clients (`[failover]` with `[aws]` or `[aliyun]`).
    pub async fn new(config: &Config) -> Result<Self, TakeoverError> {
        let f = config
            .failover
            .as_ref()
            .ok_or_else(|| TakeoverError::Refused("no [failover] section".into()))?;
        match (&config.aws, &config.aliyun) {
            (Some(aws), _) => Ok(Takeover::Aws(AwsTakeover::new(aws, f).await?)),
            (None, Some(aliyun)) => Ok(Takeover::Aliyun(
                AliyunTakeover::new(aliyun, f, &config.pin_path).await?,
            )),
            (None, None) => Err(TakeoverError::Refused(
                "no [aws] or [aliyun] section".into(),
            )),
        }
    }

    /// Checks with reads only that this gateway could take `shard` over.
    pub async fn preflight(&self, shard: &ShardConfig) -> Result<(), TakeoverError> {
        match self {
            Takeover::Aws(t) => t.preflight(shard).await.map(|_| ()),
            Takeover::Aliyun(t) => t.preflight(shard).await,
        }
    }

    /// Takes `shard` over; `synced` asks the controller for a provider sync at once.
    pub async fn take(
        &self,
        shard: &ShardConfig,
        guard: &Guard<'_>,
        synced: &(dyn Fn() + Send + Sync),
    ) -> Result<TakeoverReport, TakeoverError> {
        match self {
            Takeover::Aws(t) => t.take(shard, guard, synced).await,
            Takeover::Aliyun(t) => t.take(shard, guard).await,
        }
    }

    /// Undoes what leading did on this host when this gateway stops leading (the cloud's own
    /// state is the next leader's to change): on Alibaba Cloud, the HaVip's address leaves the
    /// interface, so that this gateway stops answering ARP for it.
    pub fn release(&self, shard: &ShardConfig) -> Result<Vec<String>, TakeoverError> {
        match self {
            Takeover::Aws(_) => Ok(Vec::new()),
            Takeover::Aliyun(t) => t.release(shard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::client::Api;

    #[test]
    fn throttling_5xx_and_garbage_are_retried_refusals_are_not() {
        let api = |status, code: &str| ApiError::Api {
            api: Api::Ec2,
            action: "ReplaceRoute".into(),
            status,
            code: code.into(),
            message: String::new(),
            request_id: String::new(),
            hint: "",
        };
        assert!(retryable(&api(503, "RequestLimitExceeded")));
        assert!(retryable(&api(400, "RequestLimitExceeded")));
        assert!(retryable(&api(500, "InternalError")));
        assert!(retryable(&ApiError::Garbage {
            api: Api::Ec2,
            action: "ReplaceRoute".into(),
            why: "no root".into()
        }));
        assert!(retryable(&api(400, "TaskConflict")));
        assert!(retryable(&api(400, "IncorrectEipStatus")));
        assert!(retryable(&api(400, "Throttling.User")));
        assert!(!retryable(&api(400, "InvalidParameterValue")));
        assert!(!retryable(&api(403, "UnauthorizedOperation")));
        assert!(!retryable(&ApiError::NoCredentials(Api::Ec2)));
        let ms: Vec<u128> = (1..=7).map(|n| backoff(n, 1.0).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
    }
}
