//! Leadership of a failover shard: etcd's election service (v3election `Campaign`, `Leader`)
//! on a lease of this gateway's, and the fence that stops a leader acting once its lease may
//! have expired.
//!
//! etcd counts a lease's TTL from when it *received* the last renewal; this gateway only knows
//! when it *sent* it. So a leader stops at (send time of its last acknowledged renewal + the
//! TTL etcd answered - a margin), which is never later than etcd's own expiry, whatever the
//! network delayed: by then it makes no cloud call, and it makes none whose timeout would
//! outlive that point. etcd may extend leases across its own leader changes, which only makes
//! the lease outlive the fence, never the other way.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::Client;

use super::client::FleetError;
use crate::config::EtcdConfig;

/// What a fenced leader may no longer do, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    #[error("the lease is gone (etcd answered a renewal with TTL 0)")]
    Revoked,
    #[error("the lease may have expired (no renewal acknowledged in time)")]
    Expired,
    #[error("the lease has {left_ms} ms left, less than a call's {needed_ms} ms: no call is made")]
    TooLittle { left_ms: u64, needed_ms: u64 },
}

/// How long this gateway may still act on its lease (see the module documentation).
#[derive(Debug)]
pub struct Fence {
    margin: Duration,
    /// Renewals sent and not answered yet, oldest first (etcd answers a stream in order).
    pending: VecDeque<Instant>,
    /// None: never granted, or revoked.
    until: Option<Instant>,
    revoked: bool,
}

impl Fence {
    pub fn new(margin: Duration) -> Self {
        Fence {
            margin,
            pending: VecDeque::new(),
            until: None,
            revoked: false,
        }
    }

    /// The lease was granted by a request sent at `sent`, with `ttl_s`.
    pub fn granted(&mut self, sent: Instant, ttl_s: i64) {
        self.revoked = false;
        self.pending.clear();
        self.extend(sent, ttl_s);
    }

    /// A renewal was sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.pending.push_back(at);
    }

    /// etcd answered the oldest pending renewal with `ttl_s` (0 or less: the lease is gone).
    pub fn answered(&mut self, ttl_s: i64) {
        let Some(sent) = self.pending.pop_front() else {
            return;
        };
        if ttl_s <= 0 {
            self.revoked = true;
            self.until = None;
        } else if !self.revoked {
            self.extend(sent, ttl_s);
        }
    }

    fn extend(&mut self, sent: Instant, ttl_s: i64) {
        let end = (sent + Duration::from_secs(ttl_s.max(0) as u64)).checked_sub(self.margin);
        self.until = match (self.until, end) {
            (Some(u), Some(e)) => Some(u.max(e)),
            (_, e) => e,
        };
    }

    /// Time left to act, at `now`.
    pub fn left(&self, now: Instant) -> Duration {
        self.until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    /// Whether a call that may take `needed` can be made at `now`.
    pub fn check(&self, now: Instant, needed: Duration) -> Result<(), Fenced> {
        if self.revoked {
            return Err(Fenced::Revoked);
        }
        let left = self.left(now);
        if left.is_zero() {
            return Err(Fenced::Expired);
        }
        if left <= needed {
            return Err(Fenced::TooLittle {
                left_ms: left.as_millis() as u64,
                needed_ms: needed.as_millis() as u64,
            });
        }
        Ok(())
    }
}

/// The election's name for `shard` (etcd keys `<name>/<lease id>` hold the candidates).
pub fn election_name(prefix: &str, shard: &str) -> String {
    format!("{}/failover/{shard}", prefix.trim_end_matches('/'))
}

/// A connection for the election: without a per-request deadline, since a campaign waits as
/// long as another gateway leads (the `[etcd]` section's other settings apply).
pub async fn connect(config: &EtcdConfig) -> Result<Client, FleetError> {
    super::client::connect_client(config, None).await
}

