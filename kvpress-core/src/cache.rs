//! The key/value cache: per layer, per KV head, the kept keys (after RoPE), values and the
//! original position of every kept entry.
//!
//! Two layouts, chosen by what a press leaves behind (batch size 1):
//! - **dense**: every KV head of a layer holds the same number of entries (each head may hold
//!   different tokens), one `[1, h_kv, n, d]` tensor for keys and one for values;
//! - **ragged**: heads hold different numbers of entries (head-wise budgets such as AdaKV), one
//!   `[1, 1, n_h, d]` tensor per head, so the dropped entries are really freed — nothing is
//!   padded or masked.
//!
//! [`LayerCache::attend`] computes attention over either layout exactly: a head only ever sees
//! its own entries. [`KvCache::bytes`] reports the bytes the tensors really hold, so memory
//! figures are measured rather than assumed.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::attention::{AttentionOptions, chunked_attention};
use crate::error::{CoreError, Result};

/// Keys and values of one KV head in the ragged layout (`[1, 1, n_h, d]` each); `None` when the
/// head holds nothing.
type HeadKv<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

#[derive(Debug, Clone)]
enum Storage<B: Backend> {
    Empty,
    /// Keys and values `[1, h_kv, n, d]`.
    Dense(Tensor<B, 4>, Tensor<B, 4>),
    /// One entry per KV head.
    Ragged(Vec<HeadKv<B>>),
}

impl<B: Backend> Storage<B> {
    /// Keys and values of KV head `h` (`[1, 1, n_h, d]` each); `None` if it holds nothing.
    fn head(&self, h: usize) -> HeadKv<B> {
        match self {
            Storage::Empty => None,
            Storage::Dense(k, v) => (h < k.dims()[1] && k.dims()[2] > 0)
                .then(|| (k.clone().narrow(1, h, 1), v.clone().narrow(1, h, 1))),
            Storage::Ragged(heads) => heads.get(h).cloned().flatten(),
        }
    }
}

/// Keys and values of one attention layer.
///
/// # Shapes
/// - dense: keys, values `[1, h_kv, n, d]`; ragged: per head `[1, 1, n_h, d]`
/// - positions: `h_kv` lists (entry `i` of head `h` holds the token at `positions[h][i]`); the
///   original token index of each entry is kept apart, since re-rotating presses move keys to
///   new positions
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    storage: Storage<B>,
    positions: Vec<Vec<usize>>,
    origins: Vec<Vec<usize>>,
    next_position: usize,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self {
            storage: Storage::Empty,
            positions: Vec::new(),
            origins: Vec::new(),
            next_position: 0,
        }
    }
}

