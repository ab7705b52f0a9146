use std::collections::BTreeSet;
use std::path::Path;

use openraft::testing::log_id;
use openraft::Membership;

use super::*;
use crate::state::deploy_for_test;

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload,
    }
}

fn deploy(index: u64, name: &str, digest: &str) -> Entry {
    entry(
        index,
        EntryPayload::Normal(deploy_for_test(name, digest, index)),
    )
}

fn delete(index: u64, name: &str) -> Entry {
    entry(
        index,
        EntryPayload::Normal(Command::Delete { name: name.into() }),
    )
}

fn blank(index: u64) -> Entry {
    entry(index, EntryPayload::Blank)
}

fn voters(ids: &[u64]) -> Membership<u64, super::super::PeerNode> {
    Membership::new(vec![ids.iter().copied().collect::<BTreeSet<_>>()], None)
}

fn membership(index: u64, ids: &[u64]) -> Entry {
    entry(index, EntryPayload::Membership(voters(ids)))
}

fn open(path: &Path) -> (Arc<Replica>, StateMachine) {
    let replica = Replica::open(path).unwrap();
    (Arc::clone(&replica), StateMachine::new(replica))
}

fn deployed(app: &str, version: u64) -> Applied {
    Applied::Deployed {
        app: app.into(),
        version,
    }
}

#[tokio::test]
async fn apply_answers_each_entry_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, mut sm) = open(&dir.path().join("state.redb"));
    let responses = sm
        .apply([
            blank(1),
            deploy(2, "a", "d1"),
            deploy(3, "b", "d2"),
            membership(4, &[1, 2]),
            deploy(5, "a", "d3"),
            delete(6, "b"),
            delete(7, "b"),
        ])
        .await
        .unwrap();
    assert_eq!(
        responses,
        [
            Applied::Internal,
            deployed("a", 1),
            deployed("b", 1),
            Applied::Internal,
            deployed("a", 2),
            Applied::Deleted { app: "b".into() },
            Applied::NotFound { app: "b".into() },
        ]
    );
    let (applied, stored_membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 7)));
    assert_eq!(stored_membership.log_id(), &Some(log_id(1, 1, 4)));
    assert_eq!(stored_membership.membership(), &voters(&[1, 2]));
    assert_eq!(replica.applied_index(), 7);
    assert_eq!(replica.table().get("a").unwrap().current().version, 2);
    assert!(replica.table().get("b").is_none());
}

#[tokio::test]
async fn applied_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/state.redb");
    let expected = {
        let (replica, mut sm) = open(&path);
        sm.apply([deploy(1, "a", "d1"), deploy(2, "b", "d2")])
            .await
            .unwrap();
        sm.apply([delete(3, "a"), membership(4, &[1, 2, 3]), blank(5)])
            .await
            .unwrap();
        replica.table()
    };
    let (replica, mut sm) = open(&path);
    assert_eq!(*replica.table(), *expected);
    assert!(replica.table().get("a").is_none());
    assert_eq!(replica.applied_index(), 3);
    let (applied, stored_membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 5)));
    assert_eq!(stored_membership.membership(), &voters(&[1, 2, 3]));
    // Versions go on from the persisted table, not from scratch.
    let responses = sm.apply([deploy(6, "b", "d9")]).await.unwrap();
    assert_eq!(responses, [deployed("b", 2)]);
}

#[tokio::test]
async fn subscribers_hear_of_commands_not_of_internal_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, mut sm) = open(&dir.path().join("state.redb"));
    let mut applied_rx = replica.subscribe();
    assert_eq!(*applied_rx.borrow_and_update(), 0);

    sm.apply([blank(1), membership(2, &[1])]).await.unwrap();
    assert!(!applied_rx.has_changed().unwrap());

    sm.apply([deploy(3, "a", "d1")]).await.unwrap();
    assert!(applied_rx.has_changed().unwrap());
    assert_eq!(*applied_rx.borrow_and_update(), 3);
}

