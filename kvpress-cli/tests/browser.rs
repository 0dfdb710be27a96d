//! The web page of `kvpress serve` in headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs): the page loads, submits the golden pass-key context and question through its own
//! form (`autorun=1`), and the answers, the memory saved and the kept-token picture appear.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
        })
}

/// `s` percent-encoded for a URL query.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text inside the element with `id` in a serialized DOM (no nested tags expected).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let open = start + dom[start..].find('>').expect("tag end") + 1;
    let close = open + dom[open..].find('<').expect("closing tag");
    &dom[open..close]
}

#[test]
fn the_page_answers_and_draws_what_was_kept() {
    let Some(browser) = chromium() else {
        if std::env::var_os("KVPRESS_SKIP_BROWSER_TEST").is_some() {
            eprintln!("skipped: no chromium (KVPRESS_SKIP_BROWSER_TEST is set)");
            return;
        }
        panic!(
            "the browser test needs headless Chromium: apt-get install chromium \
             (or set KVPRESS_SKIP_BROWSER_TEST=1 to skip it)"
        );
    };
    let golden_dir = std::env::var_os("KVPRESS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir.join("presses_r0.5.json")).expect("golden file"),
    )
    .expect("json");
    let server = common::Server::start(&[]);
    let base = server.base.clone();
    let url = format!(
        "{base}/?context={}&question={}&press=knorm&ratio=0.5&max_tokens=24&autorun=1",
        encode(golden["context"].as_str().expect("context")),
        encode(golden["question"].as_str().expect("question")),
    );
    let profile = tempfile::tempdir().expect("profile dir");
    let run = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=120000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &url,
        ])
        .stderr(Stdio::null())
        .output();
    drop(server);
    let dom = String::from_utf8_lossy(&run.expect("run chromium").stdout).to_string();
    assert!(
        dom.contains("data-state=\"done\""),
        "the page did not finish: {dom:.2000}"
    );
    assert_eq!(
        text_of(&dom, "answer"),
        golden["results"]["KnormPress"]["0.5"]["answer"]
            .as_str()
            .expect("answer")
    );
    assert_eq!(
        text_of(&dom, "answer-uncompressed"),
        golden["no_press"]["answer"].as_str().expect("answer")
    );
    assert!(
        text_of(&dom, "memory").contains("50% saved"),
        "{}",
        text_of(&dom, "memory")
    );
    // one shaded span per context token, with how many heads kept it
    assert_eq!(dom.matches("class=\"tok\"").count(), 1287);
    assert!(dom.contains("kept by 90 of 90 heads") || dom.contains("of 90 heads"));
}