impl<B: Backend> LayerCache<B> {
    /// Entries held by the longest head (the sequence length a dense view would have).
    pub fn len(&self) -> usize {
        self.positions.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// True when no head holds anything.
    pub fn is_empty(&self) -> bool {
        self.positions.iter().all(Vec::is_empty)
    }

    /// Entries held by each KV head.
    pub fn tokens_per_head(&self) -> Vec<usize> {
        self.positions.iter().map(Vec::len).collect()
    }

    /// True when heads hold different numbers of entries (stored one tensor per head).
    pub fn is_ragged(&self) -> bool {
        matches!(self.storage, Storage::Ragged(_))
    }

    /// Absolute (RoPE and causal-mask) positions of every head's entries, in cache order.
    pub fn positions(&self) -> &[Vec<usize>] {
        &self.positions
    }

    /// The token each entry was appended for (its position when appended), in cache order:
    /// equal to [`LayerCache::positions`] unless a press re-rotated the keys.
    pub fn original_positions(&self) -> &[Vec<usize>] {
        &self.origins
    }

    /// The position the next appended token takes by default: one past the last position
    /// appended, or the kept length after a press re-rotated the keys to `0..kept`.
    pub fn next_position(&self) -> usize {
        self.next_position
    }

    /// Keys and values (`[1, h_kv, n, d]` each) of a dense cache; `None` if empty.
    ///
    /// # Errors
    /// When the cache is ragged: only head-wise access ([`LayerCache::head`]) applies then.
    pub fn keys_values(&self) -> Result<Option<(&Tensor<B, 4>, &Tensor<B, 4>)>> {
        match &self.storage {
            Storage::Empty => Ok(None),
            Storage::Dense(k, v) => Ok(Some((k, v))),
            Storage::Ragged(_) => Err(ragged_error("reading all heads as one tensor")),
        }
    }

    /// Keys and values of KV head `h` (`[1, 1, n_h, d]` each); `None` if it holds nothing.
    pub fn head(&self, h: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.storage.head(h)
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
        let [_, h_kv, _, d] = keys.dims();
        if !self.positions.is_empty() && self.positions.len() != h_kv {
            return Err(CoreError::Shape {
                context: "LayerCache::append",
                detail: format!("cache of {} heads cannot take {h_kv}", self.positions.len()),
            });
        }
        self.storage = match std::mem::replace(&mut self.storage, Storage::Empty) {
            Storage::Empty => Storage::Dense(keys, values),
            Storage::Dense(k, v) => {
                if k.dims()[3] != d {
                    let dims = k.dims();
                    self.storage = Storage::Dense(k, v);
                    return Err(CoreError::Shape {
                        context: "LayerCache::append",
                        detail: format!("cache {dims:?} cannot take {:?}", keys.dims()),
                    });
                }
                Storage::Dense(
                    Tensor::cat(vec![k, keys], 2),
                    Tensor::cat(vec![v, values], 2),
                )
            }
            Storage::Ragged(heads) => Storage::Ragged(
                heads
                    .into_iter()
                    .enumerate()
                    .map(|(h, head)| {
                        let (nk, nv) =
                            (keys.clone().narrow(1, h, 1), values.clone().narrow(1, h, 1));
                        Some(match head {
                            None => (nk, nv),
                            Some((k, v)) => {
                                (Tensor::cat(vec![k, nk], 2), Tensor::cat(vec![v, nv], 2))
                            }
                        })
                    })
                    .collect(),
            ),
        };
        if self.positions.is_empty() {
            self.positions = vec![Vec::new(); h_kv];
            self.origins = vec![Vec::new(); h_kv];
        }
        for head in self.positions.iter_mut().chain(&mut self.origins) {
            head.extend_from_slice(positions);
        }
        if let Some(&last) = positions.iter().max() {
            self.next_position = self.next_position.max(last + 1);
        }
        Ok(())
    }

    /// Keeps, for every head `h`, the entries at cache indices `indices[h]` (in that order).
    /// Equal counts give the dense layout; different counts the ragged one, which holds exactly
    /// the kept entries.
    pub fn keep(&mut self, indices: &[Vec<usize>]) -> Result<()> {
        let lens = self.tokens_per_head();
        if indices.len() != lens.len()
            || indices
                .iter()
                .zip(&lens)
                .any(|(idx, &n)| idx.iter().any(|&i| i >= n))
        {
            return Err(CoreError::Invalid {
                name: "kept indices",
                detail: format!(
                    "need {} lists with indices below each head's length {lens:?}",
                    lens.len()
                ),
            });
        }
        let pick = |lists: &[Vec<usize>]| -> Vec<Vec<usize>> {
            indices
                .iter()
                .zip(lists)
                .map(|(idx, pos)| idx.iter().map(|&i| pos[i]).collect())
                .collect()
        };
        let (positions, origins) = (pick(&self.positions), pick(&self.origins));
        // One `select` per head then one concatenation: far cheaper on CPU backends than a
        // gather with indices expanded over the head dimension.
        let storage = std::mem::replace(&mut self.storage, Storage::Empty);
        self.storage = ragged_or_dense(
            (0..indices.len())
                .map(|h| {
                    let (k, v) = storage.head(h)?;
                    select_entries(k, v, &indices[h])
                })
                .collect(),
        );
        self.positions = positions;
        self.origins = origins;
        Ok(())
    }

    /// Replaces the keys of a dense cache by `f(keys)`, which must keep their shape (channel
    /// pruning, re-rotation).
    pub fn map_keys(&mut self, f: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>) -> Result<()> {
        self.map_dense(true, f)
    }

    /// Replaces the values of a dense cache by `f(values)`, which must keep their shape (value
    /// merging).
    pub fn map_values(&mut self, f: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>) -> Result<()> {
        self.map_dense(false, f)
    }

    fn map_dense(
        &mut self,
        keys: bool,
        f: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> Result<()> {
        let what = if keys { "keys" } else { "values" };
        match std::mem::replace(&mut self.storage, Storage::Empty) {
            Storage::Dense(k, v) => {
                let old = if keys { &k } else { &v };
                let dims = old.dims();
                let mapped = f(old.clone());
                if mapped.dims() != dims {
                    self.storage = Storage::Dense(k, v);
                    return Err(CoreError::Shape {
                        context: "LayerCache::map_keys/map_values",
                        detail: format!("{what} {dims:?} became {:?}", mapped.dims()),
                    });
                }
                self.storage = if keys {
                    Storage::Dense(mapped, v)
                } else {
                    Storage::Dense(k, mapped)
                };
                Ok(())
            }
            Storage::Empty => Ok(()),
            ragged => {
                self.storage = ragged;
                Err(ragged_error(&format!(
                    "transforming the {what} of all heads at once"
                )))
            }
        }
    }

    /// Gives every entry a new position (`positions[h][i]` for entry `i` of head `h`, same
    /// counts as now) and sets the position of the next appended token. Used by presses that
    /// re-rotate kept keys to new positions.
    pub fn relabel_positions(
        &mut self,
        positions: Vec<Vec<usize>>,
        next_position: usize,
    ) -> Result<()> {
        if positions
            .iter()
            .map(Vec::len)
            .ne(self.positions.iter().map(Vec::len))
        {
            return Err(CoreError::Shape {
                context: "LayerCache::relabel_positions",
                detail: format!(
                    "{:?} new positions for heads holding {:?}",
                    positions.iter().map(Vec::len).collect::<Vec<_>>(),
                    self.tokens_per_head()
                ),
            });
        }
        self.positions = positions;
        self.next_position = next_position;
        Ok(())
    }

    /// Keeps the first `lens[h]` entries of every head `h` (drops a question and its answer).
    /// Heads already shorter are left as they are; the next position is not changed.
    pub fn truncate(&mut self, lens: &[usize]) {
        let lens: Vec<usize> = self
            .positions
            .iter()
            .enumerate()
            .map(|(h, p)| lens.get(h).copied().unwrap_or(p.len()).min(p.len()))
            .collect();
        if lens.iter().zip(&self.positions).all(|(&l, p)| l == p.len()) {
            return;
        }
        for (head, &len) in self.positions.iter_mut().zip(&lens) {
            head.truncate(len);
        }
        for (head, &len) in self.origins.iter_mut().zip(&lens) {
            head.truncate(len);
        }
        self.storage = match std::mem::replace(&mut self.storage, Storage::Empty) {
            Storage::Empty => Storage::Empty,
            _ if lens.iter().all(|&l| l == 0) => Storage::Empty,
            Storage::Dense(k, v) if lens.iter().all(|&l| l == lens[0]) => {
                Storage::Dense(k.narrow(2, 0, lens[0]), v.narrow(2, 0, lens[0]))
            }
            storage => {
                let heads = (0..lens.len())
                    .map(|h| {
                        let (k, v) = storage.head(h)?;
                        (lens[h] > 0).then(|| (k.narrow(2, 0, lens[h]), v.narrow(2, 0, lens[h])))
                    })
                    .collect();
                ragged_or_dense(heads)
            }
        };
    }

    /// Bytes held by the key and value tensors (element count × element size).
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Empty => 0,
            Storage::Dense(k, v) => tensor_bytes(k) + tensor_bytes(v),
            Storage::Ragged(heads) => heads
                .iter()
                .flatten()
                .map(|(k, v)| tensor_bytes(k) + tensor_bytes(v))
                .sum(),
        }
    }

