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
//! A cache may also quantize its entries ([`KvQuantization`]): after each forward,
//! [`LayerCache::settle`] moves every head's entries older than its `residual` most recent
//! ones into int8/int4/int2 storage ([`Quantized`]). The model calls it *after* the press, so
//! presses score full-precision keys and evict before anything is quantized; entries, once
//! quantized, are only ever selected or dropped, never requantized.
//!
//! [`LayerCache::attend`] computes attention over either layout exactly: a head only ever sees
//! its own entries (quantized ones read back on the fly). [`KvCache::bytes`] reports the bytes
//! the tensors really hold (codes, scales and zero-points included), so memory figures are
//! measured rather than assumed.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::attention::{AttentionOptions, chunked_attention};
use crate::error::{CoreError, Result};
use crate::quant::{KvQuantization, Quantized, hadamard};

/// Entries of one or all KV heads held one way: `[1, h, n, ·]` along heads (dim 1) and
/// entries (dim 2). Keys or values alone (a tensor, or quantized codes) are entries, and so are
/// both together ([`Pair`]).
trait Entries<B: Backend>: Clone + Sized {
    fn heads(&self) -> usize;
    fn len(&self) -> usize;
    fn narrow(self, dim: usize, start: usize, len: usize) -> Self;
    /// The entries at `indices` (along dim 2), in that order.
    fn select(self, indices: &[usize]) -> Self;
    /// Every head's entries at its own `indices[h]`, in one pass; `None` unless there is a list
    /// per head, all of one length, and the backend gains from it.
    fn select_per_head(&self, _indices: &[Vec<usize>]) -> Option<Self> {
        None
    }
    /// `parts` (at least one) joined along `dim`.
    fn cat(parts: Vec<Self>, dim: usize) -> Self;
    fn bytes(&self) -> usize;
    fn device(&self) -> B::Device;
}

impl<B: Backend> Entries<B> for Tensor<B, 4> {
    fn heads(&self) -> usize {
        self.dims()[1]
    }
    fn len(&self) -> usize {
        self.dims()[2]
    }
    fn narrow(self, dim: usize, start: usize, len: usize) -> Self {
        Tensor::narrow(self, dim, start, len)
    }
    fn select(self, indices: &[usize]) -> Self {
        // burn-flex gathers element by element; rows are copied whole on the host
        #[cfg(feature = "flex")]
        if let Some(rows) = crate::cpu::select_rows(&self, indices) {
            return rows;
        }
        let ids = index_tensor(indices, &self.device());
        Tensor::select(self, 2, ids)
    }
    fn select_per_head(&self, indices: &[Vec<usize>]) -> Option<Self> {
        // one copy of the kept rows instead of a copy per head and their concatenation
        #[cfg(feature = "flex")]
        return crate::cpu::select_rows_per_head(self, indices);
        #[cfg(not(feature = "flex"))]
        {
            let _ = indices;
            None
        }
    }
    fn cat(parts: Vec<Self>, dim: usize) -> Self {
        Tensor::cat(parts, dim)
    }
    fn bytes(&self) -> usize {
        tensor_bytes(self)
    }
    fn device(&self) -> B::Device {
        Tensor::device(self)
    }
}

impl<B: Backend> Entries<B> for Quantized<B> {
    fn heads(&self) -> usize {
        Quantized::heads(self)
    }
    fn len(&self) -> usize {
        Quantized::len(self)
    }
    fn narrow(self, dim: usize, start: usize, len: usize) -> Self {
        Quantized::narrow(self, dim, start, len)
    }
    fn select(self, indices: &[usize]) -> Self {
        let ids = index_tensor(indices, &self.device());
        Quantized::select(self, ids)
    }
    fn cat(parts: Vec<Self>, dim: usize) -> Self {
        Quantized::cat_nonempty(parts, dim)
    }
    fn bytes(&self) -> usize {
        Quantized::bytes(self)
    }
    fn device(&self) -> B::Device {
        Quantized::device(self)
    }
}

/// Keys and values of the same entries.
#[derive(Debug, Clone)]
struct Pair<T> {
    keys: T,
    values: T,
}

/// Full-precision keys and values `[1, h, n, d]`.
type Kv<B> = Pair<Tensor<B, 4>>;

/// Quantized keys and values of `[1, h, n, d]` entries, stored in the rotated basis of the
/// layer (see [`LayerCache::settle`]).
type PackedKv<B> = Pair<Quantized<B>>;

impl<B: Backend, T: Entries<B>> Entries<B> for Pair<T> {
    fn heads(&self) -> usize {
        self.keys.heads()
    }
    fn len(&self) -> usize {
        self.keys.len()
    }
    fn narrow(self, dim: usize, start: usize, len: usize) -> Self {
        Self {
            keys: self.keys.narrow(dim, start, len),
            values: self.values.narrow(dim, start, len),
        }
    }
    fn select(self, indices: &[usize]) -> Self {
        Self {
            keys: self.keys.select(indices),
            values: self.values.select(indices),
        }
    }
    fn select_per_head(&self, indices: &[Vec<usize>]) -> Option<Self> {
        Some(Self {
            keys: self.keys.select_per_head(indices)?,
            values: self.values.select_per_head(indices)?,
        })
    }
    fn cat(parts: Vec<Self>, dim: usize) -> Self {
        let (keys, values): (Vec<_>, Vec<_>) =
            parts.into_iter().map(|p| (p.keys, p.values)).unzip();
        Self {
            keys: T::cat(keys, dim),
            values: T::cat(values, dim),
        }
    }
    fn bytes(&self) -> usize {
        self.keys.bytes() + self.values.bytes()
    }
    fn device(&self) -> B::Device {
        self.keys.device()
    }
}

