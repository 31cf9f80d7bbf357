//! Durable Raft storage on redb, one file per replica: the log and the vote
//! ([`LogStore`], openraft's `RaftLogStorage`) and the applied [`ClusterState`] with its
//! snapshot ([`StateMachineStore`], openraft's `RaftStateMachine`), both over one
//! [`redb::Database`].
//!
//! Every write is one redb write transaction, committed with redb's default (immediate)
//! durability before openraft hears of it: `append` calls its callback only after the commit.
//! Records are JSON; the state machine is small (the control plane), so each applied batch
//! rewrites it whole in the same transaction as `last_applied`, so a crash never splits them.
//!
//! redb calls block; they are made inline from the async trait methods. That is acceptable for
//! a control plane of a few writes per second, and the first thing to move to
//! `spawn_blocking` if it is not.

mod log;
mod sm;
#[cfg(test)]
mod tests;

pub use log::LogStore;
pub use sm::{StateMachineStore, StoredSnapshot};

use crate::state::{Applied, Command, Invariant, Rejected};
use openraft::{BasicNode, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use redb::{Database, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// What applying one log entry returns to the client that proposed it. Blank and membership
/// entries answer with the current version.
pub type Response = Result<Applied, Rejected>;

openraft::declare_raft_types!(
    /// Strata's openraft types: the log carries [`Command`]s, voters are router replicas with
    /// `u64` Raft ids, and a node's address is a [`BasicNode`].
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// A Raft id.
pub type NodeId = u64;
/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;
/// openraft's storage error, as this store raises it.
pub type RaftStorageError = StorageError<NodeId>;

/// Log entries by index, JSON.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Vote, committed log id and last purged log id, JSON, by the `KEY_*` names.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The state machine: state, last applied, membership and snapshot, JSON, by `KEY_*` names.
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_STATE: &str = "state";
const KEY_LAST_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_SNAPSHOT: &str = "snapshot";
const KEY_SNAPSHOT_SEQ: &str = "snapshot_seq";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, a transaction error).
    #[error("redb: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode, or a record does not encode.
    #[error("record {key}: {source}")]
    Codec {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A stored or received state breaks an invariant.
    #[error("state machine: {0}")]
    Invalid(#[from] Invariant),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// As openraft's error, naming what was being done.
    fn into_raft(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> RaftStorageError {
        StorageIOError::new(subject, verb, &self).into()
    }
}

/// Opens (creating if absent) the redb file of one replica, and the two stores over it.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = Arc::new(Database::create(path)?);
    let txn = db.begin_write()?;
    txn.open_table(LOGS)?;
    txn.open_table(META)?;
    txn.open_table(SM)?;
    txn.commit()?;
    let sm = StateMachineStore::load(db.clone())?;
    Ok((LogStore::new(db), sm))
}

fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Codec {
        key: key.to_owned(),
        source,
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Codec {
        key: key.to_owned(),
        source,
    })
}

/// Reads and decodes one record of a `&str`-keyed table.
fn get<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let t = txn.open_table(table)?;
    match t.get(key)? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one record of a `&str`-keyed table in its own committed transaction.
fn put<T: serde::Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = encode(key, value)?;
    let txn = db.begin_write()?;
    txn.open_table(table)?.insert(key, bytes.as_slice())?;
    txn.commit()?;
    Ok(())
}
