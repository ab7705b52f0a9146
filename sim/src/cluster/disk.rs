//! The simulator's disk: raft's redb files in memory, with a page cache that a crash empties.
//!
//! Each file keeps two images: what reached the platter (`durable`) and what the node sees
//! (`current`, the durable image plus every write since the last sync). redb calls
//! [`StorageBackend::sync_data`] when a transaction commits with `Immediate` durability (what
//! Shoal's stores use); only then do the writes become durable. [`SimDisk::crash`] throws the
//! unsynced writes away, as a power cut does, so a store that acknowledged something it had not
//! synced would lose it and the checkers would see an acknowledged deploy or a vote go missing.
//!
//! A handle from before a crash is dead: its reads and writes fail, so nothing of the crashed
//! incarnation can touch the disk of the next one. An `eventual` sync is treated as a full one
//! (it must order writes; making it durable at once is one of the orders allowed).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, StorageBackend};
use shoal::raft::log_store::DatabaseOpener;

use super::lock;

/// One node's disk: its redb files by path. Cheap to clone; clones share the files.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<Mutex<File>>>>>,
}

#[derive(Debug, Default)]
struct File {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Bumped by every crash: handles of an older incarnation are dead.
    incarnation: u64,
    /// Writes since the last sync, and how many of all writes a crash threw away.
    unsynced: u64,
    lost: u64,
}

/// One open file, as redb uses it.
#[derive(Debug)]
struct Handle {
    file: Arc<Mutex<File>>,
    incarnation: u64,
}

impl SimDisk {
    /// Opens (or creates) redb databases on this disk.
    pub fn opener(&self) -> DatabaseOpener {
        let disk = self.clone();
        Arc::new(move |path: &Path| Database::builder().create_with_backend(disk.handle(path)))
    }

    fn handle(&self, path: &Path) -> Handle {
        let file = lock(&self.files)
            .entry(path.to_owned())
            .or_default()
            .clone();
        let incarnation = lock(&file).incarnation;
        Handle { file, incarnation }
    }

    /// A power cut: every write not synced yet is gone, and open handles die.
    pub fn crash(&self) {
        for file in lock(&self.files).values() {
            let mut file = lock(file);
            file.current = file.durable.clone();
            file.incarnation += 1;
            file.lost += file.unsynced;
            file.unsynced = 0;
        }
    }

    /// Writes that crashes threw away, over all files.
    pub fn lost_writes(&self) -> u64 {
        lock(&self.files).values().map(|file| lock(file).lost).sum()
    }
}

impl Handle {
    fn file(&self) -> io::Result<std::sync::MutexGuard<'_, File>> {
        let file = lock(&self.file);
        if file.incarnation != self.incarnation {
            return Err(io::Error::other(
                "the node crashed: this file handle is gone",
            ));
        }
        Ok(file)
    }
}

impl StorageBackend for Handle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file()?.current.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.file()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        file.current
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut file = self.file()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        file.current.resize(len, 0);
        file.unsynced += 1;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        let mut file = self.file()?;
        file.durable = file.current.clone();
        file.unsynced = 0;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut file = self.file()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[start..end].copy_from_slice(data);
        file.unsynced += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{Durability, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(db: &Database, key: &str, value: u64, durability: Durability) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability);
        txn.open_table(TABLE).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }

    fn get(db: &Database, key: &str) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        table.get(key).unwrap().map(|v| v.value())
    }

    #[test]
    fn a_crash_keeps_synced_commits_and_loses_the_rest() {
        let disk = SimDisk::default();
        let path = Path::new("/node/raft/log.redb");
        let db = disk.opener()(path).unwrap();
        put(&db, "synced", 1, Durability::Immediate);
        put(&db, "cached", 2, Durability::None);
        assert_eq!(get(&db, "cached"), Some(2), "visible before the crash");
        disk.crash();
        assert!(disk.lost_writes() > 0);
        drop(db);

        let db = disk.opener()(path).unwrap();
        assert_eq!(get(&db, "synced"), Some(1));
        assert_eq!(get(&db, "cached"), None);
    }

    #[test]
    fn handles_from_before_a_crash_are_dead() {
        let disk = SimDisk::default();
        let path = Path::new("/node/raft/state.redb");
        let db = disk.opener()(path).unwrap();
        put(&db, "a", 1, Durability::Immediate);
        disk.crash();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert("b", 2).unwrap();
        assert!(txn.commit().is_err(), "a crashed node's write went through");
        drop(db);
        let db = disk.opener()(path).unwrap();
        assert_eq!(get(&db, "a"), Some(1));
        assert_eq!(get(&db, "b"), None);
    }

    #[test]
    fn files_are_separate() {
        let disk = SimDisk::default();
        let one = disk.opener()(Path::new("/a")).unwrap();
        let two = disk.opener()(Path::new("/b")).unwrap();
        put(&one, "x", 1, Durability::Immediate);
        put(&two, "x", 2, Durability::Immediate);
        assert_eq!((get(&one, "x"), get(&two, "x")), (Some(1), Some(2)));
    }
}