impl<B: Backend> PackedKv<B> {
    fn quantize(kv: Kv<B>, quantization: &KvQuantization) -> Result<Self> {
        let group = quantization.group_for(kv.keys.dims()[3])?;
        Ok(Self {
            keys: Quantized::quantize(kv.keys, quantization.bits, group)?,
            values: Quantized::quantize(kv.values, quantization.bits, group)?,
        })
    }

    fn dequantize(&self) -> Kv<B> {
        Kv {
            keys: self.keys.dequantize(),
            values: self.values.dequantize(),
        }
    }
}

/// The entries of a layer held one way, in the dense or the ragged layout.
#[derive(Debug, Clone)]
enum Storage<E> {
    Empty,
    /// All heads at once, `[1, h_kv, n, ·]`.
    Dense(E),
    /// One entry per KV head, `[1, 1, n_h, ·]`; `None` when the head holds nothing.
    Ragged(Vec<Option<E>>),
}

impl<E> Storage<E> {
    fn take(&mut self) -> Self {
        std::mem::replace(self, Storage::Empty)
    }

    /// Entries of KV head `h` (`[1, 1, n_h, ·]`); `None` if it holds nothing.
    fn head<B: Backend>(&self, h: usize) -> Option<E>
    where
        E: Entries<B>,
    {
        match self {
            Storage::Empty => None,
            Storage::Dense(e) => (h < e.heads() && e.len() > 0).then(|| e.clone().narrow(1, h, 1)),
            Storage::Ragged(heads) => heads.get(h).cloned().flatten(),
        }
    }

    /// The entries of the dense layout, or of the first head holding any.
    fn any(&self) -> Option<&E> {
        match self {
            Storage::Empty => None,
            Storage::Dense(e) => Some(e),
            Storage::Ragged(heads) => heads.iter().flatten().next(),
        }
    }

    /// Entries held by KV head `h`.
    fn head_len<B: Backend>(&self, h: usize) -> usize
    where
        E: Entries<B>,
    {
        match self {
            Storage::Empty => 0,
            Storage::Dense(e) => e.len(),
            Storage::Ragged(heads) => heads.get(h).and_then(Option::as_ref).map_or(0, E::len),
        }
    }

    fn bytes<B: Backend>(&self) -> usize
    where
        E: Entries<B>,
    {
        match self {
            Storage::Empty => 0,
            Storage::Dense(e) => e.bytes(),
            Storage::Ragged(heads) => heads.iter().flatten().map(E::bytes).sum(),
        }
    }

    /// Per-head entries joined into the dense layout when every head holds the same non-zero
    /// count.
    fn from_heads<B: Backend>(heads: Vec<Option<E>>) -> Self
    where
        E: Entries<B>,
    {
        let lens: Vec<Option<usize>> = heads.iter().map(|h| h.as_ref().map(E::len)).collect();
        if lens.iter().all(|l| l.is_none_or(|l| l == 0)) {
            return Storage::Empty;
        }
        if lens.iter().all(|l| l.is_some() && *l == lens[0]) {
            return Storage::Dense(E::cat(heads.into_iter().flatten().collect(), 1));
        }
        Storage::Ragged(heads)
    }

    /// Appends `new` (`[1, h_kv, s, ·]`, every head) after every head's entries.
    fn append<B: Backend>(self, new: E, heads: usize) -> Self
    where
        E: Entries<B>,
    {
        match self {
            Storage::Empty => Storage::Dense(new),
            Storage::Dense(old) => Storage::Dense(E::cat(vec![old, new], 2)),
            ragged => {
                let added = (0..heads)
                    .map(|h| Some(new.clone().narrow(1, h, 1)))
                    .collect();
                ragged.append_heads(added, heads)
            }
        }
    }

    /// Appends `new[h]` (`[1, 1, s_h, ·]`) after the entries of every head `h`.
    fn append_heads<B: Backend>(self, new: Vec<Option<E>>, heads: usize) -> Self
    where
        E: Entries<B>,
    {
        let joined = (0..heads)
            .map(|h| match (self.head(h), new.get(h).cloned().flatten()) {
                (Some(old), Some(add)) => Some(E::cat(vec![old, add], 2)),
                (old, add) => old.or(add),
            })
            .collect();
        Self::from_heads(joined)
    }

    /// Keeps the entries `indices[h]` of every head `h`, in that order.
    fn select<B: Backend>(self, indices: &[Vec<usize>]) -> Self
    where
        E: Entries<B>,
    {
        // (every head keeping nothing empties the storage below)
        let keeps_some = indices.first().is_some_and(|idx| !idx.is_empty());
        if let Storage::Dense(e) = &self
            && keeps_some
            && let Some(kept) = e.select_per_head(indices)
        {
            return Storage::Dense(kept);
        }
        // One `select` per head then one concatenation: far cheaper on CPU backends than a
        // gather with indices expanded over the head dimension.
        let heads = indices
            .iter()
            .enumerate()
            .map(|(h, idx)| {
                let e = self.head(h)?;
                if idx.is_empty() {
                    return None;
                }
                if idx.len() == e.len() && idx.iter().enumerate().all(|(i, &j)| i == j) {
                    return Some(e);
                }
                Some(e.select(idx))
            })
            .collect();
        Self::from_heads(heads)
    }

