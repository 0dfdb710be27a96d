//! The subcommands.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kvpress_core::Press;
use kvpress_models::ChatMessage;
use kvpress_models::ModelFiles;
use kvpress_models::convert::convert_gguf;
use kvpress_models::generate::{self as decoding, GenerationOptions, top_k};
use kvpress_models::llama::ForwardOptions;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_presses::duo_attention::HeadScoreCollector;
use kvpress_presses::expected_attention_stats::StatisticsCollector;
use kvpress_presses::registry::{CATALOGUE, Kind};
use serde_json::json;

use crate::backend::Backend;
use crate::model;
use crate::{CalibrateArgs, CalibrationTarget, PressArgs};

/// Prompt text: the raw text, or the chat-templated user message.
fn prompt_text(files: &ModelFiles, text: &str, chat: bool) -> anyhow::Result<String> {
    if chat {
        Ok(files
            .tokenizer
            .apply_chat_template(&[ChatMessage::user(text)], true)
            .context("applying the chat template")?)
    } else {
        Ok(text.to_string())
    }
}

fn prompt_ids(files: &ModelFiles, text: &str) -> anyhow::Result<Vec<u32>> {
    // Chat-rendered text already carries its special tokens; plain text gets what the
    // tokenizer's post-processor adds (nothing for SmolLM2, BOS for Llama 3).
    let ids = files.tokenizer.encode(text, false)?;
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty: it has no tokens");
    }
    Ok(ids)
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

pub fn tokenize(model: Option<&Path>, text: &str, chat: bool, json: bool) -> anyhow::Result<()> {
    let files = model::open(model)?;
    let rendered = prompt_text(&files, text, chat)?;
    let ids = files.tokenizer.encode(&rendered, false)?;
    if json {
        print_json(&json!({"ids": ids, "text": rendered}))
    } else {
        println!(
            "{}",
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        );
        Ok(())
    }
}

pub fn next_token(
    model: Option<&Path>,
    text: &str,
    chat: bool,
    k: usize,
    greedy: usize,
    json: bool,
) -> anyhow::Result<()> {
    let files = model::open(model)?;
    let ids = prompt_ids(&files, &prompt_text(&files, text, chat)?)?;
    let llama = model::load(&files)?;
    let options = GenerationOptions {
        max_new_tokens: greedy,
        eos_token_ids: files.eos_token_ids.clone(),
        ignore_eos: true,
        ..Default::default()
    };
    let out = decoding::generate(&llama, &ids, &options, false)?;
    let top = top_k(&out.prompt_logits, k);
    if json {
        let top: Vec<_> = top
            .iter()
            .map(|(id, logit)| json!({"id": id, "logit": logit}))
            .collect();
        print_json(&json!({"ids": ids, "top": top, "greedy": out.tokens}))
    } else {
        for (id, logit) in &top {
            let piece = files.tokenizer.decode(&[*id], false)?;
            println!("{id:>7} {logit:>10.4} {piece:?}");
        }
        if greedy > 0 {
            println!("greedy: {}", files.tokenizer.decode(&out.tokens, false)?);
        }
        Ok(())
    }
}

/// `options.eos_token_ids` is filled from the model.
pub fn generate(
    model: Option<&Path>,
    text: &str,
    chat: bool,
    mut options: GenerationOptions,
    json: bool,
) -> anyhow::Result<()> {
    let files = model::open(model)?;
    let ids = prompt_ids(&files, &prompt_text(&files, text, chat)?)?;
    let llama = model::load(&files)?;
    options.eos_token_ids = files.eos_token_ids.clone();
    let start = Instant::now();
    let out = decoding::generate(&llama, &ids, &options, false)?;
    let seconds = start.elapsed().as_secs_f64();
    let continuation = files.tokenizer.decode(&out.tokens, true)?;
    if json {
        print_json(&json!({
            "text": continuation,
            "tokens": out.tokens,
            "prompt_tokens": ids.len(),
            "generated_tokens": out.tokens.len(),
            "seconds": seconds,
        }))
    } else {
        println!("{continuation}");
        Ok(())
    }
}

