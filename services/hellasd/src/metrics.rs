//! Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub time_to_first_token: Family<ModelLabels, Histogram>,
    pub request_duration: Family<ModelLabels, Histogram>,
    pub queue_depth: Family<ModelLabels, Gauge>,
    pub engine_restarts: Family<ModelLabels, Counter>,
    pub models_loaded: Gauge,
    pub memory_budget_bytes: Gauge,
    pub memory_planned_bytes: Family<ModelLabels, Gauge>,
    pub memory_used_bytes: Family<ModelLabels, Gauge>,
    pub memory_gpu_bytes: Family<ModelLabels, Gauge>,
    pub placement_problem: Family<ModelLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~80 s: first tokens on a loaded model take milliseconds, a cold load of a large
    // model takes tens of seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hellas");
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let time_to_first_token = Family::<ModelLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let request_duration = Family::<ModelLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let queue_depth = Family::<ModelLabels, Gauge>::default();
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
        registry.register("queue_depth", "Requests waiting for a slot", queue_depth.clone());
        registry.register("engine_restarts", "Engine processes that exited unexpectedly", engine_restarts.clone());
        registry.register("models_loaded", "Engines running", models_loaded.clone());
        registry.register("memory_budget_bytes", "Memory available to models", memory_budget_bytes.clone());
        registry.register("memory_planned_bytes", "Memory the planner reserved per loaded model", memory_planned_bytes.clone());
        registry.register("memory_used_bytes", "Resident memory of each engine process", memory_used_bytes.clone());
        registry.register("memory_gpu_bytes", "What each engine holds on the GPU (model, KV cache, compute), from its load log", memory_gpu_bytes.clone());
        registry.register("placement_problem", "1 when an engine runs on the CPU, or offloaded fewer layers than planned, on a box with a GPU", placement_problem.clone());
        Metrics {
            registry,
            requests,
            tokens,
            time_to_first_token,
            request_duration,
            queue_depth,
            engine_restarts,
            models_loaded,
            memory_budget_bytes,
            memory_planned_bytes,
            memory_used_bytes,
            memory_gpu_bytes,
            placement_problem,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
