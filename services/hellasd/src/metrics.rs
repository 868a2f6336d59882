//! Prometheus metrics served at `/metrics`.
//!
//! Hellas' own metrics are named `hellas_…`. Beside them, three gauges per loaded model carry the
//! names the Kubernetes Gateway API inference extension's endpoint picker reads by default (they
//! are vLLM's), so a fleet of boxes can sit behind such a gateway with no metric flags at all:
//! `vllm:num_requests_waiting`, `vllm:num_requests_running` and `vllm:kv_cache_usage_perc`,
//! labelled `model_name` as vLLM labels them.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub model: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

/// vLLM's label for the model, which the gateway's endpoint picker may filter on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub model_name: String,
}

/// One model's load, as the gateway's gauges carry it.
pub struct GatewayLoad {
    pub model: String,
    pub waiting: usize,
    pub running: usize,
    /// 0 to 1.
    pub kv_cache_usage: f64,
}

/// The gauges a gateway's endpoint picker reads to choose a box (see the module's doc).
pub struct GatewayGauges {
    pub waiting: Family<GatewayLabels, Gauge>,
    pub running: Family<GatewayLabels, Gauge>,
    pub kv_cache_usage: Family<GatewayLabels, Gauge<f64, AtomicU64>>,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub time_to_first_token: Family<ModelLabels, Histogram>,
    pub request_duration: Family<ModelLabels, Histogram>,
    pub engine_restarts: Family<ModelLabels, Counter>,
    pub models_loaded: Gauge,
    pub memory_budget_bytes: Gauge,
    pub memory_planned_bytes: Family<ModelLabels, Gauge>,
    pub memory_used_bytes: Family<ModelLabels, Gauge>,
    pub memory_gpu_bytes: Family<ModelLabels, Gauge>,
    pub placement_problem: Family<ModelLabels, Gauge>,
    pub gateway: GatewayGauges,
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~80 s: first tokens on a loaded model take milliseconds, a cold load of a large
    // model takes tens of seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let gateway = GatewayGauges { waiting: Family::default(), running: Family::default(), kv_cache_usage: Family::default() };
        root.register("vllm:num_requests_waiting", "Requests waiting for a slot of the model (the gateway's queue depth)", gateway.waiting.clone());
        root.register("vllm:num_requests_running", "Requests the model's engine is answering", gateway.running.clone());
        root.register("vllm:kv_cache_usage_perc", "Fraction of the model's KV cache that running requests hold, 0 to 1", gateway.kv_cache_usage.clone());
        let registry = root.sub_registry_with_prefix("hellas");
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let time_to_first_token = Family::<ModelLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let request_duration = Family::<ModelLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let engine_restarts = Family::<ModelLabels, Counter>::default();
        let models_loaded = Gauge::default();
        let memory_budget_bytes = Gauge::default();
        let memory_planned_bytes = Family::<ModelLabels, Gauge>::default();
        let memory_used_bytes = Family::<ModelLabels, Gauge>::default();
        let memory_gpu_bytes = Family::<ModelLabels, Gauge>::default();
        let placement_problem = Family::<ModelLabels, Gauge>::default();
        registry.register("requests", "API requests by route, model and status", requests.clone());
        registry.register("tokens", "Tokens processed (in: prompt, out: generated)", tokens.clone());
        registry.register("time_to_first_token_seconds", "Time from request to first streamed byte", time_to_first_token.clone());
        registry.register("request_duration_seconds", "Time from request to the end of the response", request_duration.clone());
        registry.register("engine_restarts", "Engine processes that exited unexpectedly", engine_restarts.clone());
        registry.register("models_loaded", "Engines running", models_loaded.clone());
        registry.register("memory_budget_bytes", "Memory available to models", memory_budget_bytes.clone());
        registry.register("memory_planned_bytes", "Memory the planner reserved per loaded model", memory_planned_bytes.clone());
        registry.register("memory_used_bytes", "Resident memory of each engine process", memory_used_bytes.clone());
        registry.register("memory_gpu_bytes", "What each engine holds on the GPU (model, KV cache, compute), from its load log", memory_gpu_bytes.clone());
        registry.register("placement_problem", "1 when an engine runs on the CPU, or offloaded fewer layers than planned, on a box with a GPU", placement_problem.clone());
        Metrics {
            registry: root,
            requests,
            tokens,
            time_to_first_token,
            request_duration,
            engine_restarts,
            models_loaded,
            memory_budget_bytes,
            memory_planned_bytes,
            memory_used_bytes,
            memory_gpu_bytes,
            placement_problem,
            gateway,
        }
    }

    /// The content type of [`Metrics::render`]'s text.
    pub const CONTENT_TYPE: &'static str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn count_request(&self, route: &str, model: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route: route.to_string(), model: model.to_string(), status })
            .inc();
    }

    pub fn count_tokens(&self, model: &str, prompt: u64, generated: u64) {
        self.tokens.get_or_create(&TokenLabels { model: model.to_string(), direction: "in" }).inc_by(prompt);
        self.tokens.get_or_create(&TokenLabels { model: model.to_string(), direction: "out" }).inc_by(generated);
    }

    pub fn model(model: &str) -> ModelLabels {
        ModelLabels { model: model.to_string() }
    }

    /// Sets the gateway's gauges to `models`, and forgets every other model's, so the picker
    /// never reads a stale queue.
    pub fn set_gateway(&self, models: &[GatewayLoad]) {
        let gauges = &self.gateway;
        gauges.waiting.clear();
        gauges.running.clear();
        gauges.kv_cache_usage.clear();
        for load in models {
            let labels = GatewayLabels { model_name: load.model.clone() };
            gauges.waiting.get_or_create(&labels).set(load.waiting as i64);
            gauges.running.get_or_create(&labels).set(load.running as i64);
            gauges.kv_cache_usage.get_or_create(&labels).set(load.kv_cache_usage);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_gauges_carry_the_endpoint_pickers_names_and_only_current_models() {
        let metrics = Metrics::new();
        let load = |model: &str, waiting, running, kv_cache_usage| GatewayLoad { model: model.into(), waiting, running, kv_cache_usage };
        metrics.set_gateway(&[load("old", 1, 1, 0.5)]);
        metrics.set_gateway(&[load("smollm2:135m-q4_1", 2, 1, 0.25)]);
        let text = metrics.render();
        for line in [
            "# TYPE vllm:num_requests_waiting gauge",
            "vllm:num_requests_waiting{model_name=\"smollm2:135m-q4_1\"} 2",
            "vllm:num_requests_running{model_name=\"smollm2:135m-q4_1\"} 1",
            "vllm:kv_cache_usage_perc{model_name=\"smollm2:135m-q4_1\"} 0.25",
            "# TYPE hellas_models_loaded gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(!text.contains("\"old\""), "a model gone is forgotten:\n{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