pub fn convert(gguf: &Path, out_dir: &Path, json: bool) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("converting {bar:40} {pos}/{len} tensors [{elapsed}]")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    convert_gguf(gguf, out_dir, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("converting {}", gguf.display()))?;
    bar.finish_and_clear();
    if json {
        print_json(&json!({"path": out_dir}))
    } else {
        println!("{}", out_dir.display());
        Ok(())
    }
}

pub fn fetch(json: bool) -> anyhow::Result<()> {
    let dir = model::fetch_default()?;
    if json {
        print_json(&json!({"path": dir}))
    } else {
        println!("{}", dir.display());
        Ok(())
    }
}

/// The press of `--press` at `--compression-ratio` (none without `--press`).
fn build_press(args: &PressArgs) -> anyhow::Result<Option<Box<dyn Press<Backend>>>> {
    if let Some(r) = args.compression_ratio
        && !(0.0..1.0).contains(&r)
    {
        anyhow::bail!("--compression-ratio must be in [0, 1), got {r}");
    }
    match &args.press {
        None if args.compression_ratio.is_some() => {
            anyhow::bail!("--compression-ratio needs a --press (e.g. --press snapkv)")
        }
        None => Ok(None),
        Some(expr) => {
            let press = kvpress_presses::registry::build::<Backend>(expr, args.compression_ratio)
                .map_err(|e| anyhow::anyhow!("bad --press: {e}"))?;
            Ok(Some(press))
        }
    }
}

/// A spinner on stderr while `what` runs.
pub(crate) fn spinner(what: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or(ProgressStyle::default_spinner()),
    );
    bar.set_message(what);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Average entries per KV head of each layer: an integer when every head holds the same count.
