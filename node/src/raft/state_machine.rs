//! The app table as openraft's state machine, persisted in redb
//! (`<data-dir>/raft/state.redb`).
//!
//! [`Replica`] is the node's copy of the app table: routing reads it on every request through
//! a cheap [`Arc`] snapshot, voters change it through [`StateMachine`] (raft's applied
//! entries and snapshots), and non-voters through [`Replica::install`] with a newer copy
//! fetched from a voter.
//!
//! Durability: every change is one redb transaction with `Immediate` durability (fsync on
//! commit) holding the changed app rows, the table's applied index, the last applied raft
//! log id and the membership, so a crash leaves the old or the new state, never a mix. An
//! applied batch rewrites only the apps its commands named; installing a snapshot or a table
//! rewrites every row. The in-memory copy is swapped only after the commit succeeded. The
//! current snapshot is persisted too, so it survives a restart. As in
//! [`log_store`](super::log_store), the redb calls run inline rather than in
//! `spawn_blocking` (one commit is a few milliseconds; inline keeps the simulator's runs
//! reproducible).

// openraft's traits return its `StorageError` (224 bytes); the helpers feeding them do too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::{open_database, DatabaseOpener, OrStorageError};
use super::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{App, AppTable, Applied, Command};

// Distinct from `store.rs`'s `apps`/`meta`, so a file written by the single-node store is
// never read as raft state.
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_apps");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const TABLE_LAST_APPLIED: &str = "table_last_applied";
const APPLIED_LOG_ID: &str = "applied_log_id";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";
const RETIRED_NODES: &str = "retired_nodes";
const DEPLOY_TOKENS: &str = "deploy_tokens";

/// What a snapshot's bytes hold (JSON). `T` is `&AppTable` when writing, `AppTable` when
/// reading.
#[derive(Serialize, Deserialize)]
struct SnapshotContents<T, M> {
    table: T,
    last_applied: Option<LogId>,
    membership: M,
}

/// A snapshot as kept in memory and on disk.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Everything the replica holds; changed only after the commit that persisted the change.
struct ReplicaState {
    table: Arc<AppTable>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<StoredSnapshot>,
}

/// The node's persisted copy of the app table, the one routing reads.
pub struct Replica {
    db: Database,
    state: RwLock<ReplicaState>,
    /// Serializes writers (apply, installs, snapshot saves) for the whole read-commit-swap,
    /// so readers only ever wait for a pointer swap, never for a disk write.
    writer: Mutex<()>,
    applied_tx: watch::Sender<u64>,
}

impl Replica {
    /// Opens (or creates) the replica at `path`, creating its directory if needed, and loads
    /// the table, the last applied log id, the membership and the current snapshot (after
    /// upgrading a file written in an older format, see `format`).
    pub fn open(path: &Path) -> Result<Arc<Self>, StorageError> {
        Self::open_with(path, None)
    }

    /// [`Replica::open`], through `opener` when given (see [`DatabaseOpener`]).
    pub fn open_with(
        path: &Path,
        opener: Option<&DatabaseOpener>,
    ) -> Result<Arc<Self>, StorageError> {
        let db = open_database(path, opener)?;
        super::format::upgrade(&db, META, &[])?;
        let state = load(&db)?;
        let (applied_tx, _) = watch::channel(state.table.last_applied());
        Ok(Arc::new(Self {
            db,
            state: RwLock::new(state),
            writer: Mutex::new(()),
            applied_tx,
        }))
    }

    /// Apps left in this file by a single-node Shoal from before the control plane (table
    /// `apps`, one JSON row per app), so a new cluster can take them over; empty otherwise.
    pub fn legacy_apps(&self) -> Vec<App> {
        const LEGACY_APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
        let Ok(txn) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(table) = txn.open_table(LEGACY_APPS) else {
            return Vec::new();
        };
        let Ok(rows) = table.iter() else {
            return Vec::new();
        };
        rows.filter_map(|row| {
            let (_, value) = row.ok()?;
            serde_json::from_slice::<App>(value.value()).ok()
        })
        .collect()
    }

    /// The current table: a cheap snapshot that later changes do not touch.
    pub fn table(&self) -> Arc<AppTable> {
        Arc::clone(&self.read_state().table)
    }

