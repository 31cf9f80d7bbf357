//! Who is calling: a member's [`Role`], carried in its certificate, and the [`PeerIdentity`]
//! read from a connection's verified certificate.
//!
//! A member certificate names, as DNS subject alternative names, [`SERVER_NAME`] (every
//! member's), the member's own name, and — when it was issued with one — its role as
//! `"{role}.role.strata"`. The TLS handshake has already checked that the certificate comes
//! from the cluster CA; this module only reads what it says.

use super::SERVER_NAME;
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::str::FromStr;

/// The suffix of a role's DNS name in a certificate: `router.role.strata`.
pub const ROLE_SUFFIX: &str = ".role.strata";

/// What a member may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A router replica: a voter of the Raft control plane.
    Router,
    /// A node: serves models, and may register itself with the control plane.
    Node,
    /// An operator: may run `strata admin`.
    Admin,
}

/// A role name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {value:?}: use router, node or admin")]
pub struct RoleError {
    pub value: String,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 3] = [Role::Router, Role::Node, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Node => "node",
            Role::Admin => "admin",
        }
    }

    /// The DNS name that carries this role in a certificate (`node.role.strata`).
    pub fn san(self) -> String {
        format!("{}{ROLE_SUFFIX}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Role, RoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| RoleError {
                value: s.to_string(),
            })
    }
}

/// What a peer's certificate says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The member name the certificate was issued to.
    pub member: String,
    /// The role it was issued with; `None` for a certificate issued without one.
    pub role: Option<Role>,
    /// Lowercase hex SHA-256 of the certificate's DER (see [`fingerprint`]).
    pub fingerprint: String,
}

impl PeerIdentity {
    /// Reads a member certificate: `None` when it cannot be parsed, names no member or more
    /// than one, or names a role that is unknown or more than one.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
        let mut member = None;
        let mut role = None;
        for name in parsed.valid_dns_names() {
            if name == SERVER_NAME {
                continue;
            }
            if let Some(r) = name.strip_suffix(ROLE_SUFFIX) {
                let r: Role = r.parse().ok()?;
                if role.replace(r).is_some() {
                    return None;
                }
            } else if member.replace(name).is_some() {
                return None;
            }
        }
        Some(PeerIdentity {
            member: member?.to_string(),
            role,
            fingerprint: fingerprint(cert),
        })
    }
}

/// The identity of a connection's peer, from the certificate it presented (the first of its
/// chain). `None` before the handshake completes, or when the certificate does not read as a
/// member's (see [`PeerIdentity::from_cert`]).
pub fn peer_identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let any = conn.peer_identity()?;
    let chain = any.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    PeerIdentity::from_cert(chain.first()?)
}

/// Lowercase hex SHA-256 of a certificate's DER: how the control plane recognises a member's
/// certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut hex = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        // Writing into a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::super::{ClusterCa, Identity};
    use super::*;
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(30);

    #[test]
    fn roles_read_and_write_by_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(err.value, "root");
        let text = err.to_string();
        for word in ["root", "router", "node", "admin"] {
            assert!(text.contains(word), "{text}");
        }
        assert_eq!(Role::Node.san(), "node.role.strata");
    }

    #[test]
    fn certificates_name_member_and_role() {
        let ca = ClusterCa::generate("peer").unwrap();
        for r in Role::ALL {
            let id = ca.issue_as("member-7", r).unwrap();
            let peer = PeerIdentity::from_cert(&id.cert).unwrap();
            assert_eq!(peer.member, "member-7");
            assert_eq!(peer.role, Some(r));
            assert_eq!(peer.fingerprint, id.fingerprint());
        }
        let plain = ca.issue("node-3").unwrap();
        let peer = PeerIdentity::from_cert(&plain.cert).unwrap();
        assert_eq!((peer.member.as_str(), peer.role), ("node-3", None));
        // The CA's own certificate names no member.
        assert_eq!(PeerIdentity::from_cert(ca.cert()), None);
    }

    #[test]
    fn fingerprints_are_lowercase_sha256_hex_and_differ_per_certificate() {
        let ca = ClusterCa::generate("fp").unwrap();
        let (a, b) = (ca.issue("a").unwrap(), ca.issue("a").unwrap());
        let fa = a.fingerprint();
        assert_eq!(fa.len(), 64);
        assert!(
            fa.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{fa}"
        );
        assert_eq!(fa, fingerprint(&a.cert));
        assert_ne!(fa, b.fingerprint());
        // SHA-256 of nothing, a known answer.
        assert_eq!(
            fingerprint(&CertificateDer::from(Vec::new())),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Connects `client` to a server holding `server` over loopback QUIC; returns what each
    /// side reads of the other.
    async fn handshake(
        server: &Identity,
        client: &Identity,
    ) -> (Option<PeerIdentity>, Option<PeerIdentity>) {
        let loopback = "127.0.0.1:0".parse().unwrap();
        let srv = server.endpoint(loopback).unwrap();
        let addr = srv.local_addr().unwrap();
        let cli = client.endpoint(loopback).unwrap();
        let accept = async {
            let conn = srv.accept().await.unwrap().await.unwrap();
            peer_identity(&conn)
        };
        let connect = async {
            let conn = cli.connect(addr, SERVER_NAME).unwrap().await.unwrap();
            peer_identity(&conn)
        };
        let both = tokio::time::timeout(BOUND, async { tokio::join!(accept, connect) });
        let (seen_by_server, seen_by_client) = both.await.unwrap();
        cli.close(0u32.into(), b"done");
        srv.close(0u32.into(), b"done");
        (seen_by_server, seen_by_client)
    }

    #[tokio::test]
    async fn each_side_of_a_connection_reads_the_other_role() {
        let ca = ClusterCa::generate("quic").unwrap();
        let router = ca.issue_as("router-1", Role::Router).unwrap();
        let node = ca.issue_as("node-2", Role::Node).unwrap();
        let (seen_by_router, seen_by_node) = handshake(&router, &node).await;
        assert_eq!(
            seen_by_router,
            Some(PeerIdentity {
                member: "node-2".into(),
                role: Some(Role::Node),
                fingerprint: node.fingerprint(),
            })
        );
        let seen_by_node = seen_by_node.unwrap();
        assert_eq!(seen_by_node.member, "router-1");
        assert_eq!(seen_by_node.role, Some(Role::Router));
        assert_eq!(seen_by_node.fingerprint, router.fingerprint());
    }

    #[tokio::test]
    async fn a_certificate_without_a_role_reads_as_none() {
        let ca = ClusterCa::generate("quic").unwrap();
        let router = ca.issue_as("router-1", Role::Router).unwrap();
        let old = ca.issue("node-1").unwrap();
        let (seen_by_router, _) = handshake(&router, &old).await;
        let seen = seen_by_router.unwrap();
        assert_eq!((seen.member.as_str(), seen.role), ("node-1", None));
        assert_eq!(seen.fingerprint, old.fingerprint());
    }
}
