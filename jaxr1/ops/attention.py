"""Masked multi-head attention with grouped KV heads: one entry point, a reference XLA path and fused kernels.

Shapes: q [B, Tq, H, D], k/v [B, S, Hkv, D] (H a multiple of Hkv), and either a dense mask [B, Tq, S]
(True = may attend) or segment ids q_segment_ids [B, Tq] / kv_segment_ids [B, S] (int32, 0 = padding) with
`causal`: query i may attend key j iff q_seg[i] == kv_seg[j] and (not causal or j <= i + (S - Tq)).
Scores and softmax run in float32 whatever the input dtype (as transformers' eager path does), the weighted
sum in the value dtype. A query that may attend nothing (a fully masked row, padding) gets a finite output
(uniform over keys on the xla path, zeros on cudnn) and finite gradients; callers ignore it.

Implementations (`implementation=`, config key `model.attention`; see `resolve_attention`):
- "xla": the einsum reference; takes any mask; the only path for a dense `mask`. Segment ids + causal run
  in causal query blocks (each block reads the keys up to its end), not over the whole T x S rectangle.
- "splash": TPU Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention) from segment ids +
  a static causal/full mask object, GQA heads natively, block-sparse causal skipping. Off TPU it runs in
  Pallas interpret mode (slow; for parity tests). Lengths are padded inside the wrapper to a multiple of
  `kernel_block("splash")` = 128 (the kernel's segment-id path needs 128-lane blocks for q and kv); the
  padding is segment 0 and sliced off again. GSPMD cannot partition a pallas call: under a sharded jit
  XLA would gather q/k/v onto every device, so the wrapper shard_maps it over the batch axes of the
  ambient mesh (`with jax.set_mesh(mesh):` around tracing), see `_batch_shard_map`; without one XLA
  replicates it.
- "cudnn": NVIDIA cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`
  (jax 0.10, jax/_src/cudnn/fused_attention_stablehlo.py): bf16/fp16 (fp8 separate) only; head dim a
  multiple of 8, <= 128 (<= 256 on Hopper+, but jax checks the *default* backend's compute capability, so
  256 only when running on the GPU itself); `is_causal` (top-left aligned, so only Tq == S here);
  padding only as `query_seq_lengths`/`key_value_seq_lengths` (the first L tokens of each row are valid);
  segments only through a dense [B,1,Tq,S] bias, or cuDNN's packed `q_offsets` layout which
  `jax.nn.dot_product_attention` does not expose. So with segment ids the wrapper serves rows whose
  non-zero ids form ONE contiguous run (left and/or right padding: the RL layout prompt|completion): it
  rolls each row so the run starts at 0, calls cuDNN with the run lengths (no mask tensor), rolls back and
  zeroes padding rows (also their gradients, whatever cuDNN leaves there). Rows with several segments
  (packed sequences, vision windows) must pass a dense `mask`, which cudnn takes as a bias.
  Like splash it is shard_mapped over the batch axes of the ambient mesh (cuDNN's SPMD partitioner
  rejects rows that do not divide them, e.g. a micro-batch's prompts; those run replicated).
- "auto": resolved per backend by `resolve_attention`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxr1.errors import UserError

_NEG_INF = -1e30  # finite, so a fully masked row gives a uniform (not NaN) distribution

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
SPLASH_BLOCK = 128          # multiple required by splash's segment-id path (NUM_LANES)
_SPLASH_MAX_BLOCK = 512     # larger tiles when the (padded) length allows it
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def kernel_block(implementation: str) -> int:
    """Sequence-length granularity the kernel wants: callers may round T/S up to it to avoid in-wrapper
    padding (the wrapper pads anyway). 1 for xla and cudnn (cuDNN takes any length)."""
    return SPLASH_BLOCK if implementation == "splash" else 1


def cudnn_head_dim_ok(head_dim: int, *, hopper: bool = True) -> bool:
    return head_dim % 8 == 0 and head_dim <= (256 if hopper else 128)


def splash_head_dim_ok(head_dim: int) -> bool:
    """Mosaic tiles the head dim in 128 lanes; 64 is padded but works (Qwen text heads are 128)."""
    return head_dim % 64 == 0


def resolve_attention(name: str, *, platform: str, dtype, head_dim: int, allow_interpret: bool = False) -> str:
    """The implementation `attention` should run for config `model.attention = name` on `platform`
    ("cpu"/"gpu"/"cuda"/"rocm"/"tpu"). "auto": splash on TPU; cudnn on an NVIDIA GPU for bf16/fp16 with a
    supported head dim; else xla. An explicit kernel that cannot serve raises UserError (one line naming
    model.attention and what to set). allow_interpret lets splash run off TPU (tests)."""
    platform = {"cuda": "gpu"}.get(platform.lower(), platform.lower())
    dt = jnp.dtype(dtype)
    low_precision = dt in tuple(jnp.dtype(d) for d in CUDNN_DTYPES)
    if name == "auto":
        if platform == "tpu" and splash_head_dim_ok(head_dim):
            return "splash"
        if platform == "gpu" and low_precision and cudnn_head_dim_ok(head_dim):
            return "cudnn"
        return "xla"
    if name == "xla":
        return "xla"
    # Per kernel: (cannot serve?, why, what to set instead), checked in order.
    checks = {
        "splash": [(platform != "tpu" and not allow_interpret, f"needs a TPU (running on {platform})",
                    "model.attention to auto or xla"),
                   (not splash_head_dim_ok(head_dim), f"does not support head dim {head_dim}",
                    "model.attention to xla")],
        "cudnn": [(platform != "gpu", f"needs an NVIDIA GPU (running on {platform})",
                   "model.attention to auto or xla"),
                  (not low_precision, f"needs bfloat16 or float16 activations, got {dt.name}",
                   "model.compute_dtype to bfloat16 or model.attention to xla"),
                  (not cudnn_head_dim_ok(head_dim),
                   f"needs a head dim that is a multiple of 8 and <= 256, got {head_dim}", "model.attention to xla")],
    }
    if name in checks:
        for fails, why, instead in checks[name]:
            if fails:
                raise UserError(f"model.attention={name} {why}; set {instead}")
        return name
    raise UserError(f"model.attention={name!r} is not one of {', '.join(IMPLEMENTATIONS)}")


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, causal: bool) -> jax.Array:
    """The dense [B, Tq, S] mask the segment ids + causal stand for."""
    tq, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        mask &= (jnp.arange(s)[None, :] <= jnp.arange(tq)[:, None] + (s - tq))[None]
    return mask


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
              scale: float | None = None, implementation: str = "xla",
              q_segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
              causal: bool = False) -> jax.Array:
    """Attention output [B, Tq, H, D] in q's dtype. Give either `mask` or the segment ids (+ `causal`).
    `implementation` is a resolved name ("xla", "splash", "cudnn"); "auto" picks by the default backend."""
    if mask is None:
        if q_segment_ids is None or kv_segment_ids is None:
            b, tq, s = q.shape[0], q.shape[1], k.shape[1]
            q_segment_ids = jnp.ones((b, tq), jnp.int32) if q_segment_ids is None else q_segment_ids
            kv_segment_ids = jnp.ones((b, s), jnp.int32) if kv_segment_ids is None else kv_segment_ids
        q_segment_ids = q_segment_ids.astype(jnp.int32)
        kv_segment_ids = kv_segment_ids.astype(jnp.int32)
    elif q_segment_ids is not None or kv_segment_ids is not None or causal:
        raise ValueError("attention: give either mask or segment ids (+ causal), not both")
    if implementation == "auto":
        implementation = resolve_attention("auto", platform=jax.default_backend(), dtype=q.dtype,
                                           head_dim=q.shape[-1])
    if implementation == "fused":  # jax's own choice (cuDNN on GPU when it can, else XLA)
        m = segment_mask(q_segment_ids, kv_segment_ids, causal) if mask is None else mask
        return jax.nn.dot_product_attention(q, k, v, mask=m[:, None], scale=scale)
    if implementation == "xla":
        if mask is None and causal:
            return _causal_attention_xla(q, k, v, q_segment_ids, kv_segment_ids, scale)
        m = segment_mask(q_segment_ids, kv_segment_ids, causal) if mask is None else mask
        return _attention_xla(q, k, v, m, scale)
    if implementation == "splash":
        if mask is not None:
            raise ValueError("attention: splash takes segment ids + causal, not a dense mask; use xla for it")
        return splash_attention(q, k, v, q_segment_ids, kv_segment_ids, causal=causal, scale=scale)
    if implementation == "cudnn":
        if mask is not None:
            return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn")
        # Per device like splash: cuDNN's own SPMD partitioner fails on rows that do not divide the batch
        # axes (a micro-batch's prompts in the shared-prompt forward); replicated rows run whole on each device.
        run = lambda q, k, v, qs, ks: cudnn_attention(q, k, v, qs, ks, causal=causal, scale=scale)
        return _batch_shard_map(run, q, k, v, q_segment_ids, kv_segment_ids)
    raise ValueError(f"unknown attention implementation {implementation!r} (expected one of {IMPLEMENTATIONS})")


def _attention_xla(q, k, v, mask, scale):
    b, tq, h, d = q.shape
    hkv = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    q = q.reshape(b, tq, hkv, h // hkv, d)
    scores = jnp.einsum("bqhgd,bshd->bhgqs", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqs,bshd->bqhgd", probs, v)
    return out.reshape(b, tq, h, d)


def _causal_attention_xla(q, k, v, q_segment_ids, kv_segment_ids, scale):
    """The XLA path for segment ids + causal, in causal query blocks: a block of queries reads the keys up to
    its end only (the rest are masked anyway), about (n + 1) / 2n of the T x S rectangle for n blocks."""
    tq, off = q.shape[1], k.shape[1] - q.shape[1]
    outs = []
    for start, stop in causal_blocks(tq):
        m = segment_mask(q_segment_ids[:, start:stop], kv_segment_ids[:, :stop + off], causal=True)
        outs.append(_attention_xla(q[:, start:stop], k[:, :stop + off], v[:, :stop + off], m, scale))
    return jnp.concatenate(outs, axis=1)


def prefix_attention(q: jax.Array, k: jax.Array, v: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array,
                     prefix_valid: jax.Array, segment_ids: jax.Array, row_prefix: jax.Array,
                     token_prefix: jax.Array, *, scale: float | None = None,
                     query_block: int | None = None) -> jax.Array:
    """Attention of R rows over shared prefixes plus their own keys: row r reads prefixes row_prefix[r]
    ([R, K]; -1 = none), each of its tokens the one of them token_prefix[r, t] names (slots where
    prefix_valid), and within its own row the causal prefix of its segment (slot j <= t with segment_ids
    equal and > 0; a row may hold several completions, one segment each, of up to K prompts).
    q [R, T, H, D], k/v [R, T, Hkv, D]; prefix_k/v [B, P, Hkv, D] (stored once per prompt, read by each of
    its rows: the gather is K x P x Hkv x D per row, the backward sums the rows' gradients into the prompt);
    prefix_valid [B, P]; segment_ids [R, T] int; token_prefix [R, T] int.
    One softmax over both parts (float32 scores, as `attention`): the result of `attention` over [prefix |
    own] keys per segment. Queries run in blocks (query_block tokens, default `causal_query_block(T)`), each
    reading only the own keys up to its end: causal, so the rest are masked anyway, and the own-key
    rectangle shrinks from T x T to about (n + 1) / 2n of it for n blocks. Returns [R, T, H, D]."""
    r, t, h, d = q.shape
    hkv = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    n_pre, p = row_prefix.shape[1], prefix_k.shape[1]
    q = q.reshape(r, t, hkv, h // hkv, d)
    index = jnp.maximum(row_prefix, 0)
    pk = prefix_k[index].reshape(r, n_pre * p, hkv, d)
    pv = prefix_v[index].reshape(r, n_pre * p, hkv, d)
    p_valid = jnp.asarray(prefix_valid)[index] & (row_prefix >= 0)[..., None]          # [R, K, P]
    mine = token_prefix[:, :, None] == row_prefix[:, None, :]                        # [R, T, K]
    pre = (mine[..., None] & p_valid[:, None]).reshape(r, t, n_pre * p)
    own = segment_mask(segment_ids, segment_ids, causal=True) & (segment_ids[:, None, :] > 0)   # [R, T, T]
    n, outs = n_pre * p, []
    for start, stop in causal_blocks(t, query_block):
        qb = q[:, start:stop]
        s_pre = jnp.einsum("rtkgd,rskd->rkgts", qb, pk, preferred_element_type=jnp.float32) * scale
        s_pre = jnp.where(pre[:, None, None, start:stop], s_pre, _NEG_INF)
        s_own = jnp.einsum("rtkgd,rskd->rkgts", qb, k[:, :stop], preferred_element_type=jnp.float32) * scale
        s_own = jnp.where(own[:, None, None, start:stop, :stop], s_own, _NEG_INF)
        probs = jax.nn.softmax(jnp.concatenate([s_pre, s_own], axis=-1), axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("rkgts,rskd->rtkgd", probs[..., :n], pv)
                    + jnp.einsum("rkgts,rskd->rtkgd", probs[..., n:], v[:, :stop]))
    return jnp.concatenate(outs, axis=1).reshape(r, t, h, d)


def causal_blocks(t: int, block: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of the causal query blocks of t queries (block tokens each, default causal_query_block)."""
    b = causal_query_block(t) if block is None else block
    assert t % b == 0, (t, b)
    return [(start, start + b) for start in range(0, t, b)]


def causal_query_block(t: int) -> int:
    """Query block of the causal XLA paths (`attention`, `prefix_attention`) for t queries: 64 (or 32 / 16
    where t is not a multiple of 64: packed rows are multiples of 16), doubled until at most 16 blocks; rows
    under 128 tokens stay one block (too short to pay for the extra ops)."""
    if t < 128:
        return t
    b = next((m for m in (64, 32, 16) if t % m == 0), t)
    while t // b > 16 and t % (2 * b) == 0:
        b *= 2
    return b

# ---------------------------------------------------------------------------------------------- splash

def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _splash_block(n: int) -> int:
    for blk in (_SPLASH_MAX_BLOCK, 256, SPLASH_BLOCK):
        if n % blk == 0:
            return blk
    raise AssertionError(n)


def _splash_kernel(heads: int, tq: int, s: int, offset: int, causal: bool, interpret: bool):
    """The kernel object for padded lengths tq/s (multiples of 128). Built per trace, not cached: it holds
    the mask-info arrays it made in the trace that built it (a cached one leaks that trace's tracers);
    splash caches the numpy mask preprocessing itself."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if causal:
        head_mask = sa.CausalMask((tq, s), offset=offset)
    else:
        head_mask = sa.FullMask((tq, s))
    mask = sa.MultiHeadMask([head_mask] * heads)
    bq, bkv = _splash_block(tq), _splash_block(s)
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                           block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                           block_q_dq=bq, block_kv_dq=bkv)
    return sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float | None = None,
                     interpret: bool | None = None):
    """Splash attention for [B, T, H, D] inputs; pads T and S to multiples of 128 (segment 0), vmaps the
    per-example kernel over the batch. interpret=None: the Mosaic kernel when lowering for TPU, Pallas
    interpret mode for any other platform (chosen at lowering time, so compiling for a TPU topology from a
    CPU host gets the real kernel). Under an ambient mesh it runs in a shard_map over the batch axes."""
    b, tq, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    # splash has no scale argument: scale q (in float32, one rounding to the input dtype)
    qs = (q.astype(jnp.float32) * scale).astype(q.dtype)

    def local(qs, k, v, qseg, kvseg):
        if interpret is not None:
            return _splash_local(qs, k, v, qseg, kvseg, causal, interpret)
        return jax.lax.platform_dependent(
            qs, k, v, qseg, kvseg,
            tpu=functools.partial(_splash_local, causal=causal, interpret=False),
            default=functools.partial(_splash_local, causal=causal, interpret=True))

    return _batch_shard_map(local, qs, k, v, q_segment_ids, kv_segment_ids)


def _splash_local(q, k, v, q_segment_ids, kv_segment_ids, causal, interpret):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, tq, h, d = q.shape
    s = k.shape[1]
    tq_p, s_p = _round_up(tq, SPLASH_BLOCK), _round_up(s, SPLASH_BLOCK)
    kernel = _splash_kernel(h, tq_p, s_p, s - tq, bool(causal), bool(interpret))
    qp = jnp.pad(q, ((0, 0), (0, tq_p - tq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)    # [B, H, Tq', D]
    kp = jnp.pad(k, ((0, 0), (0, s_p - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)      # [B, Hkv, S', D]
    vp = jnp.pad(v, ((0, 0), (0, s_p - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    qseg = jnp.pad(q_segment_ids, ((0, 0), (0, tq_p - tq)))
    kvseg = jnp.pad(kv_segment_ids, ((0, 0), (0, s_p - s)))

    def one(q1, k1, v1, qs1, ks1):
        return kernel(q1, k1, v1, segment_ids=sa.SegmentIds(q=qs1, kv=ks1))

    out = jax.vmap(one)(qp, kp, vp, qseg, kvseg)                                        # [B, H, Tq', D]
    return out.transpose(0, 2, 1, 3)[:, :tq].astype(q.dtype)


BATCH_MESH_AXES = ("data", "fsdp")   # jaxr1.parallel.mesh.BATCH_AXES
HEAD_MESH_AXIS = "tensor"


def _batch_shard_map(fn, q, k, v, q_segment_ids, kv_segment_ids):
    """fn(q, k, v, q_seg, kv_seg) on each device's rows (and kv-head groups) when an ambient mesh is set
    (`with jax.set_mesh(mesh):` around tracing): GSPMD cannot partition a pallas call and would otherwise
    gather q/k/v onto every device. Without a mesh (or inside shard_map already) fn runs as is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types):
        return fn(q, k, v, q_segment_ids, kv_segment_ids)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    batch, n = [], 1
    for a in BATCH_MESH_AXES:
        if sizes.get(a, 1) > 1 and q.shape[0] % (n * sizes[a]) == 0:
            batch.append(a)
            n *= sizes[a]
    heads = HEAD_MESH_AXIS if sizes.get(HEAD_MESH_AXIS, 1) > 1 and k.shape[2] % sizes[HEAD_MESH_AXIS] == 0 \
        else None
    if mesh.size == 1:
        return fn(q, k, v, q_segment_ids, kv_segment_ids)
    # Rows that do not split (a micro-batch's prompts, a few image slots) still go through shard_map,
    # replicated: each device runs the kernel on all of them (XLA cannot partition a Mosaic call at all).
    from jax.sharding import PartitionSpec as P
    bspec = tuple(batch) if batch else None
    x = P(bspec, None, heads, None)
    seg = P(bspec, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(x, x, x, seg, seg), out_specs=x,
                         check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)


