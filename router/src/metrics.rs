//! The router's metrics: a small registry owned by whoever creates it (no global recorder, so
//! several routers can live in one process), rendered in Prometheus text format.
//!
//! Label values are bounded: at most [`MAX_ENDPOINTS`] endpoints and [`MAX_INSTANCES`]
//! instances get their own series; the rest are counted under `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Distinct `endpoint` label values before the rest are counted as `other`.
pub const MAX_ENDPOINTS: usize = 32;
/// Distinct `instance` label values before the rest are counted as `other`.
pub const MAX_INSTANCES: usize = 256;
const OTHER: &str = "other";

/// Buckets (seconds) of request latencies: TTFT, TPOT, end to end, predictions.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets (seconds) of the router's own overhead.
const ROUTING_BUCKETS_S: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// A histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            sample(out, &format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        sample(out, &format!("{name}_sum"), labels, self.sum);
        sample(out, &format!("{name}_count"), labels, self.count as f64);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    routing: Histogram,
    predicted: BTreeMap<String, Histogram>,
    observed: BTreeMap<String, Histogram>,
    instances: BTreeMap<String, InstanceGauges>,
}

/// What the router last heard from an instance (its driver's load report).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InstanceGauges {
    pub healthy: bool,
    pub waiting: u32,
    pub running: u32,
    /// Observed / predicted TTFT correction the predictor applies.
    pub correction: f64,
}