/// A lease of this gateway's, renewed every third of its TTL by a task of its own (a broken
/// renewal stream is reopened), with its fence.
pub struct Lease {
    pub id: i64,
    fence: Arc<Mutex<Fence>>,
    renewals: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Grants a lease of `ttl_s` and starts renewing it.
    pub async fn grant(client: &Client, ttl_s: i64, margin: Duration) -> Result<Lease, FleetError> {
        let mut c = client.clone();
        let sent = Instant::now();
        let granted = c
            .lease_grant(ttl_s, None)
            .await
            .map_err(|error| FleetError::Etcd {
                endpoints: "the election's".into(),
                error,
            })?;
        let id = granted.id();
        let fence = Arc::new(Mutex::new(Fence::new(margin)));
        fence
            .lock()
            .expect("not poisoned")
            .granted(sent, granted.ttl());
        let every = Duration::from_millis((ttl_s.max(1) as u64) * 1000 / 3);
        let f = fence.clone();
        let renewals = tokio::spawn(async move {
            loop {
                let Ok((mut keeper, mut answers)) = c.lease_keep_alive(id).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            f.lock().expect("not poisoned").sent(Instant::now());
                            if keeper.keep_alive().await.is_err() {
                                break;
                            }
                        }
                        answer = answers.message() => match answer {
                            Ok(Some(a)) => f.lock().expect("not poisoned").answered(a.ttl()),
                            _ => break,
                        },
                    }
                }
                // Renewals sent on the broken stream will never be answered.
                f.lock().expect("not poisoned").pending.clear();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Lease {
            id,
            fence,
            renewals,
        })
    }

    /// Whether a call that may take `needed` can be made now.
    pub fn check(&self, needed: Duration) -> Result<(), Fenced> {
        self.fence
            .lock()
            .expect("not poisoned")
            .check(Instant::now(), needed)
    }

    /// Time left to act.
    pub fn left(&self) -> Duration {
        self.fence
            .lock()
            .expect("not poisoned")
            .left(Instant::now())
    }

    /// Gives the lease up at once: this gateway stops acting on it first (its fence is
    /// revoked, its renewals stop), then asks etcd to revoke it (its candidacy's key goes, and
    /// etcd elects the next candidate). If etcd cannot be asked, the lease expires by itself.
    pub async fn revoke(&self, client: &Client, within: Duration) {
        {
            let mut f = self.fence.lock().expect("not poisoned");
            f.revoked = true;
            f.until = None;
        }
        self.renewals.abort();
        let mut c = client.clone();
        let _ = tokio::time::timeout(within, c.lease_revoke(self.id)).await;
    }

    /// Resolves once the lease may no longer be acted on.
    pub async fn lost(&self) -> Fenced {
        loop {
            if let Err(f) = self.check(Duration::ZERO) {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewals.abort();
    }
}

/// Campaigns for `name` as `value` on `lease` until elected (the key etcd made for it), or
/// the lease is lost first.
pub async fn campaign(
    client: &Client,
    name: &str,
    value: &str,
    lease: &Lease,
) -> Result<Result<etcd_client::LeaderKey, Fenced>, FleetError> {
    let mut c = client.clone();
    tokio::select! {
        won = c.campaign(name, value, lease.id) => {
            let mut won = won.map_err(|error| FleetError::Etcd { endpoints: "the election's".into(), error })?;
            won.take_leader().map(Ok).ok_or_else(|| FleetError::Conflict(format!("etcd answered the campaign for {name} without a leader key")))
        }
        lost = lease.lost() => Ok(Err(lost)),
    }
}

/// Who leads `name` now (its value), if anyone.
pub async fn leader(client: &Client, name: &str) -> Result<Option<String>, FleetError> {
    let mut c = client.clone();
    match c.leader(name).await {
        Ok(mut r) => Ok(r
            .take_kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
        // etcd answers "election: no leader" as an error.
        Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
        Err(error) => Err(FleetError::Etcd {
            endpoints: "the election's".into(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MARGIN: Duration = Duration::from_millis(500);

    #[test]
    fn a_lease_is_good_until_its_last_acknowledged_renewal_was_sent_plus_the_ttl_less_the_margin() {
        let t0 = Instant::now();
        let mut f = Fence::new(MARGIN);
        assert_eq!(f.check(t0, S), Err(Fenced::Expired), "never granted");
        f.granted(t0, 5);
        assert_eq!(f.left(t0), Duration::from_millis(4500));
        assert_eq!(f.check(t0 + 3 * S, S), Ok(()));
        // Not enough left for a call of 2 s at 3 s in (1.5 s left).
        assert_eq!(
            f.check(t0 + 3 * S, 2 * S),
            Err(Fenced::TooLittle {
                left_ms: 1500,
                needed_ms: 2000
            })
        );
        // A renewal sent at 2 s, answered late (at 4 s): counted from when it was sent.
        f.sent(t0 + 2 * S);
        f.answered(5);
        assert_eq!(f.left(t0 + 4 * S), Duration::from_millis(2500));
        // Sent and never answered: time runs out by itself.
        f.sent(t0 + 4 * S);
        assert_eq!(f.check(t0 + 7 * S, Duration::ZERO), Err(Fenced::Expired));
    }

    #[test]
    fn answers_are_matched_to_renewals_in_order_and_a_zero_ttl_revokes() {
        let t0 = Instant::now();
        let mut f = Fence::new(MARGIN);
        f.granted(t0, 5);
        f.sent(t0 + S);
        f.sent(t0 + 2 * S);
        // The first answer belongs to the renewal sent at 1 s, not the one at 2 s.
        f.answered(5);
        assert_eq!(f.left(t0), Duration::from_millis(5500));
        f.answered(5);
        assert_eq!(f.left(t0), Duration::from_millis(6500));
        // A stray answer with nothing pending changes nothing.
        f.answered(5);
        assert_eq!(f.left(t0), Duration::from_millis(6500));
        f.sent(t0 + 3 * S);
        f.answered(0);
        assert_eq!(f.check(t0 + 3 * S, Duration::ZERO), Err(Fenced::Revoked));
        // A late positive answer after a revocation does not bring the lease back.
        f.sent(t0 + 3 * S);
        f.answered(5);
        assert_eq!(f.check(t0 + 3 * S, Duration::ZERO), Err(Fenced::Revoked));
        // Only a new grant does.
        f.granted(t0 + 4 * S, 5);
        assert_eq!(f.check(t0 + 5 * S, S), Ok(()));
    }

    #[test]
    fn election_names_live_under_the_prefix() {
        assert_eq!(election_name("/ipnat/", "web"), "/ipnat/failover/web");
        assert_eq!(election_name("/ipnat", "web"), "/ipnat/failover/web");
    }
}