# ----------------------------------------------------------------------------------------------- cudnn

def _run_bounds(seg: jax.Array):
    """Start and length of the non-zero run of each row of seg [B, T] (assumed contiguous)."""
    valid = seg != 0
    length = valid.sum(axis=1).astype(jnp.int32)
    start = jnp.where(length > 0, jnp.argmax(valid, axis=1), 0).astype(jnp.int32)
    return valid, start, length


def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """out[b, t] = x[b, (t + shift[b]) % T] for x [B, T, ...]."""
    t = x.shape[1]
    idx = (jnp.arange(t)[None, :] + shift[:, None]) % t
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float | None = None):
    """cuDNN flash attention for rows whose non-zero segment ids are one contiguous run (any id; left and/or
    right padding): rows are rolled so the run starts at 0 and cuDNN's padding mask (seq lengths) does the
    rest, no [B, T, S] tensor. Causal needs Tq == S and the same run for q and kv (self-attention)."""
    tq, s = q.shape[1], k.shape[1]
    if causal and tq != s:
        raise ValueError(f"attention(cudnn, causal) needs Tq == S (cuDNN's causal mask is top-left aligned), "
                         f"got {tq} vs {s}; use xla for cached decoding")
    qv, qstart, qlen = _run_bounds(q_segment_ids)
    kvv, kvstart, kvlen = _run_bounds(kv_segment_ids)
    zero = jnp.zeros((), q.dtype)
    # where() (not a multiply) so whatever cuDNN leaves in padding rows, values or gradients, never leaks
    qr = _roll_rows(jnp.where(qv[:, :, None, None], q, zero), qstart)
    kr = _roll_rows(jnp.where(kvv[:, :, None, None], k, zero), kvstart)
    vr = _roll_rows(jnp.where(kvv[:, :, None, None], v, zero), kvstart)
    out = jax.nn.dot_product_attention(qr, kr, vr, scale=scale, is_causal=causal, query_seq_lengths=qlen,
                                       key_value_seq_lengths=kvlen, implementation="cudnn")
    out = _roll_rows(out, -qstart)
    return jnp.where(qv[:, :, None, None], out, zero)


__all__ = ["attention", "resolve_attention", "kernel_block", "segment_mask", "splash_attention",
           "cudnn_attention", "IMPLEMENTATIONS"]