    /// The table's applied index ([`AppTable::last_applied`]): the index of the last command
    /// entry applied. Blank and membership entries do not move it, so it can trail raft's
    /// last applied index; wait for the index of a command, not of an arbitrary entry.
    pub fn applied_index(&self) -> u64 {
        self.read_state().table.last_applied()
    }

    /// Watches [`Self::applied_index`]: marked changed whenever the table changes (an applied
    /// command, a snapshot, or an installed table).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Non-voters: replaces the whole table with a newer copy fetched from a voter, persisted
    /// in one transaction. Returns `Ok(false)` and changes nothing unless the copy's
    /// `last_applied` is greater than ours. Blocks for one redb commit.
    ///
    /// The raft applied log id is left alone: should this node later apply the same log as a
    /// voter, commands already in the table are skipped (see [`StateMachine`]).
    pub fn install(&self, table: AppTable) -> Result<bool, StorageError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if table.last_applied() <= self.applied_index() {
            return Ok(false);
        }
        let write = (ErrorSubject::StateMachine, ErrorVerb::Write);
        let txn = self.db.begin_write().or_storage(&write)?;
        rewrite_apps(&txn, &table)?;
        {
            let mut meta = txn.open_table(META).or_storage(&write)?;
            put_json(&mut meta, TABLE_LAST_APPLIED, &table.last_applied())?;
            put_json(&mut meta, RETIRED_NODES, table.retired_nodes())?;
            put_json(&mut meta, DEPLOY_TOKENS, table.deploy_tokens())?;
        }
        txn.commit().or_storage(&write)?;
        let index = table.last_applied();
        self.write_state().table = Arc::new(table);
        self.applied_tx.send_replace(index);
        Ok(true)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, ReplicaState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, ReplicaState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies committed entries in order, persists the result in one transaction, and
    /// returns one response per entry.
    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Applied>, StorageError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let (current_table, mut applied, mut membership) = {
            let state = self.read_state();
            (
                Arc::clone(&state.table),
                state.applied,
                state.membership.clone(),
            )
        };
        // Cloned on the first command only: blank and membership entries leave the table be.
        let mut next_table: Option<AppTable> = None;
        let mut changed_apps = BTreeSet::new();
        let mut table_changed = false;
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Applied::Internal,
                EntryPayload::Membership(config) => {
                    membership = StoredMembership::new(Some(entry.log_id), config);
                    Applied::Internal
                }
                EntryPayload::Normal(command) => {
                    let table = next_table.get_or_insert_with(|| (*current_table).clone());
                    if entry.log_id.index <= table.last_applied() {
                        // The table came from a voter's copy that already holds this command
                        // (see `Replica::install`); applying it again would make a new release.
                        tracing::debug!(index = entry.log_id.index, "command already in table");
                        Applied::Internal
                    } else {
                        table_changed = true;
                        if let Some(name) = app_name(&command) {
                            changed_apps.insert(name.to_owned());
                        }
                        table.apply(entry.log_id.index, &command)
                    }
                }
            };
            responses.push(response);
        }
        let table = match next_table {
            Some(table) if table_changed => Arc::new(table),
            _ => current_table,
        };
        self.persist_applied(&table, &changed_apps, applied, &membership)?;
        let index = table.last_applied();
        {
            let mut state = self.write_state();
            state.table = table;
            state.applied = applied;
            state.membership = membership;
        }
        if table_changed {
            self.applied_tx.send_replace(index);
        }
        Ok(responses)
    }

    fn persist_applied(
        &self,
        table: &AppTable,
        changed_apps: &BTreeSet<String>,
        applied: Option<LogId>,
        membership: &StoredMembership,
    ) -> Result<(), StorageError> {
        let write = (ErrorSubject::StateMachine, ErrorVerb::Write);
        let txn = self.db.begin_write().or_storage(&write)?;
        {
            let mut apps = txn.open_table(APPS).or_storage(&write)?;
            for name in changed_apps {
                match table.get(name) {
                    Some(app) => {
                        let row = serde_json::to_vec(app).or_storage(&write)?;
                        apps.insert(name.as_str(), row.as_slice())
                            .or_storage(&write)?;
                    }
                    None => {
                        apps.remove(name.as_str()).or_storage(&write)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).or_storage(&write)?;
            put_json(&mut meta, TABLE_LAST_APPLIED, &table.last_applied())?;
            put_json(&mut meta, RETIRED_NODES, table.retired_nodes())?;
            put_json(&mut meta, DEPLOY_TOKENS, table.deploy_tokens())?;
            put_json(&mut meta, APPLIED_LOG_ID, &applied)?;
            put_json(&mut meta, MEMBERSHIP, membership)?;
        }
        txn.commit().or_storage(&write)
    }

    /// Replaces everything with a snapshot's contents, persisted in one transaction together
    /// with the snapshot itself.
    fn install_snapshot(
        &self,
        snapshot: StoredSnapshot,
        table: AppTable,
    ) -> Result<(), StorageError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let write = (
            ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
            ErrorVerb::Write,
        );
        let txn = self.db.begin_write().or_storage(&write)?;
        rewrite_apps(&txn, &table)?;
        {
            let mut meta = txn.open_table(META).or_storage(&write)?;
            put_json(&mut meta, TABLE_LAST_APPLIED, &table.last_applied())?;
            put_json(&mut meta, RETIRED_NODES, table.retired_nodes())?;
            put_json(&mut meta, DEPLOY_TOKENS, table.deploy_tokens())?;
            put_json(&mut meta, APPLIED_LOG_ID, &snapshot.meta.last_log_id)?;
            put_json(&mut meta, MEMBERSHIP, &snapshot.meta.last_membership)?;
            put_snapshot(&mut meta, &snapshot)?;
        }
        txn.commit().or_storage(&write)?;
        let index = table.last_applied();
        *self.write_state() = ReplicaState {
            table: Arc::new(table),
            applied: snapshot.meta.last_log_id,
            membership: snapshot.meta.last_membership.clone(),
            snapshot: Some(snapshot),
        };
        self.applied_tx.send_replace(index);
        Ok(())
    }

    /// Keeps a freshly built snapshot as the current one, unless a newer one arrived meanwhile.
    fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let newer_exists = self
            .read_state()
            .snapshot
            .as_ref()
            .is_some_and(|current| current.meta.last_log_id > snapshot.meta.last_log_id);
        if newer_exists {
            return Ok(());
        }
        let write = (
            ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
            ErrorVerb::Write,
        );
        let txn = self.db.begin_write().or_storage(&write)?;
        {
            let mut meta = txn.open_table(META).or_storage(&write)?;
            put_snapshot(&mut meta, snapshot)?;
        }
        txn.commit().or_storage(&write)?;
        self.write_state().snapshot = Some(snapshot.clone());
        Ok(())
    }
}