#[tokio::test]
async fn a_snapshot_installed_on_a_fresh_replica_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, mut leader_sm) = open(&dir.path().join("leader.redb"));
    leader_sm
        .apply([
            membership(1, &[1, 2]),
            deploy(2, "a", "d1"),
            deploy(3, "b", "d2"),
            blank(4),
        ])
        .await
        .unwrap();
    let built = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 4)));

    let follower_path = dir.path().join("follower.redb");
    let (follower, mut follower_sm) = open(&follower_path);
    // A row the snapshot does not hold must not survive the install.
    follower_sm.apply([deploy(1, "z", "d0")]).await.unwrap();
    let applied_rx = follower.subscribe();
    let mut received = follower_sm.begin_receiving_snapshot().await.unwrap();
    *received = *built.snapshot.clone();
    follower_sm
        .install_snapshot(&built.meta, received)
        .await
        .unwrap();

    assert!(applied_rx.has_changed().unwrap());
    assert_eq!(*follower.table(), *leader.table());
    assert_eq!(
        follower_sm.applied_state().await.unwrap(),
        leader_sm.applied_state().await.unwrap()
    );
    let current = follower_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);

    drop((follower, follower_sm));
    let (follower, mut follower_sm) = open(&follower_path);
    assert_eq!(*follower.table(), *leader.table());
    assert!(follower.table().get("z").is_none());
    assert_eq!(
        follower_sm.applied_state().await.unwrap(),
        leader_sm.applied_state().await.unwrap()
    );
    let current = follower_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
}

#[tokio::test]
async fn snapshots_are_deterministic_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let entries = || {
        [
            deploy(1, "a", "d1"),
            membership(2, &[1, 2]),
            deploy(3, "b", "d2"),
        ]
    };
    let (_, mut first) = open(&dir.path().join("first.redb"));
    let second_path = dir.path().join("second.redb");
    let (_, mut second) = open(&second_path);
    first.apply(entries()).await.unwrap();
    second.apply(entries()).await.unwrap();
    assert!(second.get_current_snapshot().await.unwrap().is_none());

    let one = first
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let two = second
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(one.meta, two.meta);
    assert_eq!(one.snapshot.get_ref(), two.snapshot.get_ref());

    drop(second);
    let (_, mut second) = open(&second_path);
    let current = second.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, one.meta);
    assert_eq!(current.snapshot.get_ref(), one.snapshot.get_ref());
}

#[tokio::test]
async fn a_snapshot_that_disagrees_with_its_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut leader) = open(&dir.path().join("leader.redb"));
    leader.apply([deploy(1, "a", "d1")]).await.unwrap();
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let (follower, mut follower_sm) = open(&dir.path().join("follower.redb"));
    let mut meta = built.meta.clone();
    meta.last_log_id = Some(log_id(1, 1, 9));
    assert!(follower_sm
        .install_snapshot(&meta, built.snapshot)
        .await
        .is_err());
    assert!(follower.table().get("a").is_none());
    assert_eq!(follower_sm.applied_state().await.unwrap().0, None);
}

#[tokio::test]
async fn install_ignores_older_tables_and_persists_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (voter, mut voter_sm) = open(&dir.path().join("voter.redb"));
    voter_sm
        .apply([deploy(1, "a", "d1"), deploy(2, "b", "d2")])
        .await
        .unwrap();
    let older = voter.table();
    voter_sm.apply([delete(3, "a")]).await.unwrap();
    let newer = voter.table();

    let path = dir.path().join("raft/state.redb");
    let replica = Replica::open(&path).unwrap();
    let mut applied_rx = replica.subscribe();
    assert!(replica.install((*newer).clone()).unwrap());
    assert!(applied_rx.has_changed().unwrap());
    assert_eq!(*applied_rx.borrow_and_update(), 3);
    assert!(!replica.install((*older).clone()).unwrap());
    assert!(!replica.install((*newer).clone()).unwrap());
    assert!(!applied_rx.has_changed().unwrap());
    assert_eq!(*replica.table(), *newer);

    drop(replica);
    let replica = Replica::open(&path).unwrap();
    assert_eq!(*replica.table(), *newer);
    assert_eq!(replica.applied_index(), 3);
}

