//! The key/value cache: per layer, per KV head, the kept keys (after RoPE), values and the
//! original position of every kept entry.
//!
//! This is the dense layout: every KV head of a layer holds the same number of entries, but
//! each head may hold different tokens (a press selects per head). Batch size is 1.
//! [`KvCache::bytes`] reports the bytes the tensors really hold, so memory figures are measured
//! rather than assumed.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::error::{CoreError, Result};

/// Keys and values of one attention layer.
///
/// # Shapes
/// - keys, values: `[1, h_kv, n, d]`
/// - positions: `h_kv` lists of `n` absolute token positions (entry `i` of head `h` holds the
///   token at `positions[h][i]`)
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    positions: Vec<Vec<usize>>,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self {
            kv: None,
            positions: Vec::new(),
        }
    }
}

impl<B: Backend> LayerCache<B> {
    /// Number of entries held per KV head.
    pub fn len(&self) -> usize {
        self.positions.first().map_or(0, Vec::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Absolute positions of every head's entries, in cache order.
    pub fn positions(&self) -> &[Vec<usize>] {
        &self.positions
    }

    /// Keys and values (`[1, h_kv, n, d]` each), or `None` if empty.
    pub fn keys_values(&self) -> Option<(&Tensor<B, 4>, &Tensor<B, 4>)> {
        self.kv.as_ref().map(|(k, v)| (k, v))
    }

    /// Appends `keys`/`values` (`[1, h_kv, s, d]`) for tokens at `positions` (`s` of them, the
    /// same for every head).
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        check_entries("LayerCache::append", &keys, &values, positions.len())?;
        let h_kv = keys.dims()[1];
        self.kv = Some(match self.kv.take() {
            None => (keys, values),
            Some((k, v)) => {
                let (kd, nd) = (k.dims(), keys.dims());
                if kd[0] != nd[0] || kd[1] != nd[1] || kd[3] != nd[3] {
                    return Err(CoreError::Shape {
                        context: "LayerCache::append",
                        detail: format!("cache {kd:?} cannot take {nd:?}"),
                    });
                }
                (
                    Tensor::cat(vec![k, keys], 2),
                    Tensor::cat(vec![v, values], 2),
                )
            }
        });
        if self.positions.is_empty() {
            self.positions = vec![Vec::new(); h_kv];
        }
        for head in &mut self.positions {
            head.extend_from_slice(positions);
        }
        Ok(())
    }

    /// Keeps, for every head `h`, the entries at cache indices `indices[h]` (in that order).
    /// Every head must keep the same number of entries (dense layout).
    pub fn keep(&mut self, indices: &[Vec<usize>]) -> Result<()> {
        let Some((k, v)) = self.kv.take() else {
            return Err(CoreError::Invalid {
                name: "cache",
                detail: "nothing to select from: the layer cache is empty".into(),
            });
        };
        let [b, h_kv, n, d] = k.dims();
        let kept = indices.first().map_or(0, Vec::len);
        if indices.len() != h_kv
            || indices
                .iter()
                .any(|i| i.len() != kept || i.iter().any(|&x| x >= n))
        {
            self.kv = Some((k, v));
            return Err(CoreError::Invalid {
                name: "kept indices",
                detail: format!("need {h_kv} lists of equal length with indices below {n}"),
            });
        }
        let positions: Vec<Vec<usize>> = indices
            .iter()
            .zip(&self.positions)
            .map(|(idx, pos)| idx.iter().map(|&i| pos[i]).collect())
            .collect();
        if kept == 0 {
            self.positions = positions;
            return Ok(());
        }
        let mut flat = Vec::with_capacity(h_kv * kept * d);
        for head in indices {
            for &i in head {
                flat.extend(std::iter::repeat_n(i as i64, d));
            }
        }
        let device = k.device();
        let idx =
            Tensor::<B, 4, Int>::from_data(TensorData::new(flat, [b, h_kv, kept, d]), &device);
        self.kv = Some((k.gather(2, idx.clone()), v.gather(2, idx)));
        self.positions = positions;
        Ok(())
    }

    /// Replaces the keys by `f(keys)`, which must keep their shape (channel pruning).
    pub fn map_keys(&mut self, f: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>) -> Result<()> {
        let Some((k, v)) = self.kv.take() else {
            return Ok(());
        };
        let dims = k.dims();
        let mapped = f(k.clone());
        if mapped.dims() != dims {
            self.kv = Some((k, v));
            return Err(CoreError::Shape {
                context: "LayerCache::map_keys",
                detail: format!("keys {dims:?} became {:?}", mapped.dims()),
            });
        }
        self.kv = Some((mapped, v));
        Ok(())
    }

    /// Keeps the first `len` entries of every head (drops a question and its answer).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        for head in &mut self.positions {
            head.truncate(len);
        }
        self.kv = match self.kv.take() {
            Some((k, v)) if len > 0 => Some((k.narrow(2, 0, len), v.narrow(2, 0, len))),
            _ => None,
        };
    }

    /// Bytes held by the key and value tensors (element count × element size).
    pub fn bytes(&self) -> usize {
        self.kv
            .as_ref()
            .map_or(0, |(k, v)| tensor_bytes(k) + tensor_bytes(v))
    }
}

