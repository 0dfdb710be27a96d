//! `kvpress serve` on a loopback port, driven over HTTP: chat completions with and without a
//! press (answers equal kvpress's on the golden pass-key context), streaming, a stored context
//! answering two questions, and every bad request answered with a JSON 4xx while the server keeps
//! serving.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use common::Server;

/// Requests against a [`Server`].
trait Client {
    fn post(&self, path: &str, body: &str) -> (u16, Value);
    fn get(&self, path: &str) -> (u16, String);
}

impl Client for Server {
    /// Status and JSON body of a POST.
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = ureq::post(&self.url(path))
            .set("content-type", "application/json")
            .timeout(Duration::from_secs(600))
            .send_string(body);
        into_json(response)
    }

    fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).call() {
            Ok(r) => (r.status(), r.into_string().expect("body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().expect("body")),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
}

fn into_json(response: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let (status, text) = match response {
        Ok(r) => (r.status(), r.into_string().expect("body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().expect("body")),
        Err(e) => panic!("request failed: {e}"),
    };
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

fn golden() -> Value {
    let dir = std::env::var_os("KVPRESS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    serde_json::from_str(
        &std::fs::read_to_string(dir.join("presses_r0.5.json")).expect("golden file"),
    )
    .expect("json")
}

/// The golden pass-key chat: the context as one message, the question as the last.
fn pass_key_chat(golden: &Value, extra: Value) -> String {
    let mut body = json!({
        "model": "any",
        "messages": [
            {"role": "user", "content": golden["context"]},
            {"role": "user", "content": golden["question"]},
        ],
        "max_tokens": 24,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body.to_string()
}

fn answer_of(v: &Value) -> &str {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no answer in {v}"))
}

#[test]
fn chat_completions_answer_as_kvpress_with_and_without_a_press_and_stream() {
    let golden = golden();
    let server = Server::start(&[]);
    let (status, health) = server.get("/health");
    assert_eq!(status, 200, "{health}");

    let (status, plain) = server.post("/v1/chat/completions", &pass_key_chat(&golden, json!({})));
    assert_eq!(status, 200, "{plain}");
    assert_eq!(
        answer_of(&plain),
        golden["no_press"]["answer"].as_str().expect("answer")
    );
    assert_eq!(plain["usage"]["context_tokens"], 1287);

    let press = json!({"press": "knorm", "compression_ratio": 0.5});
    let (status, knorm) = server.post(
        "/v1/chat/completions",
        &pass_key_chat(&golden, press.clone()),
    );
    assert_eq!(status, 200, "{knorm}");
    assert_eq!(
        answer_of(&knorm),
        golden["results"]["KnormPress"]["0.5"]["answer"]
            .as_str()
            .expect("answer")
    );
    let usage = &knorm["usage"];
    assert_eq!(usage["kept_tokens"], 643.0);
    let ratio = usage["cache_bytes"].as_f64().expect("bytes")
        / usage["cache_bytes_uncompressed"].as_f64().expect("bytes");
    assert!((ratio - 643.0 / 1287.0).abs() < 1e-9, "{usage}");
    assert_eq!(
        usage["prompt_tokens"].as_u64().expect("n"),
        1287 + golden["question_ids"].as_array().expect("ids").len() as u64
    );

    // the same request streamed: the pieces add up to the same answer, usage comes last
    let mut streamed = json!({"stream": true});
    if let (Value::Object(s), Value::Object(p)) = (&mut streamed, press) {
        s.extend(p);
    }
    let response = ureq::post(&server.url("/v1/chat/completions"))
        .set("content-type", "application/json")
        .send_string(&pass_key_chat(&golden, streamed))
        .expect("stream");
    assert_eq!(response.content_type(), "text/event-stream");
    let mut text = String::new();
    let mut events = Vec::new();
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.expect("line");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_string());
        }
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(piece) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    assert!(chunks.len() > 3, "one chunk per token");
    assert_eq!(text, answer_of(&knorm));
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["kept_tokens"], 643.0);

    // text completions: the prompt is the context, the question an extension
    let (status, completion) = server.post(
        "/v1/completions",
        &json!({
            "prompt": golden["context"], "question": golden["question"],
            "press": "knorm", "compression_ratio": 0.5, "max_tokens": 24,
        })
        .to_string(),
    );
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(
        completion["choices"][0]["text"].as_str(),
        Some(answer_of(&knorm))
    );

    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert!(models.contains("SmolLM2-135M-Instruct"), "{models}");
    let (status, page) = server.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("kept-map"), "the web page is served");
}

#[test]
fn a_stored_context_answers_two_questions() {
    let golden = golden();
    let server = Server::start(&[]);
    let (status, stored) = server.post(
        "/v1/contexts",
        &json!({"context": golden["context"], "press": "knorm", "compression_ratio": 0.5})
            .to_string(),
    );
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().expect("id").to_string();
    assert_eq!(stored["usage"]["kept_tokens"], 643.0);
    let ask = |question: &str| {
        server.post(
            "/v1/chat/completions",
            &json!({
                "messages": [{"role": "user", "content": question}],
                "context_id": id, "max_tokens": 24,
            })
            .to_string(),
        )
    };
    // the first question gets the answer of compressing with the question at hand
    let (status, first) = ask(golden["question"].as_str().expect("question"));
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        answer_of(&first),
        golden["results"]["KnormPress"]["0.5"]["answer"]
            .as_str()
            .expect("answer")
    );
    let (status, second) = ask("Who painted the lanterns along the quay?");
    assert_eq!(status, 200, "{second}");
    assert!(!answer_of(&second).is_empty());
    // asking again gives the same answer: the stored cache is not changed by a question
    let (_, again) = ask(golden["question"].as_str().expect("question"));
    assert_eq!(answer_of(&again), answer_of(&first));

    let (status, list) = server.get("/v1/contexts");
    assert_eq!(status, 200);
    assert!(list.contains(&id), "{list}");
    let deleted = ureq::delete(&server.url(&format!("/v1/contexts/{id}")))
        .call()
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let (status, gone) = ask("Anything?");
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["type"], "context_not_found");
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let server = Server::start(&[
        "--max-body-bytes",
        "4000",
        "--max-context-tokens",
        "64",
        "--max-queue",
        "1",
    ]);
    let chat = |context: &str, extra: Value| {
        let mut body = json!({
            "messages": [
                {"role": "system", "content": context},
                {"role": "user", "content": "What is it?"},
            ],
            "max_tokens": 4,
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        body.to_string()
    };
    let short = "A short note about a red boat.";
    let long = "word ".repeat(200);
    let huge = "x".repeat(5000);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"messages\": [".into(), 400, "parse"),
        ("[1, 2]".into(), 422, "deserialize"),
        (chat(short, json!({"press": "snapk"})), 400, "unknown press"),
        (
            chat(short, json!({"press": "knorm", "compression_ratio": 1.5})),
            400,
            "[0, 1)",
        ),
        (chat(short, json!({"kv_quant": "int3"})), 400, "int3"),
        (chat(&huge, json!({})), 413, "length limit"),
        (
            chat(&long, json!({"press": "knorm", "compression_ratio": 0.5})),
            400,
            "at most 64",
        ),
        (
            chat(short, json!({"context_id": "ctx-none"})),
            400,
            "context_id",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": "hi"}]}).to_string(),
            400,
            "role 'user'",
        ),
        (json!({"messages": []}).to_string(), 400, "empty"),
        (
            chat(short, json!({"max_tokens": 100000})),
            400,
            "max_tokens",
        ),
    ];
    for (body, status, needle) in &cases {
        let (got, error) = server.post("/v1/chat/completions", body);
        assert_eq!(got, *status, "{body:.80}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body:.80}: {error}");
    }
    let (status, error) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "context_id": "ctx-missing"})
            .to_string(),
    );
    assert_eq!(status, 404, "{error}");
    let (status, body) = server.get("/v2/nothing");
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");

    // a client that goes away cancels its generation, and the queue (of one) frees up
    let slow = chat(
        short,
        json!({"stream": true, "max_tokens": 1000, "ignore_eos": true}),
    );
    let response = ureq::post(&server.url("/v1/chat/completions"))
        .set("content-type", "application/json")
        .send_string(&slow)
        .expect("stream");
    let mut reader = response.into_reader();
    let mut first = [0u8; 64];
    reader.read_exact(&mut first).expect("first bytes");
    // while it runs the queue is full
    let (status, busy) = server.post("/v1/chat/completions", &chat(short, json!({})));
    assert_eq!(status, 429, "{busy}");
    drop(reader);
    let mut served = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        let (status, _) = server.post("/v1/chat/completions", &chat(short, json!({})));
        if status == 200 {
            served = true;
            break;
        }
        assert_eq!(status, 429);
    }
    assert!(served, "the cancelled generation freed the queue");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("kvpress_requests_cancelled_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/chat/completions\",status=\"400\""),
        "{metrics}"
    );
    let (status, health) = server.get("/health");
    assert_eq!(status, 200, "{health}");
}
