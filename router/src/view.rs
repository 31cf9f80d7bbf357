//! The cluster view: every instance the router may place on, what its driver node last reported,
//! whether its other stage nodes are up, and which prefix blocks it holds. Sans-IO: node links
//! feed it with `handle_*`, placement reads it; time is passed in.
//!
//! A pipeline instance is a chain of stage nodes: requests go to the driver (stage 0), whose
//! reports carry the queue and cost figures placement uses; every other stage node is a
//! *worker* whose link the router keeps too, and the instance is healthy only while each of
//! them is linked, introduced as serving the instance's model, and reporting.

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
    /// The stages after the driver, in pipeline order; empty for a single-node instance.
    pub workers: Vec<WorkerState>,
    /// Prefix blocks held: hash → (layers on GPU, layers on host).
    kv: HashMap<u64, (u32, u32)>,
}

/// What the router knows about one worker (a stage node other than the driver) of an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    pub node: String,
    /// The model its `Hello` named, while linked.
    pub model: Option<String>,
    /// Whether a subscription to it is live.
    pub connected: bool,
    /// When its last load report arrived.
    pub load_at: Option<Instant>,
}

impl WorkerState {
    fn new(node: String) -> Self {
        WorkerState {
            node,
            model: None,
            connected: false,
            load_at: None,
        }
    }

    /// Connected, introduced as serving `model`, and reported within `silence`.
    pub fn healthy(&self, model: &str, now: Instant, silence: Duration) -> bool {
        self.connected && self.model.as_deref() == Some(model) && fresh(self.load_at, now, silence)
    }
}

/// A report that came at `at` is no older than `silence` at `now`.
fn fresh(at: Option<Instant>, now: Instant, silence: Duration) -> bool {
    at.is_some_and(|at| now.saturating_duration_since(at) <= silence)
}

impl InstanceState {
    fn new(id: String, model: String, driver: String, workers: Vec<String>) -> Self {
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
            workers: workers.into_iter().map(WorkerState::new).collect(),
            kv: HashMap::new(),
        }
    }

    /// The driver is connected, introduced as serving this instance's model, and reported
    /// within `silence`; and so is every worker.
    pub fn healthy(&self, now: Instant, silence: Duration) -> bool {
        self.connected
            && self.info.as_ref().is_some_and(|i| i.model == self.model)
            && fresh(self.load_at, now, silence)
            && self
                .workers
                .iter()
                .all(|w| w.healthy(&self.model, now, silence))
    }

    /// Whether `node` is one of this instance's stage nodes.
    pub fn has_stage(&self, node: &str) -> bool {
        self.driver == node || self.workers.iter().any(|w| w.node == node)
    }

    fn worker_nodes(&self) -> impl Iterator<Item = &str> {
        self.workers.iter().map(|w| w.node.as_str())
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
    /// The nodes of stages 1.., in pipeline order; empty for a single-node instance.
    pub workers: Vec<String>,
    /// Some stage node is draining.
    pub draining: bool,
}

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    instances: Vec<InstanceState>,
}

impl ClusterView {
    /// A view of single-node instances, as `(instance id, model, driver node)` triples, none
    /// healthy yet.
    pub fn new(instances: impl IntoIterator<Item = (String, String, String)>) -> Self {
        ClusterView {
            instances: instances
                .into_iter()
                .map(|(id, model, driver)| InstanceState::new(id, model, driver, Vec::new()))
                .collect(),
        }
    }

