//! Tables (or JSON) for `strata admin`'s answers.

use super::{AdminCommand, LeaderCommand, MembersCommand, PolicyCommand, SloCommand};
use std::fmt::Write as _;
use strata_raft::api::{ControlReply, Status};
use strata_raft::state::ClusterState;

/// Which part of an answer to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Status,
    Nodes,
    Members,
    Leader,
    Slo,
    Policy,
    /// The outcome of a change.
    Outcome,
}

impl View {
    pub fn of(cmd: &AdminCommand) -> View {
        match cmd {
            AdminCommand::Status { .. } => View::Status,
            AdminCommand::Nodes => View::Nodes,
            AdminCommand::Members(MembersCommand::List) => View::Members,
            AdminCommand::Leader(LeaderCommand::Show) => View::Leader,
            AdminCommand::Slo(SloCommand::List) => View::Slo,
            AdminCommand::Policy(PolicyCommand::Show) => View::Policy,
            _ => View::Outcome,
        }
    }
}

/// The text to print.
pub fn render(view: View, reply: &ControlReply, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(match (view, reply) {
            (View::Status, ControlReply::Status(s)) => serde_json::to_string_pretty(s)?,
            (View::Nodes, ControlReply::Status(s)) => serde_json::to_string_pretty(&s.nodes)?,
            (View::Members, ControlReply::Status(s)) => serde_json::to_string_pretty(&s.members)?,
            (View::Leader, ControlReply::Status(s)) => serde_json::to_string_pretty(
                &serde_json::json!({"leader": s.leader, "term": s.term}),
            )?,
            (View::Slo, ControlReply::State { state, .. }) => {
                serde_json::to_string_pretty(&state.slo.values().collect::<Vec<_>>())?
            }
            (View::Policy, ControlReply::State { state, .. }) => {
                serde_json::to_string_pretty(&serde_json::json!({"policy": state.policy}))?
            }
            _ => serde_json::to_string_pretty(reply)?,
        });
    }
    Ok(match (view, reply) {
        (View::Status, ControlReply::Status(s)) => {
            let mut out = summary(s);
            out.push('\n');
            out.push_str(&members(s));
            out.push('\n');
            out.push_str(&nodes(s));
            out
        }
        (View::Nodes, ControlReply::Status(s)) => nodes(s),
        (View::Members, ControlReply::Status(s)) => members(s),
        (View::Leader, ControlReply::Status(s)) => match s.leader {
            Some(l) => format!("leader {l} (term {})", s.term),
            None => format!("no leader (term {})", s.term),
        },
        (View::Slo, ControlReply::State { state, .. }) => slo(state),
        (View::Policy, ControlReply::State { state, .. }) => format!("policy {}", state.policy),
        (_, ControlReply::Written { version, log_index }) => {
            format!("ok: state version {version} (log index {log_index})")
        }
        (_, ControlReply::Done { log_index }) => format!("ok (log index {log_index})"),
        (_, ControlReply::Snapshot { index }) => {
            format!("ok: snapshot covers the log up to index {index}")
        }
        (_, other) => serde_json::to_string_pretty(other)?,
    })
}

fn summary(s: &Status) -> String {
    let leader = s.leader.map_or("none".into(), |l| l.to_string());
    let deployments = if s.deployments.is_empty() {
        "none".into()
    } else {
        s.deployments
            .iter()
            .map(|(m, n)| format!("{m} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "leader {leader}  term {}  commit index {}  last log {}  snapshot {}  (answered by {} as {})\n\
         state version {}  policy {}  deployments: {deployments}\n",
        s.term,
        s.commit_index,
        s.last_log_index,
        s.snapshot_index.map_or("-".into(), |i| i.to_string()),
        s.by,
        s.role,
        s.version,
        s.policy,
    )
}

/// Left-aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut out, header.to_vec());
    for r in &rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

fn members(s: &Status) -> String {
    let rows = s
        .members
        .iter()
        .map(|m| {
            let role = if Some(m.id) == s.leader {
                "leader"
            } else {
                m.kind.as_str()
            };
            vec![
                m.id.to_string(),
                m.name.clone(),
                role.to_string(),
                m.raft_addr.clone(),
                m.matched_index.map_or("-".into(), |i| i.to_string()),
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "ADDRESS", "MATCHED"], rows)
}

fn nodes(s: &Status) -> String {
    if s.nodes.is_empty() {
        return "no nodes registered\n".into();
    }
    let pct = |free: u64, total: u64| {
        if total == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.0}%",
                100.0 * (total - free.min(total)) as f64 / total as f64
            )
        }
    };
    let rows = s
        .nodes
        .iter()
        .map(|n| {
            let rt = n.runtime.as_ref();
            let health = match rt {
                None => "unknown",
                Some(r) if r.healthy => "healthy",
                Some(_) => "down",
            };
            let health = if n.record.draining {
                format!("{health}, draining")
            } else {
                health.to_string()
            };
            vec![
                n.record.id.clone(),
                n.record.addr.to_string(),
                n.record.hardware.executor.clone(),
                health,
                rt.map_or("-".into(), |r| r.waiting.to_string()),
                rt.map_or("-".into(), |r| r.running.to_string()),
                rt.map_or("-".into(), |r| pct(r.gpu_free_blocks, r.gpu_blocks)),
                rt.map_or("-".into(), |r| pct(r.host_free_blocks, r.host_blocks)),
                if n.models.is_empty() {
                    "-".into()
                } else {
                    n.models.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "NODE", "ADDRESS", "EXECUTOR", "HEALTH", "WAITING", "RUNNING", "GPU KV", "HOST KV",
            "MODELS",
        ],
        rows,
    )
}

fn slo(state: &ClusterState) -> String {
    let rows = state
        .slo
        .values()
        .map(|c| {
            vec![
                c.name.clone(),
                format!("{}", c.ttft_ms),
                format!("{}", c.tpot_ms),
                c.priority.to_string(),
            ]
        })
        .collect();
    table(&["CLASS", "TTFT MS", "TPOT MS", "PRIORITY"], rows)
}