    /// Causal grouped-query attention of `q` (`[1, h_q, s, d]`, at `q_positions`) over this
    /// cache; each query head reads only its own KV head's entries. Returns `[1, h_q, s, d]`.
    pub fn attend(
        &self,
        q: Tensor<B, 4>,
        q_positions: &[usize],
        options: &AttentionOptions,
    ) -> Result<Tensor<B, 4>> {
        match &self.storage {
            Storage::Empty => Err(CoreError::Invalid {
                name: "cache",
                detail: "attention over an empty layer cache".into(),
            }),
            Storage::Dense(k, v) => chunked_attention(
                q,
                k.clone(),
                v.clone(),
                q_positions,
                &self.positions,
                options,
            ),
            Storage::Ragged(heads) => {
                let [_, h_q, _, _] = q.dims();
                let h_kv = heads.len();
                if h_kv == 0 || h_q % h_kv != 0 {
                    return Err(CoreError::Shape {
                        context: "LayerCache::attend",
                        detail: format!("{h_q} query heads over {h_kv} KV heads"),
                    });
                }
                let g = h_q / h_kv;
                let outputs = heads
                    .iter()
                    .enumerate()
                    .map(|(h, head)| {
                        let Some((k, v)) = head else {
                            return Err(CoreError::Invalid {
                                name: "cache",
                                detail: format!("KV head {h} holds no entry to attend to"),
                            });
                        };
                        chunked_attention(
                            q.clone().narrow(1, h * g, g),
                            k.clone(),
                            v.clone(),
                            q_positions,
                            std::slice::from_ref(&self.positions[h]),
                            options,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(outputs, 1))
            }
        }
    }
}

/// Entries `indices` of one head's keys/values (`[1, 1, n, d]`); `None` when none is kept.
fn select_entries<B: Backend>(k: Tensor<B, 4>, v: Tensor<B, 4>, indices: &[usize]) -> HeadKv<B> {
    if indices.is_empty() {
        return None;
    }
    let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [indices.len()]), &k.device());
    Some((k.select(2, idx.clone()), v.select(2, idx)))
}

