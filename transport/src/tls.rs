//! The cluster's certificate authority and the mutual-TLS configurations built on it.
//!
//! Every member (router replica, node) holds a certificate issued by the cluster CA. Servers
//! require a client certificate from that CA and clients require the same of servers, so a peer
//! whose certificate comes from anywhere else is refused in the handshake.
//!
//! A certificate may also carry its member's [`Role`] (router, node, admin); [`peer_identity`]
//! reads who is on the other end of a connection (see [`peer`]).

mod peer;

pub use peer::{PeerIdentity, ROLE_SUFFIX, Role, RoleError, fingerprint, peer_identity};

use crate::socket::{GsoCapped, SocketError, bind_udp};
use crate::tuning::{TransportTuning, TuningError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name every member certificate carries and every client expects.
pub const SERVER_NAME: &str = "strata-member";
/// ALPN protocol of Strata's QUIC connections.
pub const ALPN: &[u8] = b"strata/1";

/// Certificates that could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A certificate or key file could not be read or written.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// The endpoint's tuning is invalid.
    #[error("transport tuning: {0}")]
    Tuning(#[from] TuningError),
    /// The endpoint's UDP socket could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// An endpoint was made outside an async runtime.
    #[error("a QUIC endpoint needs a running tokio runtime")]
    NoRuntime,
    /// A member name that a certificate cannot carry: not a DNS name, [`SERVER_NAME`], or
    /// ending in [`ROLE_SUFFIX`].
    #[error("member name {member:?}: {reason}")]
    BadMember {
        member: String,
        reason: &'static str,
    },
    /// The endpoint could not start on its socket.
    #[error("starting the endpoint on {addr}: {source}")]
    Endpoint {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// File names of a member's identity in a certificate directory.
pub fn member_files(dir: &Path, member: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{member}.pem")),
        dir.join(format!("{member}.key")),
    )
}

/// File name of the cluster CA certificate in a certificate directory.
pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The cluster CA: signs member certificates.
pub struct ClusterCa {
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

/// A member's certificate chain and key, and the CA it trusts.
#[derive(Clone)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: Vec<u8>,
    pub ca: CertificateDer<'static>,
}

fn read_pem<T: PemObject>(path: &Path) -> Result<T, TlsError> {
    T::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), TlsError> {
    std::fs::write(path, text).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ClusterCa {
    /// A new CA named `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster} cluster CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let signed = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert: signed.der().clone(),
            cert_pem: signed.pem(),
            params,
            key,
        })
    }

    /// Writes `ca.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, TlsError> {
        let path = ca_file(dir);
        write_file(&path, &self.cert_pem)?;
        Ok(path)
    }

    /// Issues a certificate for `member`, with no role, and writes `member.pem` and
    /// `member.key` into `dir` (the key readable by its owner only).
    pub fn issue_to(&self, member: &str, dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
        self.write_member(member, None, dir)
    }

    /// [`issue_to`](Self::issue_to) with `role` in the certificate.
    pub fn issue_to_as(
        &self,
        member: &str,
        role: Role,
        dir: &Path,
    ) -> Result<(PathBuf, PathBuf), TlsError> {
        self.write_member(member, Some(role), dir)
    }

    fn write_member(
        &self,
        member: &str,
        role: Option<Role>,
        dir: &Path,
    ) -> Result<(PathBuf, PathBuf), TlsError> {
        let (cert, key) = self.member_cert(member, role)?;
        let (cert_path, key_path) = member_files(dir, member);
        write_file(&cert_path, &cert.pem())?;
        write_file(&key_path, &key.serialize_pem())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| TlsError::File {
                    path: key_path.clone(),
                    reason: e.to_string(),
                },
            )?;
        }
        Ok((cert_path, key_path))
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A certificate naming [`SERVER_NAME`], `member` and, when given, `role` (as
    /// [`Role::san`]), signed by this CA.
    fn member_cert(
        &self,
        member: &str,
        role: Option<Role>,
    ) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let bad = |reason| TlsError::BadMember {
            member: member.to_string(),
            reason,
        };
        if rustls::pki_types::DnsName::try_from(member).is_err() {
            return Err(bad("not a DNS name"));
        }
        if member == SERVER_NAME {
            return Err(bad("every member's shared name"));
        }
        if member.ends_with(ROLE_SUFFIX) {
            return Err(bad("reserved for roles"));
        }
        let mut names = vec![SERVER_NAME.to_string(), member.to_string()];
        names.extend(role.map(Role::san));
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, member);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key))?;
        Ok((cert, key))
    }

    /// Issues a member certificate named `member`, with no role, in memory.
    pub fn issue(&self, member: &str) -> Result<Identity, TlsError> {
        self.identity(member, None)
    }

    /// Issues a member certificate named `member` with `role`, in memory.
    pub fn issue_as(&self, member: &str, role: Role) -> Result<Identity, TlsError> {
        self.identity(member, Some(role))
    }

    fn identity(&self, member: &str, role: Option<Role>) -> Result<Identity, TlsError> {
        let (cert, key) = self.member_cert(member, role)?;
        Ok(Identity {
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
            ca: self.cert.clone(),
        })
    }
}

fn roots(ca: &CertificateDer<'static>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| TlsError::Config(format!("cluster CA: {e}")))?;
    Ok(roots)
}

