//! Service-level objectives a request can carry.

use serde::{Deserialize, Serialize};

/// A named SLO class: the latency a request of this class is promised, and its priority.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct SloClass {
    /// Name operators and clients use (`interactive`, `batch`, …).
    pub name: String,
    /// Time to first token the class is promised, in milliseconds.
    pub ttft_ms: f64,
    /// Mean time per output token after the first, in milliseconds.
    pub tpot_ms: f64,
    /// Higher runs first when the node must choose.
    pub priority: u8,
}

/// Why an SLO class is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SloError {
    /// A latency target that is not a positive, finite number of milliseconds.
    #[error("SLO class {name:?}: {field} must be a positive number of milliseconds, got {value}")]
    BadTarget {
        name: String,
        field: &'static str,
        value: f64,
    },
}

impl SloClass {
    /// Checks that both targets are positive and finite.
    pub fn validate(&self) -> Result<(), SloError> {
        for (field, value) in [("ttft_ms", self.ttft_ms), ("tpot_ms", self.tpot_ms)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(SloError::BadTarget {
                    name: self.name.clone(),
                    field,
                    value,
                });
            }
        }
        Ok(())
    }
}

impl Default for SloClass {
    /// Interactive long-context serving: 10 s to first token, 100 ms per token.
    fn default() -> Self {
        SloClass {
            name: "default".into(),
            ttft_ms: 10_000.0,
            tpot_ms: 100.0,
            priority: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_positive_targets() {
        let mut slo = SloClass::default();
        assert!(slo.validate().is_ok());
        slo.tpot_ms = 0.0;
        assert!(matches!(
            slo.validate(),
            Err(SloError::BadTarget {
                field: "tpot_ms",
                ..
            })
        ));
        slo.tpot_ms = f64::NAN;
        assert!(slo.validate().is_err());
    }
}
