//! The controller's side of `[failover]`: one task per shard that checks it could take the
//! shard over (reads only), campaigns for it in etcd, takes it over through the cloud's API
//! when elected, and leads until its lease may have expired, then campaigns again as a
//! standby. A gateway that comes back after a failover campaigns behind the new leader: it
//! moves nothing back by itself (a move asked through etcd does, see `crate::fleet::handover`:
//! `ipnat fleet move`, or the shard's `prefer` after the hold-down).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::{
    config::{Config, EtcdConfig, FailoverConfig, ShardConfig},
    fleet::{
        failover::{FailoverState, MoveRecord, ShardState, TakeoverRecord},
        handover::{self, MoveRequest, Step},
        leader::{self, Lease},
        unix_ms,
    },
    providers::takeover::{Takeover, TakeoverError},
};

/// Records the shards' state of this run (connecting, leading nothing yet) before the
/// controller says it runs: what an earlier run recorded (a leadership that died with it) is
/// never shown as this run's. The one copy lives in `ctl` (the metrics server reads it too).
pub fn record_start(config: &Config, ctl: &crate::metrics::ControllerCounters) {
    let Some(f) = &config.failover else {
        return;
    };
    let state = FailoverState {
        node: f.node_name(),
        shards: f
            .shards
            .iter()
            .map(|s| ShardState {
                name: s.name.clone(),
                role: "connecting".into(),
                role_since_unix_ms: unix_ms(),
                ..Default::default()
            })
            .collect(),
    };
    if let Err(e) = state.save(&config.pin_path) {
        warn!("recording the failover state: {e}");
    }
    // A run starts leading nothing: what an earlier one held on this host goes (a HaVip's
    // address it announced, before this one could answer ARP for it as a standby).
    match crate::system::reconcile_addresses(
        &[],
        &config.pin_path,
        crate::system::AddressOwner::Failover,
        false,
    ) {
        Ok((_, removed)) if !removed.is_empty() => {
            info!(
                ?removed,
                "removed what an earlier run held as a shard's leader"
            )
        }
        Ok(_) => {}
        Err(e) => warn!("removing what an earlier run held as a shard's leader: {e}"),
    }
    *ctl.failover.lock().expect("not poisoned") = Some(state);
}

/// Starts a task per shard on the current runtime (after [`record_start`]); `sync_now` asks
/// the controller for a provider sync at once (a takeover's addresses go on the interface).
pub fn spawn(
    config: &Config,
    ctl: Arc<crate::metrics::ControllerCounters>,
    sync_now: UnboundedSender<()>,
) {
    let (Some(f), Some(_)) = (&config.failover, &config.etcd) else {
        return;
    };
    let node = f.node_name();
    for (i, shard) in f.shards.iter().enumerate() {
        let task = ShardTask {
            index: i,
            node: node.clone(),
            shard: shard.clone(),
            config: config.clone(),
            ctl: ctl.clone(),
            sync_now: sync_now.clone(),
        };
        tokio::spawn(task.run());
    }
}

struct ShardTask {
    index: usize,
    node: String,
    shard: ShardConfig,
    /// Holds `[failover]` and `[etcd]` (checked by [`spawn`]).
    config: Config,
    ctl: Arc<crate::metrics::ControllerCounters>,
    sync_now: UnboundedSender<()>,
}

impl ShardTask {
    fn failover(&self) -> &FailoverConfig {
        self.config
            .failover
            .as_ref()
            .expect("spawned with [failover]")
    }

    fn etcd(&self) -> &EtcdConfig {
        self.config.etcd.as_ref().expect("spawned with [etcd]")
    }