/// The app row a command changes (none for node records, which live in the meta table).
fn app_name(command: &Command) -> Option<&str> {
    match command {
        Command::Deploy { spec, .. } => Some(&spec.name),
        Command::Delete { name } => Some(name),
        Command::RetireNode { .. }
        | Command::AddDeployToken { .. }
        | Command::RevokeDeployToken { .. } => None,
        Command::SetPolicy { app, .. } => Some(app),
        Command::Fire { job, .. }
        | Command::RunStarted { job, .. }
        | Command::RunEnded { job, .. } => Some(job),
    }
}

fn put_json<T: Serialize + ?Sized>(
    meta: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StorageError> {
    let write = (ErrorSubject::StateMachine, ErrorVerb::Write);
    let bytes = serde_json::to_vec(value).or_storage(&write)?;
    meta.insert(key, bytes.as_slice()).or_storage(&write)?;
    Ok(())
}

fn get_json<T: DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let read = (ErrorSubject::StateMachine, ErrorVerb::Read);
    match meta.get(key).or_storage(&read)? {
        Some(value) => serde_json::from_slice(value.value())
            .map(Some)
            .or_storage(&read),
        None => Ok(None),
    }
}

fn put_snapshot(
    meta: &mut redb::Table<&str, &[u8]>,
    snapshot: &StoredSnapshot,
) -> Result<(), StorageError> {
    put_json(meta, SNAPSHOT_META, &snapshot.meta)?;
    meta.insert(SNAPSHOT_DATA, snapshot.data.as_slice())
        .or_storage(&(
            ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
            ErrorVerb::Write,
        ))?;
    Ok(())
}

