//! `cargo xtask bench`: prefill and decode throughput, cache bytes and peak RSS per context
//! length. Every configuration runs in a fresh worker process so that its peak memory is its own;
//! figures are medians over repetitions, written to `<out>/bench.json` and `<out>/bench.csv`, and
//! printed next to the kvpress reference (`../shared/golden/timing.json`) when it is available.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use kvpress_core::press::TimedPress;
use kvpress_core::{KvQuantization, Press};
use kvpress_models::default_model::ensure_default_model;
use kvpress_models::generate::argmax;
use kvpress_models::llama::ForwardOptions;
use kvpress_models::testing::random_weights;
use kvpress_models::{Llama, LlamaConfig, ModelFiles};
use kvpress_presses::random::splitmix;
use kvpress_presses::registry::build;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::filler::essay;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model (HF directory or .gguf); default: the default model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Context lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8192")]
    lengths: Vec<usize>,
    /// Timed prefill repetitions per length (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Greedy decode steps after the prefill.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// A one-minute smoke run: 512 and 1024 tokens, one repetition, 16 decode steps, no press
    /// and knorm at 0.5.
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Reference timings of kvpress (timing.json); default: ../shared/golden/timing.json.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Presses to measure besides no press (repeat the flag), e.g. `--press knorm --press
    /// 'adakv(expected_attention)'`; their overhead is the time inside the press over the
    /// prefill time. Default: knorm, expected_attention, snapkv, adakv(expected_attention);
    /// `--press none` measures no press only.
    #[arg(long = "press", value_name = "EXPR")]
    presses: Vec<String>,
    /// Compression ratios of the presses.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    compression_ratio: Vec<f64>,
    /// Let contexts run past the model's max_position_embeddings (memory tests beyond the
    /// training window).
    #[arg(long)]
    ignore_max_position: bool,
    /// Skip the plots (drawn by `kvpress plot --bench`).
    #[arg(long)]
    no_plots: bool,
    /// Build the model from --config with random weights instead of loading one (speed and
    /// memory of a model's shape without downloading it; token ids are random too).
    #[arg(long, requires = "config")]
    random_weights: bool,
    /// The HF config.json of --random-weights (e.g. Llama-3.1-8B's).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cache storage formats to measure each configuration with: none (full precision),
    /// int8, int4, int2.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    kv_quant: Vec<String>,
    /// Channels per quantization group.
    #[arg(long, default_value_t = 64)]
    kv_group_size: usize,
    /// Most recent entries per head kept in full precision.
    #[arg(long, default_value_t = 128)]
    kv_residual: usize,
    /// Where to run: flex (CPU) or cuda (NVIDIA GPU; xtask built with `--features cuda`).
    #[arg(long, value_enum, default_value_t = Device::Flex)]
    device: Device,
    /// Float type of weights, activations and cache.
    #[arg(long, value_enum, default_value_t = DType::F32)]
    dtype: DType,
}

/// The device a bench runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// burn-flex on the CPU.
    #[default]
    Flex,
    /// burn-cuda on GPU 0.
    Cuda,
}

/// The float type of a bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    Bf16,
}

/// The presses `cargo xtask bench` measures by default (the list).
const DEFAULT_PRESSES: [&str; 4] = [
    "knorm",
    "expected_attention",
    "snapkv",
    "adakv(expected_attention)",
];

/// Options of one worker measurement.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    length: usize,
    #[arg(long)]
    reps: usize,
    #[arg(long)]
    decode_tokens: usize,
    #[arg(long)]
    press: Option<String>,
    #[arg(long, default_value_t = 0.5)]
    compression_ratio: f64,
    #[arg(long)]
    ignore_max_position: bool,
    #[arg(long)]
    kv_quant: Option<String>,
    #[arg(long)]
    random_config: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    kv_group_size: usize,
    #[arg(long, default_value_t = 128)]
    kv_residual: usize,
    #[arg(long, value_enum, default_value_t = Device::Flex)]
    device: Device,
    #[arg(long, value_enum, default_value_t = DType::F32)]
    dtype: DType,
}

impl WorkerArgs {
    fn quantization(&self) -> anyhow::Result<Option<KvQuantization>> {
        self.kv_quant
            .as_deref()
            .map(|f| {
                Ok(KvQuantization {
                    bits: f.parse()?,
                    group_size: self.kv_group_size,
                    residual: self.kv_residual,
                })
            })
            .transpose()
    }
}

