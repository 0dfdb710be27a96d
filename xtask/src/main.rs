//! Project automation. `cargo xtask bench` measures prefill and decode speed, cache bytes and
//! peak memory of the default model (or `--model`) at several context lengths, one fresh
//! process per configuration, and compares them with the kvpress reference timings.
//! `cargo xtask load-test` puts a bounded load on `kvpress serve`; `cargo xtask ci` is CI.

mod bench;
mod ci;
mod filler;
mod load;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Speed and memory against context length (fresh process per configuration).
    Bench(bench::BenchArgs),
    /// Formatting, lints, the CUDA build check, the default model and the tests (what CI runs).
    Ci(ci::CiArgs),
    /// A bounded load on `kvpress serve` over loopback: failures, latency, memory growth.
    LoadTest(load::LoadArgs),
    /// Internal: one measurement in this process, printed as one JSON line.
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}

fn main() {
    kvpress_core::allocator::tune_for_tensors();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::BenchWorker(args) => bench::worker(&args),
        Command::Ci(args) => ci::run(&args),
        Command::LoadTest(args) => load::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