fn rewrite_apps(txn: &WriteTransaction, table: &AppTable) -> Result<(), StorageError> {
    let write = (ErrorSubject::StateMachine, ErrorVerb::Write);
    let mut apps = txn.open_table(APPS).or_storage(&write)?;
    apps.retain(|_, _| false).or_storage(&write)?;
    for app in table.apps() {
        let row = serde_json::to_vec(app).or_storage(&write)?;
        apps.insert(app.name.as_str(), row.as_slice())
            .or_storage(&write)?;
    }
    Ok(())
}

fn load(db: &Database) -> Result<ReplicaState, StorageError> {
    let read = (ErrorSubject::StateMachine, ErrorVerb::Read);
    // A write transaction, so that the tables exist from the first start on.
    let txn = db.begin_write().or_storage(&read)?;
    let state = {
        let apps_table = txn.open_table(APPS).or_storage(&read)?;
        let meta = txn.open_table(META).or_storage(&read)?;
        let mut apps = Vec::new();
        for row in apps_table.iter().or_storage(&read)? {
            let (_, value) = row.or_storage(&read)?;
            apps.push(serde_json::from_slice::<App>(value.value()).or_storage(&read)?);
        }
        let table_last_applied = get_json(&meta, TABLE_LAST_APPLIED)?.unwrap_or(0);
        let snapshot_meta: Option<SnapshotMeta> = get_json(&meta, SNAPSHOT_META)?;
        let snapshot_data = meta.get(SNAPSHOT_DATA).or_storage(&read)?;
        let snapshot = match (snapshot_meta, snapshot_data) {
            (Some(meta), Some(data)) => Some(StoredSnapshot {
                meta,
                data: data.value().to_vec(),
            }),
            _ => None,
        };
        ReplicaState {
            table: Arc::new(
                AppTable::from_parts(apps, table_last_applied)
                    .with_retired_nodes(get_json(&meta, RETIRED_NODES)?.unwrap_or_default())
                    .with_deploy_tokens(get_json(&meta, DEPLOY_TOKENS)?.unwrap_or_default()),
            ),
            applied: get_json::<Option<LogId>>(&meta, APPLIED_LOG_ID)?.flatten(),
            membership: get_json(&meta, MEMBERSHIP)?.unwrap_or_default(),
            snapshot,
        }
    };
    txn.commit().or_storage(&read)?;
    Ok(state)
}

/// Deterministic: the same applied log id and table index always name the same bytes.
fn snapshot_id(applied: Option<LogId>, table_index: u64) -> String {
    match applied {
        Some(log_id) => format!("{log_id}-t{table_index}"),
        None => format!("none-t{table_index}"),
    }
}

/// openraft's view of a [`Replica`]: applies committed entries and moves snapshots. Also its
/// own snapshot builder (building reads a consistent copy of the replica).
///
/// Normal entries go through [`AppTable::apply`] with the entry's index; blank and membership
/// entries answer [`Applied::Internal`]. A command whose index the table already holds (a
/// table installed by [`Replica::install`] before this node became a voter) is skipped and
/// also answers [`Applied::Internal`]; nobody waits for that answer, since the command was
/// proposed and answered elsewhere before the table was copied.
#[derive(Clone)]
pub struct StateMachine {
    replica: Arc<Replica>,
}

impl StateMachine {
    /// Wraps the node's replica for openraft.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    /// The replica this state machine writes.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (table, applied, membership) = {
            let state = self.replica.read_state();
            (
                Arc::clone(&state.table),
                state.applied,
                state.membership.clone(),
            )
        };
        let contents = SnapshotContents {
            table: &*table,
            last_applied: applied,
            membership: &membership,
        };
        let data = serde_json::to_vec(&contents)
            .or_storage(&(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        let snapshot = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: snapshot_id(applied, table.last_applied()),
            },
            data,
        };
        self.replica.save_snapshot(&snapshot)?;
        Ok(Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.replica.read_state();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.replica.apply_entries(entries.into_iter().collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let read = (
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
        );
        let data = snapshot.into_inner();
        let contents: SnapshotContents<AppTable, StoredMembership> =
            serde_json::from_slice(&data).or_storage(&read)?;
        if contents.last_applied != meta.last_log_id || contents.membership != meta.last_membership
        {
            let error = AnyError::error("snapshot contents disagree with its metadata");
            return Err(StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                error,
            )
            .into());
        }
        let snapshot = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.replica.install_snapshot(snapshot, contents.table)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.replica.read_state().snapshot.clone();
        Ok(current.map(|snapshot| Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        }))
    }
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;
