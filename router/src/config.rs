//! The router's configuration: where to listen, which nodes exist, which models they serve, and
//! how to place requests. Static deployments until the Raft control plane replaces them.
//!
//! ```toml
//! id = "router-1"
//! http = "127.0.0.1:8080"
//! policy = "predicted_ttft"
//! default_slo = "default"
//!
//! [tls]
//! dir = "/var/lib/strata/certs"
//! member = "router-1"
//!
//! [[nodes]]
//! id = "node-1"
//! addr = "127.0.0.1:7001"
//!
//! [[models]]
//! name = "tiny"
//! # dir = "/models/llama-3-8b"   # tokenizer.json + tokenizer_config.json; absent: bytes
//! instances = [["node-1"], ["node-2"]]
//!
//! [[slo]]
//! name = "interactive"
//! ttft_ms = 1000
//! tpot_ms = 50
//! priority = 1
//! ```

use crate::place::Policy;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use strata_transport::proto::{SloClass, SloError};

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
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// SLO classes a request may name (header `x-strata-slo`), besides `default`.
    #[serde(default)]
    pub slo: Vec<SloClass>,
    /// The class of requests that name none.
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

/// A node the router may forward to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: String,
    pub addr: SocketAddr,
}

/// A deployed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients use (`"model"` in requests).
    pub name: String,
    /// An HF model directory holding `tokenizer.json` (and `tokenizer_config.json` with the
    /// chat template). Absent: the byte tokenizer and the built-in template.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Instances, each the node ids of its stages in order (one id: a single-node instance).
    pub instances: Vec<Vec<String>>,
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
    SloClass::default().name
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
    /// Two nodes, models or SLO classes share a name.
    #[error("duplicate {what} `{name}`")]
    Duplicate { what: &'static str, name: String },
    /// A model's instance names a node that is not in `nodes`.
    #[error("model `{model}` names node `{node}`, which is not in [[nodes]]")]
    UnknownNode { model: String, node: String },
    /// A model has no instances, or an instance has no nodes.
    #[error("model `{model}` has an empty instance list or an instance with no nodes")]
    EmptyInstance { model: String },
    /// `default_slo` names no class.
    #[error("default_slo `{0}` is not a configured SLO class")]
    UnknownDefaultSlo(String),
    /// An SLO class has a bad target.
    #[error(transparent)]
    Slo(#[from] SloError),
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

    /// Every SLO class, the built-in `default` included unless the file redefines it.
    pub fn slo_classes(&self) -> Vec<SloClass> {
        let mut all = self.slo.clone();
        if !all.iter().any(|c| c.name == SloClass::default().name) {
            all.push(SloClass::default());
        }
        all
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        unique("node", self.nodes.iter().map(|n| n.id.as_str()))?;
        unique("model", self.models.iter().map(|m| m.name.as_str()))?;
        unique("SLO class", self.slo.iter().map(|c| c.name.as_str()))?;
        let nodes: HashSet<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        for m in &self.models {
            if m.instances.is_empty() || m.instances.iter().any(Vec::is_empty) {
                return Err(ConfigError::EmptyInstance {
                    model: m.name.clone(),
                });
            }
            for node in m.instances.iter().flatten() {
                if !nodes.contains(node.as_str()) {
                    return Err(ConfigError::UnknownNode {
                        model: m.name.clone(),
                        node: node.clone(),
                    });
                }
            }
        }
        let classes = self.slo_classes();
        for c in &classes {
            c.validate()?;
        }
        if !classes.iter().any(|c| c.name == self.default_slo) {
            return Err(ConfigError::UnknownDefaultSlo(self.default_slo.clone()));
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

fn unique<'a>(what: &'static str, names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(ConfigError::Duplicate {
                what,
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        id = "router-1"
        [tls]
        dir = "/tmp/certs"
        member = "router-1"
        [[nodes]]
        id = "node-1"
        addr = "127.0.0.1:7001"
        [[nodes]]
        id = "node-2"
        addr = "127.0.0.1:7002"
        [[models]]
        name = "tiny"
        instances = [["node-1"], ["node-2"]]
        [[slo]]
        name = "interactive"
        ttft_ms = 1000
        tpot_ms = 50
        priority = 1
    "#;

    fn parse(text: &str) -> RouterConfig {
        toml::from_str(text).expect("parse")
    }

    #[test]
    fn example_parses_with_defaults() {
        let cfg = parse(EXAMPLE);
        cfg.validate().expect("valid");
        assert_eq!(cfg.http, default_http());
        assert_eq!(cfg.policy, Policy::PredictedTtft);
        assert_eq!(cfg.limits, Limits::default());
        let names: Vec<_> = cfg.slo_classes().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["interactive", "default"]);
    }

    #[test]
    fn rejects_what_cannot_run() {
        let mut cfg = parse(EXAMPLE);
        cfg.models[0].instances.push(vec!["node-9".into()]);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UnknownNode { node, .. }) if node == "node-9"
        ));
        let mut cfg = parse(EXAMPLE);
        cfg.nodes.push(cfg.nodes[0].clone());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Duplicate { what: "node", .. })
        ));
        let mut cfg = parse(EXAMPLE);
        cfg.default_slo = "gold".into();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UnknownDefaultSlo(_))
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
        cfg.models[0].instances.push(vec![]);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::EmptyInstance { .. })
        ));
        assert!(toml::from_str::<RouterConfig>("id = 1").is_err());
    }
}