    /// Changes this shard's entry and records the whole state for `ipnat status`.
    fn update(&self, f: impl FnOnce(&mut ShardState)) {
        let mut guard = self.ctl.failover.lock().expect("not poisoned");
        let Some(state) = guard.as_mut() else {
            return;
        };
        let shard = &mut state.shards[self.index];
        let was = shard.role.clone();
        f(shard);
        if shard.role != was {
            shard.role_since_unix_ms = unix_ms();
            if was == "leader" {
                shard.led_until_unix_ms = shard.role_since_unix_ms;
            }
        }
        if let Err(e) = state.save(&self.config.pin_path) {
            warn!("recording the failover state: {e}");
        }
    }

    async fn run(self) {
        let name = leader::election_name(&self.etcd().prefix, &self.shard.name);
        let mut failures = 0u32;
        loop {
            // A gateway that could not take the shard over must not lead it.
            let takeover = match self.prepare().await {
                Ok(t) => t,
                // What the cloud says this gateway cannot do: checked again now and then.
                Err(e @ TakeoverError::Refused(_)) => {
                    warn!(shard = %self.shard.name, "not campaigning: {e}");
                    self.update(|s| {
                        s.role = "refused".into();
                        s.detail = e.to_string();
                    });
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    continue;
                }
                // The cloud or the metadata not answering (throttled, down, credentials
                // expired): no verdict, so tried again soon; a standby that waited 10 s
                // here would leave its shard without one.
                Err(e) => {
                    failures += 1;
                    warn!(shard = %self.shard.name, "checking that this gateway could take the shard over: {e}; trying again");
                    self.update(|s| {
                        s.role = "connecting".into();
                        s.detail = format!("preflight: {e}");
                    });
                    tokio::time::sleep(
                        crate::providers::takeover::backoff(
                            failures + 3,
                            crate::providers::jitter(),
                        )
                        .min(Duration::from_secs(10)),
                    )
                    .await;
                    continue;
                }
            };
            failures = 0;
            if let Err(e) = self.term(&name, &takeover).await {
                warn!(shard = %self.shard.name, "{e}");
                self.update(|s| {
                    s.role = "connecting".into();
                    s.detail = e.to_string();
                    s.fence_left_ms = 0;
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn release(&self, takeover: &Takeover) {
        match takeover.release(&self.shard) {
            Ok(removed) if !removed.is_empty() => {
                info!(shard = %self.shard.name, ?removed, "released what leading held on this host")
            }
            Ok(_) => {}
            Err(e) => warn!(shard = %self.shard.name, "{e}"),
        }
    }

    fn etcd_timeout(&self) -> Duration {
        Duration::from_millis(self.etcd().request_timeout_ms)
    }

    /// The move request for this shard, if `wanted` is what this candidate (on `lease`) does
    /// about it now. etcd not answering in time, or a broken request, is a request not seen.
    async fn asked(
        &self,
        client: &etcd_client::Client,
        name: &str,
        lease: &Lease,
        wanted: Step,
    ) -> Option<MoveRequest> {
        let key = handover::move_key(&self.etcd().prefix, &self.shard.name);
        let look = async {
            let Some(request) = handover::read_move(client, &key).await? else {
                return Ok(None);
            };
            let line = handover::candidates(client, name).await?;
            Ok::<_, crate::fleet::FleetError>(
                (handover::step(lease.id, &line, &request) == wanted).then_some(request),
            )
        };
        match tokio::time::timeout(self.etcd_timeout(), look).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(shard = %self.shard.name, "reading the shard's move request: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// A leader that is not the shard's preferred gateway asks for the shard to move to it
    /// once it has stood by for the hold-down without a break (`since`: when it was first
    /// seen in line).
    async fn prefer(&self, client: &etcd_client::Client, name: &str, since: &mut Option<Instant>) {
        let Some(preferred) = self.shard.prefer.as_deref().filter(|p| *p != self.node) else {
            return;
        };
        let hold_down = Duration::from_secs(self.failover().hold_down_s);
        let line =
            tokio::time::timeout(self.etcd_timeout(), handover::candidates(client, name)).await;
        let Ok(Ok(line)) = line else {
            return;
        };
        if !line.iter().any(|c| c.node == preferred) {
            *since = None;
            return;
        }
        if since.get_or_insert_with(Instant::now).elapsed() < hold_down {
            return;
        }
        let key = handover::move_key(&self.etcd().prefix, &self.shard.name);
        let request = MoveRequest {
            to: preferred.to_owned(),
            by: format!("{}: the shard prefers {preferred}", self.node),
        };
        // The request goes by itself if the move does not happen (the preferred gateway
        // refuses the takeover); the hold-down then starts again.
        let ttl = (self.failover().hold_down_s as i64).clamp(10, 300);
        match tokio::time::timeout(
            self.etcd_timeout(),
            handover::request_move(client, &key, &request, ttl),
        )
        .await
        {
            Ok(Ok(Ok(_))) => {
                info!(shard = %self.shard.name, to = preferred, "the preferred gateway stood by for the hold-down: asked for the shard to move to it");
                *since = None;
            }
            Ok(Ok(Err(_other))) => {}
            Ok(Err(e)) => {
                warn!(shard = %self.shard.name, "asking for the shard to move to {preferred}: {e}")
            }
            Err(_) => {}
        }
    }

    /// The clients and the preflight (reads only).
    async fn prepare(&self) -> Result<Takeover, TakeoverError> {
        let t = Takeover::new(&self.config).await?;
        t.preflight(&self.shard).await?;
        Ok(t)
    }

    /// One lease: campaign as a standby, and if elected, take over and lead until the lease
    /// may have expired.
    async fn term(&self, name: &str, takeover: &Takeover) -> Result<(), crate::fleet::FleetError> {
        let client = leader::connect(self.etcd()).await?;
        let lease = Lease::grant(
            &client,
            self.failover().lease_ttl_s as i64,
            Duration::from_millis(self.failover().fence_margin_ms),
        )
        .await?;
        // A standby holds nothing (a HaVip's address left on the interface would answer ARP).
        self.release(takeover);
        let current = leader::leader(&client, name).await?;
        self.update(|s| {
            s.role = "standby".into();
            s.leader = current;
            s.detail.clear();
            s.fence_left_ms = 0;
        });
        // Campaign; meanwhile keep the leader shown in status current.
        let campaign = leader::campaign(&client, name, &self.node, &lease);
        tokio::pin!(campaign);
        let mut look = tokio::time::interval(Duration::from_secs(1));
        let won = loop {
            tokio::select! {
                won = &mut campaign => break won?,
                _ = look.tick() => {
                    // The campaign is watched while etcd answers (an election is not noticed
                    // late because a read was slow).
                    let reads = async {
                        if let Ok(Ok(l)) = tokio::time::timeout(self.etcd_timeout(), leader::leader(&client, name)).await {
                            self.update(|s| s.leader = l);
                        }
                        self.asked(&client, name, &lease, Step::StepBack).await
                    };
                    let request = tokio::select! {
                        won = &mut campaign => break won?,
                        request = reads => request,
                    };
                    if let Some(request) = request {
                        lease.revoke(&client, self.etcd_timeout()).await;
                        info!(shard = %self.shard.name, to = %request.to, by = %request.by, "stepping back in line: the shard is to move to another gateway");
                        self.update(|s| s.last_move = Some(MoveRecord::of("stepped back in line", request)));
                        return Ok(());
                    }
                }
            }
        };
        if let Err(lost) = won {
            info!(shard = %self.shard.name, "the lease ended while campaigning: {lost}");
            return Ok(());
        }
        let elected = Instant::now();
        let elected_ms = unix_ms();
        info!(shard = %self.shard.name, "elected leader; taking the shard over");
        self.update(|s| {
            s.role = "leader".into();
            s.leader = Some(self.node.clone());
            s.fence_left_ms = lease.left().as_millis() as u64;
        });
        let guard = |needed: Duration| lease.check(needed);
        let sync_now = || {
            let _ = self.sync_now.send(());
        };
        let mut attempt = 0u32;
        let mut finished = false;
        loop {
            // Fresh clients for every attempt: a standby may have waited for hours, longer
            // than the instance's temporary credentials last.
            let result = match Takeover::new(&self.config).await {
                Ok(fresh) => fresh.take(&self.shard, &guard, &sync_now).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(report) => {
                    info!(shard = %self.shard.name, ms = elected.elapsed().as_millis() as u64, steps = ?report.steps, "took the shard over");
                    // A move asked for this gateway is done (said below, while leading).
                    finished = true;
                    self.update(|s| {
                        s.detail.clear();
                        s.last_takeover = Some(TakeoverRecord {
                            elected_unix_ms: elected_ms,
                            duration_ms: elected.elapsed().as_millis() as u64,
                            result: "ok".into(),
                            report,
                        });
                    });
                    break;
                }
                Err(TakeoverError::Fenced(f)) => {
                    warn!(shard = %self.shard.name, "stopped the takeover: {f}");
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    warn!(shard = %self.shard.name, "takeover failed, retrying while this gateway leads: {e}");
                    self.update(|s| {
                        s.last_takeover = Some(TakeoverRecord {
                            elected_unix_ms: elected_ms,
                            duration_ms: elected.elapsed().as_millis() as u64,
                            result: format!("error: {e}"),
                            report: Default::default(),
                        });
                    });
                    tokio::time::sleep(crate::providers::takeover::backoff(
                        attempt + 2,
                        crate::providers::jitter(),
                    ))
                    .await;
                    if lease.check(Duration::ZERO).is_err() {
                        break;
                    }
                }
            }
        }
        // Lead until the lease may have expired (etcd then elects another), or until the
        // shard is to move to a gateway that is next in line.
        let mut show = tokio::time::interval(Duration::from_secs(1));
        let mut preferred_since: Option<Instant> = None;
        let lost = loop {
            tokio::select! {
                lost = lease.lost() => break lost,
                _ = show.tick() => {
                    self.update(|s| s.fence_left_ms = lease.left().as_millis() as u64);
                    // etcd's answers may take up to its request timeout: the fence is watched
                    // meanwhile, so a lease lost while etcd is slow is given up on time.
                    let look = async {
                        if finished {
                            let key = handover::move_key(&self.etcd().prefix, &self.shard.name);
                            let done = handover::finish_move(&client, &key, &self.node);
                            if let Ok(Ok(true)) = tokio::time::timeout(self.etcd_timeout(), done).await {
                                info!(shard = %self.shard.name, "the move asked for this gateway is done");
                            }
                            finished = false;
                        }
                        self.prefer(&client, name, &mut preferred_since).await;
                        self.asked(&client, name, &lease, Step::HandOver).await
                    };
                    let request = tokio::select! {
                        lost = lease.lost() => break lost,
                        request = look => request,
                    };
                    if let Some(request) = request {
                        // Stop leading first: what leading held on this host goes, then the
                        // lease (etcd elects the next in line only once its key is gone).
                        self.release(takeover);
                        lease.revoke(&client, self.etcd_timeout()).await;
                        info!(shard = %self.shard.name, to = %request.to, by = %request.by, "handed the shard over");
                        self.update(|s| {
                            s.role = "standby".into();
                            s.last_move = Some(MoveRecord::of("handed the shard over", request));
                            s.fence_left_ms = 0;
                        });
                        return Ok(());
                    }
                }
            }
        };
        warn!(shard = %self.shard.name, "no longer leader: {lost}; claiming nothing until elected again");
        self.release(takeover);
        self.update(|s| {
            s.role = "standby".into();
            s.detail = format!("lost the lease: {lost}");
            s.fence_left_ms = 0;
        });
        Ok(())
    }
}
