//! The subcommands.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kvpress_models::ChatMessage;
use kvpress_models::ModelFiles;
use kvpress_models::convert::convert_gguf;
use kvpress_models::generate::{self as decoding, GenerationOptions, top_k};
use serde_json::json;

use crate::model;

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
