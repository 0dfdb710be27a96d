//! Safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. F32, F16 and BF16 tensors are converted to `f32`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use kvpress_core::artifacts::to_f32;
use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensors};

use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, WeightSource};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// The tensors of one or several memory-mapped safetensors files.
pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl SafetensorsWeights {
    /// Opens the checkpoint of directory `dir` (single file or sharded index).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            Self::open_files(&[single])
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                    path: index.clone(),
                    detail: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Safetensors {
                    path: index.clone(),
                    detail: "no `weight_map` object".into(),
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            if files.is_empty() {
                return Err(ModelError::Safetensors {
                    path: index,
                    detail: "`weight_map` lists no files".into(),
                });
            }
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            Self::open_files(&paths)
        } else {
            Err(ModelError::Safetensors {
                path: dir.to_path_buf(),
                detail: "neither model.safetensors nor model.safetensors.index.json is present"
                    .into(),
            })
        }
    }

    /// Opens the given safetensors files (shards of one checkpoint).
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint modified while loaded is outside our contract.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    detail: describe(&e),
                })?;
            for name in metadata.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
                header_len,
                metadata,
            });
        }
        Ok(Self { shards, index })
    }
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the file is truncated: the header promises more data than the file holds".into()
        }
        E::HeaderTooSmall => "the file is too short to hold a header".into(),
        E::InvalidHeaderLength => {
            "the header length is larger than the file (truncated or not safetensors)".into()
        }
        other => other.to_string(),
    }
}

impl WeightSource for SafetensorsWeights {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let shard = self
            .index
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let start = 8 + shard.header_len;
        let (a, b) = info.data_offsets;
        let bytes =
            shard
                .mmap
                .get(start + a..start + b)
                .ok_or_else(|| ModelError::Safetensors {
                    path: shard.path.clone(),
                    detail: format!("tensor `{name}` points outside the file"),
                })?;
        let data = to_f32(bytes, info.dtype).ok_or_else(|| ModelError::Safetensors {
            path: shard.path.clone(),
            detail: format!(
                "tensor `{name}` has dtype {:?}; only F32, F16 and BF16 are supported",
                info.dtype
            ),
        })?;
        HostTensor::new(info.shape.clone(), data)
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Writes `tensors` (HF names) as one f32 `model.safetensors` file.
pub fn write_f32(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.shape.clone(), t.data.clone()))
        .collect();
    kvpress_core::artifacts::write_f32(path, &owned).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}