/// The router's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    in_flight: Arc<AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicI64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                ttft: Histogram::new(LATENCY_BUCKETS_S),
                tpot: Histogram::new(LATENCY_BUCKETS_S),
                e2e: Histogram::new(LATENCY_BUCKETS_S),
                routing: Histogram::new(ROUTING_BUCKETS_S),
                predicted: BTreeMap::new(),
                observed: BTreeMap::new(),
                instances: BTreeMap::new(),
            }),
            in_flight: Arc::new(AtomicI64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a response of `endpoint` with HTTP `status`.
    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut inner = self.lock();
        let endpoints: std::collections::BTreeSet<&str> =
            inner.requests.keys().map(|(e, _)| e.as_str()).collect();
        let endpoint = if endpoints.contains(endpoint) || endpoints.len() < MAX_ENDPOINTS {
            endpoint
        } else {
            OTHER
        };
        *inner
            .requests
            .entry((endpoint.to_owned(), status))
            .or_insert(0) += 1;
    }

    /// Time from a request's arrival to its first output token.
    pub fn observe_ttft(&self, ttft: Duration) {
        self.lock().ttft.observe(ttft.as_secs_f64());
    }

    /// Mean time per output token after the first, of one request.
    pub fn observe_tpot(&self, tpot: Duration) {
        self.lock().tpot.observe(tpot.as_secs_f64());
    }

    /// Time from a request's arrival to its last byte.
    pub fn observe_e2e(&self, e2e: Duration) {
        self.lock().e2e.observe(e2e.as_secs_f64());
    }

    /// Time the router spent placing and forwarding a request.
    pub fn observe_routing(&self, routing: Duration) {
        self.lock().routing.observe(routing.as_secs_f64());
    }

    /// A placement's predicted TTFT next to the TTFT observed, on `instance`.
    pub fn observe_prediction(&self, instance: &str, predicted_s: f64, observed_s: f64) {
        let mut inner = self.lock();
        let key = if inner.predicted.contains_key(instance) || inner.predicted.len() < MAX_INSTANCES
        {
            instance
        } else {
            OTHER
        };
        let new = || Histogram::new(LATENCY_BUCKETS_S);
        inner
            .predicted
            .entry(key.to_owned())
            .or_insert_with(new)
            .observe(predicted_s);
        inner
            .observed
            .entry(key.to_owned())
            .or_insert_with(new)
            .observe(observed_s);
    }

    /// Sets the gauges of `instance` (bounded like the per-instance histograms).
    pub fn set_instance(&self, instance: &str, gauges: InstanceGauges) {
        let mut inner = self.lock();
        if inner.instances.contains_key(instance) || inner.instances.len() < MAX_INSTANCES {
            inner.instances.insert(instance.to_owned(), gauges);
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// All metrics in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        header(
            &mut out,
            "strata_requests_total",
            "counter",
            "HTTP responses by endpoint and status.",
        );
        for ((endpoint, status), count) in &inner.requests {
            let status = status.to_string();
            let labels = [("endpoint", endpoint.as_str()), ("status", status.as_str())];
            sample(&mut out, "strata_requests_total", &labels, *count as f64);
        }
        header(
            &mut out,
            "strata_requests_in_flight",
            "gauge",
            "Requests being served now.",
        );
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        sample(&mut out, "strata_requests_in_flight", &[], in_flight as f64);
        let latencies = [
            ("strata_ttft_seconds", &inner.ttft, "Time to first token."),
            (
                "strata_tpot_seconds",
                &inner.tpot,
                "Mean time per output token after the first.",
            ),
            (
                "strata_e2e_seconds",
                &inner.e2e,
                "Request latency, arrival to last token.",
            ),
            (
                "strata_routing_overhead_seconds",
                &inner.routing,
                "Arrival to the request reaching its node.",
            ),
        ];
        for (name, hist, help) in latencies {
            header(&mut out, name, "histogram", help);
            hist.render(name, &[], &mut out);
        }
        let per_instance = [
            (
                "strata_predicted_ttft_seconds",
                &inner.predicted,
                "TTFT the placer predicted.",
            ),
            (
                "strata_observed_ttft_seconds",
                &inner.observed,
                "TTFT observed for placed requests.",
            ),
        ];
        for (name, map, help) in per_instance {
            header(&mut out, name, "histogram", help);
            for (instance, hist) in map {
                hist.render(name, &[("instance", instance)], &mut out);
            }
        }
        type Gauge = fn(&InstanceGauges) -> f64;
        let gauges: [(&str, &str, Gauge); 4] = [
            (
                "strata_instance_healthy",
                "1 when the instance can take requests.",
                |g| f64::from(u8::from(g.healthy)),
            ),
            (
                "strata_instance_waiting",
                "Requests queued on the instance, as it last reported.",
                |g| f64::from(g.waiting),
            ),
            (
                "strata_instance_running",
                "Requests running on the instance, as it last reported.",
                |g| f64::from(g.running),
            ),
            (
                "strata_instance_ttft_correction",
                "Observed / predicted TTFT ratio applied to predictions.",
                |g| g.correction,
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            for (instance, g) in &inner.instances {
                sample(&mut out, name, &[("instance", instance)], value(g));
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{key}=\"{escaped}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        m.observe_ttft(Duration::from_millis(20));
        m.observe_ttft(Duration::from_millis(200));
        m.observe_ttft(Duration::from_secs(100));
        let text = m.render();
        assert!(
            text.contains("strata_ttft_seconds_bucket{le=\"0.025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("strata_ttft_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("strata_ttft_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("strata_ttft_seconds_bucket{le=\"60\"} 2\n"));
        assert!(text.contains("strata_ttft_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("strata_ttft_seconds_count 3\n"));
        assert!(text.contains("strata_ttft_seconds_sum 100.22"));
    }

    #[test]
    fn labels_are_bounded_and_escaped() {
        let m = Metrics::new();
        for i in 0..MAX_INSTANCES + 10 {
            m.observe_prediction(&format!("node-{i}"), 0.1, 0.2);
        }
        let text = m.render();
        assert!(text.contains("strata_predicted_ttft_seconds_count{instance=\"other\"} 10\n"));
        assert!(text.contains("strata_observed_ttft_seconds_sum{instance=\"node-0\"} 0.2\n"));
        assert!(!text.contains("node-300"));
        for i in 0..MAX_ENDPOINTS + 3 {
            m.count_request(&format!("/e{i}"), 200);
        }
        m.count_request("/e0", 500);
        let text = m.render();
        assert!(text.contains("strata_requests_total{endpoint=\"other\",status=\"200\"} 3\n"));
        assert!(text.contains("strata_requests_total{endpoint=\"/e0\",status=\"500\"} 1\n"));
        let m = Metrics::new();
        m.observe_prediction("a\"b\\c\nd", 0.1, 0.2);
        assert!(m.render().contains("{instance=\"a\\\"b\\\\c\\nd\"}"));
    }

    #[test]
    fn in_flight_follows_guards() {
        let m = Metrics::new();
        let a = m.in_flight();
        let b = m.in_flight();
        drop(a);
        assert!(m.render().contains("strata_requests_in_flight 1\n"));
        drop(b);
        assert!(m.render().contains("strata_requests_in_flight 0\n"));
    }
}
