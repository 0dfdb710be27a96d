//! Running the `kvpress` binary from integration tests.

use std::process::{Command, Output};

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
