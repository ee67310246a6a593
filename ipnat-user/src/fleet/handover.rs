//! Moving a shard's leadership on purpose: a gateway that comes back after a failover stands
//! by and moves nothing back by itself; `ipnat fleet move` (or a shard's `prefer`, after its
//! hold-down) asks for it through etcd, and the candidates do it in the election's order.
//!
//! An election's candidates are the keys under `<election>/`, in line by creation revision;
//! the first leads, and when its key goes, etcd elects the next. A request to move the shard to
//! a gateway is one key, `<prefix>/failover-move/<shard>` (a [`MoveRequest`], on a lease of the
//! requester's, so an abandoned request goes by itself). Seeing it:
//! - every standby ahead of the requested gateway in line steps back (gives up its candidacy
//!   and campaigns again, behind it);
//! - the leader, once the requested gateway is next in line, stops leading (it releases what
//!   leading held on its host, then revokes its lease: its key goes, etcd elects the next);
//! - the requested gateway, elected, takes the shard over as after any failover and removes
//!   the request.
//!
//! Nobody claims the shard twice: the old leader stops before its key goes, the new one acts
//! only once elected. A request for a gateway that does not campaign changes nothing.

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use super::client::FleetError;

/// A request that `shard`'s leadership move to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The gateway (its `[failover] name`) that should lead.
    pub to: String,
    /// Who asked, for the logs and status.
    pub by: String,
}

/// One candidate of an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its gateway's name.
    pub node: String,
    /// The lease its key lives on (one per candidacy).
    pub lease: i64,
}

/// Where `shard`'s move request lives (beside its election, not under it: the election's
/// candidates are every key under `<election>/`).
pub fn move_key(prefix: &str, shard: &str) -> String {
    format!("{}/failover-move/{shard}", prefix.trim_end_matches('/'))
}

fn etcd_error(error: etcd_client::Error) -> FleetError {
    FleetError::Etcd {
        endpoints: "the election's".into(),
        error,
    }
}

/// The candidates of election `name` in line: the first leads.
pub async fn candidates(client: &Client, name: &str) -> Result<Vec<Candidate>, FleetError> {
    let mut c = client.clone();
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let r = c
        .get(format!("{name}/"), Some(options))
        .await
        .map_err(etcd_error)?;
    Ok(r.kvs()
        .iter()
        .map(|kv| Candidate {
            node: String::from_utf8_lossy(kv.value()).into_owned(),
            lease: kv.lease(),
        })
        .collect())
}

/// The move request for the shard whose request key is `key`, if any.
pub async fn read_move(client: &Client, key: &str) -> Result<Option<MoveRequest>, FleetError> {
    let mut c = client.clone();
    let r = c.get(key, None).await.map_err(etcd_error)?;
    let Some(kv) = r.kvs().first() else {
        return Ok(None);
    };
    serde_json::from_slice(kv.value()).map(Some).map_err(|e| {
        FleetError::Conflict(format!(
            "{key} holds {:?}, not a move request ({e}): remove it with etcdctl del {key}",
            String::from_utf8_lossy(kv.value())
        ))
    })
}

/// Writes `request` under `key` on a lease of `ttl_s` (it goes by itself after that), unless
/// a request is there already (that one is returned, nothing written).
pub async fn request_move(
    client: &Client,
    key: &str,
    request: &MoveRequest,
    ttl_s: i64,
) -> Result<Result<i64, MoveRequest>, FleetError> {
    let mut c = client.clone();
    let lease = c.lease_grant(ttl_s, None).await.map_err(etcd_error)?.id();
    let value = serde_json::to_vec(request).expect("plain fields");
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let r = c.txn(txn).await.map_err(etcd_error)?;
    if r.succeeded() {
        return Ok(Ok(lease));
    }
    let _ = c.lease_revoke(lease).await;
    match read_move(client, key).await? {
        Some(other) => Ok(Err(other)),
        // Gone in between: try once more.
        None => Box::pin(request_move(client, key, request, ttl_s)).await,
    }
}

/// Removes the request under `key` if it (still) asks for `to`: done.
pub async fn finish_move(client: &Client, key: &str, to: &str) -> Result<bool, FleetError> {
    let mut c = client.clone();
    let r = c.get(key, None).await.map_err(etcd_error)?;
    let Some(kv) = r.kvs().first() else {
        return Ok(false);
    };
    match serde_json::from_slice::<MoveRequest>(kv.value()) {
        Ok(m) if m.to == to => {}
        _ => return Ok(false),
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key,
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then([TxnOp::delete(key, None)]);
    Ok(c.txn(txn).await.map_err(etcd_error)?.succeeded())
}

/// Removes the request under `key`, whatever it asks (its requester gave up).
pub async fn cancel_move(client: &Client, key: &str) -> Result<(), FleetError> {
    let mut c = client.clone();
    c.delete(key, None).await.map_err(etcd_error)?;
    Ok(())
}

/// One failover shard as etcd holds it: its candidates in line (the first leads) and the move
/// asked, if any (or why its key does not parse).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardLine {
    pub shard: String,
    pub line: Vec<String>,
    #[serde(rename = "move")]
    pub request: Option<Result<MoveRequest, String>>,
}

