use super::*;
use crate::state::{ClusterState, Hardware, Instance, Stage};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, Vote,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "strata-raft-store-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("raft.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn register(id: &str, port: u16) -> Command {
    Command::RegisterNode {
        id: id.into(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        cert_fingerprint: format!("fp-{id}"),
        hardware: Hardware::default(),
    }
}

fn entries() -> Vec<Entry> {
    let members = Membership::new(vec![BTreeSet::from([1u64])], None);
    vec![
        entry(1, 1, EntryPayload::Blank),
        entry(1, 2, EntryPayload::Membership(members)),
        entry(1, 3, EntryPayload::Normal(register("n1", 7001))),
        entry(1, 4, EntryPayload::Normal(register("n2", 7002))),
        entry(
            2,
            5,
            EntryPayload::Normal(Command::Deploy {
                model: "tiny".into(),
                source: "tiny".into(),
                layers: 2,
                instances: vec![Instance {
                    stages: vec![
                        Stage {
                            node: "n1".into(),
                            layers: 0..1,
                        },
                        Stage {
                            node: "n2".into(),
                            layers: 1..2,
                        },
                    ],
                }],
            }),
        ),
        // Rejected: unknown node. Applied all the same (as a rejection) on every replica.
        entry(
            2,
            6,
            EntryPayload::Normal(Command::Drain { id: "nx".into() }),
        ),
    ]
}

#[tokio::test]
async fn reopen_finds_log_vote_committed_and_applied_state() {
    let dir = TempDir::new();
    let expected_state;
    {
        let (mut log, mut sm) = open(&dir.file()).expect("open");
        log.blocking_append(entries()).await.expect("append");
        let vote = Vote::new_committed(2, 1);
        log.save_vote(&vote).await.expect("vote");
        log.save_committed(Some(log_id(2, 6)))
            .await
            .expect("committed");
        let responses = sm.apply(entries()).await.expect("apply");
        assert_eq!(responses.len(), 6);
        assert_eq!(responses[4], Ok(Applied { version: 3 }));
        assert!(matches!(
            responses[5],
            Err(Rejected::UnknownNode { ref node }) if node == "nx"
        ));
        expected_state = sm.state().clone();
    }
    let (mut log, mut sm) = open(&dir.file()).expect("reopen");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(2, 6)));
    assert_eq!(state.last_purged_log_id, None);
    let back = log.try_get_log_entries(0..100).await.expect("entries");
    let want = entries();
    assert_eq!(back.len(), want.len());
    for (b, w) in back.iter().zip(&want) {
        assert_eq!(b.log_id, w.log_id);
        assert_eq!(
            serde_json::to_string(b).expect("json"),
            serde_json::to_string(w).expect("json")
        );
    }
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(2, 6))
    );
    let (applied, membership) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(2, 6)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 2)));
    assert_eq!(sm.state(), &expected_state);
    assert_eq!(sm.state().version, 3);
    assert!(sm.state().deployments.contains_key("tiny"));
}

#[tokio::test]
async fn truncate_and_purge() {
    let dir = TempDir::new();
    let (mut log, _sm) = open(&dir.file()).expect("open");
    log.blocking_append(entries()).await.expect("append");

    log.truncate(log_id(2, 5)).await.expect("truncate");
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_log_id, Some(log_id(1, 4)));
    let idx: Vec<u64> = log
        .try_get_log_entries(..)
        .await
        .expect("entries")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(idx, [1, 2, 3, 4]);

    log.purge(log_id(1, 2)).await.expect("purge");
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(st.last_log_id, Some(log_id(1, 4)));
    let idx: Vec<u64> = log
        .try_get_log_entries(..)
        .await
        .expect("entries")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(idx, [3, 4]);

    // Purging everything leaves the purged id as the last log id.
    log.purge(log_id(1, 4)).await.expect("purge all");
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(st.last_log_id, Some(log_id(1, 4)));
    drop(log);
    drop(_sm);
    let (mut log, _sm) = open(&dir.file()).expect("reopen");
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 4)));
}

#[tokio::test]
async fn snapshot_builds_and_installs_on_a_fresh_replica() {
    let a = TempDir::new();
    let (_log, mut sm) = open(&a.file()).expect("open");
    sm.apply(entries()).await.expect("apply");
    let mut builder = sm.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.expect("build");
    assert_eq!(snap.meta.last_log_id, Some(log_id(2, 6)));
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot exists");
    assert_eq!(current.meta, snap.meta);

    let b = TempDir::new();
    {
        let (_log, mut other) = open(&b.file()).expect("open b");
        let mut data = other.begin_receiving_snapshot().await.expect("begin");
        *data = (*snap.snapshot).clone();
        other
            .install_snapshot(&snap.meta, data)
            .await
            .expect("install");
        assert_eq!(other.state(), sm.state());
    }
    let (_log, mut other) = open(&b.file()).expect("reopen b");
    assert_eq!(other.state(), sm.state());
    let (applied, _) = other.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(2, 6)));
}

#[tokio::test]
async fn corrupt_snapshot_is_refused_and_state_kept() {
    let dir = TempDir::new();
    let (_log, mut sm) = open(&dir.file()).expect("open");
    sm.apply(entries()).await.expect("apply");
    let before: ClusterState = sm.state().clone();
    let mut bad = before.clone();
    bad.nodes.remove("n1"); // `tiny` still places a stage on n1
    let meta = openraft::SnapshotMeta {
        last_log_id: Some(log_id(3, 9)),
        last_membership: Default::default(),
        snapshot_id: "bad".into(),
    };
    let data = Box::new(std::io::Cursor::new(
        serde_json::to_vec(&bad).expect("json"),
    ));
    assert!(sm.install_snapshot(&meta, data).await.is_err());
    assert_eq!(sm.state(), &before);
}

/// openraft's own storage suite over a fresh file per test.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), RaftStorageError> {
        let dir = TempDir::new();
        let (log, sm) = open(&dir.file())
            .map_err(|e| e.into_raft(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