fn tokens_per_layer(per_head: &[Vec<usize>]) -> Vec<serde_json::Value> {
    per_head
        .iter()
        .map(|heads| {
            let total: usize = heads.iter().sum();
            if heads.iter().all(|&n| n == heads[0]) {
                json!(heads[0])
            } else {
                json!(total as f64 / heads.len().max(1) as f64)
            }
        })
        .collect()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `kvpress generate --context…`: the kvpress pipeline.
pub fn answer(
    model: Option<&Path>,
    request: &Request,
    press_args: &PressArgs,
    json: bool,
) -> anyhow::Result<()> {
    let press = build_press(press_args)?;
    let quantization = press_args.kv.quantization()?;
    let files = model::open(model)?;
    let llama = model::load(&files)?;
    let pipe = Pipeline::new(&llama, &files.tokenizer, files.eos_token_ids.clone())
        .with_kv_quantization(quantization);
    let label = press_args.press.as_deref().unwrap_or("no press");
    let bar = spinner(format!("compressing the context ({label}) and answering"));
    let out = pipe.run(request, press.as_deref());
    bar.finish_and_clear();
    let out = out?;
    if json {
        return print_json(&json!({
            "answers": out.answers,
            "context_tokens": out.context_tokens,
            "press": press_args.press,
            "compression_ratio": press_args.compression_ratio,
            "kv_quant": quantization.map(|q| json!({
                "format": q.bits.to_string(),
                "group_size": q.group_size,
                "residual": q.residual,
            })),
            "cache": {
                "tokens_per_layer": tokens_per_layer(&out.tokens_per_head),
                "tokens_per_head": out.tokens_per_head,
                "bytes": out.cache_bytes,
                "bytes_uncompressed": out.uncompressed_bytes,
                "compression_ratio": 1.0 - out.cache_bytes as f64 / out.uncompressed_bytes.max(1) as f64,
            },
            "timings": {
                "prefill_seconds": out.prefill_seconds,
                "press_seconds": out.press_seconds,
                "answer_seconds": out.answer_seconds,
            },
        }));
    }
    if request.questions.len() > 1 {
        for (q, a) in request.questions.iter().zip(&out.answers) {
            println!("Q: {q}\nA: {a}\n");
        }
    } else {
        for a in &out.answers {
            println!("{a}");
        }
    }
    eprintln!(
        "context: {} tokens; cache: {:.1} MiB of {:.1} MiB uncompressed ({:.1}%); prefill {:.2} s \
         (press {:.2} s), answers {:.2} s",
        out.context_tokens,
        mib(out.cache_bytes),
        mib(out.uncompressed_bytes),
        100.0 * out.cache_bytes as f64 / out.uncompressed_bytes.max(1) as f64,
        out.prefill_seconds,
        out.press_seconds,
        out.answer_seconds
    );
    Ok(())
}

/// A strip of `width` cells over `0..n`, each shaded by the share of its positions kept.
fn density_strip(kept: &[usize], n: usize, width: usize) -> String {
    const SHADES: [char; 5] = [' ', '░', '▒', '▓', '█'];
    let width = width.min(n).max(1);
    let mut counts = vec![0usize; width];
    for &p in kept {
        counts[(p * width / n.max(1)).min(width - 1)] += 1;
    }
    (0..width)
        .map(|cell| {
            let size = (cell + 1) * n / width - cell * n / width;
            let share = counts[cell] as f64 / size.max(1) as f64;
            SHADES[((share * 4.0).round() as usize).min(4)]
        })
        .collect()
}

/// `kvpress inspect`: the kept positions of every (chosen) layer and head.
pub fn inspect(
    model: Option<&Path>,
    request: &Request,
    press_args: &PressArgs,
    layers: Option<&[usize]>,
    html: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let Some(press) = build_press(press_args)? else {
        anyhow::bail!("inspect needs a --press (e.g. --press snapkv --compression-ratio 0.5)");
    };
    let files = model::open(model)?;
    let llama = model::load(&files)?;
    let num_layers = llama.config().num_hidden_layers;
    let chosen: Vec<usize> = match layers {
        Some(ls) => {
            if let Some(bad) = ls.iter().find(|&&l| l >= num_layers) {
                anyhow::bail!("--layers: the model has layers 0..{num_layers}, got {bad}");
            }
            ls.to_vec()
        }
        None => (0..num_layers).collect(),
    };
    let pipe = Pipeline::new(&llama, &files.tokenizer, files.eos_token_ids.clone())
        .with_kv_quantization(press_args.kv.quantization()?);
    let prompt = pipe.prompt(request)?;
    let n = prompt.context_ids.len();
    let bar = spinner(format!("prefilling {n} context tokens with the press"));
    let cache = pipe.prefill(&prompt.context_ids, Some(press.as_ref()));
    bar.finish_and_clear();
    let cache = cache?;
    if let Some(path) = html {
        let mut data = crate::report::kept_map(&files.tokenizer, &prompt.context_ids, &cache)?;
        let config = llama.config();
        let full = config.num_hidden_layers * config.num_kv_heads() * n;
        let uncompressed = (cache.unquantized_bytes() as f64 / cache.entries().max(1) as f64
            * full as f64)
            .round() as usize;
        if let serde_json::Value::Object(map) = &mut data {
            map.insert("press".into(), json!(press_args.press));
            map.insert(
                "compression_ratio".into(),
                json!(press_args.compression_ratio),
            );
            map.insert("answer".into(), serde_json::Value::Null);
            map.insert("answer_uncompressed".into(), serde_json::Value::Null);
            map.insert("cache_bytes".into(), json!(cache.bytes()));
            map.insert("cache_bytes_uncompressed".into(), json!(uncompressed));
        }
        std::fs::write(path, crate::report::standalone_page(&data)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let mut rows = Vec::with_capacity(chosen.len());
    for &l in &chosen {
        let layer = cache
            .layer(l)
            .ok_or_else(|| anyhow::anyhow!("the cache has no layer {l}"))?;
        let heads: Vec<Vec<usize>> = layer
            .original_positions()
            .iter()
            .map(|h| {
                let mut h = h.clone();
                h.sort_unstable();
                h.dedup();
                h
            })
            .collect();
        rows.push((l, heads));
    }
    if json {
        let layers: Vec<_> = rows
            .iter()
            .map(|(l, heads)| json!({"layer": l, "heads": heads}))
            .collect();
        return print_json(&json!({"context_tokens": n, "layers": layers}));
    }
    println!("context: {n} tokens; each strip spans the context, darker = more kept");
    for (l, heads) in &rows {
        for (h, kept) in heads.iter().enumerate() {
            println!(
                "layer {l:>3} head {h:>2}: {:>6}/{n} |{}|",
                kept.len(),
                density_strip(kept, n, 64)
            );
        }
    }
    Ok(())
}

/// `kvpress presses`: the catalogue.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Scorer => "scorer",
        Kind::Wrapper => "wrapper",
        Kind::Press => "press",
    }
}

/// `{"presses": [{"name", "kind", "summary", "params": [{"name", "default", "doc"}]}]}`.
pub fn catalogue_json() -> serde_json::Value {
    let list: Vec<_> = CATALOGUE
        .iter()
        .map(|p| {
            let params: Vec<_> = p
                .params
                .iter()
                .map(|q| json!({"name": q.name, "default": q.default, "doc": q.doc}))
                .collect();
            json!({"name": p.name, "kind": kind_name(p.kind), "summary": p.summary, "params": params})
        })
        .collect();
    json!({ "presses": list })
}

pub fn presses(json: bool) -> anyhow::Result<()> {
    let kind = kind_name;
    if json {
        return print_json(&catalogue_json());
    }
    for p in CATALOGUE {
        let usage = match p.kind {
            Kind::Wrapper => format!("{}(SCORER, …)", p.name),
            _ => p.name.to_string(),
        };
        println!("{usage:<28} [{}] {}", kind(p.kind), p.summary);
        for q in p.params {
            let setting = format!("{}={}", q.name, q.default);
            println!("      {setting:<40} {}", q.doc);
        }
    }
    println!(
        "\nScorers make a top-k press on their own and are what wrappers take first. Every scorer \
         and wrapper also takes compression_ratio=R; --compression-ratio sets the outer press's."
    );
    Ok(())
}

/// `kvpress calibrate`: query statistics for `expected_attention_stats`.
pub fn calibrate(model: Option<&Path>, args: &CalibrateArgs, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("reading the corpus {}", args.corpus.display()))?;
    let documents: Vec<String> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .take(args.samples)
        .map(|d| d.chars().take(args.sample_chars).collect())
        .collect();
    if documents.is_empty() {
        anyhow::bail!("the corpus {} holds no text", args.corpus.display());
    }
    let files = model::open(model)?;
    let llama = model::load(&files)?;
    let statistics = StatisticsCollector::new(args.n_sink);
    let heads = HeadScoreCollector::default();
    let collector: &dyn Press<Backend> = match args.target {
        CalibrationTarget::ExpectedAttention => &statistics,
        CalibrationTarget::DuoAttention => &heads,
    };
    let bar = ProgressBar::new(documents.len() as u64);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("calibrating {bar:40} {pos}/{len} documents [{elapsed}]")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    for doc in &documents {
        let ids = files.tokenizer.encode(doc, false)?;
        if ids.len() > args.n_sink {
            let positions: Vec<usize> = (0..ids.len()).collect();
            let mut cache = llama.new_cache();
            llama.forward(
                &ids,
                &positions,
                &mut cache,
                &ForwardOptions {
                    press: Some(collector),
                    ..Default::default()
                },
            )?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    match args.target {
        CalibrationTarget::ExpectedAttention => statistics.save(&args.out),
        CalibrationTarget::DuoAttention => heads.save(&args.out),
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    if json {
        print_json(
            &json!({"path": args.out, "documents": documents.len(), "queries": statistics.count()}),
        )
    } else {
        println!("{} ({} documents)", args.out.display(), documents.len());
        Ok(())
    }
}