    /// Keeps the first `lens[h]` entries of every head `h` (each at most the head's length).
    fn truncate<B: Backend>(self, lens: &[usize]) -> Self
    where
        E: Entries<B>,
    {
        match self {
            Storage::Empty => Storage::Empty,
            _ if lens.iter().all(|&l| l == 0) => Storage::Empty,
            Storage::Dense(e) if lens.iter().all(|&l| l == lens[0]) => {
                if lens[0] == e.len() {
                    Storage::Dense(e)
                } else {
                    Storage::Dense(e.narrow(2, 0, lens[0]))
                }
            }
            storage => {
                let heads = (0..lens.len())
                    .map(|h| {
                        let e = storage.head(h)?;
                        (lens[h] > 0).then(|| e.narrow(2, 0, lens[h]))
                    })
                    .collect();
                Self::from_heads(heads)
            }
        }
    }
}

/// Entries reserved past the end of a dense full-precision storage when a token is appended to
/// it (decoding, questions): appends then write in place instead of copying the whole cache.
const SPARE_ENTRIES: usize = 128;

/// A buffer `[1, h_kv, capacity, d]` whose first `len` entries are the dense full-precision
/// storage (which is a view of them).
#[derive(Debug, Clone)]
struct Spare<B: Backend> {
    buffer: Kv<B>,
    len: usize,
}

/// Keys and values of one attention layer.
///
/// # Shapes
/// - dense: keys, values `[1, h_kv, n, d]`; ragged: per head `[1, 1, n_h, d]`
/// - positions: `h_kv` lists (entry `i` of head `h` holds the token at `positions[h][i]`); the
///   original token index of each entry is kept apart, since re-rotating presses move keys to
///   new positions
/// - quantized caches: entry `i` of head `h` is quantized for `i < quantized_per_head()[h]`,
///   full precision after
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// Full-precision entries: all of them, or each head's most recent ones when quantized.
    storage: Storage<Kv<B>>,
    /// Quantized entries, which come before the full-precision ones of the same head.
    packed: Storage<PackedKv<B>>,
    /// Room after a dense full-precision storage, so that decoding appends in place.
    spare: Option<Spare<B>>,
    quantization: Option<KvQuantization>,
    /// Full-precision entries of each head that [`LayerCache::settle`] leaves alone (the
    /// context's residual window at the last [`KvCache::mark`]).
    pinned: Vec<usize>,
    positions: Vec<Vec<usize>>,
    origins: Vec<Vec<usize>>,
    next_position: usize,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self {
            storage: Storage::Empty,
            packed: Storage::Empty,
            spare: None,
            quantization: None,
            pinned: Vec::new(),
            positions: Vec::new(),
            origins: Vec::new(),
            next_position: 0,
        }
    }
}

impl<B: Backend> LayerCache<B> {
    /// An empty cache quantizing its entries as `quantization` says (none: full precision).
    pub fn with_quantization(quantization: Option<KvQuantization>) -> Self {
        Self {
            quantization,
            ..Self::default()
        }
    }

    /// Quantizes the entries [`LayerCache::settle`] moves from now on as `quantization` says
    /// (entries already quantized stay as they are).
    pub fn set_quantization(&mut self, quantization: Option<KvQuantization>) {
        self.quantization = quantization;
    }

    /// How this cache quantizes its entries, if it does.
    pub fn quantization(&self) -> Option<&KvQuantization> {
        self.quantization.as_ref()
    }

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

    /// Quantized entries of each KV head (all zero without quantization).
    pub fn quantized_per_head(&self) -> Vec<usize> {
        (0..self.positions.len())
            .map(|h| self.packed.head_len(h))
            .collect()
    }

