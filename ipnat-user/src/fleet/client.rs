//! A connection to the fleet's etcd cluster, as the `[etcd]` section describes it.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdConfig;

/// Why the fleet's etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd ({endpoints}): {error}")]
    Etcd {
        endpoints: String,
        error: etcd_client::Error,
    },
    #[error("etcd ({endpoints}): no answer within {ms} ms (etcd.request_timeout_ms)")]
    Timeout { endpoints: String, ms: u64 },
    #[error("{what} {path}: {error}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the fleet's table is refused: {0} (fix or remove that key; nothing was written)")]
    Refused(super::Refused),
    #[error("{0}")]
    Conflict(String),
}

// By hand, not `#[from]`: that would make the refusal the error's source as well, and the
// chain would print it twice.
impl From<super::Refused> for FleetError {
    fn from(r: super::Refused) -> Self {
        FleetError::Refused(r)
    }
}

/// The cluster with the section's settings: what errors name, and the request deadline.
#[derive(Clone)]
pub struct Etcd {
    pub client: Client,
    endpoints: String,
    timeout: Duration,
}

impl Etcd {
    /// Connects (authenticating when a user is set). Every later request is bounded by
    /// `request_timeout_ms`.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, FleetError> {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        Ok(Etcd {
            client: connect_client(config, Some(timeout)).await?,
            endpoints: config.endpoints.join(","),
            timeout,
        })
    }

    /// Runs one request with the deadline; errors name the cluster.
    pub async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, FleetError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(r) => r.map_err(|error| FleetError::Etcd {
                endpoints: self.endpoints.clone(),
                error,
            }),
            Err(_) => Err(FleetError::Timeout {
                endpoints: self.endpoints.clone(),
                ms: self.timeout.as_millis() as u64,
            }),
        }
    }
}

/// A client for the section's cluster (authenticating when a user is set, TLS when a CA is
/// set), each request bounded by `per_request` (None: unbounded, for calls that wait on
/// purpose, such as an election's campaign). Connecting is bounded by `dial_timeout_ms`
/// plus `request_timeout_ms`.
pub async fn connect_client(
    config: &EtcdConfig,
    per_request: Option<Duration>,
) -> Result<Client, FleetError> {
    let endpoints = config.endpoints.join(",");
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|error| FleetError::File {
            what,
            path: path.to_owned(),
            error,
        })
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(config.dial_timeout_ms))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some(t) = per_request {
        options = options.with_timeout(t);
    }
    if let Some(user) = &config.user {
        let password = match (&config.password, &config.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => String::from_utf8_lossy(&read("etcd.password_file", file)?)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            (None, None) => String::new(),
        };
        options = options.with_user(user.clone(), password);
    }
    if let Some(ca) = &config.ca_file {
        let mut tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("etcd.ca_file", ca)?));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("etcd.cert_file", cert)?,
                read("etcd.key_file", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    tokio::time::timeout(
        Duration::from_millis(config.request_timeout_ms + config.dial_timeout_ms),
        Client::connect(&config.endpoints, Some(options)),
    )
    .await
    .map_err(|_| FleetError::Timeout {
        endpoints: endpoints.clone(),
        ms: config.dial_timeout_ms,
    })?
    .map_err(|error| FleetError::Etcd { endpoints, error })
}
