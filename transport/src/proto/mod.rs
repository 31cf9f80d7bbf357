//! The wire vocabulary: types that a node reports and a router reads.
//!
//! - [`ids`] — request and sequence identifiers.
//! - [`slo`] — SLO classes (`ttft_ms`, `tpot_ms`, priority).
//! - [`cost`] — the fitted per-layer cost model of a node (`CostProfile`).
//! - [`kv`] — prefix-cache block hashes (the chain nodes store under and routers look up).
//! - [`msg`] — the messages of node ↔ router streams (`Message`).
//! - [`stage`] — the messages of a pipeline's `Stage` stream (driver → stage 1 → … and back).

pub mod cost;
pub mod ids;
pub mod kv;
pub mod msg;
pub mod slo;
pub mod stage;

pub use cost::{CostProfile, DecodeCoeffs, PrefillCoeffs, TransferCoeffs, WideDecode};
pub use ids::RequestId;
pub use msg::{
    FinishEvent, GenerateRequest, LoadReport, Message, NodeInfo, RegisterAnswer, Registration,
    RejectEvent, RejectReason, TokenEvent, WireFinishReason, WireKvEvent, WireSampling,
};
pub use slo::{SloClass, SloError};
pub use stage::{
    StageOpen, StageReady, StageResult, StageStep, WireBlock, WireLayerKv, WireWorkItem,
};
