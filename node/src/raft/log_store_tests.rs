use std::collections::BTreeSet;

use openraft::storage::RaftLogStorageExt;
use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
use tempfile::TempDir;

use super::*;
use crate::raft::state_machine::{Replica, StateMachine};

/// Builds a fresh log store and state machine in their own temporary directory, laid out as
/// the node lays out `<data-dir>/raft/`.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log_store = LogStore::open(&dir.path().join("raft/log.redb"))?;
        let replica = Replica::open(&dir.path().join("raft/state.redb"))?;
        Ok((dir, log_store, StateMachine::new(replica)))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(RedbStoreBuilder).expect("openraft's storage suite");
}

fn blank_entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes
        .map(|index| blank_ent::<TypeConfig>(term, 1, index))
        .collect()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

#[tokio::test]
async fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log.redb");
    let vote = Vote::new_committed(3, 2);
    {
        let mut store = LogStore::open(&path).unwrap();
        store
            .blocking_append(blank_entries(1, 1..=4))
            .await
            .unwrap();
        store
            .blocking_append([membership_ent::<TypeConfig>(
                2,
                1,
                5,
                vec![BTreeSet::from([1, 2, 3])],
            )])
            .await
            .unwrap();
        store.save_vote(&vote).await.unwrap();
        store.save_committed(Some(log_id(2, 1, 5))).await.unwrap();
        store.purge(log_id(1, 1, 2)).await.unwrap();
    }
    let mut store = LogStore::open(&path).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 5)));
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState {
            last_purged_log_id: Some(log_id(1, 1, 2)),
            last_log_id: Some(log_id(2, 1, 5)),
        }
    );
    let entries = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(indexes(&entries), [3, 4, 5]);
    assert!(matches!(
        entries[2].payload,
        openraft::EntryPayload::Membership(_)
    ));
}

#[tokio::test]
async fn a_new_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(&dir.path().join("log.redb")).unwrap();
    assert_eq!(store.get_log_state().await.unwrap(), LogState::default());
    assert_eq!(store.read_vote().await.unwrap(), None);
    assert_eq!(store.read_committed().await.unwrap(), None);
    store.save_committed(None).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn truncate_drops_the_tail_and_purge_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(&dir.path().join("log.redb")).unwrap();
    store
        .blocking_append(blank_entries(1, 1..=10))
        .await
        .unwrap();

    store.truncate(log_id(1, 1, 8)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 7))
    );
    // A new leader's entries replace the truncated tail.
    store
        .blocking_append(blank_entries(2, 8..=9))
        .await
        .unwrap();

    store.purge(log_id(1, 1, 3)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState {
            last_purged_log_id: Some(log_id(1, 1, 3)),
            last_log_id: Some(log_id(2, 1, 9)),
        }
    );
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(indexes(&entries), [4, 5, 6, 7, 8, 9]);
    assert_eq!(entries[4].log_id, log_id(2, 1, 8));
    let middle = store.try_get_log_entries(5..=6).await.unwrap();
    assert_eq!(indexes(&middle), [5, 6]);

    // Purging everything leaves the purge mark as the last log id.
    store.purge(log_id(2, 1, 9)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState {
            last_purged_log_id: Some(log_id(2, 1, 9)),
            last_log_id: Some(log_id(2, 1, 9)),
        }
    );
    assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_reader_sees_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(&dir.path().join("log.redb")).unwrap();
    let mut reader = store.get_log_reader().await;
    store
        .blocking_append(blank_entries(1, 1..=3))
        .await
        .unwrap();
    let entries = reader.try_get_log_entries(2..).await.unwrap();
    assert_eq!(indexes(&entries), [2, 3]);
}

#[tokio::test]
async fn normal_entries_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(&dir.path().join("log.redb")).unwrap();
    let entry = Entry {
        log_id: log_id(1, 1, 1),
        payload: openraft::EntryPayload::Normal(crate::state::deploy_for_test("a", "d1", 5)),
    };
    store.blocking_append([entry.clone()]).await.unwrap();
    assert_eq!(store.try_get_log_entries(1..2).await.unwrap(), [entry]);
}

/// A flush delay (the simulator's slow disk) holds every append that long before it is
/// reported durable, is read at each append, and costs nothing at zero.
#[tokio::test(start_paused = true)]
async fn a_flush_delay_holds_each_append_back() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Arc::new(AtomicU64::new(250));
    let mut store = LogStore::open(&dir.path().join("log.redb"))
        .unwrap()
        .with_flush_delay(delay.clone());
    let started = tokio::time::Instant::now();
    store
        .blocking_append(blank_entries(1, 1..=3))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(250));

    delay.store(0, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    store
        .blocking_append(blank_entries(1, 4..=5))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
}