/// What one worker measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Context tokens.
    pub length: usize,
    /// The press expression (none: no compression).
    #[serde(default)]
    pub press: Option<String>,
    /// Its compression ratio.
    #[serde(default)]
    pub compression_ratio: f64,
    /// Seconds inside the press of each repetition (part of `prefill_s`).
    #[serde(default)]
    pub press_s: Vec<f64>,
    /// Prefill seconds of each repetition.
    pub prefill_s: Vec<f64>,
    /// Median prefill throughput.
    pub prefill_tok_per_s: f64,
    /// Decode steps timed.
    pub decode_tokens: usize,
    /// Decode throughput (forced greedy, logits included).
    pub decode_tok_per_s: f64,
    /// Bytes held by the KV cache after prefill.
    pub cache_bytes_after_prefill: usize,
    /// Cache storage: `int8_g64_r128`-style (none: full precision).
    #[serde(default)]
    pub kv_quant: Option<String>,
    /// Bytes the same cache holds unquantized (equal to `cache_bytes_after_prefill` without
    /// quantization).
    #[serde(default)]
    pub cache_bytes_unquantized: usize,
    /// Peak resident memory of the worker (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Where it ran (host RSS above; device memory is not measured).
    #[serde(default)]
    pub device: Device,
    /// The float type.
    #[serde(default)]
    pub dtype: DType,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn peak_rss_kib() -> u64 {
    proc_status_kib("self", "VmHWM")
}

