//! The router's configuration: where to listen, its certificate, its Raft replica, and the
//! limits of its HTTP endpoint. What the cluster serves (nodes, deployments, SLO classes,
//! the routing policy) is not here: it lives in the replicated control plane, changed with
//! `strata admin`.
//!
//! ```toml
//! id = "router-1"
//! http = "127.0.0.1:8080"      # replicas on one machine may share it (SO_REUSEPORT)
//! default_slo = "default"
//!
//! [tls]
//! dir = "/var/lib/strata/certs"
//! member = "router-1"          # a certificate with the router role
//!
//! [raft]
//! id = 1                       # unique, never reused
//! listen = "127.0.0.1:7101"    # control endpoint: Raft, `strata admin`, node registration
//! db = "/var/lib/strata/router-1.redb"
//! ```

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// This router's name (its certificate's member name by default).
    pub id: String,
    /// The HTTP address of the OpenAI-compatible endpoint.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    pub tls: TlsConfig,
    pub raft: RaftConfig,
    /// The SLO class of requests that name none (built in: 10 s TTFT, 100 ms TPOT, unless the
    /// control plane defines a class of this name).
    #[serde(default = "default_slo_name")]
    pub default_slo: String,
    #[serde(default)]
    pub limits: Limits,
    /// Bearer API keys; empty: the endpoint is open.
    #[serde(default)]
    pub api_keys: Vec<String>,
}

/// The router's certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A directory written by `strata certs init`.
    pub dir: PathBuf,
    /// The member name of this router's certificate.
    pub member: String,
}

/// This router's Raft replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// Raft id: unique in the cluster, never reused.
    pub id: u64,
    /// Where the control endpoint listens (Raft RPCs, `strata admin`, node registration).
    pub listen: SocketAddr,
    /// The address other replicas, nodes and admins dial; default: the bound address.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The replica's redb file (log, vote, state machine, snapshot).
    pub db: PathBuf,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_election_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_logs: u64,
}

fn default_heartbeat_ms() -> u64 {
    50
}
fn default_election_min_ms() -> u64 {
    250
}
fn default_election_max_ms() -> u64 {
    500
}
fn default_snapshot_every() -> u64 {
    1000
}

/// Bounds on requests and on the router's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most prompt tokens a request may carry.
    pub max_prompt_tokens: u32,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: u32,
    /// `max_tokens` of a request that gives none.
    pub default_max_tokens: u32,
    /// Requests in flight through this router at once; more get 429.
    pub max_inflight: usize,
    /// Instances one request may be tried on (placement + failovers).
    pub max_attempts: u32,
    /// A node whose load reports stop for this long is taken as dead, ms.
    pub node_silence_ms: u64,
    /// Time to connect to a node, ms.
    pub connect_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            max_prompt_tokens: 131_072,
            max_tokens: 4096,
            default_max_tokens: 256,
            max_inflight: 1024,
            max_attempts: 3,
            node_silence_ms: 1000,
            connect_timeout_ms: 2000,
        }
    }
}

impl Limits {
    pub fn node_silence(&self) -> Duration {
        Duration::from_millis(self.node_silence_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_slo_name() -> String {
    strata_transport::proto::SloClass::default().name
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Raft's timers are inconsistent.
    #[error(
        "raft: need 0 < heartbeat_ms ({heartbeat_ms}) < election_timeout_min_ms ({min}) < election_timeout_max_ms ({max})"
    )]
    RaftTimers {
        heartbeat_ms: u64,
        min: u64,
        max: u64,
    },
    /// `default_slo` is empty.
    #[error("default_slo must name a class")]
    EmptyDefaultSlo,
    /// Two API keys are the same, or one is empty.
    #[error("api_keys: {0}")]
    ApiKeys(&'static str),
    /// A limit is zero.
    #[error("limits.{field} must be positive")]
    ZeroLimit { field: &'static str },
    /// `max_tokens` defaults above its limit.
    #[error("limits.default_max_tokens {default} exceeds limits.max_tokens {max}")]
    DefaultAboveMax { default: u32, max: u32 },
}

impl RouterConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<RouterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: RouterConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        if !(0 < r.heartbeat_ms
            && r.heartbeat_ms < r.election_timeout_min_ms
            && r.election_timeout_min_ms < r.election_timeout_max_ms)
        {
            return Err(ConfigError::RaftTimers {
                heartbeat_ms: r.heartbeat_ms,
                min: r.election_timeout_min_ms,
                max: r.election_timeout_max_ms,
            });
        }
        if r.snapshot_every_logs == 0 {
            return Err(ConfigError::ZeroLimit {
                field: "raft.snapshot_every_logs",
            });
        }
        if self.default_slo.is_empty() {
            return Err(ConfigError::EmptyDefaultSlo);
        }
        if self.api_keys.iter().any(String::is_empty) {
            return Err(ConfigError::ApiKeys("a key is empty"));
        }
        if self.api_keys.iter().collect::<HashSet<_>>().len() != self.api_keys.len() {
            return Err(ConfigError::ApiKeys("a key is listed twice"));
        }
        let l = &self.limits;
        for (field, v) in [
            ("max_body_bytes", l.max_body_bytes as u64),
            ("max_prompt_tokens", u64::from(l.max_prompt_tokens)),
            ("max_tokens", u64::from(l.max_tokens)),
            ("default_max_tokens", u64::from(l.default_max_tokens)),
            ("max_inflight", l.max_inflight as u64),
            ("max_attempts", u64::from(l.max_attempts)),
            ("node_silence_ms", l.node_silence_ms),
            ("connect_timeout_ms", l.connect_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit { field });
            }
        }
        if l.default_max_tokens > l.max_tokens {
            return Err(ConfigError::DefaultAboveMax {
                default: l.default_max_tokens,
                max: l.max_tokens,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        id = "router-1"
        [tls]
        dir = "/tmp/certs"
        member = "router-1"
        [raft]
        id = 1
        listen = "127.0.0.1:7101"
        db = "/tmp/router-1.redb"
    "#;

    fn parse(text: &str) -> RouterConfig {
        toml::from_str(text).expect("parse")
    }

    #[test]
    fn example_parses_with_defaults() {
        let cfg = parse(EXAMPLE);
        cfg.validate().expect("valid");
        assert_eq!(cfg.http, default_http());
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.default_slo, "default");
        assert_eq!(cfg.raft.heartbeat_ms, 50);
        assert_eq!(cfg.raft.advertise, None);
    }

    #[test]
    fn rejects_what_cannot_run() {
        let mut cfg = parse(EXAMPLE);
        cfg.raft.election_timeout_min_ms = 10;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RaftTimers { min: 10, .. })
        ));
        let mut cfg = parse(EXAMPLE);
        cfg.limits.max_attempts = 0;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::ZeroLimit {
                field: "max_attempts"
            })
        ));
        let mut cfg = parse(EXAMPLE);
        cfg.api_keys = vec!["k".into(), "k".into()];
        assert!(matches!(cfg.validate(), Err(ConfigError::ApiKeys(_))));
        // The static deployments of earlier versions are refused by name.
        let old = format!("{EXAMPLE}\n[[nodes]]\nid = \"n\"\naddr = \"127.0.0.1:1\"\n");
        assert!(toml::from_str::<RouterConfig>(&old).is_err());
        assert!(toml::from_str::<RouterConfig>("id = 1").is_err());
    }
}
