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

/// A numeric array of a `.npy` file (little-endian f4/f8/i4/i8, C order) or a JSON file of
/// nested lists: its shape and values as f64.
pub fn read_array(path: &Path, what: &'static str) -> Result<(Vec<usize>, Vec<f64>)> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CoreError::Invalid {
        name: what,
        detail: format!("cannot read {shown}: {e}"),
    })?;
    let bad = |detail: String| CoreError::Invalid {
        name: what,
        detail: format!("{shown}: {detail}"),
    };
    if bytes.starts_with(b"\x93NUMPY") {
        let major = *bytes
            .get(6)
            .ok_or_else(|| bad("truncated .npy header".into()))?;
        let (len, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            _ => return Err(bad(format!("unsupported .npy version {major}"))),
        };
        let header = bytes
            .get(start..start + len)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| bad("truncated .npy header".into()))?;
        if header.contains("'fortran_order': True") {
            return Err(bad("Fortran-ordered arrays are not supported".into()));
        }
        let descr = header
            .split("'descr':")
            .nth(1)
            .and_then(|r| r.split('\'').nth(1))
            .ok_or_else(|| bad("no dtype in the .npy header".into()))?;
        let shape: Vec<usize> = header
            .split("'shape':")
            .nth(1)
            .and_then(|r| r.split(['(', ')']).nth(1))
            .ok_or_else(|| bad("no shape in the .npy header".into()))?
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.parse().map_err(|_| bad(format!("bad shape entry {t:?}"))))
            .collect::<Result<_>>()?;
        let data = &bytes[start + len..];
        let count: usize = shape.iter().product();
        let (size, read): (usize, fn(&[u8]) -> f64) = match descr {
            "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            "<f8" => (8, |b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }),
            "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            "<i8" => (8, |b| {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
            }),
            other => return Err(bad(format!("dtype {other} not supported (f4, f8, i4, i8)"))),
        };
        if data.len() < count * size {
            return Err(bad(format!("{} data bytes for {count} values", data.len())));
        }
        return Ok((
            shape,
            data.chunks_exact(size).take(count).map(read).collect(),
        ));
    }
    // JSON: nested lists of numbers, rectangular
    let text =
        std::str::from_utf8(&bytes).map_err(|_| bad("neither .npy nor UTF-8 JSON".into()))?;
    let mut shape = Vec::new();
    let mut values = Vec::new();
    let mut depth = 0usize;
    let mut counts: Vec<usize> = Vec::new();
    let mut number = String::new();
    let flush =
        |number: &mut String, values: &mut Vec<f64>, counts: &mut Vec<usize>| -> Result<()> {
            if !number.is_empty() {
                values.push(
                    number
                        .parse()
                        .map_err(|_| bad(format!("bad number {number:?}")))?,
                );
                if let Some(c) = counts.last_mut() {
                    *c += 1;
                }
                number.clear();
            }
            Ok(())
        };
    for ch in text.chars() {
        match ch {
            '[' => {
                if let Some(c) = counts.last_mut() {
                    *c += 1;
                }
                depth += 1;
                counts.push(0);
            }
            ']' => {
                flush(&mut number, &mut values, &mut counts)?;
                let n = counts.pop().unwrap_or(0);
                depth = depth.saturating_sub(1);
                if shape.len() <= depth {
                    shape.resize(depth + 1, usize::MAX);
                }
                if shape[depth] == usize::MAX {
                    shape[depth] = n;
                } else if shape[depth] != n {
                    return Err(bad("the nested lists are not rectangular".into()));
                }
            }
            ',' => flush(&mut number, &mut values, &mut counts)?,
            c if c.is_whitespace() => {}
            c => number.push(c),
        }
    }
    if shape.is_empty() || values.len() != shape.iter().product::<usize>() {
        return Err(bad("expected a rectangular nested list of numbers".into()));
    }
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_and_json_arrays() {
        let dir = std::env::temp_dir().join(format!("kvpress-arrays-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // a version-1 .npy of shape (2, 3), float32 0..6
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut header = header.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        for i in 0..6 {
            bytes.extend((i as f32).to_le_bytes());
        }
        let npy = dir.join("a.npy");
        std::fs::write(&npy, bytes).expect("write");
        let (shape, values) = read_array(&npy, "test").expect("npy");
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let json = dir.join("a.json");
        std::fs::write(&json, "[[0.5, 1, 7], [2, 3e0, -1]]").expect("write");
        let (shape, values) = read_array(&json, "test").expect("json");
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![0.5, 1.0, 7.0, 2.0, 3.0, -1.0]);
        std::fs::write(&json, "[[1, 2], [3]]").expect("write");
        assert!(
            read_array(&json, "test").is_err(),
            "ragged lists are refused"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
