//! The cluster view: every instance the router may place on, what its driver node last reported,
//! and which prefix blocks it holds. Sans-IO: node links feed it with `handle_*`, placement reads
//! it; time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use strata_transport::proto::{LoadReport, NodeInfo, WireKvEvent};

/// Bounds the KV index of one instance (distinct block hashes).
pub const MAX_INDEXED_BLOCKS: usize = 1 << 20;

/// Weight of a new observation in the observed/predicted TTFT ratio (EWMA).
const CORRECTION_ALPHA: f64 = 0.2;
/// The correction ratio stays within these bounds, so one outlier cannot silence an instance.
const CORRECTION_RANGE: (f64, f64) = (0.25, 4.0);

/// What the router knows about one instance.
#[derive(Debug, Clone)]
pub struct InstanceState {
    /// The instance's name (its driver node's id for a single-node instance).
    pub id: String,
    pub model: String,
    /// The node that receives requests (stage 0).
    pub driver: String,
    pub info: Option<NodeInfo>,
    pub load: Option<LoadReport>,
    /// When `load` arrived.
    pub load_at: Option<Instant>,
    /// Whether a subscription to the driver is live.
    pub connected: bool,
    /// Requests this router has in flight on the instance.
    pub inflight: u32,
    /// Prompt tokens placed here since the last load report (not yet in its queue figures).
    pub placed_tokens_since_report: u64,
    /// Round-trip time to the driver.
    pub rtt: Duration,
    /// A stage node is draining: no new placements; requests in flight finish.
    pub draining: bool,
    /// Observed / predicted TTFT, smoothed; multiplies the model's prediction.
    pub correction: f64,
    /// Prefix blocks held: hash → (layers on GPU, layers on host).
    kv: HashMap<u64, (u32, u32)>,
}

impl InstanceState {
    fn new(id: String, model: String, driver: String) -> Self {
        InstanceState {
            id,
            model,
            driver,
            info: None,
            load: None,
            load_at: None,
            connected: false,
            inflight: 0,
            placed_tokens_since_report: 0,
            rtt: Duration::ZERO,
            draining: false,
            correction: 1.0,
            kv: HashMap::new(),
        }
    }

    /// Connected, introduced as serving this instance's model, and reported within `silence`.
    pub fn healthy(&self, now: Instant, silence: Duration) -> bool {
        self.connected
            && self.info.as_ref().is_some_and(|i| i.model == self.model)
            && self
                .load_at
                .is_some_and(|at| now.saturating_duration_since(at) <= silence)
    }

    /// Layers of block `hash` on the GPU and on the host tier.
    pub fn cached_layers(&self, hash: u64) -> (u32, u32) {
        self.kv.get(&hash).copied().unwrap_or((0, 0))
    }

    pub fn indexed_blocks(&self) -> usize {
        self.kv.len()
    }
}

/// One instance as the control plane deploys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Its stage nodes joined by `+` (the driver's id for a single-node instance).
    pub id: String,
    pub model: String,
    /// Stage 0's node.
    pub driver: String,
    /// Some stage node is draining.
    pub draining: bool,
}

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    instances: Vec<InstanceState>,
}

impl ClusterView {
    /// A view of `(instance id, model, driver node)` triples, none healthy yet.
    pub fn new(instances: impl IntoIterator<Item = (String, String, String)>) -> Self {
        ClusterView {
            instances: instances
                .into_iter()
                .map(|(id, model, driver)| InstanceState::new(id, model, driver))
                .collect(),
        }
    }

    /// Replaces the set of instances (the deployments changed). Instances that stay keep what
    /// the router learned of them; a new one on a node already linked starts from that node's
    /// `Hello` (`known(node)`), so it is placeable at the node's next load report.
    pub fn set_instances(
        &mut self,
        specs: impl IntoIterator<Item = InstanceSpec>,
        known: impl Fn(&str) -> Option<NodeInfo>,
    ) {
        let mut old: HashMap<String, InstanceState> = self
            .instances
            .drain(..)
            .map(|i| (i.id.clone(), i))
            .collect();
        for spec in specs {
            let mut inst = match old.remove(&spec.id) {
                Some(i) if i.model == spec.model && i.driver == spec.driver => i,
                _ => {
                    let mut i = InstanceState::new(spec.id, spec.model, spec.driver);
                    if let Some(info) = known(&i.driver) {
                        i.info = Some(info);
                        i.connected = true;
                    }
                    i
                }
            };
            inst.draining = spec.draining;
            self.instances.push(inst);
        }
    }