/// The transport configuration of the default ([`TransportTuning::lan`]) tuning: flow-control
/// windows sized for bulk KV-block streams, keep-alives, and a bound on how long a silent peer
/// keeps a connection.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    TransportTuning::lan().transport_config()
}

/// ring's TLS 1.3 suites with AES-128-GCM first: it is QUIC's own Initial-packet suite, and
/// bulk streams cost less CPU with it than with AES-256-GCM (10 AES rounds per block instead of
/// 14; rustls would otherwise pick AES-256). AES-256-GCM and ChaCha20-Poly1305 stay available
/// to peers that prefer them.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

impl Identity {
    /// Loads `member`'s identity and the CA from a certificate directory.
    pub fn load(dir: &Path, member: &str) -> Result<Identity, TlsError> {
        let (cert_path, key_path) = member_files(dir, member);
        let key: PrivatePkcs8KeyDer<'static> = read_pem(&key_path)?;
        Ok(Identity {
            cert: read_pem(&cert_path)?,
            key_pkcs8: key.secret_pkcs8_der().to_vec(),
            ca: read_pem(&ca_file(dir))?,
        })
    }

    /// Lowercase hex SHA-256 of this identity's certificate (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// TLS 1.3 server side: requires a client certificate from the cluster CA.
    fn server_tls(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&self.ca)?),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }

    /// TLS 1.3 client side: presents this identity, trusts only the cluster CA.
    fn client_tls(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots(&self.ca)?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }

    /// A QUIC server configuration that requires a client certificate from the cluster CA
    /// (default tuning).
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        self.server_config_tuned(&TransportTuning::default())
    }

    /// [`server_config`](Self::server_config) with the given tuning.
    pub fn server_config_tuned(
        &self,
        tuning: &TransportTuning,
    ) -> Result<quinn::ServerConfig, TlsError> {
        tuning.validate()?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(self.server_tls()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(tuning.transport_config());
        Ok(cfg)
    }

    /// A QUIC client configuration that presents this identity and trusts only the cluster CA
    /// (default tuning).
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        self.client_config_tuned(&TransportTuning::default())
    }

    /// [`client_config`](Self::client_config) with the given tuning.
    pub fn client_config_tuned(
        &self,
        tuning: &TransportTuning,
    ) -> Result<quinn::ClientConfig, TlsError> {
        tuning.validate()?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(self.client_tls()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(tuning.transport_config());
        Ok(cfg)
    }

    /// A QUIC endpoint bound to `addr` that both accepts and makes mutually authenticated
    /// connections, with the default ([`TransportTuning::lan`]) tuning. Call inside a tokio
    /// runtime.
    pub fn endpoint(&self, addr: std::net::SocketAddr) -> Result<quinn::Endpoint, TlsError> {
        self.endpoint_tuned(addr, &TransportTuning::default())
    }

    /// [`endpoint`](Self::endpoint) with the given tuning, on a UDP socket with the tuning's
    /// buffer sizes.
    pub fn endpoint_tuned(
        &self,
        addr: std::net::SocketAddr,
        tuning: &TransportTuning,
    ) -> Result<quinn::Endpoint, TlsError> {
        let server = self.server_config_tuned(tuning)?;
        let client = self.client_config_tuned(tuning)?;
        let runtime = quinn::default_runtime().ok_or(TlsError::NoRuntime)?;
        let (socket, _buffers) = bind_udp(addr, tuning)?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| TlsError::Endpoint { addr, source })?;
        let socket = Arc::new(GsoCapped::new(socket, tuning.max_udp_payload()));
        let mut ep = quinn::Endpoint::new_with_abstract_socket(
            tuning.endpoint_config(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| TlsError::Endpoint { addr, source })?;
        ep.set_default_client_config(client);
        Ok(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::quic::{ClientConnection, ServerConnection, Version};

    #[test]
    fn names_a_certificate_cannot_carry_are_refused() {
        let ca = ClusterCa::generate("names").unwrap();
        for bad in ["", "two words", SERVER_NAME, "x.role.strata", "10.0.0.1"] {
            assert!(
                matches!(
                    ca.issue_as(bad, Role::Node),
                    Err(TlsError::BadMember { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(ca.issue("node_1.example").is_ok());
    }

    /// Members negotiate AES-128-GCM (see [`provider`]): a QUIC handshake in memory.
    #[test]
    fn members_negotiate_aes_128_gcm() {
        let ca = ClusterCa::generate("suite").unwrap();
        let (a, b) = (ca.issue("node-1").unwrap(), ca.issue("node-2").unwrap());
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let mut client = ClientConnection::new(
            Arc::new(a.client_tls().unwrap()),
            Version::V1,
            name,
            b"client params".to_vec(),
        )
        .unwrap();
        let mut server = ServerConnection::new(
            Arc::new(b.server_tls().unwrap()),
            Version::V1,
            b"server params".to_vec(),
        )
        .unwrap();
        for _ in 0..16 {
            let mut buf = Vec::new();
            client.write_hs(&mut buf);
            if !buf.is_empty() {
                server.read_hs(&buf).unwrap();
            }
            let mut buf = Vec::new();
            server.write_hs(&mut buf);
            if !buf.is_empty() {
                client.read_hs(&buf).unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        for suite in [
            client.negotiated_cipher_suite(),
            server.negotiated_cipher_suite(),
        ] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
    }
}
