//! Activation buffers of a step, grown when a step needs more rows, items or attention
//! partials than any before it (so steady state allocates nothing).

use super::driver::DeviceBuf;
use super::forward::Dims;
use super::kernels::Shape;
use crate::exec::ExecError;

pub(crate) struct Workspace {
    dims: Dims,
    shape: Shape,
    rows: usize,
    items: usize,
    partials: usize,
    /// `[rows, hidden]` f32: the residual stream.
    pub(crate) x: DeviceBuf,
    /// `[rows, hidden]` bf16: a norm's output, a GEMM's input.
    pub(crate) normed: DeviceBuf,
    /// `[rows, q + 2·kv]` f32.
    pub(crate) qkv: DeviceBuf,
    /// `[rows, q]` bf16: rotated queries.
    pub(crate) q: DeviceBuf,
    /// `[rows, q]` bf16: attention output.
    pub(crate) att: DeviceBuf,
    /// `[rows, 2·ff]` bf16.
    pub(crate) gu: DeviceBuf,
    /// `[rows, ff]` bf16.
    pub(crate) act: DeviceBuf,
    /// `[items, hidden]` f32: each item's last row (steps the fused norm-and-GEMV kernels do not take).
    pub(crate) last: DeviceBuf,
    /// `[items, vocab]` f32.
    pub(crate) logits: DeviceBuf,
    /// `[items]` u32: greedy and drawn tokens.
    pub(crate) tokens: DeviceBuf,
    pub(crate) sampled: DeviceBuf,
    /// Decode-attention partials: `[partials, group, head_dim]` and `[partials, group, 2]` f32.
    pub(crate) part_o: DeviceBuf,
    pub(crate) part_ml: DeviceBuf,
    /// `[partials]` u32: decode attention's arrival counts, zero between launches.
    pub(crate) counters: DeviceBuf,
}

struct Sizes {
    rows: usize,
    items: usize,
    partials: usize,
}

fn alloc(d: &Dims, sh: &Shape, s: &Sizes) -> Result<Workspace, ExecError> {
    let (r, n, h, ff) = (s.rows, s.items, d.hidden, d.ff);
    let group = sh.heads / sh.kv_heads;
    let buf = |bytes: usize, what: &str| DeviceBuf::new(bytes, what);
    Ok(Workspace {
        dims: *d,
        shape: *sh,
        rows: r,
        items: n,
        partials: s.partials,
        x: buf(r * h * 4, "activations")?,
        normed: buf(r * h * 2, "activations")?,
        qkv: buf(r * sh.qkv_width() * 4, "activations")?,
        q: buf(r * sh.q_dim() * 2, "activations")?,
        att: buf(r * sh.q_dim() * 2, "activations")?,
        gu: buf(r * 2 * ff * 2, "activations")?,
        act: buf(r * ff * 2, "activations")?,
        last: buf(n * h * 4, "activations")?,
        logits: buf(n * d.vocab * 4, "logits")?,
        tokens: buf(n * 4, "tokens")?,
        sampled: buf(n * 4, "tokens")?,
        part_o: buf(s.partials * group * sh.head_dim * 4, "attention partials")?,
        part_ml: buf(s.partials * group * 2 * 4, "attention partials")?,
        counters: {
            let b = buf(s.partials * 4, "attention counters")?;
            if s.partials > 0 {
                b.fill_bytes(0)?;
            }
            b
        },
    })
}

impl Workspace {
    pub(crate) fn new(d: &Dims, sh: &Shape) -> Result<Workspace, ExecError> {
        alloc(
            d,
            sh,
            &Sizes {
                rows: 256,
                items: 16,
                partials: 1024,
            },
        )
    }

    /// Device bytes of a workspace for `rows` tokens (and as many items), for budgeting.
    pub(crate) fn bytes_for(d: &Dims, sh: &Shape, rows: usize) -> u64 {
        let (h, ff) = (d.hidden, d.ff);
        let per_row = h * 4 + h * 2 + sh.qkv_width() * 4 + 2 * sh.q_dim() * 2 + 3 * ff * 2;
        let per_item = h * 4 + d.vocab * 4 + 8;
        (rows * (per_row + per_item)) as u64
    }

    /// Makes the buffers big enough for a step of `rows` rows, `items` items and `partials`
    /// decode partitions. Growth frees the old buffers first; nothing is in flight then (every
    /// step ends with a synchronize).
    pub(crate) fn ensure(
        &mut self,
        rows: usize,
        items: usize,
        partials: usize,
    ) -> Result<(), ExecError> {
        if rows <= self.rows && items <= self.items && partials <= self.partials {
            return Ok(());
        }
        let sizes = Sizes {
            rows: rows.max(self.rows).next_multiple_of(256),
            items: items.max(self.items).next_multiple_of(16),
            partials: partials.max(self.partials).next_multiple_of(1024),
        };
        let (d, sh) = (self.dims, self.shape);
        // Free the old buffers before allocating the new ones.
        *self = alloc(
            &d,
            &sh,
            &Sizes {
                rows: 0,
                items: 0,
                partials: 0,
            },
        )?;
        *self = alloc(&d, &sh, &sizes)?;
        Ok(())
    }
}
