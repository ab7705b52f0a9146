//! The on-disk format of raft's ids, and the one-time upgrade from the format before it.
//!
//! Shoal builds openraft with `single-term-leader`: standard raft, at most one leader per term
//! (DESIGN §8). Without it openraft orders leaderships by (term, node id), so a node with a
//! greater id could be elected in a term that already had a leader, and two orchestrators
//! could act in one term (the simulator found it: seed 1442 of 1000..1999). The feature changes
//! how ids serialize:
//!
//! | value | before (format 1) | now (format 2) |
//! |---|---|---|
//! | log id | `{"leader_id":{"term":T,"node_id":N},"index":I}` | `{"leader_id":T,"index":I}` |
//! | vote | `{"leader_id":{"term":T,"node_id":N},"committed":C}` | `{"leader_id":{"term":T,"voted_for":N},"committed":C}` |
//!
//! A data dir written before is upgraded in place when its database is opened: every JSON value
//! of the given tables is rewritten in one transaction that also records [`FORMAT`], so the
//! upgrade runs once and a crash in the middle leaves the old format whole. The rewrite is
//! structural ([`upgrade_value`]), so it reaches ids wherever they sit: log entries, the vote,
//! the committed and purged ids, the applied id, the membership, snapshot metadata and the
//! snapshot's own bytes.
//!
//! Nodes of the two formats cannot exchange raft messages, so a cluster upgrades all its voters
//! together (stop them, upgrade, start them).

// openraft's traits return its `StorageError` (224 bytes); the helpers feeding them do too.
#![allow(clippy::result_large_err)]

use openraft::{ErrorSubject, ErrorVerb};
use redb::{Database, ReadableTable, TableDefinition};
use serde_json::{Map, Value};

use super::log_store::OrStorageError;
use super::StorageError;

/// The meta key holding a database's format number.
pub(crate) const FORMAT_KEY: &str = "format";

/// The current format: openraft's standard-raft ids.
pub(crate) const FORMAT: u64 = 2;

/// Upgrades `db` to [`FORMAT`] unless its `meta` table already records it: rewrites the JSON
/// values of `meta` and of `tables` (keyed by u64, like the raft log), then records the format,
/// all in one transaction. Returns how many values changed.
pub(crate) fn upgrade(
    db: &Database,
    meta: TableDefinition<&str, &[u8]>,
    tables: &[TableDefinition<u64, &[u8]>],
) -> Result<usize, StorageError> {
    let write = (ErrorSubject::Store, ErrorVerb::Write);
    let txn = db.begin_write().or_storage(&write)?;
    let mut changed = 0;
    {
        let mut meta = txn.open_table(meta).or_storage(&write)?;
        let format = meta
            .get(FORMAT_KEY)
            .or_storage(&write)?
            .and_then(|value| serde_json::from_slice::<u64>(value.value()).ok());
        match format {
            Some(format) if format == FORMAT => return Ok(0),
            Some(format) if format > FORMAT => {
                return Err(std::io::Error::other(format!(
                    "raft data format {format} is newer than this build understands \
                     ({FORMAT}): run the newer shoal that wrote it"
                )))
                .or_storage(&write)
            }
            _ => {}
        }
        let mut rewrites: Vec<(String, Vec<u8>)> = Vec::new();
        for row in meta.iter().or_storage(&write)? {
            let (key, value) = row.or_storage(&write)?;
            if let Some(bytes) = upgrade_bytes(value.value()) {
                rewrites.push((key.value().to_owned(), bytes));
            }
        }
        changed += rewrites.len();
        for (key, bytes) in rewrites {
            meta.insert(key.as_str(), bytes.as_slice())
                .or_storage(&write)?;
        }
        let format = serde_json::to_vec(&FORMAT).or_storage(&write)?;
        meta.insert(FORMAT_KEY, format.as_slice())
            .or_storage(&write)?;
        for &definition in tables {
            let mut table = txn.open_table(definition).or_storage(&write)?;
            let mut rewrites: Vec<(u64, Vec<u8>)> = Vec::new();
            for row in table.iter().or_storage(&write)? {
                let (key, value) = row.or_storage(&write)?;
                if let Some(bytes) = upgrade_bytes(value.value()) {
                    rewrites.push((key.value(), bytes));
                }
            }
            changed += rewrites.len();
            for (key, bytes) in rewrites {
                table.insert(key, bytes.as_slice()).or_storage(&write)?;
            }
        }
    }
    txn.commit().or_storage(&write)?;
    Ok(changed)
}

/// The upgraded bytes of one stored value, or `None` when it is not JSON or holds no old id.
fn upgrade_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    if !upgrade_value(&mut value) {
        return None;
    }
    serde_json::to_vec(&value).ok()
}

/// Rewrites every old-format id inside `value` (see the module doc); true when one changed.
/// A log id is an object with `leader_id` and `index`, a vote one with `leader_id` and
/// `committed`; an old `leader_id` is an object with `term` and `node_id`. Already upgraded
/// values are left alone, so the rewrite is idempotent.
pub(crate) fn upgrade_value(value: &mut Value) -> bool {
    match value {
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| upgrade_value(item) | changed),
        Value::Object(object) => {
            let mut changed = upgrade_leader_id(object);
            for (_, item) in object.iter_mut() {
                changed |= upgrade_value(item);
            }
            changed
        }
        _ => false,
    }
}

fn upgrade_leader_id(object: &mut Map<String, Value>) -> bool {
    let Some(Value::Object(leader)) = object.get("leader_id") else {
        return false;
    };
    let (Some(term), Some(node)) = (leader.get("term").cloned(), leader.get("node_id").cloned())
    else {
        return false;
    };
    let upgraded = if object.contains_key("index") {
        term
    } else if object.contains_key("committed") {
        // Term 0 with node 0 is openraft's initial vote: nobody was voted for.
        let nobody = term.as_u64() == Some(0) && node.as_u64() == Some(0);
        let voted_for = if nobody { Value::Null } else { node };
        let mut leader = Map::new();
        leader.insert("term".into(), term);
        leader.insert("voted_for".into(), voted_for);
        Value::Object(leader)
    } else {
        return false;
    };
    object.insert("leader_id".into(), upgraded);
    true
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
