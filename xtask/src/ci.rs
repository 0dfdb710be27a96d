//! `cargo xtask ci`: everything CI checks, in order, stopping at the first failure.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use kvpress_models::default_model::ensure_default_model;

/// Options of `cargo xtask ci`.
#[derive(Debug, Clone, clap::Args)]
pub struct CiArgs {
    /// Skip `cargo check --features cuda` (slow on a cold cache).
    #[arg(long)]
    skip_cuda_check: bool,
}

fn cargo(step: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> {step}: cargo {}", args.join(" "));
    let start = Instant::now();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .with_context(|| format!("running cargo for {step}"))?;
    eprintln!("==> {step}: {:.0}s", start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{step} failed");
    }
    Ok(())
}

/// Runs formatting, lints, the CUDA build check, the default-model fetch, the tests and the
/// benchmark's smoke run.
pub fn run(args: &CiArgs) -> anyhow::Result<()> {
    cargo("format", &["fmt", "--all", "--", "--check"])?;
    cargo(
        "lint",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    if !args.skip_cuda_check {
        cargo(
            "cuda build check",
            &[
                "check",
                "-p",
                "kvpress-cli",
                "-p",
                "kvpress-models",
                "-p",
                "xtask",
                "--tests",
                "--features",
                "cuda",
            ],
        )?;
    }
    eprintln!("==> default model");
    let dir = ensure_default_model(&mut |_| {}).context("fetching the default model")?;
    eprintln!("==> default model at {}", dir.display());
    cargo("tests", &["test", "--workspace", "--release"])?;
    // the benchmark's smoke run: the CSV/JSON and the plots are produced (no timing asserted)
    cargo(
        "bench smoke run",
        &["xtask", "bench", "--quick", "--out", "target/bench-quick"],
    )?;
    for file in [
        "bench.json",
        "bench.csv",
        "peak_memory__knorm.png",
        "decode__1024.svg",
    ] {
        let path = std::path::Path::new("target/bench-quick").join(file);
        if !path.exists() {
            bail!("the bench smoke run did not write {}", path.display());
        }
    }
    Ok(())
}
