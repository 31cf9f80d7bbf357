//! `strata certs`: the cluster CA and member certificates for mutual TLS.

use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use strata_transport::tls::{self, ClusterCa};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA and a certificate for each member, as PEM files in `--dir`:
    /// `ca.pem`, and `<member>.pem` with `<member>.key` (owner-readable only). Every member
    /// trusts only peers whose certificate this CA issued. The CA's key is not kept: to add a
    /// member later, create the cluster's certificates anew.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Member names (router replicas and nodes), comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "router-1,router-2,router-3,node-1,node-2"
        )]
        members: Vec<String>,
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
            members,
            cluster,
            force,
        } => {
            for path in init(&dir, &members, &cluster, force)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// Writes the CA and every member's certificate; returns the files written.
pub fn init(
    dir: &Path,
    members: &[String],
    cluster: &str,
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    if members.is_empty() {
        bail!("give at least one member (--members)");
    }
    if let Some(bad) = members.iter().find(|m| {
        m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        bail!("member name {bad:?}: use letters, digits, '-' and '_'");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut targets = vec![tls::ca_file(dir)];
    for m in members {
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
    for m in members {
        let (c, k) = ca.issue_to(m, dir)?;
        written.extend([c, k]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_transport::tls::Identity;

    #[test]
    fn init_writes_loadable_identities_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("strata-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let members = vec!["router-1".to_string(), "node-1".to_string()];
        let written = init(&dir, &members, "t", false).unwrap();
        assert_eq!(written.len(), 5);
        let a = Identity::load(&dir, "router-1").unwrap();
        let b = Identity::load(&dir, "node-1").unwrap();
        assert_eq!(a.ca, b.ca);
        assert_ne!(a.cert, b.cert);
        assert!(a.server_config().is_ok() && a.client_config().is_ok());
        let err = init(&dir, &members, "t", false).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        assert!(init(&dir, &members, "t", true).is_ok());
        let missing = Identity::load(&dir, "node-9").err().unwrap().to_string();
        assert!(missing.contains("node-9.key"), "{missing}");
        assert!(init(&dir, &["bad name".to_string()], "t", true).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
