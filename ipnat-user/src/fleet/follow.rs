//! Following the fleet's table: a consistent snapshot, then a watch from the snapshot's
//! revision + 1, each revision's changes handed over as one new table. etcd unreachable: the
//! controller keeps its last good table; on reconnect the watch resumes after the last
//! revision seen, or, when etcd compacted that history away, everything is read again.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::{Etcd, FleetTable, Keys, Refused, write::read};
use crate::config::EtcdConfig;

/// What the follower tells the controller.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The fleet's table as of `revision` (a snapshot, or one revision's changes applied), and
    /// its version (see [`View`]).
    Table {
        revision: i64,
        version: i64,
        table: FleetTable,
    },
    /// The table as of `revision` cannot be served: nothing of it applies.
    Refused {
        revision: i64,
        version: i64,
        refused: Refused,
    },
    /// etcd answered a progress request: the watch is alive (at the last revision sent).
    Alive,
    /// etcd cannot be reached or the watch broke; the follower retries.
    Lost { error: String },
}

/// The fleet's keys as of a revision: kept across reconnects, so a watch can resume after it.
/// With the table's version: the write guard's mod revision, which every write through
/// `ipnat fleet` moves. Unlike the revision (a snapshot's is the store's, a watch's the last
/// event's), two gateways serving the same table report the same version however they read
/// it, so peers compare versions.
#[derive(Default)]
struct Viewed {
    revision: i64,
    version: i64,
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
}

type View = Option<Viewed>;

/// How often the follower asks etcd to confirm that it has seen everything (a progress
/// request): what bounds the lag `status` reports while nothing changes.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Follows the table until the receiver is dropped.
pub async fn follow(config: EtcdConfig, tx: UnboundedSender<Update>) {
    let keys = Keys::new(&config.prefix);
    let mut view: View = None;
    let mut failures = 0u32;
    loop {
        let error = match follow_once(&config, &keys, &mut view, &tx, &mut failures).await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx
            .send(Update::Lost {
                error: error.clone(),
            })
            .is_err()
        {
            return;
        }
        failures += 1;
        let delay = Duration::from_millis((250u64 << failures.min(5)).min(5_000));
        if failures == 1 {
            warn!("etcd: {error}; the data plane keeps its last good table, retrying");
        }
        tokio::time::sleep(delay).await;
    }
}

/// One connection's worth of following; Ok when the controller went away.
async fn follow_once(
    config: &EtcdConfig,
    keys: &Keys,
    view: &mut View,
    tx: &UnboundedSender<Update>,
    failures: &mut u32,
) -> Result<(), String> {
    let etcd = Etcd::connect(config).await.map_err(|e| e.to_string())?;
    loop {
        if view.is_none() {
            let snap = read(&etcd, keys).await.map_err(|e| e.to_string())?;
            let seen = Viewed {
                revision: snap.revision,
                version: snap.guard_revision,
                kvs: snap.kvs.into_iter().collect(),
            };
            if send_table(tx, keys, &seen).is_err() {
                return Ok(());
            }
            info!(revision = snap.revision, "etcd: read the fleet's table");
            *view = Some(seen);
        }
        let seen = view.as_mut().expect("read above");
        let revision = &mut seen.revision;
        let mut client = etcd.client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(*revision + 1)
            .with_progress_notify();
        let mut stream = etcd
            .call(client.watch(keys.all(), Some(options)))
            .await
            .map_err(|e| e.to_string())?;
        if *failures > 0 {
            info!(after = *revision, "etcd: watching again");
        }
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        // Set when the progress request is sent; a response that does not come back within
        // the request timeout means the connection is gone (keepalive catches most cases).
        let mut asked: Option<tokio::time::Instant> = None;
        let deadline = Duration::from_millis(config.request_timeout_ms) + PROGRESS_INTERVAL;
        let compacted = loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = progress.tick() => {
                    if asked.is_some_and(|t| t.elapsed() > deadline) {
                        return Err(format!("no answer to a progress request in {} ms", deadline.as_millis()));
                    }
                    stream.request_progress().await.map_err(|e| e.to_string())?;
                    asked.get_or_insert_with(tokio::time::Instant::now);
                    continue;
                }
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Err("the watch stream ended".into()),
                Err(e) => return Err(e.to_string()),
            };
            *failures = 0;
            if resp.compact_revision() > 0 {
                break resp.compact_revision();
            }
            if resp.canceled() {
                return Err(format!("the watch was cancelled: {}", resp.cancel_reason()));
            }
            asked = None;
            if resp.created() {
                // Its header's revision is the store's now, not what has been sent: the
                // events since the start revision follow.
                continue;
            }
            let events = resp.events();
            if events.is_empty() {
                // An answer to a progress request: the watch is alive. Its header's revision
                // is not trusted as "everything up to here was sent": etcd before 3.4.24 and
                // 3.5.8 answers with the store's revision even while the watch is still
                // catching up (etcd issue 15220; Debian 12 ships 3.4.23), so resuming after
                // it could skip changes. The revision served advances by events only.
                if tx.send(Update::Alive).is_err() {
                    return Ok(());
                }
                continue;
            }
            tracing::debug!(
                events = events.len(),
                revision = resp.header().map_or(0, |h| h.revision()),
                "etcd: watch events"
            );
            // Events come in revision order; each revision's changes become one table.
            let mut i = 0;
            while i < events.len() {
                let rev = events[i].kv().map_or(0, |kv| kv.mod_revision());
                while i < events.len() && events[i].kv().map_or(0, |kv| kv.mod_revision()) == rev {
                    if let Some(kv) = events[i].kv() {
                        match events[i].event_type() {
                            EventType::Put => {
                                if kv.key() == keys.version().as_bytes() {
                                    seen.version = kv.mod_revision();
                                }
                                seen.kvs.insert(kv.key().to_vec(), kv.value().to_vec());
                            }
                            EventType::Delete => {
                                seen.kvs.remove(kv.key());
                            }
                        }
                    }
                    i += 1;
                }
                seen.revision = rev.max(seen.revision);
                if send_table(tx, keys, seen).is_err() {
                    return Ok(());
                }
            }
        };
        warn!(
            compacted,
            after = view.as_ref().map_or(0, |v| v.revision),
            "etcd compacted the history this gateway had not seen: reading the whole table again"
        );
        *view = None;
    }
}

fn send_table(tx: &UnboundedSender<Update>, keys: &Keys, seen: &Viewed) -> Result<(), ()> {
    let (revision, version) = (seen.revision, seen.version);
    let update = match FleetTable::parse(keys, seen.kvs.iter().map(|(k, v)| (&k[..], &v[..]))) {
        Ok(table) => Update::Table {
            revision,
            version,
            table,
        },
        Err(refused) => Update::Refused {
            revision,
            version,
            refused,
        },
    };
    tx.send(update).map_err(|_| ())
}
