//! `hellasd plan FILE.gguf`: prints the memory plan for a model file without starting anything.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use hellas_model::gguf::{GgufFile, ModelInfo};
use crate::memory_budget::{self, MemoryBudget};
use hellas_model::plan::{self as planner, format_bytes, CacheType, Plan, PlanRequest, Verdict};

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The GGUF model file.
    pub file: PathBuf,
    /// Context per slot, in tokens (clamped to the model's training context).
    #[arg(long, default_value_t = 4096)]
    pub ctx: u32,
    /// Concurrent slots (llama-server -np).
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    /// KV cache type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1.
    #[arg(long, default_value = "f16")]
    pub cache_type: CacheType,
    /// Memory budget for the model, e.g. 8GiB or 8589934592; detected when absent.
    #[arg(long, value_parser = parse_size)]
    pub budget: Option<u64>,
    /// Memory kept for the OS when the budget is detected.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub os_reserve: u64,
    /// Print the plan and budget as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let info = GgufFile::open(&args.file)
        .and_then(|f| f.model_info())
        .with_context(|| format!("reading model {}", args.file.display()))?;
    let budget = memory_budget::of(args.budget, args.os_reserve)?;
    let request =
        PlanRequest { ctx: args.ctx, parallel: args.parallel, cache_type: args.cache_type, budget: budget.usable };
    let plan = planner::plan(&info, &request);
    if args.json {
        let out = serde_json::json!({ "file": args.file, "plan": plan, "budget": budget });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&args.file, &info, &plan, &budget));
    }
    Ok(())
}

/// The human-readable plan: an aligned table and a verdict sentence.
pub fn render(file: &Path, info: &ModelInfo, plan: &Plan, budget: &MemoryBudget) -> String {
    let slots = |n: u32| if n == 1 { "1 slot".to_string() } else { format!("{n} slots") };
    let mut model = format!("{} ({}", info.display_name(), info.architecture);
    if let Some(ft) = &info.file_type {
        model.push_str(&format!(", {ft}"));
    }
    model.push(')');
    let mut context = format!("{} × {}, KV cache {}", plan.ctx, slots(plan.parallel), plan.cache_type);
    if let Some(asked) = plan.ctx_clamped_from {
        context.push_str(&format!(" (asked {asked}; the model was trained on {})", info.context_length));
    }

    let rows: Vec<(&str, String)> = vec![
        ("file", file.display().to_string()),
        ("model", model),
        ("context", context),
        ("weights", format_bytes(plan.weights)),
        ("KV cache", format_bytes(plan.kv_cache)),
        ("compute", format_bytes(plan.compute)),
        ("margin", format_bytes(plan.margin)),
        ("total", format_bytes(plan.total)),
        ("budget", format!("{} ({})", format_bytes(plan.budget), budget.describe())),
    ];
    let mut out = String::new();
    for (label, value) in rows {
        // Sizes right-aligned in one column, text left-aligned after the labels.
        if matches!(label, "weights" | "KV cache" | "compute" | "margin" | "total") {
            out.push_str(&format!("{label:<9} {value:>10}\n"));
        } else if let Some((size, rest)) = value.split_once(" (").filter(|_| label == "budget") {
            out.push_str(&format!("{label:<9} {size:>10} ({rest}\n"));
        } else {
            out.push_str(&format!("{label:<9} {value}\n"));
        }
    }
    let verdict = match &plan.verdict {
        Verdict::Fits => format!("fits at context {} × {}", plan.ctx, slots(plan.parallel)),
        Verdict::FitsSmallerContext { max_ctx } => {
            format!("fits only at a smaller context: up to {max_ctx} × {}", slots(plan.parallel))
        }
        Verdict::DoesNotFit { short_by } => format!("does not fit: short by {}", format_bytes(*short_by)),
    };
    out.push_str(&format!("{:<9} {verdict}\n", "verdict"));
    out
}