/// Per-head tensors joined into the dense layout when every head holds the same non-zero count.
fn ragged_or_dense<B: Backend>(heads: Vec<HeadKv<B>>) -> Storage<B> {
    let lens: Vec<Option<usize>> = heads
        .iter()
        .map(|h| h.as_ref().map(|(k, _)| k.dims()[2]))
        .collect();
    if lens.iter().all(Option::is_none) {
        return Storage::Empty;
    }
    if lens.iter().all(|l| l.is_some() && *l == lens[0]) {
        let (ks, vs): (Vec<_>, Vec<_>) = heads.into_iter().flatten().unzip();
        return Storage::Dense(Tensor::cat(ks, 1), Tensor::cat(vs, 1));
    }
    Storage::Ragged(heads)
}

fn ragged_error(what: &str) -> CoreError {
    CoreError::Invalid {
        name: "cache layout",
        detail: format!(
            "{what} needs every KV head to hold the same number of entries, but a head-wise \
             press (adakv, critical_adakv) left different counts; apply head-wise presses last"
        ),
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

/// The state [`KvCache::rollback`] returns to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMark {
    lengths: Vec<Vec<usize>>,
    next_positions: Vec<usize>,
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

    /// Entries held by the longest head of each layer.
    pub fn lengths(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::len).collect()
    }

    /// Entries held by each KV head of each layer (`[layer][head]`).
    pub fn tokens_per_head(&self) -> Vec<Vec<usize>> {
        self.layers
            .iter()
            .map(LayerCache::tokens_per_head)
            .collect()
    }

    /// Entries held by all heads of all layers.
    pub fn entries(&self) -> usize {
        self.layers
            .iter()
            .flat_map(LayerCache::positions)
            .map(Vec::len)
            .sum()
    }

    /// The position the next token takes (layer 0's [`LayerCache::next_position`]): the
    /// uncompressed context length, or the kept length when a press re-rotated the keys.
    pub fn next_position(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::next_position)
    }

    /// A mark to [`KvCache::rollback`] to: every head's length and every layer's next position.
    pub fn mark(&self) -> CacheMark {
        CacheMark {
            lengths: self.tokens_per_head(),
            next_positions: self.layers.iter().map(LayerCache::next_position).collect(),
        }
    }

    /// Drops everything appended since `mark` was taken (a question and its answer).
    pub fn rollback(&mut self, mark: &CacheMark) {
        for ((layer, lens), &next) in self
            .layers
            .iter_mut()
            .zip(&mark.lengths)
            .zip(&mark.next_positions)
        {
            layer.truncate(lens);
            layer.next_position = next;
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
        cache.truncate(&[5, 5, 5]);
        assert_eq!(cache.positions()[2], vec![0, 1, 2, 3, 4]);
        let (keys, _) = cache.keys_values().expect("dense").expect("not empty");
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
        let (keys, _) = cache.keys_values().expect("dense").expect("kept");
        let got: Vec<f32> = keys.clone().into_data().to_vec().expect("f32");
        assert_eq!(
            got,
            vec![0., 0., 0., 3., 3., 3., 101., 101., 101., 102., 102., 102.]
        );
        assert_eq!(cache.bytes(), 2 * 2 * 2 * 3 * 4);
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

    /// value = head · 100 + position in every channel, `h` heads of `n` entries at 0..n.
    fn labelled(h: usize, n: usize, d: usize) -> (LayerCache<B>, Tensor<B, 4>) {
        let dev = Default::default();
        let data: Vec<f32> = (0..h)
            .flat_map(|head| {
                (0..n).flat_map(move |p| std::iter::repeat_n((head * 100 + p) as f32, d))
            })
            .collect();
        let k = Tensor::<B, 4>::from_data(TensorData::new(data, [1, h, n, d]), &dev);
        let mut cache = LayerCache::<B>::default();
        let positions: Vec<usize> = (0..n).collect();
        cache
            .append(k.clone(), k.clone(), &positions)
            .expect("append");
        (cache, k)
    }

    fn head_values(cache: &LayerCache<B>, h: usize) -> Vec<f32> {
        cache.head(h).map_or_else(Vec::new, |(k, _)| {
            let d = k.dims()[3];
            let all: Vec<f32> = k.into_data().to_vec().expect("f32");
            all.into_iter().step_by(d).collect()
        })
    }

    #[test]
    fn ragged_keep_frees_the_dropped_entries() {
        let (h, n, d) = (3, 10, 4);
        let (mut cache, _) = labelled(h, n, d);
        cache
            .keep(&[vec![0, 1, 2, 3, 4, 5, 6], vec![2, 9], vec![]])
            .expect("ragged keep");
        assert!(cache.is_ragged());
        assert_eq!(cache.tokens_per_head(), vec![7, 2, 0]);
        // 9 entries × (keys + values) × d × 4 bytes: nothing padded
        assert_eq!(cache.bytes(), 9 * 2 * d * 4);
        assert_eq!(head_values(&cache, 1), vec![102.0, 109.0]);
        assert!(cache.head(2).is_none());
        assert!(
            cache.keys_values().is_err(),
            "no dense view of a ragged cache"
        );
        // appending gives every head the new token; truncating restores the kept sets
        let new = Tensor::<B, 4>::full([1, h, 1, d], -1.0, &Default::default());
        cache.append(new.clone(), new, &[10]).expect("append");
        assert_eq!(cache.tokens_per_head(), vec![8, 3, 1]);
        assert_eq!(head_values(&cache, 1), vec![102.0, 109.0, -1.0]);
        assert_eq!(cache.positions()[2], vec![10]);
        cache.truncate(&[7, 2, 0]);
        assert_eq!(cache.tokens_per_head(), vec![7, 2, 0]);
        assert_eq!(cache.bytes(), 9 * 2 * d * 4);
        // a second selection that evens the heads out goes back to the dense layout
        cache.keep(&[vec![5, 6], vec![0, 1], vec![]]).expect("keep");
        assert!(cache.is_ragged(), "an empty head keeps the ragged layout");
        let (mut even, _) = labelled(h, n, d);
        even.keep(&[vec![1, 2], vec![3], vec![4, 5]]).expect("keep");
        even.keep(&[vec![1], vec![0], vec![0]]).expect("keep");
        assert!(!even.is_ragged());
        assert_eq!(head_values(&even, 0), vec![2.0]);
        assert_eq!(head_values(&even, 2), vec![204.0]);
    }

    #[test]
    fn attention_over_a_ragged_cache_equals_attention_over_each_heads_own_entries() {
        let dev = Default::default();
        let (h_kv, g, n, d) = (2, 3, 12, 8);
        let keys = Tensor::<B, 4>::random([1, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let values = Tensor::<B, 4>::random([1, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let mut cache = LayerCache::<B>::default();
        let positions: Vec<usize> = (0..n).collect();
        cache
            .append(keys.clone(), values.clone(), &positions)
            .expect("append");
        let kept = vec![vec![0, 3, 4, 7, 8, 11], vec![2, 5, 10]];
        cache.keep(&kept).expect("keep");
        assert!(cache.is_ragged());
        let q = Tensor::<B, 4>::random([1, h_kv * g, 2, d], Distribution::Normal(0.0, 1.0), &dev);
        let q_positions = [n, n + 1];
        let opts = AttentionOptions::new(0.4);
        // the two query tokens join the cache first, as in a forward
        let new_k = Tensor::<B, 4>::random([1, h_kv, 2, d], Distribution::Normal(0.0, 1.0), &dev);
        let new_v = Tensor::<B, 4>::random([1, h_kv, 2, d], Distribution::Normal(0.0, 1.0), &dev);
        cache
            .append(new_k.clone(), new_v.clone(), &q_positions)
            .expect("append");
        let got = cache
            .attend(q.clone(), &q_positions, &opts)
            .expect("attend");
        for (h, idx) in kept.iter().enumerate() {
            // reference: this head's kept entries plus the new ones, computed on their own
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &dev);
            let hk = Tensor::cat(
                vec![
                    keys.clone().narrow(1, h, 1).select(2, ids.clone()),
                    new_k.clone().narrow(1, h, 1),
                ],
                2,
            );
            let hv = Tensor::cat(
                vec![
                    values.clone().narrow(1, h, 1).select(2, ids),
                    new_v.clone().narrow(1, h, 1),
                ],
                2,
            );
            let mut kp: Vec<usize> = idx.clone();
            kp.extend(q_positions);
            let want = chunked_attention(
                q.clone().narrow(1, h * g, g),
                hk,
                hv,
                &q_positions,
                &[kp],
                &opts,
            )
            .expect("reference");
            let diff = (got.clone().narrow(1, h * g, g) - want)
                .abs()
                .max()
                .into_scalar();
            assert!(diff < 1e-6, "head {h}: {diff}");
        }
    }
}
