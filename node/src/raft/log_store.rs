//! The raft log, the vote, the committed log id and the last purged log id, in redb
//! (`<data-dir>/raft/log.redb`).
//!
//! Entries are keyed by their index and stored as JSON; everything else is a JSON value in a
//! small meta table. Every write is one redb transaction with the default `Immediate`
//! durability: when `commit` returns, the data is on disk (fsync). That is what openraft's
//! correctness needs for the vote and for [`LogFlushed`], which `append` therefore calls only
//! after its commit.
//!
//! The redb calls run inline in the async methods rather than in `spawn_blocking`: a commit
//! takes a few milliseconds, openraft already issues log writes one at a time from its core
//! task, and staying on the calling task keeps the order of events reproducible under the
//! simulator's single-threaded runtime.

// openraft's traits return its `StorageError` (224 bytes); the helpers feeding them do too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// What was being done when a storage call failed: the subject and verb of openraft's
/// [`StorageError`].
pub(crate) type Failure = (ErrorSubject<NodeId>, ErrorVerb);

/// Maps any error into an openraft [`StorageError`] (which stops raft: storage that fails
/// cannot be trusted).
pub(crate) trait OrStorageError<T> {
    /// The error, as a storage error raised while doing `failure`.
    fn or_storage(self, failure: &Failure) -> Result<T, StorageError>;
}

impl<T, E: std::error::Error + 'static> OrStorageError<T> for Result<T, E> {
    fn or_storage(self, failure: &Failure) -> Result<T, StorageError> {
        self.map_err(|error| {
            let (subject, verb) = failure.clone();
            StorageIOError::new(subject, verb, AnyError::new(&error)).into()
        })
    }
}

/// Opens (or creates) the raft database at a path somewhere other than the file system: the
/// simulator's disk, which loses what was written but not synced when its node crashes.
pub type DatabaseOpener = Arc<dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// Opens (or creates) the redb database at `path`: with `opener` if given, else as a file,
/// creating its parent directory.
pub(crate) fn open_database(
    path: &Path,
    opener: Option<&DatabaseOpener>,
) -> Result<Database, StorageError> {
    if let Some(opener) = opener {
        return opener(path).or_storage(&(ErrorSubject::Store, ErrorVerb::Read));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).or_storage(&(ErrorSubject::Store, ErrorVerb::Write))?;
    }
    Database::create(path).or_storage(&(ErrorSubject::Store, ErrorVerb::Read))
}

/// The raft log and vote of one voter. Cheap to clone: clones share the database, so the
/// store is its own log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Extra time each append takes to become durable, in ms: a slow disk, as the simulator
    /// injects it. `None` in production.
    flush_delay: Option<Arc<AtomicU64>>,
}

