//! The Raft log and vote in redb.

use super::{
    Entry, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOGS, META, NodeId, RaftStorageError,
    StoreError, TypeConfig, decode, encode, get, put,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

/// openraft's `RaftLogStorage` over one redb file. Cloning gives another handle on the same
/// file (openraft's log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for row in t.range::<u64>(range)? {
            let (k, v) = row?;
            out.push(decode(&format!("log {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<NodeId>> = get(&self.db, META, KEY_LAST_PURGED)?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LOGS)?;
        let last = match t.last()? {
            Some((k, v)) => Some(decode::<Entry>(&format!("log {}", k.value()), v.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    fn write_entries<I: IntoIterator<Item = Entry>>(&self, entries: I) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(LOGS)?;
            for e in entries {
                let key = format!("log {}", e.log_id.index);
                t.insert(e.log_id.index, encode(&key, &e)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes the entries with index in `range`, and records `purged` if given, atomically.
    fn remove<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(LOGS)?;
            t.retain_in::<u64, _>(range, |_, _| false)?;
            if let Some(p) = purged {
                txn.open_table(META)?
                    .insert(KEY_LAST_PURGED, encode(KEY_LAST_PURGED, &p)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.entries(range)
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        self.log_state()
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        put(&self.db, META, KEY_VOTE, vote)
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        get(&self.db, META, KEY_VOTE).map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), RaftStorageError> {
        put(&self.db, META, KEY_COMMITTED, &committed)
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        get::<Option<LogId<NodeId>>>(&self.db, META, KEY_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The callback runs only once the redb transaction has committed (durably).
        match self.write_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_raft(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        self.remove(log_id.index.., None)
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        self.remove(..=log_id.index, Some(log_id))
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