#[tokio::test]
async fn commands_already_in_an_installed_table_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = [deploy(1, "a", "d1"), blank(2), deploy(3, "a", "d2")];
    let (voter, mut voter_sm) = open(&dir.path().join("voter.redb"));
    voter_sm.apply(log.clone()).await.unwrap();

    // A non-voter copied the voter's table, then became a voter and replays the log.
    let (promoted, mut promoted_sm) = open(&dir.path().join("promoted.redb"));
    assert!(promoted.install((*voter.table()).clone()).unwrap());
    let responses = promoted_sm.apply(log).await.unwrap();
    assert_eq!(
        responses,
        [Applied::Internal, Applied::Internal, Applied::Internal]
    );
    assert_eq!(promoted.table().get("a").unwrap().current().version, 2);

    let next = [deploy(4, "a", "d3")];
    assert_eq!(
        promoted_sm.apply(next.clone()).await.unwrap(),
        voter_sm.apply(next).await.unwrap()
    );
    assert_eq!(*promoted.table(), *voter.table());
}

#[test]
fn a_file_of_the_single_node_store_is_not_raft_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut apps: redb::Table<&str, &[u8]> =
                txn.open_table(TableDefinition::new("apps")).unwrap();
            apps.insert("a", b"{}".as_slice()).unwrap();
            let mut meta: redb::Table<&str, u64> =
                txn.open_table(TableDefinition::new("meta")).unwrap();
            meta.insert("last_applied", 7).unwrap();
        }
        txn.commit().unwrap();
    }
    let replica = Replica::open(&path).unwrap();
    assert_eq!(*replica.table(), AppTable::default());
}

#[test]
fn apps_of_the_single_node_store_are_offered_for_adoption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut old = AppTable::default();
    old.apply(
        1,
        &crate::state::deploy_for_test("legacy", &"d".repeat(64), 5),
    );
    let app = old.get("legacy").unwrap().clone();
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut apps: redb::Table<&str, &[u8]> =
                txn.open_table(TableDefinition::new("apps")).unwrap();
            apps.insert("legacy", serde_json::to_vec(&app).unwrap().as_slice())
                .unwrap();
            apps.insert("broken", b"{}".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let replica = Replica::open(&path).unwrap();
    assert_eq!(replica.legacy_apps(), vec![app]);
    let fresh = Replica::open(&dir.path().join("fresh.redb")).unwrap();
    assert!(fresh.legacy_apps().is_empty());
}

#[tokio::test]
async fn a_retired_node_is_kept_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let (replica, mut sm) = open(&path);
        let applied_rx = replica.subscribe();
        let responses = sm
            .apply([entry(
                1,
                EntryPayload::Normal(Command::RetireNode { id: 42 }),
            )])
            .await
            .unwrap();
        assert_eq!(responses, [Applied::NodeRetired { node: 42 }]);
        assert!(
            applied_rx.has_changed().unwrap(),
            "a retirement changes the table"
        );
        assert!(replica.table().retired_nodes().contains(&42));
    }
    let (replica, _) = open(&path);
    assert_eq!(
        replica
            .table()
            .retired_nodes()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [42]
    );
    assert_eq!(replica.applied_index(), 1);
}

#[tokio::test]
async fn policies_and_deploy_tokens_survive_reopening() {
    use shoal_proxy::policy::{Access, Policy};

    use crate::state::DeployToken;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let private = Policy {
        access: Access::Private,
        ..Policy::default()
    };
    let token = DeployToken {
        id: "abc".into(),
        app: "a".into(),
        name: "notebook".into(),
        sha256: "00".repeat(32),
        created_at_unix_ms: 7,
    };
    {
        let (_replica, mut sm) = open(&path);
        let responses = sm
            .apply([
                deploy(1, "a", "d1"),
                entry(
                    2,
                    EntryPayload::Normal(Command::SetPolicy {
                        app: "a".into(),
                        policy: Box::new(private.clone()),
                        base_version: 0,
                    }),
                ),
                entry(
                    3,
                    EntryPayload::Normal(Command::AddDeployToken {
                        token: token.clone(),
                    }),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(
            responses[1],
            Applied::PolicySet {
                app: "a".into(),
                version: 1
            }
        );
        assert_eq!(responses[2], Applied::TokenAdded { id: "abc".into() });
    }
    let (replica, _) = open(&path);
    let table = replica.table();
    assert_eq!(table.get("a").unwrap().policy, private);
    assert_eq!(table.get("a").unwrap().policy_version, 1);
    assert_eq!(table.deploy_tokens().get("abc"), Some(&token));
}