impl LogStore {
    /// Opens (or creates) the log at `path`, creating its directory if needed, and upgrades a log
    /// written in an older format (see `format`).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, None)
    }

    /// [`LogStore::open`], through `opener` when given (see [`DatabaseOpener`]).
    pub fn open_with(path: &Path, opener: Option<&DatabaseOpener>) -> Result<Self, StorageError> {
        let db = open_database(path, opener)?;
        // Opening the tables in a write transaction creates them on first start, so that
        // read transactions never meet a missing table.
        let write = (ErrorSubject::Store, ErrorVerb::Write);
        let txn = db.begin_write().or_storage(&write)?;
        txn.open_table(LOG).or_storage(&write)?;
        txn.open_table(META).or_storage(&write)?;
        txn.commit().or_storage(&write)?;
        super::format::upgrade(&db, META, &[LOG])?;
        Ok(Self {
            db: Arc::new(db),
            flush_delay: None,
        })
    }

    /// Makes every append wait `delay` more milliseconds (read at each append) before it
    /// reports the entries durable: the simulator's slow disk.
    pub fn with_flush_delay(mut self, delay: Arc<AtomicU64>) -> Self {
        self.flush_delay = Some(delay);
        self
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let read = (subject, ErrorVerb::Read);
        let txn = self.db.begin_read().or_storage(&read)?;
        let meta = txn.open_table(META).or_storage(&read)?;
        let Some(value) = meta.get(key).or_storage(&read)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value()).or_storage(&read)
    }

    /// A write transaction, durable when committed (unless a planted bug says otherwise).
    fn begin_write(&self, failure: &Failure) -> Result<redb::WriteTransaction, StorageError> {
        #[allow(unused_mut)] // changed only by a planted bug
        let mut txn = self.db.begin_write().or_storage(failure)?;
        if crate::planted::enabled(crate::planted::Bug::RaftLogNeverSyncs) {
            txn.set_durability(redb::Durability::None);
        }
        Ok(txn)
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let write = (subject, ErrorVerb::Write);
        let bytes = serde_json::to_vec(value).or_storage(&write)?;
        let txn = self.begin_write(&write)?;
        {
            let mut meta = txn.open_table(META).or_storage(&write)?;
            meta.insert(key, bytes.as_slice()).or_storage(&write)?;
        }
        txn.commit().or_storage(&write)
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(LAST_PURGED, ErrorSubject::Store)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let read = (ErrorSubject::Logs, ErrorVerb::Read);
        let txn = self.db.begin_read().or_storage(&read)?;
        let log = txn.open_table(LOG).or_storage(&read)?;
        let Some((index, value)) = log.last().or_storage(&read)? else {
            return Ok(None);
        };
        let entry = decode_entry(index.value(), value.value())?;
        Ok(Some(entry.log_id))
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    serde_json::from_slice(bytes).or_storage(&(ErrorSubject::LogIndex(index), ErrorVerb::Read))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let read = (ErrorSubject::Logs, ErrorVerb::Read);
        let txn = self.db.begin_read().or_storage(&read)?;
        let log = txn.open_table(LOG).or_storage(&read)?;
        let mut entries = Vec::new();
        for row in log.range(bounds).or_storage(&read)? {
            let (index, value) = row.or_storage(&read)?;
            entries.push(decode_entry(index.value(), value.value())?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self.read_meta(COMMITTED, ErrorSubject::Store)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = (ErrorSubject::Logs, ErrorVerb::Write);
        let txn = self.begin_write(&write)?;
        {
            let mut log = txn.open_table(LOG).or_storage(&write)?;
            for entry in entries {
                let bytes = serde_json::to_vec(&entry)
                    .or_storage(&(ErrorSubject::Log(entry.log_id), ErrorVerb::Write))?;
                log.insert(entry.log_id.index, bytes.as_slice())
                    .or_storage(&write)?;
            }
        }
        txn.commit().or_storage(&write)?;
        if let Some(delay) = &self.flush_delay {
            let ms = delay.load(Ordering::Relaxed);
            if ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        }
        // Only now are the entries durable: openraft may count this node towards a quorum.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let delete = (ErrorSubject::Log(log_id), ErrorVerb::Delete);
        let txn = self.begin_write(&delete)?;
        {
            let mut log = txn.open_table(LOG).or_storage(&delete)?;
            log.retain_in(log_id.index.., |_, _| false)
                .or_storage(&delete)?;
        }
        txn.commit().or_storage(&delete)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let delete = (ErrorSubject::Log(log_id), ErrorVerb::Delete);
        let bytes = serde_json::to_vec(&log_id).or_storage(&delete)?;
        let txn = self.begin_write(&delete)?;
        {
            // The purge mark and the deletion commit together, so `get_log_state` never sees
            // a hole between the last purged id and the first entry.
            let mut meta = txn.open_table(META).or_storage(&delete)?;
            meta.insert(LAST_PURGED, bytes.as_slice())
                .or_storage(&delete)?;
            let mut log = txn.open_table(LOG).or_storage(&delete)?;
            log.retain_in(..=log_id.index, |_, _| false)
                .or_storage(&delete)?;
        }
        txn.commit().or_storage(&delete)
    }
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
