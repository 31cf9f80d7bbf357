//! What the node service tests share.

use std::path::PathBuf;
use strata_transport::tls::{ClusterCa, Identity, Role};

/// A temporary certificate directory with the CA and `node-1`'s files (role `node`), the CA
/// (to issue more certificates) and a router identity (role `router`); removed on drop.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: ClusterCa,
    #[allow(dead_code)] // not every test binary dials the node as a router
    pub router: Identity,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fresh certificates in a directory named after the test binary's `prefix` and `tag`.
pub fn certs(prefix: &str, tag: &str) -> Certs {
    let dir = std::env::temp_dir().join(format!("strata-{prefix}-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    ca.write(&dir).unwrap();
    ca.issue_to_as("node-1", Role::Node, &dir).unwrap();
    let router = ca.issue_as("router-1", Role::Router).unwrap();
    Certs { dir, ca, router }
}
