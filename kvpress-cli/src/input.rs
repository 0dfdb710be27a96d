//! Reading the text arguments.

use std::io::Read;

use anyhow::Context;

use crate::TextInput;

impl TextInput {
    /// The text, from `--text`, a file or stdin.
    pub fn read(&self) -> anyhow::Result<String> {
        match (&self.text, &self.file) {
            (Some(t), _) => Ok(t.clone()),
            (None, Some(path)) if path.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading standard input")?;
                Ok(s)
            }
            (None, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            }
            (None, None) => anyhow::bail!("give the text with --text or --text-file"),
        }
    }
}
