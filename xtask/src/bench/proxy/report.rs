//! The proxy bench's results and the report made of them, for the terminal and the docs.

use std::time::Duration;

use anyhow::Result;

use super::{Proxy, DIRECT, HELLASD, LOAD_TOKENS, MODEL_FILE, PARALLEL, RELAY, SEQUENTIAL_TOKENS, SIDES};
use crate::bench::chat::Timed;
use crate::bench::{median, millis, percentile, Machine};

/// The targets (issue 18): hellasd keeps 98% of the engine's throughput one request at a time
/// and with 16 clients, adds at most 1 ms to the median time to first token, and spends at most
/// half a millisecond of its own CPU time on a request.
const MIN_RATIO: f64 = 0.98;
const MAX_OVERHEAD_MS: f64 = 1.0;
const MAX_CPU_MS: f64 = 0.5;

#[derive(Default)]
pub struct Measured {
    /// Indexed by `DIRECT`, `HELLASD` and `RELAY`.
    pub sequential: [Samples; 3],
    pub load: [Samples; 3],
    /// Throughput through hellasd over direct throughput, for each load round.
    pub round_ratios: Vec<f64>,
    pub engine_flags: String,
    /// How each server ended when stopped.
    pub stops: Vec<String>,
    /// Whether a sequential (greedy) answer differed from the first one.
    pub answers_differ: bool,
    /// Anything unexpected, for the report.
    pub notes: Vec<String>,
}

#[derive(Default)]
pub struct Samples {
    pub first_tokens: Vec<Duration>,
    pub tokens: u64,
    /// The time spent answering: the sum of the requests' times (sequential), or of the
    /// rounds' wall times (concurrent clients).
    pub busy: Duration,
    /// The CPU time the proxy (hellasd, or the bare relay; not the engine) used during these
    /// requests; for the direct side, what hellasd used meanwhile.
    pub proxy_cpu: Duration,
    pub failures: usize,
    pub first_failure: Option<String>,
}

impl Samples {
    /// Records one request. A failed one adds no time to first token and no tokens; it is
    /// counted, and the first error is kept for the report.
    pub fn record(
        &mut self,
        outcome: Result<Timed>,
        expected: u64,
        notes: &mut Vec<String>,
        side: &str,
    ) {
        match outcome {
            Ok(answer) => {
                self.first_tokens.push(answer.first_token);
                self.tokens += answer.tokens;
                if answer.tokens != expected {
                    notes.push(format!(
                        "{side} generated {} tokens where {expected} were asked for (with ignore_eos)",
                        answer.tokens
                    ));
                }
            }
            Err(err) => {
                self.failures += 1;
                let message = format!("{err:#}");
                self.first_failure
                    .get_or_insert_with(|| message.lines().next().unwrap_or_default().to_string());
            }
        }
    }

    fn requests(&self) -> usize {
        self.first_tokens.len() + self.failures
    }

    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.busy.as_secs_f64()
    }
}

pub struct Report<'a> {
    pub args: &'a Proxy,
    pub machine: Machine,
    pub engine_version: String,
    pub hellasd_commit: String,
    pub load: (f64, f64),
    pub measured: Measured,
}