/// Parses a byte size: a plain number of bytes, or a number with a unit. K/M/G/T and
/// KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB are powers of 1000. Fractions are allowed
/// ("1.5GiB"); case and a space before the unit do not matter.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit '{other}' in '{s}' (use e.g. 8GiB, 512MiB or bytes)")),
    };
    let parse = || -> anyhow::Result<u64> {
        if number.is_empty() {
            bail!("no number");
        }
        if let Ok(n) = number.parse::<u64>() {
            return n.checked_mul(multiplier).context("too large");
        }
        let f: f64 = number.parse().context("not a number")?;
        let bytes = (f * multiplier as f64).round();
        if !(0.0..=u64::MAX as f64).contains(&bytes) {
            bail!("too large");
        }
        Ok(bytes as u64)
    };
    parse().map_err(|e| format!("invalid size '{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hellas_model::testing::GgufBuilder;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        plan: PlanArgs,
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8 gb"), Ok(8_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("8 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn args_defaults_and_parsing() {
        let cli = Cli::try_parse_from(["plan", "m.gguf"]).unwrap();
        assert_eq!((cli.plan.ctx, cli.plan.parallel, cli.plan.cache_type), (4096, 1, CacheType::F16));
        assert_eq!((cli.plan.budget, cli.plan.os_reserve, cli.plan.json), (None, 4 << 30, false));
        let cli = Cli::try_parse_from([
            "plan",
            "m.gguf",
            "--ctx",
            "2048",
            "--parallel",
            "2",
            "--cache-type",
            "q8_0",
            "--budget",
            "8GiB",
            "--json",
        ])
        .unwrap();
        assert_eq!((cli.plan.ctx, cli.plan.parallel, cli.plan.cache_type), (2048, 2, CacheType::Q8_0));
        assert_eq!((cli.plan.budget, cli.plan.json), (Some(8 << 30), true));
        assert!(Cli::try_parse_from(["plan", "m.gguf", "--cache-type", "q3"]).is_err());
    }

    fn write_model(dir: &Path) -> PathBuf {
        let bytes = GgufBuilder::new()
            .str("general.architecture", "llama")
            .str("general.name", "Tiny Test")
            .u32("general.file_type", 2)
            .u32("llama.block_count", 2)
            .u32("llama.context_length", 1024)
            .u32("llama.embedding_length", 64)
            .u32("llama.attention.head_count", 4)
            .u32("llama.vocab_size", 100)
            .tensor("token_embd.weight", &[64, 100], 0, 64 * 100 * 4)
            .build();
        let path = dir.join("tiny.gguf");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn renders_a_table_and_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_model(dir.path());
        let info = GgufFile::open(&path).unwrap().model_info().unwrap();
        let budget = memory_budget::configured(1 << 30);
        let plan = planner::plan(
            &info,
            &PlanRequest { ctx: 4096, parallel: 2, cache_type: CacheType::F16, budget: budget.usable },
        );
        let text = render(&path, &info, &plan, &budget);
        assert!(text.contains("model     Tiny Test (llama, Q4_0)\n"), "{text}");
        assert!(
            text.contains("context   1024 × 2 slots, KV cache f16 (asked 4096; the model was trained on 1024)"),
            "{text}"
        );
        assert!(text.contains("verdict   fits at context 1024 × 2 slots\n"), "{text}");
        assert!(text.contains("budget      1.00 GiB (configured)\n"), "{text}");

        let small = memory_budget::configured(plan.total - 1);
        let plan2 =
            planner::plan(&info, &PlanRequest { ctx: 1024, parallel: 1, cache_type: CacheType::F16, budget: 1 });
        assert!(render(&path, &info, &plan2, &small).contains("verdict   does not fit: short by "));
    }

    #[test]
    fn run_reports_the_file_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.gguf");
        std::fs::write(&bad, b"not a model").unwrap();
        let args = Cli::try_parse_from(["plan", bad.to_str().unwrap(), "--budget", "1GiB"]).unwrap().plan;
        let err = format!("{:#}", run(&args).unwrap_err());
        assert!(err.contains("bad.gguf") && err.contains("bad magic"), "{err}");

        let good = write_model(dir.path());
        let args = Cli::try_parse_from(["plan", good.to_str().unwrap(), "--budget", "1GiB", "--json"]).unwrap().plan;
        run(&args).unwrap();
    }
}