    /// True when heads hold different numbers of entries (stored one tensor per head).
    pub fn is_ragged(&self) -> bool {
        let lens = self.tokens_per_head();
        lens.iter().any(|&l| l != lens[0])
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

    /// Keys and values (`[1, h_kv, n, d]` each, quantized entries read back) when every head
    /// holds the same number of entries; `None` if empty.
    ///
    /// # Errors
    /// When heads hold different counts: only head-wise access ([`LayerCache::head`]) applies
    /// then.
    pub fn keys_values(&self) -> Result<Option<(Tensor<B, 4>, Tensor<B, 4>)>> {
        if self.is_empty() {
            return Ok(None);
        }
        self.dense_view()
            .map(|kv| Some((kv.keys, kv.values)))
            .ok_or_else(|| ragged_error("reading all heads as one tensor"))
    }

    /// All entries as one dense block when every head holds the same non-zero count.
    fn dense_view(&self) -> Option<Kv<B>> {
        self.entries(None, self.stored_rotation().as_ref(), Basis::True)
    }

    /// Keys and values of KV head `h` (`[1, 1, n_h, d]` each, quantized entries read back);
    /// `None` if it holds nothing.
    pub fn head(&self, h: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.entries(Some(h), self.stored_rotation().as_ref(), Basis::True)
            .map(|kv| (kv.keys, kv.values))
    }

    /// The rotation quantized entries are stored under (see [`LayerCache::settle`]); `None`
    /// when nothing is quantized or the group size is not a power of two.
    fn stored_rotation(&self) -> Option<Tensor<B, 2>> {
        if matches!(self.packed, Storage::Empty) {
            return None;
        }
        self.rotation()
    }

    /// The block Walsh–Hadamard rotation of this cache's quantization groups, if any.
    fn rotation(&self) -> Option<Tensor<B, 2>> {
        let quantization = self.quantization?;
        let (d, device) = match (&self.storage, &self.packed) {
            (Storage::Dense(kv), _) => (kv.keys.dims()[3], kv.device()),
            (_, Storage::Dense(p)) => (p.keys.dim(), p.device()),
            (storage, packed) => match (storage.any(), packed.any()) {
                (Some(kv), _) => (kv.keys.dims()[3], kv.device()),
                (None, Some(p)) => (p.keys.dim(), p.device()),
                (None, None) => return None,
            },
        };
        let group = quantization.group_for(d).ok()?;
        hadamard::<B>(d, group, &device)
    }

    /// Every entry of head `h`, or of all heads (`None`; only when they hold the same non-zero
    /// count), quantized ones read back, in `basis`: quantized entries are stored rotated by
    /// `rotation`, full-precision ones are not.
    fn entries(
        &self,
        head: Option<usize>,
        rotation: Option<&Tensor<B, 2>>,
        basis: Basis,
    ) -> Option<Kv<B>> {
        let packed_view = |p: &PackedKv<B>| match basis {
            Basis::Rotated => p.dequantize(),
            Basis::True => rotated(p.dequantize(), rotation),
        };
        let full_view = |kv: Kv<B>| match basis {
            Basis::Rotated => rotated(kv, rotation),
            Basis::True => kv,
        };
        let join = |p: Option<Kv<B>>, f: Option<Kv<B>>| match (p, f) {
            (Some(p), Some(f)) => Some(Kv::cat(vec![p, f], 2)),
            (p, f) => p.or(f),
        };
        if let Some(h) = head {
            return join(
                self.packed.head(h).as_ref().map(packed_view),
                self.storage.head(h).map(full_view),
            );
        }
        match (&self.packed, &self.storage) {
            (Storage::Empty, Storage::Dense(kv)) => Some(full_view(kv.clone())),
            (Storage::Dense(p), Storage::Empty) => Some(packed_view(p)),
            (Storage::Dense(p), Storage::Dense(kv)) => {
                join(Some(packed_view(p)), Some(full_view(kv.clone())))
            }
            _ => {
                let lens = self.tokens_per_head();
                if lens.is_empty() || lens.iter().any(|&l| l == 0 || l != lens[0]) {
                    return None;
                }
                let heads = (0..lens.len())
                    .map(|h| self.entries(Some(h), rotation, basis))
                    .collect::<Option<Vec<_>>>()?;
                Some(Kv::cat(heads, 1))
            }
        }
    }

    /// Appends `keys`/`values` (`[1, h_kv, s, d]`) for tokens at `positions` (`s` of them, the
    /// same for every head). They stay in full precision until [`LayerCache::settle`].
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
        let held_d = match &self.storage {
            Storage::Empty => None,
            Storage::Dense(kv) => Some(kv.keys.dims()[3]),
            Storage::Ragged(heads) => heads.iter().flatten().next().map(|kv| kv.keys.dims()[3]),
        };
        if let Some(held) = held_d.filter(|&held| held != d) {
            return Err(CoreError::Shape {
                context: "LayerCache::append",
                detail: format!(
                    "cache of head dimension {held} cannot take {:?}",
                    keys.dims()
                ),
            });
        }
        let (keys, values) = (contiguous(keys), contiguous(values));
        self.append_full(Kv { keys, values }, h_kv);
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

    /// Appends `new` (`[1, h_kv, s, d]`) to the full-precision storage: in place into the
    /// spare room of a dense storage when it has enough; otherwise a dense storage moves into a
    /// new buffer with [`SPARE_ENTRIES`] of room (not for quantized caches, whose window moves
    /// every step), and other layouts concatenate.
    fn append_full(&mut self, new: Kv<B>, heads: usize) {
        let s = new.len();
        if let (Some(spare), Storage::Dense(_)) = (self.spare.take(), &self.storage)
            && spare.len + s <= spare.buffer.len()
        {
            // dropping the view leaves the buffer the only owner: it is written in place
            self.storage = Storage::Empty;
            let Spare { buffer, len } = spare;
            let buffer = write_at(buffer, len, new);
            self.storage = Storage::Dense(buffer.clone().narrow(2, 0, len + s));
            self.spare = Some(Spare {
                buffer,
                len: len + s,
            });
            return;
        }
        match self.storage.take() {
            Storage::Dense(old) if self.quantization.is_none() => {
                let (n, [_, h, _, d]) = (old.len(), old.keys.dims());
                let zeros = |t: &Tensor<B, 4>| {
                    Tensor::<B, 4>::zeros(
                        [1, h, n + s + SPARE_ENTRIES, d],
                        (&t.device(), t.dtype()),
                    )
                };
                let buffer = Kv {
                    keys: zeros(&old.keys),
                    values: zeros(&old.values),
                };
                let buffer = write_at(write_at(buffer, 0, old), n, new);
                self.storage = Storage::Dense(buffer.clone().narrow(2, 0, n + s));
                self.spare = Some(Spare { buffer, len: n + s });
            }
            storage => self.storage = storage.append(new, heads),
        }
    }

    /// Quantizes, in every head, the full-precision entries beyond the `residual` most recent
    /// ones (entries pinned by [`KvCache::mark`] excepted). Does nothing without quantization.
    /// The model calls it after the press of each forward, so nothing a press evicts is ever
    /// quantized.
    ///
    /// # Errors
    /// When the quantization's group size does not fit the head dimension.
    pub fn settle(&mut self) -> Result<()> {
        let Some(quantization) = self.quantization else {
            return Ok(());
        };
        let heads = self.positions.len();
        let full: Vec<usize> = (0..heads).map(|h| self.storage.head_len(h)).collect();
        let pinned: Vec<usize> = (0..heads)
            .map(|h| self.pinned.get(h).copied().unwrap_or(0).min(full[h]))
            .collect();
        let moved: Vec<usize> = (0..heads)
            .map(|h| (full[h] - pinned[h]).saturating_sub(quantization.residual))
            .collect();
        if moved.iter().all(|&m| m == 0) {
            return Ok(());
        }
        // checked before anything is moved
        if let Some(kv) = self.storage.any() {
            quantization.group_for(kv.keys.dims()[3])?;
        }
        let rotation = self.rotation();
        let (p, m) = (pinned[0], moved[0]);
        let uniform = pinned.iter().all(|&x| x == p) && moved.iter().all(|&x| x == m);
        self.spare = None;
        match self.storage.take() {
            Storage::Dense(kv) if uniform => {
                let quantized = PackedKv::quantize(
                    rotated(kv.clone().narrow(2, p, m), rotation.as_ref()),
                    &quantization,
                )?;
                self.storage = without(kv, p, m).map_or(Storage::Empty, Storage::Dense);
                self.packed = self.packed.take().append(quantized, heads);
            }
            storage => {
                let mut kept = Vec::with_capacity(heads);
                let mut quantized = Vec::with_capacity(heads);
                for h in 0..heads {
                    let Some(kv) = storage.head(h) else {
                        kept.push(None);
                        quantized.push(None);
                        continue;
                    };
                    let (p, m) = (pinned[h], moved[h]);
                    if m == 0 {
                        kept.push(Some(kv));
                        quantized.push(None);
                        continue;
                    }
                    quantized.push(Some(PackedKv::quantize(
                        rotated(kv.clone().narrow(2, p, m), rotation.as_ref()),
                        &quantization,
                    )?));
                    kept.push(without(kv, p, m));
                }
                self.storage = Storage::from_heads(kept);
                self.packed = self.packed.take().append_heads(quantized, heads);
            }
        }
        // the moved entries now come right after the head's earlier quantized ones
        for h in 0..heads {
            let start = self.packed.head_len(h) - moved[h];
            let span = start..start + pinned[h] + moved[h];
            self.positions[h][span.clone()].rotate_right(moved[h]);
            self.origins[h][span].rotate_right(moved[h]);
        }
        Ok(())
    }

    /// Keeps, for every head `h`, the entries at cache indices `indices[h]` (in that order;
    /// in a quantized cache the kept quantized entries come first). Equal counts give the
    /// dense layout; different counts the ragged one, which holds exactly the kept entries.
    /// Quantized entries are selected as they are, never requantized.
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
        let quantized = self.quantized_per_head();
        // the packed entries come first in the cache: kept ones of both parts, in that order
        let mut from_packed: Vec<Vec<usize>> = Vec::with_capacity(indices.len());
        let mut from_full: Vec<Vec<usize>> = Vec::with_capacity(indices.len());
        for (idx, &q) in indices.iter().zip(&quantized) {
            if q == 0 {
                from_packed.push(Vec::new());
                from_full.push(idx.clone());
                continue;
            }
            from_packed.push(idx.iter().copied().filter(|&i| i < q).collect());
            from_full.push(idx.iter().filter(|&&i| i >= q).map(|&i| i - q).collect());
        }
        let pick = |lists: &[Vec<usize>]| -> Vec<Vec<usize>> {
            (0..lists.len())
                .map(|h| {
                    let (q, list) = (quantized[h], &lists[h]);
                    let mut picked = Vec::with_capacity(from_packed[h].len() + from_full[h].len());
                    picked.extend(from_packed[h].iter().map(|&i| list[i]));
                    picked.extend(from_full[h].iter().map(|&i| list[q + i]));
                    picked
                })
                .collect()
        };
        self.positions = pick(&self.positions);
        self.origins = pick(&self.origins);
        if quantized.iter().any(|&q| q > 0) {
            self.packed = self.packed.take().select(&from_packed);
        }
        self.spare = None;
        self.storage = self.storage.take().select(&from_full);
        self.pinned.clear();
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
        if !matches!(self.packed, Storage::Empty) {
            return Err(CoreError::Invalid {
                name: "quantized cache",
                detail: format!(
                    "transforming quantized {what} would requantize them; presses that \
                     transform keys or values act during prefill, before quantization"
                ),
            });
        }
        self.spare = None;
        match self.storage.take() {
            Storage::Dense(kv) => {
                let old = if keys { &kv.keys } else { &kv.values };
                let dims = old.dims();
                let mapped = f(old.clone());
                if mapped.dims() != dims {
                    self.storage = Storage::Dense(kv);
                    return Err(CoreError::Shape {
                        context: "LayerCache::map_keys/map_values",
                        detail: format!("{what} {dims:?} became {:?}", mapped.dims()),
                    });
                }
                self.storage = Storage::Dense(if keys {
                    Kv { keys: mapped, ..kv }
                } else {
                    Kv {
                        values: mapped,
                        ..kv
                    }
                });
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
        let quantized = self.quantized_per_head();
        let parts = (0..self.positions.len())
            .map(|h| {
                let len = lens.get(h).copied().unwrap_or(usize::MAX);
                (len.min(quantized[h]), len.saturating_sub(quantized[h]))
            })
            .collect::<Vec<_>>();
        self.truncate_parts(&parts);
    }

    /// Keeps the first `parts[h].0` quantized and `parts[h].1` full-precision entries of every
    /// head `h` (each at most what the head holds).
    fn truncate_parts(&mut self, parts: &[(usize, usize)]) {
        let heads = self.positions.len();
        let mut packed_lens = Vec::with_capacity(heads);
        let mut full_lens = Vec::with_capacity(heads);
        for h in 0..heads {
            let (q, f) = parts.get(h).copied().unwrap_or((usize::MAX, usize::MAX));
            packed_lens.push(q.min(self.packed.head_len(h)));
            full_lens.push(f.min(self.storage.head_len(h)));
        }
        let unchanged = (0..heads).all(|h| {
            packed_lens[h] == self.packed.head_len(h) && full_lens[h] == self.storage.head_len(h)
        });
        if unchanged {
            return;
        }
        for h in 0..heads {
            let (q, f, held_q) = (packed_lens[h], full_lens[h], self.packed.head_len(h));
            for list in [&mut self.positions[h], &mut self.origins[h]] {
                list.truncate(held_q + f);
                list.drain(q..held_q);
            }
        }
        self.packed = self.packed.take().truncate(&packed_lens);
        self.storage = self.storage.take().truncate(&full_lens);
        // a dense storage truncated is still a prefix of the spare buffer
        self.spare = match (self.spare.take(), &self.storage) {
            (Some(spare), Storage::Dense(kv)) => Some(Spare {
                len: kv.len(),
                ..spare
            }),
            _ => None,
        };
        for (pin, &f) in self.pinned.iter_mut().zip(&full_lens) {
            *pin = (*pin).min(f);
        }
    }

    /// Bytes held by the key and value tensors (element count × element size), quantized
    /// codes, scales and zero-points included.
    pub fn bytes(&self) -> usize {
        let spare = self.spare.as_ref().map_or(0, |sp| {
            sp.buffer.bytes() / sp.buffer.len().max(1) * (sp.buffer.len() - sp.len)
        });
        self.storage.bytes() + self.packed.bytes() + spare
    }

    /// Bytes the entries would hold unquantized (equal to [`LayerCache::bytes`] without
    /// quantization).
    pub fn unquantized_bytes(&self) -> usize {
        let packed = match &self.packed {
            Storage::Empty => 0,
            Storage::Dense(p) => p.keys.unquantized_bytes() + p.values.unquantized_bytes(),
            Storage::Ragged(heads) => heads
                .iter()
                .flatten()
                .map(|p| p.keys.unquantized_bytes() + p.values.unquantized_bytes())
                .sum(),
        };
        self.storage.bytes() + packed
    }

    /// Causal grouped-query attention of `q` (`[1, h_q, s, d]`, at `q_positions`) over this
    /// cache; each query head reads only its own KV head's entries (quantized entries are read
    /// back for this call only). Returns `[1, h_q, s, d]`.
    pub fn attend(
        &self,
        q: Tensor<B, 4>,
        q_positions: &[usize],
        options: &AttentionOptions,
    ) -> Result<Tensor<B, 4>> {
        if self.is_empty() {
            return Err(CoreError::Invalid {
                name: "cache",
                detail: "attention over an empty layer cache".into(),
            });
        }
        // over quantized entries, attention runs in their rotated basis: q·k is unchanged by
        // an orthogonal rotation of both, and the output is rotated back (the rotation is its
        // own inverse), so only the queries, the full-precision window and the output turn
        let rotation = self.stored_rotation();
        let r = rotation.as_ref();
        let q = match r {
            Some(r) => rotate(q, r),
            None => q,
        };
        let unrotate = |out: Tensor<B, 4>| match r {
            Some(r) => rotate(out, r),
            None => out,
        };
        if let Some(kv) = self.entries(None, r, Basis::Rotated) {
            return chunked_attention(q, kv.keys, kv.values, q_positions, &self.positions, options)
                .map(unrotate);
        }
        let [_, h_q, _, _] = q.dims();
        let h_kv = self.positions.len();
        if h_kv == 0 || h_q % h_kv != 0 {
            return Err(CoreError::Shape {
                context: "LayerCache::attend",
                detail: format!("{h_q} query heads over {h_kv} KV heads"),
            });
        }
        let g = h_q / h_kv;
        let outputs = (0..h_kv)
            .map(|h| {
                let Some(kv) = self.entries(Some(h), r, Basis::Rotated) else {
                    return Err(CoreError::Invalid {
                        name: "cache",
                        detail: format!("KV head {h} holds no entry to attend to"),
                    });
                };
                chunked_attention(
                    q.clone().narrow(1, h * g, g),
                    kv.keys,
                    kv.values,
                    q_positions,
                    std::slice::from_ref(&self.positions[h]),
                    options,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(unrotate(Tensor::cat(outputs, 1)))
    }
}

/// `buffer` (`[1, h, capacity, d]`) with `new` written at entries `at..at + new.len()`, in
/// place when the buffer is the only owner of its memory.
fn write_at<B: Backend>(buffer: Kv<B>, at: usize, new: Kv<B>) -> Kv<B> {
    Kv {
        keys: write_entries(buffer.keys, at, new.keys),
        values: write_entries(buffer.values, at, new.values),
    }
}

/// One tensor of [`write_at`]. burn-flex's `slice_assign` copies the whole buffer (it clones
/// its handle before writing, so the copy-on-write always fires: 6 MiB per layer and decoding
/// step at 4k tokens), hence the host path first.
fn write_entries<B: Backend>(buffer: Tensor<B, 4>, at: usize, new: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let buffer = match crate::cpu::write_rows(buffer, at, &new) {
        Ok(written) => return written,
        Err(buffer) => buffer,
    };
    let [_, h, _, d] = buffer.dims();
    buffer.slice_assign([0..1, 0..h, at..at + new.dims()[2], 0..d], new)
}

/// The basis cache entries are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// The keys and values as the model computed them.
    True,
    /// Rotated by the cache's quantization rotation (attention over quantized entries).
    Rotated,
}

/// `kv` (`[1, h, n, d]`) rotated along the channels (unchanged without a rotation).
fn rotated<B: Backend>(kv: Kv<B>, rotation: Option<&Tensor<B, 2>>) -> Kv<B> {
    match rotation {
        None => kv,
        Some(r) => Kv {
            keys: rotate(kv.keys, r),
            values: rotate(kv.values, r),
        },
    }
}

/// `x` (`[a, b, c, d]`) times `rotation` (`[d, d]`).
fn rotate<B: Backend>(x: Tensor<B, 4>, rotation: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [a, b, c, d] = x.dims();
    x.reshape([a * b * c, d])
        .matmul(rotation.clone())
        .reshape([a, b, c, d])
}

/// `kv` (`[1, h, n, d]`) without its entries `start..start + len`, in a buffer of its own (a
/// narrowed view would keep the whole original buffer alive); `None` if nothing is left.
fn without<B: Backend>(kv: Kv<B>, start: usize, len: usize) -> Option<Kv<B>> {
    let n = kv.len();
    let kept: Vec<usize> = (0..start).chain(start + len..n).collect();
    if kept.is_empty() {
        return None;
    }
    Some(kv.select(&kept))
}

/// `indices` as an index tensor on `device`.
fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(ids, [indices.len()]), device)
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
    /// `[layer][head]`: (quantized, full-precision) entries.
    lengths: Vec<Vec<(usize, usize)>>,
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
        Self::with_quantization(num_layers, None)
    }

    /// An empty cache for `num_layers` layers quantizing as `quantization` says (none: full
    /// precision).
    pub fn with_quantization(num_layers: usize, quantization: Option<KvQuantization>) -> Self {
        Self {
            layers: (0..num_layers)
                .map(|_| LayerCache::with_quantization(quantization))
                .collect(),
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
    /// In a quantized cache it also pins the full-precision entries held now, so that what is
    /// appended later never pushes them into quantized storage and a rollback restores the
    /// cache exactly (every question sees the same context cache).
    pub fn mark(&mut self) -> CacheMark {
        let mut lengths = Vec::with_capacity(self.layers.len());
        for layer in &mut self.layers {
            let heads = layer.positions.len();
            layer.pinned = (0..heads).map(|h| layer.storage.head_len(h)).collect();
            lengths.push(
                (0..heads)
                    .map(|h| (layer.packed.head_len(h), layer.storage.head_len(h)))
                    .collect(),
            );
        }
        CacheMark {
            lengths,
            next_positions: self.layers.iter().map(LayerCache::next_position).collect(),
        }
    }

    /// Drops everything appended since `mark` was taken (a question and its answer).
    pub fn rollback(&mut self, mark: &CacheMark) {
        for ((layer, parts), &next) in self
            .layers
            .iter_mut()
            .zip(&mark.lengths)
            .zip(&mark.next_positions)
        {
            layer.truncate_parts(parts);
            layer.next_position = next;
        }
    }

    /// Bytes really held by all layers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }

    /// Bytes all layers would hold unquantized.
    pub fn unquantized_bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::unquantized_bytes).sum()
    }
}

/// `t` with its entries laid out contiguously where the backend gains from it (on flex, the
/// heads-first views of token-major projections the model appends; presses then read plain
/// rows); `t` itself elsewhere.
fn contiguous<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(laid_out) = crate::cpu::contiguous(&t) {
        return laid_out;
    }
    t
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
        // appending to a dense cache reserves room for the next entries, and says so
        assert_eq!(cache.bytes(), 2 * 3 * (7 + SPARE_ENTRIES) * 8 * 4);
        cache.truncate(&[5, 5, 5]);
        assert_eq!(cache.positions()[2], vec![0, 1, 2, 3, 4]);
        let (keys, _) = cache.keys_values().expect("dense").expect("not empty");
        let diff = (keys.clone() - k).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn decoding_appends_in_place_and_copies_share_nothing() {
        let (h, d) = (2, 4);
        let first = random(h, 10, d);
        let mut cache = LayerCache::<B>::default();
        cache
            .append(first.clone(), first.clone(), &(0..10).collect::<Vec<_>>())
            .expect("append");
        assert_eq!(
            cache.bytes(),
            2 * h * 10 * d * 4,
            "no room reserved by the prefill"
        );
        let mut all = vec![first];
        let mut snapshot = None;
        for step in 0..(SPARE_ENTRIES + 5) {
            let token = random(h, 1, d);
            cache
                .append(token.clone(), token.clone(), &[10 + step])
                .expect("append");
            all.push(token);
            if step == 3 {
                snapshot = Some((cache.clone(), Tensor::cat(all.clone(), 2)));
            }
        }
        let (keys, values) = cache.keys_values().expect("dense").expect("held");
        let want = Tensor::cat(all, 2);
        assert_eq!(max_abs(keys - want.clone()), 0.0);
        assert_eq!(max_abs(values - want), 0.0);
        // a copy taken earlier still holds what it held then
        let (copy, then) = snapshot.expect("snapshot");
        let (keys, _) = copy.keys_values().expect("dense").expect("held");
        assert_eq!(max_abs(keys - then), 0.0);
        // a rollback keeps the room: the next append is in place again
        let n = cache.len();
        cache.truncate(&[n - 3, n - 3]);
        let bytes = cache.bytes();
        let token = random(h, 1, d);
        cache.append(token.clone(), token, &[999]).expect("append");
        assert_eq!(cache.bytes(), bytes);
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

    fn quantized(bits: crate::quant::KvBits, residual: usize) -> Option<KvQuantization> {
        Some(KvQuantization {
            bits,
            group_size: 8,
            residual,
        })
    }

    fn random(h: usize, n: usize, d: usize) -> Tensor<B, 4> {
        Tensor::<B, 4>::random(
            [1, h, n, d],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        )
    }

    fn max_abs(t: Tensor<B, 4>) -> f32 {
        t.abs().max().into_scalar()
    }

    #[test]
    fn settle_quantizes_all_but_the_residual_window() {
        use crate::quant::KvBits;
        let (h, n, d) = (2, 20, 16);
        let (k, v) = (random(h, n, d), random(h, n, d));
        let mut cache = LayerCache::<B>::with_quantization(quantized(KvBits::Int8, 6));
        let positions: Vec<usize> = (0..n).collect();
        cache
            .append(k.clone(), v.clone(), &positions)
            .expect("append");
        assert_eq!(
            cache.bytes(),
            2 * h * n * d * 4,
            "nothing quantized before settle"
        );
        cache.settle().expect("settle");
        assert_eq!(cache.quantized_per_head(), vec![14, 14]);
        assert_eq!(cache.positions()[1], positions);
        // 14 quantized entries: d one-byte codes, d/8 f16 scales and zero-points; 6 in f32
        let per_entry = d + 2 * (d / 8) * 2;
        assert_eq!(cache.bytes(), 2 * h * (14 * per_entry + 6 * d * 4));
        let (qk, qv) = cache.keys_values().expect("dense").expect("held");
        // the residual window is exact, the rest within int8's error
        let tail = |t: Tensor<B, 4>| t.narrow(2, 14, 6);
        assert_eq!(max_abs(tail(qk.clone()) - tail(k.clone())), 0.0);
        assert!(max_abs(qk - k) < 0.02 && max_abs(qv - v) < 0.02);
        // a new token joins the window and pushes the oldest full-precision entry out
        let (nk, nv) = (random(h, 1, d), random(h, 1, d));
        cache.append(nk, nv, &[n]).expect("append");
        cache.settle().expect("settle");
        assert_eq!(cache.quantized_per_head(), vec![15, 15]);
        assert_eq!(cache.tokens_per_head(), vec![21, 21]);
    }

    #[test]
    fn attention_reads_the_quantized_entries_back() {
        use crate::quant::KvBits;
        let (h_kv, g, n, d) = (2, 2, 30, 16);
        let (k, v) = (random(h_kv, n, d), random(h_kv, n, d));
        let positions: Vec<usize> = (0..n).collect();
        let mut full = LayerCache::<B>::default();
        full.append(k.clone(), v.clone(), &positions)
            .expect("append");
        let q = random(h_kv * g, 1, d);
        let opts = AttentionOptions::new(0.25);
        let exact = full.attend(q.clone(), &[n - 1], &opts).expect("attend");
        for (bits, tolerance) in [(KvBits::Int8, 0.02), (KvBits::Int4, 0.3)] {
            let mut cache = LayerCache::<B>::with_quantization(quantized(bits, 4));
            cache
                .append(k.clone(), v.clone(), &positions)
                .expect("append");
            cache.settle().expect("settle");
            let got = cache.attend(q.clone(), &[n - 1], &opts).expect("attend");
            // equal to attention over the read-back entries, close to the unquantized one
            let (rk, rv) = cache.keys_values().expect("dense").expect("held");
            let want = chunked_attention(q.clone(), rk, rv, &[n - 1], cache.positions(), &opts)
                .expect("reference");
            assert!(max_abs(got.clone() - want) < 1e-6, "{bits}");
            let err = max_abs(got - exact.clone());
            assert!(err < tolerance, "{bits}: {err}");
        }
    }

    #[test]
    fn evicting_quantized_entries_selects_their_codes_as_they_are() {
        use crate::quant::KvBits;
        let (h, n, d) = (3, 24, 16);
        let (k, v) = (random(h, n, d), random(h, n, d));
        let mut cache = LayerCache::<B>::with_quantization(quantized(KvBits::Int4, 8));
        let positions: Vec<usize> = (0..n).collect();
        cache.append(k, v, &positions).expect("append");
        cache.settle().expect("settle");
        let (before, _) = cache.keys_values().expect("dense").expect("held");
        let bytes = cache.bytes();
        // heads keep different numbers of quantized and full-precision entries
        let kept = vec![vec![0, 5, 20, 23], vec![1, 2, 3, 4, 18], vec![22]];
        cache.keep(&kept).expect("keep");
        assert_eq!(cache.quantized_per_head(), vec![2, 4, 0]);
        assert!(cache.bytes() < bytes / 3);
        for (head, idx) in kept.iter().enumerate() {
            let (got, _) = cache.head(head).expect("kept");
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let ids =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &got.device());
            let want = before.clone().narrow(1, head, 1).select(2, ids);
            assert_eq!(max_abs(got - want), 0.0, "head {head}: codes untouched");
            assert_eq!(cache.positions()[head], *idx);
        }
        assert!(cache.map_keys(|k| k).is_err(), "no requantizing transform");
    }