impl Report<'_> {
    pub fn render(&self) -> String {
        let Report {
            args,
            machine,
            measured: m,
            ..
        } = self;
        let p50 = |samples: &Samples| percentile(&samples.first_tokens, 50.0);
        let ratio = median(&m.round_ratios);
        let overhead = millis(p50(&m.sequential[HELLASD])) - millis(p50(&m.sequential[DIRECT]));
        let load_overhead = millis(p50(&m.load[HELLASD])) - millis(p50(&m.load[DIRECT]));
        let aggregate = m.load[HELLASD].tokens_per_second() / m.load[DIRECT].tokens_per_second();
        let sequential_ratio =
            m.sequential[HELLASD].tokens_per_second() / m.sequential[DIRECT].tokens_per_second();
        let cpu = cpu_per_request(&m.sequential[HELLASD]).max(cpu_per_request(&m.load[HELLASD]));
        let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
        let (ratio_ok, sequential_ok, overhead_ok, cpu_ok) = (
            ratio >= MIN_RATIO,
            sequential_ratio >= MIN_RATIO,
            overhead <= MAX_OVERHEAD_MS,
            cpu <= MAX_CPU_MS,
        );
        let mut out = format!(
            "## proxy: hellasd against llama-server directly\n\n\
             Measured by `cargo xtask bench proxy --rounds {} --requests {} --load-requests {}` \
             on {}.\n\n\
             - Machine: {} CPUs, {}; 1-minute load average {:.2} before the bench, {:.2} after \
             it (its engine included).\n\
             - Engine: llama-server {}, model {MODEL_FILE}; hellasd runs it as `llama-server {}`.\n\
             - hellasd: release build of {}.\n\
             - Method: the direct side is hellasd's own engine, asked at its loopback port (a \
             second llama-server with the same flags would decode at a speed of its own: two \
             identical ones here differ by up to 15%); the bare relay stands in front of the same \
             engine. Each round measures one side after the other (the order rotates), never \
             two at once, after warm-up requests to each. \
             Every request is a streamed `/v1/chat/completions` with `temperature: 0`, \
             `seed: 42` and `ignore_eos: true`. Time to first token (TTFT) runs from sending the \
             request to the first `data:` line carrying content. *Sequential*: one request at a \
             time, `max_tokens` {SEQUENTIAL_TOKENS}, {} per side and round. *{PARALLEL} clients*: \
             {PARALLEL} concurrent clients, each sending {} request(s) with `max_tokens` \
             {LOAD_TOKENS} per side and round; throughput is generated tokens over the round's wall time.\n\n",
            args.rounds,
            args.requests,
            args.load_requests,
            machine.date,
            machine.cpus,
            machine.cpu_model,
            self.load.0,
            self.load.1,
            self.engine_version,
            m.engine_flags,
            self.hellasd_commit,
            args.requests,
            args.load_requests,
        );
        out += "| workload | side | requests | failed | tokens/s | TTFT p50 | TTFT p99 |\n";
        out += "|---|---|--:|--:|--:|--:|--:|\n";
        let mut failures = Vec::new();
        for (workload, samples) in [
            ("sequential", &m.sequential),
            (&format!("{PARALLEL} clients")[..], &m.load),
        ] {
            for side in [DIRECT, HELLASD, RELAY] {
                let s = &samples[side];
                out += &format!(
                    "| {workload} | {} | {} | {} | {:.1} | {:.2} ms | {:.2} ms |\n",
                    SIDES[side],
                    s.requests(),
                    s.failures,
                    s.tokens_per_second(),
                    millis(p50(s)),
                    millis(percentile(&s.first_tokens, 99.0)),
                );
                if let Some(error) = &s.first_failure {
                    failures.push(format!(
                        "{} of {} requests to {} failed ({workload}), the first with: {error}",
                        s.failures,
                        s.requests(),
                        SIDES[side]
                    ));
                }
            }
        }
        let failed: usize = m.sequential.iter().chain(&m.load).map(|s| s.failures).sum();
        let rounds: Vec<_> = m.round_ratios.iter().map(|r| format!("{r:.3}")).collect();
        out += &format!(
            "\n| target | measured | result |\n|---|--:|---|\n\
             | throughput ratio hellasd / direct ≥ {MIN_RATIO} (sequential, all requests) | \
             {sequential_ratio:.3} | {} |\n\
             | throughput ratio hellasd / direct ≥ {MIN_RATIO} ({PARALLEL} clients, median of \
             the per-round ratios) | {ratio:.3} | {} |\n\
             | TTFT overhead at p50 ≤ {MAX_OVERHEAD_MS} ms (sequential, p50 hellasd − p50 \
             direct) | {overhead:+.2} ms | {} |\n\
             | hellasd's own CPU time per request ≤ {MAX_CPU_MS} ms (the larger of the two \
             workloads) | {cpu:.2} ms | {} |\n\
             | no failed request (either side; a proxy must not lose requests) | {failed} | {} |\n\n\
             **Overall: {}.** Per-round throughput ratios: {}; ratio of the totals: \
             {aggregate:.3}. TTFT overhead at p50 with {PARALLEL} clients: {load_overhead:+.2} ms. \
             A failed request counts as sent, adds no tokens and no time to first token. \
             {}hellasd's own CPU time (its engine's not included) per request through it: \
             {:.2} ms sequential, {:.2} ms with {PARALLEL} clients; while the direct side was \
             measured it used {:.0} ms in all. The bare relay (one thread per connection, \
             blocking reads and writes, nothing parsed) used {:.2} ms sequential and {:.2} ms \
             with {PARALLEL} clients: the least a proxy that passes each token through user \
             space spends on this machine.\n",
            verdict(sequential_ok),
            verdict(ratio_ok),
            verdict(overhead_ok),
            verdict(cpu_ok),
            verdict(failed == 0),
            verdict(ratio_ok && sequential_ok && overhead_ok && cpu_ok && failed == 0),
            rounds.join(", "),
            if m.answers_differ { "" } else { "Every sequential answer was the same text on every side. " },
            cpu_per_request(&m.sequential[HELLASD]),
            cpu_per_request(&m.load[HELLASD]),
            millis(m.sequential[DIRECT].proxy_cpu + m.load[DIRECT].proxy_cpu),
            cpu_per_request(&m.sequential[RELAY]),
            cpu_per_request(&m.load[RELAY]),
        );
        if self.load.0 > 1.0 {
            out += &format!(
                "\nThe machine was busy when the bench started (load average {:.2}), so these \
                 numbers may be noisy.\n",
                self.load.0
            );
        }
        let notes = failures.iter().chain(&m.notes).chain(&m.stops);
        out += &notes.map(|note| format!("\n- {note}")).collect::<String>();
        out + "\n"
    }
}

fn cpu_per_request(samples: &Samples) -> f64 {
    millis(samples.proxy_cpu) / samples.requests() as f64
}
