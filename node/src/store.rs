//! The app table on disk: redb under `<data-dir>/raft/state.redb`.
//!
//! Each command is applied and persisted in one redb transaction (the changed app's row and
//! the applied index), so a crash leaves either the old or the new table, never a mix. With
//! the control plane this file becomes the raft state machine's storage.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use crate::state::{App, AppTable, Applied, Command};

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_APPLIED: &str = "last_applied";

/// The node's app table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (disk full, corruption, another process holding the file).
    #[error("app table storage failed: {0}")]
    Storage(Box<redb::Error>),
    /// A stored row does not decode.
    #[error("app table row `{name}` is unreadable: {source}")]
    Corrupt {
        /// The row.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl From<redb::Error> for StoreError {
    fn from(error: redb::Error) -> Self {
        Self::Storage(Box::new(error))
    }
}

/// The persisted app table and its in-memory copy.
pub struct StateStore {
    db: Database,
    table: AppTable,
}

impl StateStore {
    /// Opens (or creates) the table at `path` and loads it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(redb::Error::from)?;
        let table = load(&db)?;
        Ok(Self { db, table })
    }

    /// The current table.
    pub fn table(&self) -> &AppTable {
        &self.table
    }

    /// Applies `command` as the next log entry and persists the result before returning.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, StoreError> {
        let index = self.table.last_applied() + 1;
        let mut next = self.table.clone();
        let applied = next.apply(index, command);
        let name = match command {
            Command::Deploy { spec, .. } => &spec.name,
            Command::Delete { name } => name,
        };
        persist(&self.db, index, name, next.get(name))?;
        self.table = next;
        Ok(applied)
    }
}

fn load(db: &Database) -> Result<AppTable, StoreError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    // Opening in a write transaction creates the tables on first start.
    let (apps, last_applied) = {
        let apps_table = txn.open_table(APPS).map_err(redb::Error::from)?;
        let meta = txn.open_table(META).map_err(redb::Error::from)?;
        let mut apps = Vec::new();
        for row in apps_table.iter().map_err(redb::Error::from)? {
            let (name, value) = row.map_err(redb::Error::from)?;
            let app: App =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Corrupt {
                    name: name.value().to_owned(),
                    source,
                })?;
            apps.push(app);
        }
        let last_applied = meta
            .get(LAST_APPLIED)
            .map_err(redb::Error::from)?
            .map_or(0, |v| v.value());
        (apps, last_applied)
    };
    txn.commit().map_err(redb::Error::from)?;
    Ok(AppTable::from_parts(apps, last_applied))
}

fn persist(db: &Database, index: u64, name: &str, app: Option<&App>) -> Result<(), StoreError> {
    let row = app.map(|app| serde_json::to_vec(app).expect("an app always serializes"));
    let txn = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut apps = txn.open_table(APPS).map_err(redb::Error::from)?;
        match &row {
            Some(row) => {
                apps.insert(name, row.as_slice())
                    .map_err(redb::Error::from)?;
            }
            None => {
                apps.remove(name).map_err(redb::Error::from)?;
            }
        }
        let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
        meta.insert(LAST_APPLIED, index)
            .map_err(redb::Error::from)?;
    }
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::deploy_for_test;

    fn deploy(name: &str, digest: &str) -> Command {
        deploy_for_test(name, digest, 7)
    }

    #[test]
    fn the_table_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let expected = {
            let mut store = StateStore::open(&path).unwrap();
            store.apply(&deploy("a", "d1")).unwrap();
            store.apply(&deploy("a", "d2")).unwrap();
            store.apply(&deploy("b", "d3")).unwrap();
            store.apply(&Command::Delete { name: "b".into() }).unwrap();
            store.table().clone()
        };
        let reopened = StateStore::open(&path).unwrap();
        assert_eq!(reopened.table(), &expected);
        assert_eq!(reopened.table().last_applied(), 4);
        assert_eq!(reopened.table().get("a").unwrap().current().version, 2);
        assert!(reopened.table().get("b").is_none());
    }
}
