//! Counters of `kvpress serve`, rendered in Prometheus' text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::api::{CacheUsage, Usage};

/// Server-wide counters (shared by the HTTP side and the model worker).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    generation_micros: AtomicU64,
    last_tokens_per_second_milli: AtomicU64,
    cache_bytes: AtomicU64,
    cache_bytes_uncompressed: AtomicU64,
    cancelled: AtomicU64,
    store_entries: AtomicUsize,
    store_bytes: AtomicUsize,
}

impl Metrics {
    /// One answered request of `route` with `status`.
    pub fn record(&self, route: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// A finished generation that took `seconds`.
    pub fn generated(&self, usage: &Usage, seconds: f64) {
        self.prompt_tokens
            .fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
        self.generation_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        if seconds > 0.0 {
            let rate = usage.completion_tokens as f64 / seconds;
            self.last_tokens_per_second_milli
                .store((rate * 1000.0) as u64, Ordering::Relaxed);
        }
        if usage.cache.context_tokens > 0 {
            self.compressed(&usage.cache);
        }
    }

    /// A compressed context.
    pub fn compressed(&self, cache: &CacheUsage) {
        self.cache_bytes
            .fetch_add(cache.cache_bytes as u64, Ordering::Relaxed);
        self.cache_bytes_uncompressed
            .fetch_add(cache.cache_bytes_uncompressed as u64, Ordering::Relaxed);
    }

    /// A request whose client went away before it finished.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The context store's size now.
    pub fn set_store(&self, entries: usize, bytes: usize) {
        self.store_entries.store(entries, Ordering::Relaxed);
        self.store_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the queue length now.
    pub fn render(&self, queue: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, f64)> = self
            .requests
            .lock()
            .map(|map| {
                map.iter()
                    .map(|((route, status), n)| {
                        (
                            format!("{{route=\"{route}\",status=\"{status}\"}}"),
                            *n as f64,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "kvpress_requests_total",
            "counter",
            "HTTP requests answered.",
            requests,
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let generated = load(&self.completion_tokens);
        let seconds = load(&self.generation_micros) / 1e6;
        let saved = load(&self.cache_bytes_uncompressed) - load(&self.cache_bytes);
        for (name, kind, help, value) in [
            (
                "kvpress_prompt_tokens_total",
                "counter",
                "Prompt tokens processed.",
                load(&self.prompt_tokens),
            ),
            (
                "kvpress_generated_tokens_total",
                "counter",
                "Tokens generated.",
                generated,
            ),
            (
                "kvpress_generation_seconds_total",
                "counter",
                "Seconds spent serving generations (prefill included).",
                seconds,
            ),
            (
                "kvpress_tokens_per_second",
                "gauge",
                "Generated tokens per second of the last generation.",
                load(&self.last_tokens_per_second_milli) / 1000.0,
            ),
            (
                "kvpress_cache_bytes_total",
                "counter",
                "Bytes of the compressed caches built.",
                load(&self.cache_bytes),
            ),
            (
                "kvpress_cache_bytes_saved_total",
                "counter",
                "Bytes compression saved (uncompressed minus compressed).",
                saved,
            ),
            (
                "kvpress_requests_cancelled_total",
                "counter",
                "Requests whose client went away.",
                load(&self.cancelled),
            ),
            (
                "kvpress_queue_length",
                "gauge",
                "Requests waiting or running.",
                queue as f64,
            ),
            (
                "kvpress_stored_contexts",
                "gauge",
                "Compressed contexts in the store.",
                self.store_entries.load(Ordering::Relaxed) as f64,
            ),
            (
                "kvpress_stored_context_bytes",
                "gauge",
                "Bytes of the stored compressed contexts.",
                self.store_bytes.load(Ordering::Relaxed) as f64,
            ),
        ] {
            metric(name, kind, help, vec![(String::new(), value)]);
        }
        out
    }
}
