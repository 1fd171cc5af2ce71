//! The key/value cache of incremental decoding.
//!
//! Each step appends the new token's keys and values; beam search reorders the cache along
//! the batch axis. Storage grows by doubling, so appending one token copies only that token,
//! up to the length the run can reach where the engine says it ([`KvCache::plan`]).

use crate::Result;
use tch::{Kind, Tensor};

/// Cached keys and values of one attention module, `[batch, heads, len, head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: i64,
    /// The most positions this run will cache, where known: growth stops there.
    limit: Option<i64>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache will hold in the current run (prompt and new tokens):
    /// doubling stops at it, so that a run of 159 positions ends with room for 159, not 256.
    /// More positions than that are still taken (the doubling goes on).
    pub fn plan(&mut self, positions: i64) {
        self.limit = (positions > 0).then_some(positions);
    }

    /// Append `k`, `v` (`[batch, heads, n, head_dim]`) and return all cached keys and values.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.size()[2];
        let needed = self.len + n;
        let capacity = self.k.as_ref().map_or(0, |t| t.size()[2]);
        if needed > capacity {
            let doubled = needed.max(2 * capacity).max(16);
            let new_cap = match self.limit {
                Some(limit) if needed <= limit => doubled.min(limit),
                _ => doubled,
            };
            self.k = Some(Self::grow(self.k.as_ref(), k, self.len, new_cap)?);
            self.v = Some(Self::grow(self.v.as_ref(), v, self.len, new_cap)?);
        }
        let (Some(kb), Some(vb)) = (&self.k, &self.v) else {
            return Err(crate::Error::Input(
                "KV cache buffers were not allocated".into(),
            ));
        };
        for (buffer, new) in [(kb, k), (vb, v)] {
            let mut slots = buffer.f_narrow(2, self.len, n)?;
            if !super::fused::copy_rows(&slots, new) {
                slots.f_copy_(new)?;
            }
        }
        self.len = needed;
        Ok((kb.f_narrow(2, 0, needed)?, vb.f_narrow(2, 0, needed)?))
    }

    fn grow(old: Option<&Tensor>, like: &Tensor, len: i64, cap: i64) -> Result<Tensor> {
        let mut size = like.size();
        size[2] = cap;
        let buf = Tensor::f_empty(size.as_slice(), (like.kind(), like.device()))?;
        if let Some(old) = old {
            buf.f_narrow(2, 0, len)?
                .f_copy_(&old.f_narrow(2, 0, len)?)?;
        }
        Ok(buf)
    }

    /// Put the rows of `other` below this cache's rows (continuous batching: a sequence that
    /// was prefilled alone joins the running batch). Both are right-aligned to the longer of
    /// the two lengths: the shorter one's missing leading positions become zeros, which the
    /// caller's attention mask marks as padding (zeros, not uninitialised memory: a masked
    /// position gets probability 0, and 0 × NaN would still be NaN).
    pub fn stack_rows(&mut self, other: &KvCache) -> Result<()> {
        let (a, b) = match (self.get()?, other.get()?) {
            (None, None) => return Ok(()),
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(crate::Error::Input(
                    "cannot stack an empty KV cache with a filled one".into(),
                ))
            }
        };
        let len = self.len.max(other.len);
        // Room to grow before the next copy.
        let cap = len + len.max(16);
        let stack = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
            let (rx, ry) = (x.size()[0], y.size()[0]);
            let mut size = x.size(); // [rows, heads, len, head_dim]
            size[0] = rx + ry;
            size[2] = cap;
            let buf = Tensor::f_zeros(size.as_slice(), (x.kind(), x.device()))?;
            let (lx, ly) = (x.size()[2], y.size()[2]);
            buf.f_narrow(0, 0, rx)?
                .f_narrow(2, len - lx, lx)?
                .f_copy_(x)?;
            buf.f_narrow(0, rx, ry)?
                .f_narrow(2, len - ly, ly)?
                .f_copy_(y)?;
            Ok(buf)
        };
        self.k = Some(stack(&a.0, &b.0)?);
        self.v = Some(stack(&a.1, &b.1)?);
        self.len = len;
        Ok(())
    }

    /// Forget the first `n` positions of every row (padding that no row needs any more,
    /// after the rows that were longer have left the batch).
    pub fn drop_front(&mut self, n: i64) -> Result<()> {
        if n <= 0 || self.k.is_none() {
            return Ok(());
        }
        let n = n.min(self.len);
        for t in [&mut self.k, &mut self.v].into_iter().flatten() {
            let cap = t.size()[2];
            *t = t.f_narrow(2, n, cap - n)?;
        }
        self.len -= n;
        Ok(())
    }

    /// The cached keys and values, if any.
    pub fn get(&self) -> Result<Option<(Tensor, Tensor)>> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if self.len > 0 => Ok(Some((
                k.f_narrow(2, 0, self.len)?,
                v.f_narrow(2, 0, self.len)?,
            ))),
            _ => Ok(None),
        }
    }

    /// Keep batch rows in the order `beam_idx` (`[batch]` int64) gives: row `i` becomes
    /// the old row `beam_idx[i]`. (Several caches reordered alike: [`RowOrder`], worked out
    /// once.)
    pub fn reorder(&mut self, beam_idx: &Tensor) -> Result<()> {
        self.reorder_by(&RowOrder::new(beam_idx)?)
    }

    /// [`KvCache::reorder`] by an order worked out once for all the caches of a step.
    ///
    /// With as many rows as before (every beam-search step), the rows that change are
    /// rewritten in place over the cached positions only: a copy of their sources is taken
    /// first, then written over them. A fresh `[rows, heads, capacity, head_dim]` buffer per
    /// step (what `index_select` would make) copied the unfilled capacity and every row that
    /// stays, and left the freed buffers to fragment the heap (OPUS-MT beam 4 over 64
    /// sentences: 12 such buffers of 8–17 MB a step). With a different number of rows (the
    /// engine's first reorder, which repeats each input for its beams) a new buffer is made.
    pub fn reorder_by(&mut self, order: &RowOrder) -> Result<()> {
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            return Ok(());
        };
        let rows = k.size()[0];
        if order.rows != rows {
            self.k = Some(k.f_index_select(0, &order.index.f_to(k.device())?)?);
            self.v = Some(v.f_index_select(0, &order.index.f_to(v.device())?)?);
            return Ok(());
        }
        if order.max >= rows {
            return Err(crate::Error::Input(format!(
                "beam index {} is outside the cache's {rows} rows",
                order.max
            )));
        }
        let Some((moved, from)) = &order.moves else {
            return Ok(()); // every row stays
        };
        if self.len == 0 {
            return Ok(());
        }
        let (moved, from) = (moved.f_to(k.device())?, from.f_to(k.device())?);
        for buffer in [k, v] {
            let mut filled = buffer.f_narrow(2, 0, self.len)?; // [rows, heads, len, head_dim]
            let sources = filled.f_index_select(0, &from)?; // taken before any row is written
            let _ = filled.f_index_copy_(0, &moved, &sources)?;
        }
        Ok(())
    }
}