    #[test]
    fn rollback_restores_a_quantized_context_exactly() {
        use crate::quant::KvBits;
        let (h, n, d) = (2, 16, 16);
        let mut cache = KvCache::<B>::with_quantization(1, quantized(KvBits::Int8, 4));
        let layer = cache.layer_mut(0).expect("layer");
        let positions: Vec<usize> = (0..n).collect();
        layer
            .append(random(h, n, d), random(h, n, d), &positions)
            .expect("append");
        layer.settle().expect("settle");
        let (context, _) = layer.keys_values().expect("dense").expect("held");
        let bytes = cache.bytes();
        let mark = cache.mark();
        for question in 0..2 {
            // a 10-token question: without the pin it would push the context's window out
            let layer = cache.layer_mut(0).expect("layer");
            let q_pos: Vec<usize> = (n..n + 10).collect();
            layer
                .append(random(h, 10, d), random(h, 10, d), &q_pos)
                .expect("append");
            layer.settle().expect("settle");
            assert_eq!(
                layer.quantized_per_head(),
                vec![12 + 6, 12 + 6],
                "question {question}"
            );
            assert_eq!(layer.tokens_per_head(), vec![26, 26]);
            cache.rollback(&mark);
            let layer = cache.layer(0).expect("layer");
            assert_eq!(layer.positions()[0], positions);
            let (back, _) = layer.keys_values().expect("dense").expect("held");
            assert_eq!(max_abs(back - context.clone()), 0.0);
            assert_eq!(cache.bytes(), bytes);
        }
    }
}
