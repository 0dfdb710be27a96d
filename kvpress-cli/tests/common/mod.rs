//! Running the `kvpress` binary from integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// Runs `kvpress` with `args` and returns its output.
pub fn kvpress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(args)
        .output()
        .expect("run kvpress")
}

/// The JSON object `kvpress … --json` printed; fails the test with stderr when it failed.
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kvpress failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// `kvpress serve` on a free loopback port with the default model, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Server {
    /// Starts the server with `extra` options and waits until it listens.
    pub fn start(extra: &[&str]) -> Self {
        let model = json_of(&kvpress(&["fetch", "--json"]))["path"]
            .as_str()
            .expect("path")
            .to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvpress"))
            .args(["--model", &model, "serve", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kvpress serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("first line");
        let base = line.trim().rsplit(' ').next().expect("address").to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{line}");
        Self { child, base }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
