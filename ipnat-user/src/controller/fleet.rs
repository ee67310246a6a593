//! Serving the fleet's table: every update the follower hands over is applied as one change,
//! through the same path as a config reload, or refused whole (the last good table stays).

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
/// in the tables however long etcd takes. None without [etcd].
pub(super) fn restore(config: &Config) -> Option<(FleetState, FleetTable)> {
    let etcd = config.etcd.as_ref()?;
    let restored = FleetState::load(&config.pin_path)
        .filter(|s| s.endpoints == etcd.endpoints && s.prefix == etcd.prefix)
        .zip(FleetState::load_table(&config.pin_path));
    Some(match restored {
        Some((state, table)) => (
            FleetState {
                connected: false,
                error: Some("not connected yet since the controller started".into()),
                ..state
            },
            table,
        ),
        None => (
            FleetState {
                endpoints: etcd.endpoints.clone(),
                prefix: etcd.prefix.clone(),
                ..FleetState::default()
            },
            FleetTable::default(),
        ),
    })
}

/// Applies one update from the follower to the data plane (`sources.fleet` is the table
/// served) and the record.
pub(super) fn handle(
    dp: &mut Dataplane,
    config: &Config,
    sources: &mut Sources,
    state: &mut FleetState,
    update: Update,
) {
    let (revision, version, table) = match update {
        Update::Lost { error } => {
            state.connected = false;
            state.error = Some(error);
            return save(config, state);
        }
        Update::Alive => {
            state.connected = true;
            state.error = None;
            state.confirmed_unix_ms = crate::fleet::unix_ms();
            return save(config, state);
        }
        Update::Refused {
            revision,
            version,
            refused,
        } => {
            warn!(revision, key = %refused.key, "the fleet's table is refused, the data plane keeps its last good table: {}", refused.why);
            (revision, version, Err(refused))
        }
        Update::Table {
            revision,
            version,
            table,
        } => (revision, version, Ok(table)),
    };
    state.connected = true;
    state.error = None;
    state.newest_seen = state.newest_seen.max(revision);
    let started = std::time::Instant::now();
    let table = table.and_then(|table| {
        if table == sources.fleet {
            return Ok(None);
        }
        match effective(config, &sources.synced, &table).and_then(|eff| apply_config(dp, &eff)) {
            Ok(()) => Ok(Some(table)),
            Err(e) => {
                warn!(
                    revision,
                    "the fleet's table is refused, the data plane keeps its last good table: {e:#}"
                );
                Err(Refused {
                    key: String::new(),
                    why: format!("{e:#}"),
                })
            }
        }
    });
    match table {
        Ok(changed) => {
            if let Some(fleet) = changed {
                info!(
                    revision,
                    mappings = fleet.mappings.len(),
                    steering = fleet.steering.len(),
                    "serving the fleet's table"
                );
                if let Err(e) = FleetState::save_table(&config.pin_path, &fleet) {
                    warn!("recording the fleet's table: {e}");
                }
                state.mappings = fleet.mappings.len();
                state.steering = fleet.steering.len();
                sources.fleet = fleet;
            }
            state.refused = None;
            state.revision = revision;
            state.version = version;
            state.confirmed_unix_ms = crate::fleet::unix_ms();
        }
        Err(refused) => state.refused = Some(refused),
    }
    save(config, state);
    tracing::debug!(
        revision,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fleet update handled"
    );
}

fn save(config: &Config, state: &FleetState) {
    if let Err(e) = state.save(&config.pin_path) {
        warn!("recording the fleet's state: {e}");
    }
}