/// Every failover shard with a candidate under `prefix` (what `ipnat fleet list` shows).
pub async fn shards(client: &Client, prefix: &str) -> Result<Vec<ShardLine>, FleetError> {
    let mut c = client.clone();
    let under = format!("{}/failover/", prefix.trim_end_matches('/'));
    let r = c
        .get(
            under.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(etcd_error)?;
    let mut names: Vec<String> = r
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rest = key.strip_prefix(&under)?;
            Some(rest.split_once('/')?.0.to_owned())
        })
        .collect();
    names.dedup();
    let mut out = Vec::new();
    for shard in names {
        let name = super::leader::election_name(prefix, &shard);
        let line = candidates(client, &name)
            .await?
            .into_iter()
            .map(|c| c.node)
            .collect();
        let request = match read_move(client, &move_key(prefix, &shard)).await {
            Ok(r) => r.map(Ok),
            Err(FleetError::Conflict(why)) => Some(Err(why)),
            Err(e) => return Err(e),
        };
        out.push(ShardLine {
            shard,
            line,
            request,
        });
    }
    Ok(out)
}

/// What the candidate on lease `me` does about `request`, the candidates being `line`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing (yet).
    Stay,
    /// It leads and the requested gateway is next: stop leading.
    HandOver,
    /// It stands by ahead of the requested gateway: campaign again, behind it.
    StepBack,
}

pub fn step(me: i64, line: &[Candidate], request: &MoveRequest) -> Step {
    let Some(mine) = line.iter().position(|c| c.lease == me) else {
        return Step::Stay;
    };
    if line[mine].node == request.to {
        return Step::Stay;
    }
    // The requested gateway's first candidacy in line (a candidacy of its earlier run may
    // linger until its lease expires; etcd then elects the next one, its own).
    let Some(theirs) = line.iter().position(|c| c.node == request.to) else {
        return Step::Stay;
    };
    match mine {
        0 if theirs == 1 => Step::HandOver,
        0 => Step::Stay,
        m if m < theirs => Step::StepBack,
        _ => Step::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(nodes: &[(&str, i64)]) -> Vec<Candidate> {
        nodes
            .iter()
            .map(|(n, l)| Candidate {
                node: (*n).to_owned(),
                lease: *l,
            })
            .collect()
    }

    fn to(node: &str) -> MoveRequest {
        MoveRequest {
            to: node.into(),
            by: "test".into(),
        }
    }

    #[test]
    fn the_leader_hands_over_only_when_the_requested_gateway_is_next() {
        let l = line(&[("b", 1), ("a", 2)]);
        assert_eq!(step(1, &l, &to("a")), Step::HandOver);
        assert_eq!(step(2, &l, &to("a")), Step::Stay, "the requested one waits");
        // c stands between: it steps back, the leader waits.
        let l = line(&[("b", 1), ("c", 3), ("a", 2)]);
        assert_eq!(step(1, &l, &to("a")), Step::Stay);
        assert_eq!(step(3, &l, &to("a")), Step::StepBack);
        assert_eq!(step(2, &l, &to("a")), Step::Stay);
        // Behind the requested one: nothing to do.
        let l = line(&[("b", 1), ("a", 2), ("c", 3)]);
        assert_eq!(step(3, &l, &to("a")), Step::Stay);
    }

    #[test]
    fn a_request_for_a_gateway_not_in_line_or_already_leading_changes_nothing() {
        let l = line(&[("b", 1), ("c", 3)]);
        assert_eq!(step(1, &l, &to("a")), Step::Stay);
        assert_eq!(step(3, &l, &to("a")), Step::Stay);
        assert_eq!(step(1, &l, &to("b")), Step::Stay);
        assert_eq!(step(3, &l, &to("b")), Step::Stay);
        // Not a candidate itself (its key not seen yet).
        assert_eq!(step(9, &l, &to("c")), Step::Stay);
    }

    #[test]
    fn a_lingering_candidacy_of_the_requested_gateway_counts_as_its_place() {
        // a's earlier run left a key (lease 2) that has not expired; its new one is lease 4.
        let l = line(&[("b", 1), ("a", 2), ("c", 3), ("a", 4)]);
        assert_eq!(step(1, &l, &to("a")), Step::HandOver);
        assert_eq!(step(3, &l, &to("a")), Step::Stay);
    }

    #[test]
    fn move_keys_live_beside_the_elections() {
        assert_eq!(move_key("/ipnat", "web"), "/ipnat/failover-move/web");
        assert_eq!(
            super::super::leader::election_name("/ipnat", "web"),
            "/ipnat/failover/web"
        );
    }
}
