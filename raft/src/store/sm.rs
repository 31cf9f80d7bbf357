//! The applied `ClusterState` and its snapshot in redb.

use super::{
    Entry, KEY_LAST_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT, KEY_SNAPSHOT_SEQ, KEY_STATE, NodeId,
    RaftStorageError, Response, SM, StoreError, TypeConfig, decode, encode, get,
};
use crate::state::{Applied, ClusterState};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::watch;

/// A snapshot as stored: openraft's metadata and the serialized `ClusterState`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    /// `ClusterState` as JSON.
    pub data: Vec<u8>,
}

/// openraft's `RaftStateMachine` over one redb file: the state is kept in memory and written
/// through on every applied batch. Cloning shares the file, not the in-memory state; openraft
/// owns one and uses clones only as snapshot builders.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// The applied state as of the last commit, for local readers (shared by clones).
    applied: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl StateMachineStore {
    /// Reads the applied state back from the file (empty on a fresh file).
    pub(super) fn load(db: Arc<Database>) -> Result<StateMachineStore, StoreError> {
        let state: ClusterState = get(&db, SM, KEY_STATE)?.unwrap_or_default();
        state.validate()?;
        let applied = Arc::new(watch::Sender::new(Arc::new(state.clone())));
        Ok(StateMachineStore {
            applied,
            state,
            last_applied: get::<Option<_>>(&db, SM, KEY_LAST_APPLIED)?.flatten(),
            membership: get(&db, SM, KEY_MEMBERSHIP)?.unwrap_or_default(),
            db,
        })
    }

    /// The applied state; routing reads it locally and never waits on Raft.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// A receiver of the applied state, updated after each committed apply or snapshot
    /// install: how local readers (routing, tests) follow the state machine after openraft owns
    /// the store.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.applied.subscribe()
    }

    /// The last log id applied.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.last_applied
    }

    /// Writes state, last applied and membership (and a snapshot, if given) in one transaction.
    fn persist(&self, snapshot: Option<&StoredSnapshot>) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(SM)?;
            t.insert(KEY_STATE, encode(KEY_STATE, &self.state)?.as_slice())?;
            t.insert(
                KEY_LAST_APPLIED,
                encode(KEY_LAST_APPLIED, &self.last_applied)?.as_slice(),
            )?;
            t.insert(
                KEY_MEMBERSHIP,
                encode(KEY_MEMBERSHIP, &self.membership)?.as_slice(),
            )?;
            if let Some(s) = snapshot {
                t.insert(KEY_SNAPSHOT, encode(KEY_SNAPSHOT, s)?.as_slice())?;
            }
        }
        txn.commit()?;
        self.applied.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }

    fn apply_entries<I: IntoIterator<Item = Entry>>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Response>, StoreError> {
        let mut out = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let r = match entry.payload {
                EntryPayload::Normal(cmd) => self.state.apply(cmd),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(self.current())
                }
                EntryPayload::Blank => Ok(self.current()),
            };
            out.push(r);
        }
        self.persist(None)?;
        Ok(out)
    }

    fn current(&self) -> Applied {
        Applied {
            version: self.state.version,
        }
    }

    fn build(&mut self) -> Result<StoredSnapshot, StoreError> {
        let txn = self.db.begin_write()?;
        let seq: u64 = {
            let mut t = txn.open_table(SM)?;
            let seq = match redb::ReadableTable::get(&t, KEY_SNAPSHOT_SEQ)? {
                Some(v) => decode::<u64>(KEY_SNAPSHOT_SEQ, v.value())? + 1,
                None => 1,
            };
            t.insert(KEY_SNAPSHOT_SEQ, encode(KEY_SNAPSHOT_SEQ, &seq)?.as_slice())?;
            seq
        };
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let snap = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data: encode(KEY_STATE, &self.state)?,
        };
        txn.open_table(SM)?
            .insert(KEY_SNAPSHOT, encode(KEY_SNAPSHOT, &snap)?.as_slice())?;
        txn.commit()?;
        Ok(snap)
    }

    fn install(&mut self, snap: StoredSnapshot) -> Result<(), StoreError> {
        let state: ClusterState = decode(KEY_SNAPSHOT, &snap.data)?;
        state.validate()?;
        self.state = state;
        self.last_applied = snap.meta.last_log_id;
        self.membership = snap.meta.last_membership.clone();
        self.persist(Some(&snap))
    }

    fn current_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        get(&self.db, SM, KEY_SNAPSHOT)
    }
}

fn to_openraft(s: StoredSnapshot) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: s.meta,
        snapshot: Box::new(Cursor::new(s.data)),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        self.build()
            .map(to_openraft)
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), RaftStorageError>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries)
            .map_err(|e| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.install(snap).map_err(|e| {
            e.into_raft(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        self.current_snapshot()
            .map(|s| s.map(to_openraft))
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
