//! The key/value cache of incremental decoding.
//!
//! Each step appends the new token's keys and values; beam search reorders the cache along
//! the batch axis. Storage grows by doubling, so appending one token copies only that token.

use crate::Result;
use tch::{Kind, Tensor};

/// Cached keys and values of one attention module, `[batch, heads, len, head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: i64,
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

    /// Append `k`, `v` (`[batch, heads, n, head_dim]`) and return all cached keys and values.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.size()[2];
        let needed = self.len + n;
        let capacity = self.k.as_ref().map_or(0, |t| t.size()[2]);
        if needed > capacity {
            let new_cap = needed.max(2 * capacity).max(16);
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
    /// the old row `beam_idx[i]`.
    pub fn reorder(&mut self, beam_idx: &Tensor) -> Result<()> {
        let idx = beam_idx.f_to_kind(Kind::Int64)?;
        if let Some(k) = &self.k {
            self.k = Some(k.f_index_select(0, &idx.f_to(k.device())?)?);
        }
        if let Some(v) = &self.v {
            self.v = Some(v.f_index_select(0, &idx.f_to(v.device())?)?);
        }
        Ok(())
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

    /// Reorder both caches along the batch axis.
    pub fn reorder(&mut self, beam_idx: &Tensor) -> Result<()> {
        self.self_attn.reorder(beam_idx)?;
        self.cross_attn.reorder(beam_idx)
    }
}