/// A reorder of batch rows (row `i` becomes the old row `index[i]`), read to the host once for
/// all the caches of a step: which rows change and where each comes from.
#[derive(Debug)]
pub struct RowOrder {
    /// `[rows]` int64, on the caller's device.
    index: Tensor,
    /// Its length.
    rows: i64,
    /// Its largest entry.
    max: i64,
    /// The rows that change and their sources (`[moved]` int64 each), or `None` when every
    /// row stays.
    moves: Option<(Tensor, Tensor)>,
}

impl RowOrder {
    /// The order `beam_idx` (`[rows]`, any integer kind) gives; negative entries are errors.
    pub fn new(beam_idx: &Tensor) -> Result<Self> {
        let index = beam_idx.f_to_kind(Kind::Int64)?;
        let order = Vec::<i64>::try_from(&index.f_to(tch::Device::Cpu)?)?;
        if let Some(&bad) = order.iter().find(|&&i| i < 0) {
            return Err(crate::Error::Input(format!("beam index {bad} is negative")));
        }
        let (moved, from): (Vec<i64>, Vec<i64>) = order
            .iter()
            .enumerate()
            .map(|(i, &from)| (i as i64, from))
            .filter(|(i, from)| i != from)
            .unzip();
        let moves = if moved.is_empty() {
            None
        } else {
            let device = index.device();
            Some((
                Tensor::f_from_slice(&moved)?.f_to(device)?,
                Tensor::f_from_slice(&from)?.f_to(device)?,
            ))
        };
        Ok(RowOrder {
            rows: order.len() as i64,
            max: order.iter().copied().max().unwrap_or(0),
            index,
            moves,
        })
    }
}