/// A KiB field (`VmHWM`, `VmRSS`) of `/proc/<process>/status`; 0 where it cannot be read.
pub fn proc_status_kib(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Context ids of exactly `length` tokens of filler text.
fn context_ids(files: &ModelFiles, length: usize) -> anyhow::Result<Vec<u32>> {
    let mut sentences = length / 8 + 16;
    loop {
        let ids = files.tokenizer.encode(&essay(2024, sentences), false)?;
        if ids.len() >= length {
            return Ok(ids[..length].to_vec());
        }
        sentences *= 2;
    }
}

/// `n` token ids below `vocab`, reproducible.
fn random_ids(vocab: usize, n: usize) -> Vec<u32> {
    (0..n as u64)
        .map(|i| (splitmix(2024 + i) % vocab.max(1) as u64) as u32)
        .collect()
}

/// One prefill of `ids` compressed by `press`: seconds, seconds inside the press, the cache and
/// the last logits.
fn prefill<B: Backend>(
    model: &Llama<B>,
    ids: &[u32],
    press: Option<&dyn Press<B>>,
    quantization: Option<KvQuantization>,
) -> anyhow::Result<(f64, f64, kvpress_core::KvCache<B>, Vec<f32>)> {
    let mut cache = model.new_cache_quantized(quantization);
    let positions: Vec<usize> = (0..ids.len()).collect();
    let timed = press.map(TimedPress::new);
    let options = ForwardOptions {
        press: timed.as_ref().map(|t| t as &dyn Press<B>),
        ..Default::default()
    };
    let start = Instant::now();
    let hidden = model.forward(ids, &positions, &mut cache, &options)?;
    let [_, s, h] = hidden.dims();
    // Reading one value back forces the computation on lazy backends.
    let last = hidden.narrow(1, s - 1, 1).reshape([1, h]);
    let _ = last.clone().sum().into_scalar();
    let seconds = start.elapsed().as_secs_f64();
    let logits = model
        .logits(last)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>();
    let logits = logits.map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    let press_seconds = timed.as_ref().map_or(0.0, TimedPress::seconds);
    Ok((seconds, press_seconds, cache, logits))
}

/// Runs one measurement in this process and prints it as a JSON line.
pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    use burn::backend::Flex;
    #[cfg(feature = "cuda")]
    use half::bf16;
    let m = match (args.device, args.dtype) {
        (Device::Flex, DType::F32) => measure::<Flex>(args, &Default::default())?,
        (Device::Flex, DType::Bf16) => {
            bail!("--dtype bf16 needs --device cuda (burn-flex computes in f32)")
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda, DType::F32) => measure::<burn::backend::Cuda>(args, &Default::default())?,
        #[cfg(feature = "cuda")]
        (Device::Cuda, DType::Bf16) => {
            measure::<burn::backend::Cuda<bf16>>(args, &Default::default())?
        }
        #[cfg(not(feature = "cuda"))]
        (Device::Cuda, _) => bail!(
            "--device cuda needs xtask built with the cuda feature: \
             cargo run --release -p xtask --features cuda -- bench --device cuda ..."
        ),
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// One measurement on backend `B` and `device`.
fn measure<B: Backend>(args: &WorkerArgs, device: &B::Device) -> anyhow::Result<Measurement> {
    let (mut model, ids) = match &args.random_config {
        Some(path) => {
            let config = LlamaConfig::from_file(path)?;
            let weights = random_weights(&config, 7);
            let ids = random_ids(config.vocab_size, args.length);
            (Llama::<B>::load(config, &weights, device)?, ids)
        }
        None => {
            let files = ModelFiles::open(&args.model)?;
            let ids = context_ids(&files, args.length)?;
            (files.load_model::<B>(device)?, ids)
        }
    };
    // CPU kernels split heads over the cores; a GPU kernel is parallel already.
    if args.device == Device::Flex {
        model.set_attention_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    // Decoding after a context that fills the training window runs past it; allowed for timing.
    model.set_ignore_max_position(
        args.ignore_max_position
            || args.length + args.decode_tokens > model.config().max_position_embeddings,
    );
    let press = args
        .press
        .as_deref()
        .map(|expr| build::<B>(expr, Some(args.compression_ratio)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("bad --press: {e}"))?;
    let quantization = args.quantization()?;
    prefill(&model, &ids[..128.min(ids.len())], None, quantization)?; // warm-up
    let mut times = Vec::with_capacity(args.reps);
    let mut press_times = Vec::with_capacity(args.reps);
    let mut last = None;
    for _ in 0..args.reps.max(1) {
        let (s, p, cache, logits) = prefill(&model, &ids, press.as_deref(), quantization)?;
        times.push(s);
        press_times.push(p);
        last = Some((cache, logits));
    }
    let Some((mut cache, logits)) = last else {
        bail!("no repetition ran");
    };
    let cache_bytes = cache.bytes();
    let cache_bytes_unquantized = cache.unquantized_bytes();
    let mut next = argmax(&logits);
    let start = Instant::now();
    for step in 0..args.decode_tokens {
        let pos = ids.len() + step;
        let hidden = model.forward(&[next], &[pos], &mut cache, &ForwardOptions::default())?;
        next = argmax(&model.last_logits(hidden)?);
    }
    let decode_s = start.elapsed().as_secs_f64();
    let m = Measurement {
        length: args.length,
        press: args.press.clone(),
        compression_ratio: if args.press.is_some() {
            args.compression_ratio
        } else {
            0.0
        },
        press_s: press_times,
        prefill_tok_per_s: args.length as f64 / median(&times),
        prefill_s: times,
        decode_tokens: args.decode_tokens,
        decode_tok_per_s: args.decode_tokens as f64 / decode_s,
        cache_bytes_after_prefill: cache_bytes,
        kv_quant: quantization.map(|q| format!("{}_g{}_r{}", q.bits, q.group_size, q.residual)),
        cache_bytes_unquantized,
        peak_rss_kib: peak_rss_kib(),
        device: args.device,
        dtype: args.dtype,
    };
    Ok(m)
}

/// The command-line spelling of a value of `--device` or `--dtype`.
fn value_name(value: impl clap::ValueEnum) -> anyhow::Result<String> {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .context("a value without a name")
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The reference's name of a press configuration (timing.json measures three at 0.5).
fn reference_name(m: &Measurement) -> Option<String> {
    if m.kv_quant.is_some() {
        return None;
    }
    let Some(press) = &m.press else {
        return Some("none".into());
    };
    let class = match press.as_str() {
        "knorm" => "KnormPress",
        "snapkv" => "SnapKVPress",
        "expected_attention" => "ExpectedAttentionPress",
        _ => return None,
    };
    Some(format!("{class}({})", m.compression_ratio))
}

/// Reference (kvpress, torch) prefill tok/s, decode tok/s and press overhead (compress /
/// prefill seconds) of a measurement's configuration.
fn reference_for(reference: &Value, threads: &str, m: &Measurement) -> Option<(f64, f64, f64)> {
    let r = &reference["by_threads"][threads]["results"][m.length.to_string()][reference_name(m)?];
    Some((
        r["prefill_tok_per_s"].as_f64()?,
        r["decode_tok_per_s"].as_f64()?,
        r["compress_s_median"].as_f64()? / r["prefill_s_median"].as_f64()?,
    ))
}

/// The bench driver.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let model = match (&args.model, args.random_weights.then_some(&args.config)) {
        (_, Some(Some(config))) => config.clone(),
        (Some(m), _) => m.clone(),
        _ => ensure_default_model(&mut |_| {}).context("fetching the default model")?,
    };
    let (lengths, reps, decode) = if args.quick {
        (vec![512, 1024], 1, 16)
    } else {
        (args.lengths.clone(), args.reps, args.decode_tokens)
    };
    for r in &args.compression_ratio {
        if !(0.0..1.0).contains(r) {
            bail!("--compression-ratio must be in [0, 1), got {r}");
        }
    }
    let presses: Vec<String> = match (args.quick, args.presses.as_slice()) {
        (true, []) => vec!["knorm".into()],
        (false, []) => DEFAULT_PRESSES.iter().map(|p| p.to_string()).collect(),
        (_, given) => given.iter().filter(|p| *p != "none").cloned().collect(),
    };
    let ratios = if args.quick {
        vec![0.5]
    } else {
        args.compression_ratio.clone()
    };
    for p in &presses {
        build::<burn::backend::Flex>(p, Some(ratios[0]))
            .map_err(|e| anyhow::anyhow!("bad --press: {e}"))?;
    }
    let formats: Vec<Option<&str>> = args
        .kv_quant
        .iter()
        .map(|f| match f.as_str() {
            "none" => Ok(None),
            f => f
                .parse::<kvpress_core::KvBits>()
                .map(|_| Some(f))
                .map_err(|e| anyhow::anyhow!("bad --kv-quant: {e}")),
        })
        .collect::<anyhow::Result<_>>()?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut results = Vec::new();
    let configs: Vec<Option<(&String, f64)>> = std::iter::once(None)
        .chain(
            presses
                .iter()
                .flat_map(|p| ratios.iter().map(move |&r| Some((p, r)))),
        )
        .collect();
    let mut runs = Vec::new();
    for length in &lengths {
        for config in &configs {
            for format in &formats {
                runs.push((length, config, format));
            }
        }
    }
    for (&length, config, format) in runs {
        let mut label = config.map_or("no press".to_string(), |(p, r)| format!("{p} @ {r}"));
        if let Some(f) = format {
            label.push_str(&format!(", {f} cache"));
        }
        eprintln!(
            "bench: {length} tokens, {label} ({reps} prefill reps, {decode} decode steps)..."
        );
        let mut command = Command::new(&exe);
        command
            .arg("bench-worker")
            .arg("--model")
            .arg(&model)
            .args(["--length", &length.to_string()])
            .args(["--reps", &reps.to_string()])
            .args(["--decode-tokens", &decode.to_string()]);
        if let Some((p, r)) = config {
            command.args(["--press", p, "--compression-ratio", &r.to_string()]);
        }
        if args.ignore_max_position {
            command.arg("--ignore-max-position");
        }
        if args.random_weights {
            command.arg("--random-config").arg(&model);
        }
        command
            .args(["--device", &value_name(args.device)?])
            .args(["--dtype", &value_name(args.dtype)?]);
        if let Some(f) = format {
            command
                .args(["--kv-quant", f])
                .args(["--kv-group-size", &args.kv_group_size.to_string()])
                .args(["--kv-residual", &args.kv_residual.to_string()]);
        }
        let output = command.output().context("starting a bench worker")?;
        if !output.status.success() {
            eprintln!(
                "bench: worker for {length} tokens failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            continue;
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let m: Measurement = serde_json::from_str(line)
            .with_context(|| format!("parsing worker output {line:?}"))?;
        results.push(m);
    }
    if results.is_empty() {
        bail!("every bench worker failed");
    }
    let ref_path = args
        .reference
        .clone()
        .unwrap_or_else(|| workspace_root().join("../shared/golden/timing.json"));
    // the reference timings are of the default model: not comparable with random weights
    let reference: Option<Value> = std::fs::read_to_string(&ref_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|_| !args.random_weights);
    report(&args.out, &model, &results, reference.as_ref())?;
    if !args.no_plots {
        plot(&args.out)?;
    }
    Ok(())
}

/// Draws the figures of `<out>/bench.json` with `kvpress plot --bench` (the one plotting
/// implementation, in kvpress-cli).
fn plot(out: &Path) -> anyhow::Result<()> {
    let bench = std::path::absolute(out.join("bench.json")).context("locating bench.json")?;
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "kvpress-cli",
            "--",
            "plot",
            "--bench",
        ])
        .arg(bench)
        .status()
        .context("running kvpress plot --bench")?;
    if !status.success() {
        bail!("kvpress plot --bench failed");
    }
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "backend": "flex",
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn report(
    out: &Path,
    model: &Path,
    results: &[Measurement],
    reference: Option<&Value>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("bench.json");
    let doc = json!({"model": model, "machine": machine(), "results": results});
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let mut csv = String::from(
        "length,press,compression_ratio,kv_quant,prefill_tok_per_s,decode_tok_per_s,press_overhead,cache_bytes,cache_bytes_unquantized,peak_rss_kib,ref_prefill_tok_per_s,ref_decode_tok_per_s,ref_press_overhead\n",
    );
    println!(
        "{:>7} {:<28} {:>11} {:>10} {:>9} {:>10} {:>9} | {:>11} {:>10} {:>9} {:>8} {:>8}",
        "tokens",
        "press",
        "prefill t/s",
        "decode t/s",
        "press %",
        "cache MiB",
        "peak MiB",
        "ref prefill",
        "ref decode",
        "ref press",
        "prefill×",
        "decode×"
    );
    for m in results {
        let r = reference.and_then(|r| reference_for(r, "2", m));
        let (rp, rd, ro) = r.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let overhead = median(&m.press_s) / median(&m.prefill_s);
        let mut label = m.press.as_ref().map_or("none".to_string(), |p| {
            format!("{p} @ {}", m.compression_ratio)
        });
        if let Some(q) = &m.kv_quant {
            label.push_str(&format!(" +{}", q.split('_').next().unwrap_or(q)));
        }
        println!(
            "{:>7} {:<28} {:>11.1} {:>10.2} {:>8.1}% {:>10.1} {:>9.0} | {:>11.1} {:>10.2} {:>8.1}% {:>8.2} {:>8.2}",
            m.length,
            label,
            m.prefill_tok_per_s,
            m.decode_tok_per_s,
            100.0 * overhead,
            m.cache_bytes_after_prefill as f64 / (1 << 20) as f64,
            m.peak_rss_kib as f64 / 1024.0,
            rp,
            rd,
            100.0 * ro,
            m.prefill_tok_per_s / rp,
            m.decode_tok_per_s / rd
        );
        csv.push_str(&format!(
            "{},{},{},{},{:.3},{:.3},{:.5},{},{},{},{:.3},{:.3},{:.5}\n",
            m.length,
            m.press.as_deref().unwrap_or("none").replace(',', ";"),
            m.compression_ratio,
            m.kv_quant.as_deref().unwrap_or("none"),
            m.prefill_tok_per_s,
            m.decode_tok_per_s,
            overhead,
            m.cache_bytes_after_prefill,
            m.cache_bytes_unquantized,
            m.peak_rss_kib,
            rp,
            rd,
            ro
        ));
    }
    std::fs::write(out.join("bench.csv"), csv)?;
    if reference.is_some() {
        println!(
            "ref = kvpress 0.5.5 / torch, 2 threads, from timing.json (another run: compare ratios with care)"
        );
    }
    eprintln!("wrote {} and bench.csv", json_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration `scripts/gpu-check.sh` benches is Llama-3.1-8B's: it parses, its
    /// RoPE scaling is understood, and it describes 8,030,261,248 parameters (the published
    /// count of Llama-3.1-8B).
    #[test]
    fn the_gpu_check_config_is_llama_3_1_8b() {
        let path = workspace_root().join("scripts/llama-3.1-8b-config.json");
        let c = LlamaConfig::from_file(&path).expect("config");
        let (theta, _scaling) = c.rope().expect("llama3 RoPE scaling");
        assert_eq!(theta, 500_000.0);
        let (h, d, kv) = (c.hidden_size, c.head_dim(), c.num_kv_heads());
        let attention = h * c.num_attention_heads * d * 2 + h * kv * d * 2;
        let layer = attention + 3 * h * c.intermediate_size + 2 * h;
        let params = 2 * c.vocab_size * h + c.num_hidden_layers * layer + h;
        assert_eq!(params, 8_030_261_248);
        assert_eq!(c.eos_token_ids(), vec![128001, 128008, 128009]);
    }
}
