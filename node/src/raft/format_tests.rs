use std::collections::BTreeSet;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{EntryPayload, Membership};

use super::*;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{Replica, StateMachine};
use crate::raft::{Entry, LogId, PeerNode, SnapshotMeta, StoredMembership, Vote};

/// A membership of voters 1, 2 and 3, as stored in both formats (it holds no ids).
const MEMBERSHIP: &str = r#"{"configs":[[1,2,3]],"nodes":{"1":{"name":"a","quic":"10.0.0.1:7947"},"2":{"name":"b","quic":"10.0.0.2:7947"},"3":{"name":"c","quic":"10.0.0.3:7947"}}}"#;

fn old_log_id(term: u64, node: u64, index: u64) -> String {
    format!(r#"{{"leader_id":{{"term":{term},"node_id":{node}}},"index":{index}}}"#)
}

fn membership() -> Membership<u64, PeerNode> {
    serde_json::from_str(MEMBERSHIP).expect("membership JSON")
}

fn upgraded<T: serde::de::DeserializeOwned>(old: &str) -> T {
    let mut value: Value = serde_json::from_str(old).unwrap();
    assert!(upgrade_value(&mut value), "{old} holds an old id");
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{old} upgraded: {e}"))
}

#[test]
fn old_log_ids_keep_term_and_index() {
    let id: LogId = upgraded(&old_log_id(9, 3, 41));
    assert_eq!(id, log_id(9, 3, 41));
    assert_eq!((id.leader_id.term, id.index), (9, 41));
}

#[test]
fn old_votes_keep_term_candidate_and_commitment() {
    let vote: Vote = upgraded(r#"{"leader_id":{"term":7,"node_id":2},"committed":true}"#);
    assert_eq!(vote, Vote::new_committed(7, 2));
    let vote: Vote = upgraded(r#"{"leader_id":{"term":8,"node_id":3},"committed":false}"#);
    assert_eq!(vote, Vote::new(8, 3));
    // openraft's initial vote names nobody.
    let vote: Vote = upgraded(r#"{"leader_id":{"term":0,"node_id":0},"committed":false}"#);
    assert_eq!(vote, Vote::default());
}

#[test]
fn ids_nested_in_entries_memberships_and_snapshot_metadata_are_upgraded() {
    let entry: Entry = upgraded(&format!(
        r#"{{"log_id":{},"payload":{{"Membership":{MEMBERSHIP}}}}}"#,
        old_log_id(2, 1, 5)
    ));
    assert_eq!(entry.log_id, log_id(2, 1, 5));
    assert!(matches!(entry.payload, EntryPayload::Membership(m) if m == membership()));

    let meta: SnapshotMeta = upgraded(&format!(
        r#"{{"last_log_id":{},"last_membership":{{"log_id":{},"membership":{MEMBERSHIP}}},"snapshot_id":"s-1"}}"#,
        old_log_id(4, 2, 30),
        old_log_id(2, 1, 5)
    ));
    assert_eq!(meta.last_log_id, Some(log_id(4, 2, 30)));
    assert_eq!(meta.last_membership.log_id(), &Some(log_id(2, 1, 5)));
}

#[test]
fn current_values_are_left_alone() {
    let values = [
        serde_json::to_value(log_id(9, 3, 41)).unwrap(),
        serde_json::to_value(Vote::new_committed(7, 2)).unwrap(),
        serde_json::to_value(Vote::default()).unwrap(),
        serde_json::to_value(StoredMembership::new(Some(log_id(2, 1, 5)), membership())).unwrap(),
        // An app's own data that happens to use the word.
        serde_json::json!({"leader_id": 4, "index": 2, "name": "x"}),
    ];
    for value in values {
        let mut copy = value.clone();
        assert!(!upgrade_value(&mut copy), "{value} is current");
        assert_eq!(copy, value);
    }
}

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// Writes `rows` of JSON text into a fresh redb at `path`, as a build before the upgrade did.
fn write_old(
    path: &std::path::Path,
    meta: TableDefinition<&str, &[u8]>,
    rows: &[(&str, String)],
    log: &[(u64, String)],
) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(meta).unwrap();
        for (key, value) in rows {
            table.insert(*key, value.as_bytes()).unwrap();
        }
        let mut table = txn.open_table(LOG).unwrap();
        for (index, value) in log {
            table.insert(*index, value.as_bytes()).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_log_written_before_single_term_leaders_opens_with_its_vote_and_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log.redb");
    let entries: Vec<(u64, String)> = (3..=6)
        .map(|index| {
            let payload = if index == 3 {
                format!(r#"{{"Membership":{MEMBERSHIP}}}"#)
            } else {
                r#""Blank""#.to_owned()
            };
            let term = if index < 5 { 1 } else { 2 };
            (
                index,
                format!(
                    r#"{{"log_id":{},"payload":{payload}}}"#,
                    old_log_id(term, 1, index)
                ),
            )
        })
        .collect();
    write_old(
        &path,
        LOG_META,
        &[
            (
                "vote",
                r#"{"leader_id":{"term":2,"node_id":1},"committed":true}"#.to_owned(),
            ),
            ("committed", old_log_id(2, 1, 5)),
            ("last_purged", old_log_id(1, 1, 2)),
        ],
        &entries,
    );

    for _ in 0..2 {
        // The second open finds the format recorded and changes nothing.
        let mut store = LogStore::open(&path).expect("the old log opens");
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 5)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 6)));
        let read = store.try_get_log_entries(3..=6).await.unwrap();
        let ids: Vec<LogId> = read.iter().map(|entry| entry.log_id).collect();
        assert_eq!(
            ids,
            [
                log_id(1, 1, 3),
                log_id(1, 1, 4),
                log_id(2, 1, 5),
                log_id(2, 1, 6)
            ]
        );
        assert!(matches!(&read[0].payload, EntryPayload::Membership(m) if *m == membership()));
        drop(store);
        let db = Database::create(&path).unwrap();
        assert_eq!(
            upgrade(&db, LOG_META, &[LOG]).unwrap(),
            0,
            "already upgraded"
        );
    }
}

#[tokio::test]
async fn a_state_machine_written_before_single_term_leaders_opens_with_its_applied_id_and_snapshot()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/state.redb");
    let membership_json = format!(
        r#"{{"log_id":{},"membership":{MEMBERSHIP}}}"#,
        old_log_id(1, 1, 3)
    );
    write_old(
        &path,
        SM_META,
        &[
            ("applied_log_id", old_log_id(2, 1, 6)),
            ("membership", membership_json.clone()),
            (
                "snapshot_meta",
                format!(
                    r#"{{"last_log_id":{},"last_membership":{membership_json},"snapshot_id":"s-6"}}"#,
                    old_log_id(2, 1, 6)
                ),
            ),
        ],
        &[],
    );
    let replica = Replica::open(&path).expect("the old state machine opens");
    let mut machine = StateMachine::new(replica);
    let (applied, stored) = machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 1, 6)));
    assert_eq!(stored.log_id(), &Some(log_id(1, 1, 3)));
    assert_eq!(
        stored.voter_ids().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3])
    );
}

#[test]
fn a_format_newer_than_the_build_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log.redb");
    let vote = r#"{"leader_id":{"term":2,"node_id":1},"committed":true}"#;
    write_old(
        &path,
        LOG_META,
        &[("vote", vote.to_owned()), ("format", "3".to_owned())],
        &[],
    );
    let error = LogStore::open(&path).err().expect("format 3 is refused");
    assert!(error.to_string().contains("newer"), "{error}");
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(LOG_META).unwrap();
    assert_eq!(meta.get("vote").unwrap().unwrap().value(), vote.as_bytes());
}