/// The caches of one decoder layer: its self-attention, and its cross-attention (filled once,
/// from the encoder output, on the first step).
#[derive(Debug, Default)]
pub struct LayerCache {
    /// Self-attention keys and values, growing by one position per step.
    pub self_attn: KvCache,
    /// Cross-attention keys and values of the encoder output.
    pub cross_attn: KvCache,
}

impl LayerCache {
    /// Positions already cached by a stack's `caches` (the first block's self-attention
    /// length; 0 without caches).
    pub fn cached_len(caches: Option<&[LayerCache]>) -> i64 {
        caches
            .and_then(|c| c.first())
            .map_or(0, |c| c.self_attn.len())
    }

    /// Put `other`'s rows below these (see [`KvCache::stack_rows`]).
    pub fn stack_rows(&mut self, other: &LayerCache) -> Result<()> {
        self.self_attn.stack_rows(&other.self_attn)?;
        self.cross_attn.stack_rows(&other.cross_attn)
    }

    /// Forget the first `n` self-attention positions of every row (see
    /// [`KvCache::drop_front`]).
    pub fn drop_front(&mut self, n: i64) -> Result<()> {
        self.self_attn.drop_front(n)
    }

    /// The most positions the self-attention cache will hold this run (see
    /// [`KvCache::plan`]).
    pub fn plan(&mut self, positions: i64) {
        self.self_attn.plan(positions);
    }

    /// Reorder both caches along the batch axis.
    pub fn reorder(&mut self, beam_idx: &Tensor) -> Result<()> {
        self.reorder_by(&RowOrder::new(beam_idx)?)
    }

    /// [`LayerCache::reorder`] by an order worked out once for all the layers.
    pub fn reorder_by(&mut self, order: &RowOrder) -> Result<()> {
        self.self_attn.reorder_by(order)?;
        self.cross_attn.reorder_by(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// `[rows, 2, n, 3]` distinct values (row r, position p → 1000 r + 10 p + …).
    fn keys(rows: i64, n: i64, from: i64) -> Tensor {
        let r = Tensor::arange(rows, (Kind::Float, Device::Cpu)).view([rows, 1, 1, 1]) * 1000.0;
        let p = Tensor::arange_start(from, from + n, (Kind::Float, Device::Cpu)).view([1, 1, n, 1])
            * 10.0;
        let e = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([1, 2, 1, 3]) * 0.5;
        r + p + e
    }

    #[test]
    fn an_in_place_reorder_equals_a_gather() {
        let mut cache = KvCache::new();
        let mut whole = keys(5, 3, 0);
        let _ = cache.append(&whole, &(-&whole)).unwrap();
        // Duplicates, swaps, rows that stay: every kind of move at once.
        for order in [
            [1i64, 1, 0, 3, 3],
            [4, 3, 2, 1, 0],
            [0, 1, 2, 3, 4],
            [2, 2, 2, 2, 2],
        ] {
            let idx = Tensor::from_slice(&order);
            cache.reorder(&idx).unwrap();
            whole = whole.index_select(0, &idx);
            let step = keys(5, 1, 3 + cache.len());
            let (k, v) = cache.append(&step, &(-&step)).unwrap();
            whole = Tensor::cat(&[&whole, &step], 2);
            assert!(k.equal(&whole));
            assert!(v.equal(&(-&whole)));
        }
        // The engine's first reorder repeats rows: a new buffer of the new row count.
        cache
            .reorder(&Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
            .unwrap();
        assert_eq!(cache.get().unwrap().unwrap().0.size()[0], 10);
        let bad = cache.reorder(&Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7, 8, 10]));
        assert!(bad.unwrap_err().to_string().contains("outside"));
        let negative = RowOrder::new(&Tensor::from_slice(&[0i64, -1]));
        assert!(negative.unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn growth_stops_at_the_planned_length_and_goes_on_past_it() {
        let capacity = |c: &KvCache| c.k.as_ref().map_or(0, |k| k.size()[2]);
        let mut cache = KvCache::new();
        cache.plan(20);
        let step = keys(1, 1, 0);
        for _ in 0..17 {
            let _ = cache.append(&step, &step).unwrap();
        }
        assert_eq!(capacity(&cache), 20); // doubling would give 32
        for _ in 17..21 {
            let _ = cache.append(&step, &step).unwrap();
        }
        assert_eq!((cache.len(), capacity(&cache)), (21, 40));
        // Without a plan: doubling.
        let mut free = KvCache::new();
        for _ in 0..17 {
            let _ = free.append(&step, &step).unwrap();
        }
        assert_eq!(capacity(&free), 32);
    }
}
