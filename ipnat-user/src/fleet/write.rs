//! Reading and writing the fleet's table: what `ipnat fleet` does. Every write validates the
//! whole resulting table and commits under the write guard (see `schema`).

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{Etcd, FleetError, FleetTable, Keys, Names, Refused, schema::mapping_value};
use crate::config::{Block, MappingConfig};

/// The fleet's keys at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The store's revision the read saw.
    pub revision: i64,
    /// The write guard's mod revision (0: never written) and value.
    pub guard_revision: i64,
    pub guard: u64,
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Snapshot {
    /// Every entry parsed, none validated against the others ([`FleetTable::parse_entries`]).
    pub fn entries(&self, keys: &Keys) -> Result<(FleetTable, Names), Refused> {
        FleetTable::parse_entries(keys, self.pairs())
    }

    /// Every entry that parses, and why each other one does not ([`FleetTable::parse_each`]).
    pub fn each(&self, keys: &Keys) -> (FleetTable, Names, Vec<Refused>) {
        FleetTable::parse_each(keys, self.pairs())
    }

    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.kvs.iter().map(|(k, v)| (&k[..], &v[..]))
    }
}

/// One consistent read of everything under the fleet's prefix.
pub async fn read(etcd: &Etcd, keys: &Keys) -> Result<Snapshot, FleetError> {
    let mut client = etcd.client.clone();
    let resp = etcd
        .call(client.get(keys.all(), Some(GetOptions::new().with_prefix())))
        .await?;
    let mut snap = Snapshot {
        revision: resp.header().map_or(0, |h| h.revision()),
        ..Snapshot::default()
    };
    let version = keys.version();
    for kv in resp.kvs() {
        if kv.key() == version.as_bytes() {
            snap.guard_revision = kv.mod_revision();
            snap.guard = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        }
        snap.kvs.push((kv.key().to_vec(), kv.value().to_vec()));
    }
    Ok(snap)
}

/// How many times a write reads again after another writer got in first.
const ATTEMPTS: usize = 8;

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed at this revision.
    At(i64),
    /// The table already held exactly that (or an earlier attempt, whose answer was lost to a
    /// leader change, wrote it).
    Unchanged,
}

/// How many times a write tries again after etcd answered that it cannot serve now (a leader
/// change or election: etcd's "unavailable"), 200 ms apart.
const TRANSIENT_RETRIES: u32 = 15;

/// Whether `e` is etcd saying it cannot serve for now (no leader, leader changed): the same
/// request may succeed in a moment.
fn transient(e: &FleetError) -> bool {
    matches!(e, FleetError::Etcd { error: etcd_client::Error::GRpcStatus(s), .. }
        if s.code() == tonic::Code::Unavailable)
}

/// Runs one step of a write; a transient refusal (see [`transient`]) is Ok(None) after a pause,
/// while `retries` last, and sets `uncertain` (a transaction may have committed unanswered).
async fn step<T>(
    r: Result<T, FleetError>,
    retries: &mut u32,
    uncertain: &mut bool,
) -> Result<Option<T>, FleetError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if transient(&e) && *retries < TRANSIENT_RETRIES => {
            *retries += 1;
            *uncertain = true;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Commits `ops` if the write guard is still as `snap` saw it, bumping it; whether it was.
async fn commit(
    etcd: &Etcd,
    keys: &Keys,
    snap: &Snapshot,
    mut ops: Vec<TxnOp>,
) -> Result<Option<i64>, FleetError> {
    let version = keys.version();
    ops.push(TxnOp::put(
        version.clone(),
        (snap.guard + 1).to_string(),
        None,
    ));
    let txn = Txn::new()
        .when([Compare::mod_revision(
            version,
            CompareOp::Equal,
            snap.guard_revision,
        )])
        .and_then(ops);
    let mut client = etcd.client.clone();
    let resp = etcd.call(client.txn(txn)).await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

/// What a write makes of the table it read.
enum Plan {
    /// Nothing to commit: this is the outcome.
    Done(Written),
    /// Commit these under the guard.
    Commit(Vec<TxnOp>),
}

/// The write loop: reads the table, asks `plan` what to do with it (told whether an earlier
/// attempt may have committed unanswered), and commits under the guard; reads again when
/// another writer got in first, and waits out etcd's leader elections.
async fn write(
    etcd: &Etcd,
    keys: &Keys,
    plan: impl Fn(&Snapshot, bool) -> Result<Plan, FleetError>,
) -> Result<Written, FleetError> {
    let (mut retries, mut uncertain) = (0, false);
    let mut attempts = 0;
    while attempts < ATTEMPTS {
        let Some(snap) = step(read(etcd, keys).await, &mut retries, &mut uncertain).await? else {
            continue;
        };
        attempts += 1;
        let ops = match plan(&snap, uncertain)? {
            Plan::Done(w) => return Ok(w),
            Plan::Commit(ops) => ops,
        };
        let committed = commit(etcd, keys, &snap, ops).await;
        if let Some(Some(revision)) = step(committed, &mut retries, &mut uncertain).await? {
            return Ok(Written::At(revision));
        }
    }
    Err(too_busy())
}

/// Adds a mapping (with `replace`, changes the one with the same public side), validated with
/// the whole table exactly as the config's mappings are.
pub async fn map_add(
    etcd: &Etcd,
    keys: &Keys,
    m: MappingConfig,
    replace: bool,
) -> Result<Written, FleetError> {
    let key = keys.mapping(m.public);
    write(etcd, keys, |snap, _| {
        let (mut table, mut names) = snap.entries(keys)?;
        if let Some(i) = names.mappings.iter().position(|k| *k == key) {
            if table.mappings[i] == m {
                return Ok(Plan::Done(Written::Unchanged));
            }
            if !replace {
                return Err(FleetError::Conflict(format!(
                    "{key} already maps {} to {}: `--replace` changes it",
                    table.mappings[i].public, table.mappings[i].private
                )));
            }
            table.mappings.remove(i);
            names.mappings.remove(i);
        }
        table.mappings.push(m);
        names.mappings.push(key.clone());
        table
            .validate(&names)
            .map_err(|r| FleetError::Conflict(format!("refused, nothing written: {}", r.why)))?;
        Ok(Plan::Commit(vec![TxnOp::put(
            key.clone(),
            mapping_value(&m),
            None,
        )]))
    })
    .await
}

/// Removes the mapping of `public` (whatever its value holds: a broken entry can be removed).
pub async fn map_del(etcd: &Etcd, keys: &Keys, public: Block) -> Result<Written, FleetError> {
    let key = keys.mapping(public);
    write(etcd, keys, |snap, uncertain| {
        if snap.kvs.iter().any(|(k, _)| k == key.as_bytes()) {
            Ok(Plan::Commit(vec![TxnOp::delete(key.clone(), None)]))
        } else if uncertain {
            // Deleted by an earlier attempt whose answer was lost.
            Ok(Plan::Done(Written::Unchanged))
        } else {
            Err(FleetError::Conflict(format!(
                "{key}: no such mapping in the fleet's table"
            )))
        }
    })
    .await
}

fn too_busy() -> FleetError {
    FleetError::Conflict(format!(
        "other writers changed the fleet's table {ATTEMPTS} times while this write was being validated: try again"
    ))
}