    /// Replaces the set of instances (the deployments changed). Instances that stay keep what
    /// the router learned of them; a new one whose stage nodes are already linked starts from
    /// their `Hello`s (`known(node)`), so it is placeable once each of them reports again.
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
                Some(i)
                    if i.model == spec.model
                        && i.driver == spec.driver
                        && i.worker_nodes().eq(spec.workers.iter().map(String::as_str)) =>
                {
                    i
                }
                _ => {
                    let mut i = InstanceState::new(spec.id, spec.model, spec.driver, spec.workers);
                    if let Some(info) = known(&i.driver) {
                        i.info = Some(info);
                        i.connected = true;
                    }
                    for w in &mut i.workers {
                        if let Some(info) = known(&w.node) {
                            w.model = Some(info.model);
                            w.connected = true;
                        }
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

    /// The instances `node` is a stage of (driver or worker).
    pub fn instances_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a InstanceState> {
        self.instances.iter().filter(move |i| i.has_stage(node))
    }

    fn driven_by<'a>(&'a mut self, node: &'a str) -> impl Iterator<Item = &'a mut InstanceState> {
        self.instances.iter_mut().filter(move |i| i.driver == node)
    }

    /// Every worker entry of `node`, across the instances it is a stage of.
    fn worker_entries<'a>(
        &'a mut self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a mut WorkerState> {
        self.instances
            .iter_mut()
            .flat_map(|i| i.workers.iter_mut())
            .filter(move |w| w.node == node)
    }

    /// A subscription to `node` started and it introduced itself.
    pub fn handle_hello(&mut self, node: &str, info: NodeInfo) {
        for w in self.worker_entries(node) {
            w.model = Some(info.model.clone());
            w.connected = true;
        }
        for inst in self.driven_by(node) {
            inst.info = Some(info.clone());
            inst.connected = true;
            // A fresh subscription starts a fresh cache index: the node publishes from now on.
            inst.kv.clear();
        }
    }

    /// `node` reported its load. A worker's report only says it is alive: placement reads the
    /// driver's queue and cost figures, which cover the whole pipeline.
    pub fn handle_load(&mut self, node: &str, report: LoadReport, now: Instant, rtt: Duration) {
        for w in self.worker_entries(node) {
            w.load_at = Some(now);
        }
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

    /// The subscription to `node` ended (or went silent): every instance it is a stage of is
    /// unhealthy and forgets its cache index (a stage that comes back holds none of its
    /// layers' blocks; a block missing from the index only costs a missed hit).
    pub fn handle_disconnect(&mut self, node: &str) {
        for inst in self.instances.iter_mut() {
            for w in inst.workers.iter_mut().filter(|w| w.node == node) {
                w.connected = false;
                w.model = None;
                w.load_at = None;
                inst.kv.clear();
            }
        }
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
            workers: id.split('+').skip(1).map(str::to_owned).collect(),
            draining,
        };
        // node-1 stays (drained), node-2 goes, a pipeline driven by node-1 arrives; node-3,
        // its second stage, is already linked.
        v.set_instances(
            [
                spec("node-1", "tiny", "node-1", true),
                spec("node-1+node-3", "tiny", "node-1", false),
            ],
            |n| (n == "node-1" || n == "node-3").then(|| info(n)),
        );
        assert_eq!(v.instances().len(), 2);
        let kept = v.instance("node-1").unwrap();
        assert!(kept.draining && kept.load.as_ref().unwrap().waiting == 3);
        let new = v.instance("node-1+node-3").unwrap();
        assert!(new.connected && new.info.is_some() && new.load.is_none());
        assert!(new.workers[0].connected && new.workers[0].load_at.is_none());
        v.handle_load("node-1", load(0), t0, Duration::ZERO);
        assert!(
            !v.instance("node-1+node-3").unwrap().healthy(t0, silence),
            "its second stage has not reported since the instance appeared"
        );
        v.handle_load("node-3", load(0), t0, Duration::ZERO);
        assert!(v.instance("node-1+node-3").unwrap().healthy(t0, silence));
        // An instance of a model its node does not serve is never healthy.
        v.set_instances([spec("node-1", "other", "node-1", false)], |_| {
            Some(info("node-1"))
        });
        v.handle_load("node-1", load(0), t0, Duration::ZERO);
        assert!(!v.instances()[0].healthy(t0, silence));
    }

    /// A view with the 3-stage instance `a+b+c` and the single-node instance `d`, every node
    /// linked and reported at `t0`.
    fn pipeline_view(t0: Instant) -> ClusterView {
        let mut v = ClusterView::default();
        let spec = |nodes: &[&str]| InstanceSpec {
            id: nodes.join("+"),
            model: "tiny".into(),
            driver: nodes[0].into(),
            workers: nodes[1..].iter().map(|n| n.to_string()).collect(),
            draining: false,
        };
        v.set_instances([spec(&["a", "b", "c"]), spec(&["d"])], |_| None);
        for n in ["a", "b", "c", "d"] {
            v.handle_hello(n, info(n));
            v.handle_load(n, load(0), t0, Duration::ZERO);
        }
        v
    }

    #[test]
    fn a_pipeline_is_healthy_only_while_every_stage_is() {
        let t0 = Instant::now();
        let silence = Duration::from_millis(500);
        let mut v = pipeline_view(t0);
        let healthy =
            |v: &ClusterView, id: &str, now| v.instance(id).unwrap().healthy(now, silence);
        assert!(healthy(&v, "a+b+c", t0) && healthy(&v, "d", t0));
        assert_eq!(v.instances_of("b").count(), 1);

        // The middle stage's link drops: the pipeline is out, the single node is not.
        v.handle_disconnect("b");
        assert!(!healthy(&v, "a+b+c", t0));
        assert!(healthy(&v, "d", t0));
        let driver = v.instance("a+b+c").unwrap();
        assert!(
            driver.connected && driver.load.is_some(),
            "the driver itself is still up"
        );
        // It reconnects: not yet healthy until it reports.
        v.handle_hello("b", info("b"));
        assert!(!healthy(&v, "a+b+c", t0));
        v.handle_load("b", load(0), t0, Duration::ZERO);
        assert!(healthy(&v, "a+b+c", t0));

        // The middle stage goes silent while the others keep reporting.
        let t1 = t0 + Duration::from_millis(400);
        let t2 = t0 + Duration::from_millis(800);
        for n in ["a", "c", "d"] {
            v.handle_load(n, load(0), t1, Duration::ZERO);
        }
        assert!(!healthy(&v, "a+b+c", t2), "b last reported 800 ms ago");
        assert!(healthy(&v, "d", t2));
        v.handle_load("b", load(0), t2, Duration::ZERO);
        assert!(healthy(&v, "a+b+c", t2));

        // A worker that serves another model does not make the instance healthy.
        let other = NodeInfo {
            model: "other".into(),
            ..info("c")
        };
        v.handle_hello("c", other);
        v.handle_load("c", load(0), t2, Duration::ZERO);
        assert!(!healthy(&v, "a+b+c", t2));
        v.handle_hello("c", info("c"));
        assert!(healthy(&v, "a+b+c", t2));
    }

    #[test]
    fn a_workers_reports_leave_the_drivers_figures_alone() {
        let t0 = Instant::now();
        let mut v = pipeline_view(t0);
        v.handle_load("a", load(2), t0, Duration::from_millis(3));
        v.handle_load("b", load(9), t0, Duration::from_millis(7));
        v.handle_kv_events(
            "b",
            &[WireKvEvent::Stored {
                tier: 0,
                hash: 1,
                layer: 2,
            }],
        );
        let inst = v.instance("a+b+c").unwrap();
        assert_eq!(inst.load.as_ref().unwrap().waiting, 2);
        assert_eq!(inst.rtt, Duration::from_millis(3));
        assert_eq!(
            inst.indexed_blocks(),
            0,
            "the driver publishes the pipeline's cache"
        );
        // A stage's link dropping forgets the pipeline's cache index: a stage that comes
        // back holds none of its layers' blocks.
        v.handle_kv_events(
            "a",
            &[WireKvEvent::Stored {
                tier: 0,
                hash: 1,
                layer: 0,
            }],
        );
        assert_eq!(v.instance("a+b+c").unwrap().indexed_blocks(), 1);
        v.handle_disconnect("c");
        assert_eq!(v.instance("a+b+c").unwrap().indexed_blocks(), 0);
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
