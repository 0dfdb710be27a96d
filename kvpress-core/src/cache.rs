//! The key/value cache: per layer, per KV head, the kept keys (after RoPE), values and the
//! original position of every kept entry.
//!
//! This is the dense layout (every KV head of a layer keeps the same entries count); entries
//! are stored in the order they were appended. [`KvCache::bytes`] reports the bytes the tensors
//! really hold, so memory figures are measured rather than assumed.

use burn::tensor::{Tensor, backend::Backend};

use crate::error::{CoreError, Result};

/// Keys and values of one attention layer.
///
/// # Shapes
/// - keys, values: `[b, h_kv, n, d]`
/// - positions: `n` absolute token positions, shared by all heads
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    positions: Vec<usize>,
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
        self.positions.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Absolute positions of the cached entries, in cache order.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Keys and values (`[b, h_kv, n, d]` each), or `None` if empty.
    pub fn keys_values(&self) -> Option<(&Tensor<B, 4>, &Tensor<B, 4>)> {
        self.kv.as_ref().map(|(k, v)| (k, v))
    }

    /// Appends `keys`/`values` (`[b, h_kv, s, d]`) for tokens at `positions` (`s` of them).
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        check_entries("LayerCache::append", &keys, &values, positions.len())?;
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
        self.positions.extend_from_slice(positions);
        Ok(())
    }

    /// Replaces the whole content (used by presses that gather a subset).
    pub fn replace(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: Vec<usize>,
    ) -> Result<()> {
        check_entries("LayerCache::replace", &keys, &values, positions.len())?;
        let n = positions.len();
        self.kv = if n == 0 { None } else { Some((keys, values)) };
        self.positions = positions;
        Ok(())
    }

    /// Keeps the first `len` entries (drops a question and its answer after they were appended).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        self.positions.truncate(len);
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
    if keys.dims() != values.dims() || keys.dims()[2] != positions {
        return Err(CoreError::Shape {
            context,
            detail: format!(
                "keys {:?}, values {:?}, {positions} positions",
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
        assert_eq!(cache.positions(), &[0, 1, 2, 3, 4]);
        let (keys, _) = cache.keys_values().expect("not empty");
        let diff = (keys.clone() - k).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn append_rejects_mismatched_positions() {
        let dev = Default::default();
        let mut cache = LayerCache::<B>::default();
        let k = Tensor::<B, 4>::zeros([1, 3, 5, 8], &dev);
        assert!(cache.append(k.clone(), k, &[0, 1]).is_err());
    }
}