/// Keys and values must have one shape and one entry per position.
fn check_entries<B: Backend>(
    context: &'static str,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    positions: usize,
) -> Result<()> {
    if keys.dims() != values.dims() || keys.dims()[2] != positions || keys.dims()[0] != 1 {
        return Err(CoreError::Shape {
            context,
            detail: format!(
                "keys {:?}, values {:?}, {positions} positions (batch size must be 1)",
                keys.dims(),
                values.dims()
            ),
        });
    }
    Ok(())
}

fn tensor_bytes<B: Backend>(t: &Tensor<B, 4>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// The caches of every layer of a model.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerCache::default()).collect(),
        }
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The cache of layer `l`.
    pub fn layer(&self, l: usize) -> Option<&LayerCache<B>> {
        self.layers.get(l)
    }

    /// The mutable cache of layer `l`.
    pub fn layer_mut(&mut self, l: usize) -> Option<&mut LayerCache<B>> {
        self.layers.get_mut(l)
    }

    /// Entries per layer (each KV head of a layer keeps the same count in the dense layout).
    pub fn lengths(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::len).collect()
    }

    /// Truncates every layer to the matching length of `lengths`.
    pub fn truncate_to(&mut self, lengths: &[usize]) {
        for (layer, &len) in self.layers.iter_mut().zip(lengths) {
            layer.truncate(len);
        }
    }

    /// Bytes really held by all layers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn append_truncate_and_bytes() {
        let dev = Default::default();
        let mut cache = LayerCache::<B>::default();
        let k = Tensor::<B, 4>::random([1, 3, 5, 8], Distribution::Default, &dev);
        cache
            .append(k.clone(), k.clone(), &[0, 1, 2, 3, 4])
            .expect("append");
        let k2 = Tensor::<B, 4>::random([1, 3, 2, 8], Distribution::Default, &dev);
        cache.append(k2.clone(), k2, &[5, 6]).expect("append");
        assert_eq!(cache.len(), 7);
        assert_eq!(cache.bytes(), 2 * 3 * 7 * 8 * 4);
        cache.truncate(5);
        assert_eq!(cache.positions()[2], vec![0, 1, 2, 3, 4]);
        let (keys, _) = cache.keys_values().expect("not empty");
        let diff = (keys.clone() - k).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn keep_selects_per_head() {
        let dev = Default::default();
        let mut cache = LayerCache::<B>::default();
        // value = head * 100 + position, in every channel
        let data: Vec<f32> = (0..2)
            .flat_map(|h| (0..4).flat_map(move |p| std::iter::repeat_n((h * 100 + p) as f32, 3)))
            .collect();
        let k = Tensor::<B, 4>::from_data(TensorData::new(data, [1, 2, 4, 3]), &dev);
        cache
            .append(k.clone(), k, &[10, 11, 12, 13])
            .expect("append");
        cache.keep(&[vec![0, 3], vec![1, 2]]).expect("keep");
        assert_eq!(cache.positions(), &[vec![10, 13], vec![11, 12]]);
        let (keys, _) = cache.keys_values().expect("kept");
        let got: Vec<f32> = keys.clone().into_data().to_vec().expect("f32");
        assert_eq!(
            got,
            vec![0., 0., 0., 3., 3., 3., 101., 101., 101., 102., 102., 102.]
        );
        assert_eq!(cache.bytes(), 2 * 2 * 2 * 3 * 4);
        assert!(
            cache.keep(&[vec![0], vec![0, 1]]).is_err(),
            "ragged selections are refused"
        );
        assert!(
            cache.keep(&[vec![0, 9], vec![0, 1]]).is_err(),
            "indices past the end are refused"
        );
    }

    #[test]
    fn append_rejects_mismatched_positions() {
        let dev = Default::default();
        let mut cache = LayerCache::<B>::default();
        let k = Tensor::<B, 4>::zeros([1, 3, 5, 8], &dev);
        assert!(cache.append(k.clone(), k, &[0, 1]).is_err());
    }
}
