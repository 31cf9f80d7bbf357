//! Membership changes, leadership transfer and snapshots, run on the leader.
//!
//! Raft's own membership (who votes) and the state machine's member records (names and
//! addresses, for operators) change together: first Raft's, then the record.

use super::service::{ControlService, Redirect, redirect};
use crate::api::{ControlError, ControlReply, ControlRequest, Envelope};
use crate::state::{Command, Member, MemberId};
use crate::store::NodeId;
use openraft::{BasicNode, ChangeMembers, ServerState};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a leadership transfer may take before it is abandoned.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);
/// How often a campaigning replica asks for votes again.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(40);
/// How long a snapshot may take to build.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// How long a learner may take to catch up before `join` gives up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

fn fail(message: impl Into<String>) -> Redirect {
    Redirect::Failed(ControlError::Membership(message.into()))
}

/// Fails with a redirect unless this replica leads.
fn require_leader(svc: &ControlService) -> Result<(), Redirect> {
    let m = svc.metrics();
    if m.state == ServerState::Leader {
        return Ok(());
    }
    let leader = m.current_leader.ok_or(ControlError::NoLeader)?;
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
        .ok_or(ControlError::NoLeader)?;
    Err(Redirect::Leader { id: leader, addr })
}

fn voters(svc: &ControlService) -> BTreeSet<NodeId> {
    svc.metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

fn is_node(svc: &ControlService, id: NodeId) -> Option<BasicNode> {
    svc.metrics()
        .membership_config
        .membership()
        .get_node(&id)
        .cloned()
}

/// Records `member` in the state machine unless an identical record exists; replaces a
/// different record of the same id.
async fn record(svc: &ControlService, member: &Member) -> Result<u64, Redirect> {
    let existing = svc.applied.borrow().members.get(&member.id).cloned();
    match existing {
        Some(m) if &m == member => return Ok(svc.metrics().last_applied.map_or(0, |l| l.index)),
        Some(_) => {
            svc.write(Command::RemoveMember { id: member.id }).await?;
        }
        None => {}
    }
    match svc
        .write(Command::AddMember {
            member: member.clone(),
        })
        .await?
    {
        ControlReply::Written { log_index, .. } => Ok(log_index),
        _ => Ok(0),
    }
}

/// Adds `member` as a learner (waiting until it has caught up) and records it.
pub(crate) async fn add_learner(
    svc: &ControlService,
    member: &Member,
) -> Result<ControlReply, Redirect> {
    require_leader(svc)?;
    if voters(svc).contains(&member.id) {
        return Err(fail(format!("replica {} is already a voter", member.id)));
    }
    learn(svc, member).await?;
    let log_index = record(svc, member).await?;
    Ok(ControlReply::Done { log_index })
}

async fn learn(svc: &ControlService, member: &Member) -> Result<(), Redirect> {
    let node = BasicNode::new(member.raft_addr.to_string());
    if is_node(svc, member.id).as_ref() == Some(&node) {
        return Ok(());
    }
    if is_node(svc, member.id).is_some() {
        return Err(fail(format!(
            "replica {} is already a member at another address; remove it first",
            member.id
        )));
    }
    let added = tokio::time::timeout(CATCH_UP_WAIT, svc.raft.add_learner(member.id, node, true))
        .await
        .map_err(|_| {
            Redirect::Failed(ControlError::Timeout {
                after_ms: CATCH_UP_WAIT.as_millis() as u64,
            })
        })?;
    added.map_err(redirect)?;
    Ok(())
}

/// Adds `member` as a learner, promotes it to voter once caught up, and records it. A
/// replica that is already a voter at the same address only has its record checked.
pub(crate) async fn join(svc: &ControlService, member: &Member) -> Result<ControlReply, Redirect> {
    require_leader(svc)?;
    learn(svc, member).await?;
    if !voters(svc).contains(&member.id) {
        svc.raft
            .change_membership(
                ChangeMembers::AddVoterIds(BTreeSet::from([member.id])),
                false,
            )
            .await
            .map_err(redirect)?;
    }
    let log_index = record(svc, member).await?;
    Ok(ControlReply::Done { log_index })
}

/// Makes learner `id` a voter.
pub(crate) async fn promote(svc: &ControlService, id: MemberId) -> Result<ControlReply, Redirect> {
    require_leader(svc)?;
    if voters(svc).contains(&id) {
        return Err(fail(format!("replica {id} is already a voter")));
    }
    if is_node(svc, id).is_none() {
        return Err(fail(format!("replica {id} is not a learner; add it first")));
    }
    let resp = svc
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(redirect)?;
    Ok(ControlReply::Done {
        log_index: resp.log_id.index,
    })
}

/// Removes replica `id`: first its record (so the write does not depend on who leads after a
/// leader removes itself), then its place in Raft.
pub(crate) async fn remove(svc: &ControlService, id: MemberId) -> Result<ControlReply, Redirect> {
    require_leader(svc)?;
    let voters = voters(svc);
    let in_raft = is_node(svc, id).is_some();
    let recorded = svc.applied.borrow().members.contains_key(&id);
    if !in_raft && !recorded {
        return Err(Redirect::Failed(ControlError::Rejected(
            crate::state::Rejected::UnknownMember { id },
        )));
    }
    if voters.contains(&id) && voters.len() == 1 {
        return Err(fail(format!("replica {id} is the last voter")));
    }
    let mut log_index = 0;
    if recorded
        && let ControlReply::Written { log_index: i, .. } =
            svc.write(Command::RemoveMember { id }).await?
    {
        log_index = i;
    }
    let change = if voters.contains(&id) {
        Some(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
    } else if in_raft {
        Some(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
    } else {
        None
    };
    if let Some(change) = change {
        // A leader that removes itself steps down once the change commits.
        let resp = svc
            .raft
            .change_membership(change, false)
            .await
            .map_err(redirect)?;
        log_index = resp.log_id.index;
    }
    Ok(ControlReply::Done { log_index })
}

/// Hands leadership to voter `to`: stops heartbeats so the followers' leader leases lapse,
/// and asks `to` to campaign; `to` has the whole log, so it wins before any other follower's
/// election timer fires. Heartbeats resume whatever happens.
pub(crate) async fn transfer(svc: &ControlService, to: MemberId) -> Result<ControlReply, Redirect> {
    require_leader(svc)?;
    if to == svc.id {
        return Ok(ControlReply::Done {
            log_index: svc.metrics().last_applied.map_or(0, |l| l.index),
        });
    }
    if !voters(svc).contains(&to) {
        return Err(fail(format!("replica {to} is not a voter")));
    }
    let addr = is_node(svc, to)
        .and_then(|n| n.addr.parse().ok())
        .ok_or_else(|| fail(format!("replica {to} has no usable address")))?;
    svc.raft.runtime_config().heartbeat(false);
    let asked = svc
        .client
        .call(
            addr,
            &Envelope {
                forwarded: false,
                request: ControlRequest::Campaign,
            },
        )
        .await;
    let mut metrics = svc.raft.metrics();
    let won = tokio::time::timeout(
        TRANSFER_WAIT,
        metrics.wait_for(|m| m.current_leader == Some(to)),
    )
    .await;
    svc.raft.runtime_config().heartbeat(true);
    match (won, asked) {
        (Ok(Ok(m)), _) => Ok(ControlReply::Done {
            log_index: m.last_log_index.unwrap_or(0),
        }),
        (_, Err(e)) => Err(fail(format!(
            "replica {to} could not be asked to campaign: {e}"
        ))),
        (_, Ok(Err(e))) => Err(Redirect::Failed(e)),
        _ => Err(Redirect::Failed(ControlError::Timeout {
            after_ms: TRANSFER_WAIT.as_millis() as u64,
        })),
    }
}

/// Asks for votes until this replica leads or the transfer's time is up. Answers at once and
/// campaigns in the background, so the old leader sees the outcome in its own metrics.
pub(crate) async fn campaign(svc: &ControlService) -> Result<ControlReply, Redirect> {
    let raft = svc.raft.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
        while tokio::time::Instant::now() < deadline {
            if raft.metrics().borrow().state == ServerState::Leader
                || raft.trigger().elect().await.is_err()
            {
                return;
            }
            tokio::time::sleep(CAMPAIGN_EVERY).await;
        }
    });
    Ok(ControlReply::Done {
        log_index: svc.metrics().last_log_index.unwrap_or(0),
    })
}

/// Builds a snapshot on the leader and waits until it covers what was applied when asked.
pub(crate) async fn snapshot(svc: &ControlService) -> Result<ControlReply, Redirect> {
    require_leader(svc)?;
    let target = svc.metrics().last_applied.map_or(0, |l| l.index);
    svc.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| Redirect::Failed(ControlError::Raft(e.to_string())))?;
    let mut metrics = svc.raft.metrics();
    let done = tokio::time::timeout(
        SNAPSHOT_WAIT,
        metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= target)),
    )
    .await
    .map_err(|_| {
        Redirect::Failed(ControlError::Timeout {
            after_ms: SNAPSHOT_WAIT.as_millis() as u64,
        })
    })?
    .map_err(|e| Redirect::Failed(ControlError::Raft(e.to_string())))?;
    Ok(ControlReply::Snapshot {
        index: done.snapshot.map_or(target, |s| s.index),
    })
}