    pub fn instances(&self) -> &[InstanceState] {
        &self.instances
    }

    pub fn instance(&self, id: &str) -> Option<&InstanceState> {
        self.instances.iter().find(|i| i.id == id)
    }

    fn driven_by<'a>(&'a mut self, node: &'a str) -> impl Iterator<Item = &'a mut InstanceState> {
        self.instances.iter_mut().filter(move |i| i.driver == node)
    }

    /// A subscription to `node` started and it introduced itself.
    pub fn handle_hello(&mut self, node: &str, info: NodeInfo) {
        for inst in self.driven_by(node) {
            inst.info = Some(info.clone());
            inst.connected = true;
            // A fresh subscription starts a fresh cache index: the node publishes from now on.
            inst.kv.clear();
        }
    }

    pub fn handle_load(&mut self, node: &str, report: LoadReport, now: Instant, rtt: Duration) {
        for inst in self.driven_by(node) {
            inst.load = Some(report.clone());
            inst.load_at = Some(now);
            inst.rtt = rtt;
            inst.placed_tokens_since_report = 0;
        }
    }

    pub fn handle_kv_events(&mut self, node: &str, events: &[WireKvEvent]) {
        for inst in self.driven_by(node) {
            for ev in events {
                match *ev {
                    WireKvEvent::Stored { tier, hash, .. } => {
                        if inst.kv.len() >= MAX_INDEXED_BLOCKS && !inst.kv.contains_key(&hash) {
                            continue; // full: an unindexed block only costs a missed hit
                        }
                        let e = inst.kv.entry(hash).or_default();
                        if tier == 0 {
                            e.0 += 1;
                        } else {
                            e.1 += 1;
                        }
                    }
                    WireKvEvent::Removed { tier, hash, .. } => {
                        if let Some(e) = inst.kv.get_mut(&hash) {
                            if tier == 0 {
                                e.0 = e.0.saturating_sub(1);
                            } else {
                                e.1 = e.1.saturating_sub(1);
                            }
                            if *e == (0, 0) {
                                inst.kv.remove(&hash);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The subscription to `node` ended (or went silent): its instances are unhealthy and their
    /// cache index is forgotten.
    pub fn handle_disconnect(&mut self, node: &str) {
        for inst in self.driven_by(node) {
            inst.connected = false;
            inst.load_at = None;
            inst.kv.clear();
        }
    }

    /// A request of `prompt_tokens` was placed on `instance`.
    pub fn handle_placed(&mut self, instance: &str, prompt_tokens: u64) {
        if let Some(i) = self.instances.iter_mut().find(|i| i.id == instance) {
            i.inflight += 1;
            i.placed_tokens_since_report += prompt_tokens;
        }
    }

    /// A request placed on `instance` ended (any way).
    pub fn handle_done(&mut self, instance: &str) {
        if let Some(i) = self.instances.iter_mut().find(|i| i.id == instance) {
            i.inflight = i.inflight.saturating_sub(1);
        }
    }

    /// The first token of a request arrived: fold observed/predicted into the correction.
    pub fn handle_first_token(&mut self, instance: &str, predicted: Duration, observed: Duration) {
        let Some(i) = self.instances.iter_mut().find(|i| i.id == instance) else {
            return;
        };
        let p = predicted.as_secs_f64() / i.correction;
        if p <= 1e-6 {
            return; // a prediction of nothing carries no ratio
        }
        let ratio = observed.as_secs_f64() / p;
        let next = (1.0 - CORRECTION_ALPHA) * i.correction + CORRECTION_ALPHA * ratio;
        i.correction = next.clamp(CORRECTION_RANGE.0, CORRECTION_RANGE.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_transport::proto::CostProfile;

    pub(crate) fn info(node: &str) -> NodeInfo {
        NodeInfo {
            node: node.into(),
            model: "tiny".into(),
            executor: "sim".into(),
            vocab_size: 512,
            num_layers: 4,
            max_seq_tokens: 32_768,
            block_tokens: 16,
            block_bytes: 4096,
            gpu_blocks: 1000,
            host_blocks: 10_000,
            eos_tokens: vec![2],
        }
    }

    pub(crate) fn load(waiting: u32) -> LoadReport {
        LoadReport {
            seq: 1,
            at_us: 0,
            waiting,
            running: 0,
            waiting_prefill_tokens: 0,
            gpu_free_blocks: 1000,
            host_free_blocks: 10_000,
            predicted_queue_wait_us: 0,
            cost: CostProfile::default(),
        }
    }

    fn view() -> ClusterView {
        ClusterView::new([
            ("node-1".into(), "tiny".into(), "node-1".into()),
            ("node-2".into(), "tiny".into(), "node-2".into()),
        ])
    }

    #[test]
    fn health_needs_hello_and_a_fresh_report() {
        let mut v = view();
        let t0 = Instant::now();
        let silence = Duration::from_millis(500);
        assert!(!v.instances()[0].healthy(t0, silence));
        v.handle_hello("node-1", info("node-1"));
        assert!(!v.instances()[0].healthy(t0, silence), "no report yet");
        v.handle_load("node-1", load(0), t0, Duration::ZERO);
        assert!(v.instances()[0].healthy(t0, silence));
        assert!(!v.instances()[1].healthy(t0, silence));
        assert!(!v.instances()[0].healthy(t0 + Duration::from_secs(1), silence));
        v.handle_disconnect("node-1");
        assert!(!v.instances()[0].healthy(t0, silence));
    }

    #[test]
    fn kv_index_counts_layers_per_tier() {
        let mut v = view();
        v.handle_hello("node-1", info("node-1"));
        let stored = |tier, layer| WireKvEvent::Stored {
            tier,
            hash: 7,
            layer,
        };
        v.handle_kv_events("node-1", &[stored(0, 0), stored(0, 1), stored(1, 2)]);
        assert_eq!(v.instances()[0].cached_layers(7), (2, 1));
        assert_eq!(v.instances()[1].cached_layers(7), (0, 0));
        v.handle_kv_events(
            "node-1",
            &[
                WireKvEvent::Removed {
                    tier: 0,
                    hash: 7,
                    layer: 0,
                },
                WireKvEvent::Removed {
                    tier: 0,
                    hash: 7,
                    layer: 1,
                },
                WireKvEvent::Removed {
                    tier: 1,
                    hash: 7,
                    layer: 2,
                },
            ],
        );
        assert_eq!(v.instances()[0].indexed_blocks(), 0);
    }

    #[test]
    fn set_instances_keeps_what_stays_and_starts_new_ones_from_their_node() {
        let mut v = view();
        let t0 = Instant::now();
        let silence = Duration::from_millis(500);
        v.handle_hello("node-1", info("node-1"));
        v.handle_load("node-1", load(3), t0, Duration::ZERO);
        let spec = |id: &str, model: &str, driver: &str, draining| InstanceSpec {
            id: id.into(),
            model: model.into(),
            driver: driver.into(),
            draining,
        };
        // node-1 stays (drained), node-2 goes, a pipeline driven by node-1 arrives.
        v.set_instances(
            [
                spec("node-1", "tiny", "node-1", true),
                spec("node-1+node-3", "tiny", "node-1", false),
            ],
            |n| (n == "node-1").then(|| info("node-1")),
        );
        assert_eq!(v.instances().len(), 2);
        let kept = v.instance("node-1").unwrap();
        assert!(kept.draining && kept.load.as_ref().unwrap().waiting == 3);
        let new = v.instance("node-1+node-3").unwrap();
        assert!(new.connected && new.info.is_some() && new.load.is_none());
        v.handle_load("node-1", load(0), t0, Duration::ZERO);
        assert!(v.instance("node-1+node-3").unwrap().healthy(t0, silence));
        // An instance of a model its node does not serve is never healthy.
        v.set_instances([spec("node-1", "other", "node-1", false)], |_| {
            Some(info("node-1"))
        });
        v.handle_load("node-1", load(0), t0, Duration::ZERO);
        assert!(!v.instances()[0].healthy(t0, silence));
    }

    #[test]
    fn correction_follows_observations_within_bounds() {
        let mut v = view();
        for _ in 0..50 {
            v.handle_first_token(
                "node-1",
                Duration::from_millis(100),
                Duration::from_millis(200),
            );
            let c = v.instances()[1].correction;
            // The prediction passed in is already corrected: feed the corrected value back.
            let predicted = Duration::from_secs_f64(0.1 * c);
            v.handle_first_token("node-2", predicted, Duration::from_millis(200));
        }
        assert!(v.instances()[0].correction <= CORRECTION_RANGE.1);
        let c2 = v.instances()[1].correction;
        assert!(
            (c2 - 2.0).abs() < 0.05,
            "converges to observed/raw = 2, got {c2}"
        );
        v.handle_placed("node-1", 100);
        assert_eq!(v.instances()[0].inflight, 1);
        assert_eq!(v.instances()[0].placed_tokens_since_report, 100);
        v.handle_done("node-1");
        assert_eq!(v.instances()[0].inflight, 0);
    }
}
