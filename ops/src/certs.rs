//! `strata certs`: the cluster CA and member certificates for mutual TLS.

use anyhow::{Context, bail};
use clap::Subcommand;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use strata_transport::tls::{self, ClusterCa, Role};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA and a certificate for each member, as PEM files in `--dir`:
    /// `ca.pem`, and `<member>.pem` with `<member>.key` (owner-readable only). Every member
    /// trusts only peers whose certificate this CA issued. The CA's key is not kept: to add a
    /// member later, create the cluster's certificates anew.
    ///
    /// Each certificate carries its member's role, and the control plane allows by role:
    /// `router` — a Raft replica of the control plane (and an HTTP front end); `node` — may
    /// register itself with the control plane, and serves models; `admin` — may run
    /// `strata admin`. Give each name in one list only; pass an empty list (`--admins ''`) to
    /// issue none of a role.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Router replicas (role `router`), comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "router-1,router-2,router-3"
        )]
        routers: Vec<String>,
        /// Nodes (role `node`), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "node-1,node-2")]
        nodes: Vec<String>,
        /// Operators (role `admin`), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        admins: Vec<String>,
        /// Name of the cluster, written into the CA's common name.
        #[arg(long, default_value = "strata")]
        cluster: String,
        /// Overwrite certificates that already exist in `--dir`.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init {
            dir,
            routers,
            nodes,
            admins,
            cluster,
            force,
        } => {
            let members: Vec<(String, Role)> = [
                (routers, Role::Router),
                (nodes, Role::Node),
                (admins, Role::Admin),
            ]
            .into_iter()
            .flat_map(|(names, role)| {
                names
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .map(move |n| (n, role))
            })
            .collect();
            for path in init(&dir, &members, &cluster, force)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// Writes the CA and every member's certificate, with its role; returns the files written.
pub fn init(
    dir: &Path,
    members: &[(String, Role)],
    cluster: &str,
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    if members.is_empty() {
        bail!("give at least one member (--routers, --nodes, --admins)");
    }
    if let Some((bad, _)) = members.iter().find(|(m, _)| {
        m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        bail!("member name {bad:?}: use letters, digits, '-' and '_'");
    }
    let mut seen = HashMap::new();
    for (m, role) in members {
        if let Some(first) = seen.insert(m.as_str(), *role) {
            bail!("member {m:?} is given twice (as {first} and as {role}); give each name once");
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut targets = vec![tls::ca_file(dir)];
    for (m, _) in members {
        let (c, k) = tls::member_files(dir, m);
        targets.extend([c, k]);
    }
    if !force && let Some(existing) = targets.iter().find(|p| p.exists()) {
        bail!(
            "{} exists; pass --force to replace the cluster's certificates",
            existing.display()
        );
    }
    let ca = ClusterCa::generate(cluster)?;
    let mut written = vec![ca.write(dir)?];
    for (m, role) in members {
        let (c, k) = ca.issue_to_as(m, *role, dir)?;
        written.extend([c, k]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_transport::tls::{Identity, PeerIdentity};

    #[test]
    fn init_writes_loadable_identities_with_roles_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("strata-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let members = vec![
            ("router-1".to_string(), Role::Router),
            ("node-1".to_string(), Role::Node),
            ("admin".to_string(), Role::Admin),
        ];
        let written = init(&dir, &members, "t", false).unwrap();
        assert_eq!(written.len(), 7);
        let a = Identity::load(&dir, "router-1").unwrap();
        let b = Identity::load(&dir, "node-1").unwrap();
        assert_eq!(a.ca, b.ca);
        assert_ne!(a.cert, b.cert);
        assert!(a.server_config().is_ok() && a.client_config().is_ok());
        for (m, role) in &members {
            let id = Identity::load(&dir, m).unwrap();
            let peer = PeerIdentity::from_cert(&id.cert).unwrap();
            assert_eq!((peer.member.as_str(), peer.role), (m.as_str(), Some(*role)));
        }
        let err = init(&dir, &members, "t", false).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        assert!(init(&dir, &members, "t", true).is_ok());
        let missing = Identity::load(&dir, "node-9").err().unwrap().to_string();
        assert!(missing.contains("node-9.key"), "{missing}");
        let bad = [("bad name".to_string(), Role::Node)];
        assert!(init(&dir, &bad, "t", true).is_err());
        let twice = [
            ("x".to_string(), Role::Node),
            ("x".to_string(), Role::Admin),
        ];
        let err = init(&dir, &twice, "t", true).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
        assert!(init(&dir, &[], "t", true).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_default_to_three_routers_two_nodes_and_an_admin() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: CertsCommand,
        }
        let Cli {
            cmd:
                CertsCommand::Init {
                    routers,
                    nodes,
                    admins,
                    ..
                },
        } = Cli::parse_from(["certs", "init", "--dir", "d"]);
        assert_eq!(routers, ["router-1", "router-2", "router-3"]);
        assert_eq!(nodes, ["node-1", "node-2"]);
        assert_eq!(admins, ["admin"]);
        let Cli {
            cmd: CertsCommand::Init { nodes, admins, .. },
        } = Cli::parse_from([
            "certs", "init", "--dir", "d", "--nodes", "a,b,c", "--admins", "",
        ]);
        assert_eq!(nodes, ["a", "b", "c"]);
        assert_eq!(admins, [""], "empty names are dropped by run");
    }
}
