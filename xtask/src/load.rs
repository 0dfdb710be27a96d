//! `cargo xtask load-test`: a bounded load on `kvpress serve` over loopback. Starts the server,
//! stores a few compressed contexts (more than the store keeps, so LRU eviction runs), then sends
//! `--requests` requests from `--clients` concurrent clients — chat completions with and without
//! presses, streamed or not, and questions about stored contexts — and reports failures,
//! latency and the server's resident memory after a warm-up and after the run.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::filler::essay;

/// Options of `cargo xtask load-test`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Model (HF directory or .gguf); default: the default model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Requests in all.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
    /// Memory of the server's context store, MiB (the bound on memory growth).
    #[arg(long, default_value_t = 64)]
    context_store_mib: usize,
    /// Where load.json goes.
    #[arg(long, default_value = "target/load-test")]
    out: PathBuf,
}

/// The server under test, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        crate::bench::proc_status_kib(&self.child.id().to_string(), "VmRSS")
    }
}

/// Builds and starts `kvpress serve` on a free loopback port.
fn start(args: &LoadArgs) -> anyhow::Result<Server> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "kvpress-cli"])
        .status()
        .context("building kvpress")?;
    if !status.success() {
        bail!("building kvpress failed");
    }
    let mut command = Command::new(root.join("target/release/kvpress"));
    if let Some(m) = &args.model {
        command.arg("--model").arg(m);
    }
    let mut child = command
        .args(["serve", "--port", "0", "--max-contexts", "2"])
        .args(["--max-queue", &(args.clients * 2).to_string()])
        .args(["--context-store-mib", &args.context_store_mib.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kvpress serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|b| b.starts_with("http://"))
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_string();
    Ok(Server { child, base })
}

/// One request: (path, body, streamed).
fn request(i: usize, contexts: &[String], max_tokens: usize) -> (String, Value, bool) {
    let context = essay(i as u64 % 7, 24);
    let question = "Who is the story about?";
    let presses = [
        json!(null),
        json!("knorm"),
        json!("snapkv"),
        json!("expected_attention"),
    ];
    match i % 5 {
        // a question about a stored context
        4 => (
            "/v1/chat/completions".into(),
            json!({
                "messages": [{"role": "user", "content": question}],
                "context_id": contexts[i % contexts.len()],
                "max_tokens": max_tokens,
                "stream": i.is_multiple_of(2),
            }),
            i.is_multiple_of(2),
        ),
        k => (
            "/v1/chat/completions".into(),
            json!({
                "messages": [
                    {"role": "user", "content": context},
                    {"role": "user", "content": question},
                ],
                "press": presses[k],
                "compression_ratio": if k == 0 { json!(null) } else { json!(0.5) },
                "max_tokens": max_tokens,
                "stream": k == 2,
            }),
            k == 2,
        ),
    }
}

/// Sends one request; Ok(seconds) when it succeeded (a 200 with an answer, or a stream that
/// ended with `[DONE]`).
fn send(base: &str, path: &str, body: &Value, streamed: bool) -> anyhow::Result<f64> {
    let start = Instant::now();
    let response = ureq::post(&format!("{base}{path}"))
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(600))
        .send_string(&body.to_string());
    let response = match response {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            bail!("status {code}: {}", r.into_string().unwrap_or_default())
        }
        Err(e) => bail!("{e}"),
    };
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text)?;
    if streamed {
        if !text.trim_end().ends_with("data: [DONE]") || text.contains("\"error\"") {
            bail!("stream did not finish: {text:.200}");
        }
    } else {
        let v: Value = serde_json::from_str(&text)?;
        if v["choices"][0]["message"]["content"].as_str().is_none() {
            bail!("no answer: {text:.200}");
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs `count` requests numbered from `first` over `clients` threads.
fn run_batch(
    base: &str,
    contexts: &[String],
    args: &LoadArgs,
    first: usize,
    count: usize,
) -> (Vec<f64>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(first));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..args.clients {
            let (next, latencies, failures) = (next.clone(), latencies.clone(), failures.clone());
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= first + count {
                        break;
                    }
                    let (path, body, streamed) = request(i, contexts, args.max_tokens);
                    match send(base, &path, &body, streamed) {
                        Ok(s) => latencies.lock().map(|mut l| l.push(s)).unwrap_or(()),
                        Err(e) => failures
                            .lock()
                            .map(|mut f| f.push(format!("request {i}: {e}")))
                            .unwrap_or(()),
                    }
                }
            });
        }
    });
    (taken(&latencies), taken(&failures))
}

/// The values gathered by the clients.
fn taken<T: Clone>(m: &Mutex<Vec<T>>) -> Vec<T> {
    m.lock().map(|v| v.clone()).unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The load test.
pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let server = start(args)?;
    let base = server.base.clone();
    eprintln!("load-test: server at {base}");
    // three contexts into a store of two: the first is evicted
    let mut contexts = Vec::new();
    for seed in 0..3u64 {
        let body =
            json!({"context": essay(100 + seed, 40), "press": "knorm", "compression_ratio": 0.5});
        let response = ureq::post(&format!("{base}/v1/contexts"))
            .set("content-type", "application/json")
            .send_string(&body.to_string())
            .context("storing a context")?;
        let v: Value = serde_json::from_str(&response.into_string()?)?;
        contexts.push(v["id"].as_str().context("context id")?.to_string());
    }
    let kept: Vec<String> = contexts[1..].to_vec();
    let warmup = (args.clients * 2).min(args.requests);
    let (_, warm_failures) = run_batch(&base, &kept, args, 0, warmup);
    let rss_after_warmup = server.rss_kib();
    let start = Instant::now();
    let (mut latencies, failures) = run_batch(&base, &kept, args, warmup, args.requests - warmup);
    let seconds = start.elapsed().as_secs_f64();
    let rss_after_run = server.rss_kib();
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .context("metrics")?
        .into_string()?;
    let evicted = ureq::post(&format!("{base}/v1/chat/completions"))
        .set("content-type", "application/json")
        .send_string(
            &json!({"messages": [{"role": "user", "content": "Hi"}], "context_id": contexts[0]})
                .to_string(),
        );
    let first_evicted = matches!(evicted, Err(ureq::Error::Status(404, _)));
    latencies.sort_by(f64::total_cmp);
    let failures: Vec<String> = warm_failures.into_iter().chain(failures).collect();
    let growth_mib = (rss_after_run as f64 - rss_after_warmup as f64) / 1024.0;
    let report = json!({
        "requests": args.requests,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "failures": failures,
        "measured_requests": latencies.len(),
        "seconds": seconds,
        "requests_per_second": latencies.len() as f64 / seconds,
        "latency_p50_s": percentile(&latencies, 0.5),
        "latency_p95_s": percentile(&latencies, 0.95),
        "rss_after_warmup_mib": rss_after_warmup as f64 / 1024.0,
        "rss_after_run_mib": rss_after_run as f64 / 1024.0,
        "rss_growth_mib": growth_mib,
        "context_store_mib": args.context_store_mib,
        "lru_evicted_the_oldest_context": first_evicted,
        "cancelled_requests": metrics
            .lines()
            .find_map(|l| l.strip_prefix("kvpress_requests_cancelled_total "))
            .and_then(|v| v.trim().parse::<f64>().ok()),
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("load.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !failures.is_empty() {
        bail!("{} requests failed", failures.len());
    }
    if growth_mib > args.context_store_mib as f64 {
        bail!("the server grew by {growth_mib:.1} MiB, more than the context store's limit");
    }
    if !first_evicted {
        bail!("the least recently used context was not evicted");
    }
    Ok(())
}
