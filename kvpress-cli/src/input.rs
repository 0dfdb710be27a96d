//! Reading the text arguments.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;

use crate::TextInput;

impl TextInput {
    /// The text, from `--text`, a file or stdin.
    pub fn read(&self) -> anyhow::Result<String> {
        read_text(&self.text, &self.file)?
            .ok_or_else(|| anyhow::anyhow!("give the text with --text or --text-file"))
    }
}

/// The text given inline, or read from `file` (`-`: standard input); `None` if neither.
pub fn read_text(text: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    match (text, file) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            Ok(Some(s))
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        (None, None) => Ok(None),
    }
}
