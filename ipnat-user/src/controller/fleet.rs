//! Serving the fleet's table: every update the follower hands over is applied as one change,
//! through the same path as a config reload, or refused whole (the last good table stays).

use anyhow::Result;
use tracing::{info, warn};

use super::{
    apply::apply_config,
    policy::{Sources, effective},
};
use crate::{
    config::Config,
    dataplane::Dataplane,
    fleet::{FleetState, FleetTable, Refused, Update},
};

/// What a restarted controller serves before etcd answers: the last good table of the same
/// fleet (cluster and prefix), as an earlier run recorded it. A restart thus changes nothing
/// in the tables however long etcd takes.
pub(super) fn restore(config: &Config) -> (FleetState, FleetTable) {
    let Some(etcd) = &config.etcd else {
        return (FleetState::default(), FleetTable::default());
    };
    let fresh = FleetState {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        ..FleetState::default()
    };
    match FleetState::load(&config.pin_path) {
        Some(mut s) if s.endpoints == etcd.endpoints && s.prefix == etcd.prefix => {
            let table = std::mem::take(&mut s.last_good);
            s.connected = false;
            s.error = Some("not connected yet since the controller started".into());
            (s, table)
        }
        _ => (fresh, FleetTable::default()),
    }
}

/// Applies one update from the follower to the data plane and the record.
pub(super) fn handle(
    dp: &mut Dataplane,
    config: &Config,
    sources: &mut Sources,
    state: &mut FleetState,
    update: Update,
) {
    let now = crate::fleet::unix_ms();
    match update {
        Update::Table { revision, table } => {
            state.newest_seen = state.newest_seen.max(revision);
            state.connected = true;
            state.error = None;
            let next = Sources {
                fleet: table,
                ..sources.clone()
            };
            let applied: Result<()> = if next == *sources && state.refused.is_none() {
                Ok(())
            } else {
                effective(config, &next).and_then(|eff| apply_config(dp, &eff))
            };
            match applied {
                Ok(()) => {
                    if state.refused.take().is_some() || state.revision == 0 || next != *sources {
                        info!(
                            revision,
                            mappings = next.fleet.mappings.len(),
                            steering = next.fleet.steering.len(),
                            "serving the fleet's table"
                        );
                    }
                    *sources = next;
                    state.revision = revision;
                    state.confirmed_unix_ms = now;
                }
                Err(e) => {
                    warn!(
                        revision,
                        "the fleet's table is refused, the data plane keeps its last good table: {e:#}"
                    );
                    state.refused = Some(Refused {
                        key: String::new(),
                        why: format!("{e:#}"),
                    });
                }
            }
        }
        Update::Refused { revision, refused } => {
            state.newest_seen = state.newest_seen.max(revision);
            state.connected = true;
            state.error = None;
            warn!(revision, key = %refused.key, "the fleet's table is refused, the data plane keeps its last good table: {}", refused.why);
            state.refused = Some(refused);
        }
        Update::Current { revision } => {
            state.connected = true;
            state.error = None;
            state.newest_seen = state.newest_seen.max(revision);
            if state.refused.is_none() {
                // Nothing under the prefix changed since: the table served is the newest.
                state.revision = state.revision.max(revision);
            }
            state.confirmed_unix_ms = now;
        }
        Update::Lost { error } => {
            state.connected = false;
            state.error = Some(error);
        }
    }
    state.mappings = sources.fleet.mappings.len();
    state.steering = sources.fleet.steering.len();
    state.last_good = sources.fleet.clone();
    if let Err(e) = state.save(&config.pin_path) {
        warn!("recording the fleet's state: {e}");
    }
}
