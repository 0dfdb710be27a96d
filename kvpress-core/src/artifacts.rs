//! Learned artefacts of presses (Q-filters, KVzap surrogates, query statistics, budget curves)
//! read from local files: a safetensors file's tensors as f32.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{CoreError, Result};

/// Little-endian `bytes` of `dtype` (F32, F16 or BF16) as f32; `None` for other dtypes.
pub fn to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// The tensors of a safetensors file: name → (shape, f32 values).
pub struct Artifact {
    path: String,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Artifact {
    /// Reads every tensor of `path` (F32/F16/BF16). `what` names the press needing it in errors.
    pub fn open(path: &Path, what: &'static str) -> Result<Self> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| CoreError::Invalid {
            name: what,
            detail: format!("cannot read {shown}: {e}"),
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| CoreError::Invalid {
            name: what,
            detail: format!("{shown} is not a valid safetensors file: {e}"),
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            let data = to_f32(view.data(), view.dtype()).ok_or_else(|| CoreError::Invalid {
                name: what,
                detail: format!(
                    "{shown}: tensor {name} has dtype {:?}; F32/F16/BF16 only",
                    view.dtype()
                ),
            })?;
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Self {
            path: shown,
            tensors,
        })
    }

    /// Tensor `name`, which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let (got, data) = self.tensors.get(name).ok_or_else(|| CoreError::Invalid {
            name: "artifact",
            detail: format!("{} has no tensor `{name}`", self.path),
        })?;
        if got != shape {
            return Err(CoreError::Invalid {
                name: "artifact",
                detail: format!(
                    "{}: tensor `{name}` is {got:?}, expected {shape:?}",
                    self.path
                ),
            });
        }
        Ok(data)
    }

    /// Whether tensor `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(s, _)| s.as_slice())
    }
}

/// Writes `(name, shape, values)` tensors as one f32 safetensors file (PyTorch metadata), the
/// format every artefact reader here accepts.
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let shown = path.display().to_string();
    let fail = |e: safetensors::SafeTensorError| CoreError::Invalid {
        name: "artifact",
        detail: format!("writing {shown}: {e}"),
    };
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        views.push((
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), b).map_err(fail)?,
        ));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(fail)
}
