"""One-call device benchmark (issue #10 item 9): logits parity, sampler throughput, one train micro-step.

    bash scripts/bench_device.sh                                   # on the GPU machine: installs, then all parts
    python scripts/bench_device.py --out benchmarks/device/bench_device.json
    python scripts/bench_device.py --quick --out /tmp/bd.json      # tiny shapes of parts 2 and 3, any device

Parts (each guarded: a failure records its error string in the JSON and the others still run):

  parity   the embedded tiny Qwen2.5-VL (jaxr1.assets.TINY_MODEL_DIR), a left-padded batch with two images
           and a text-only row; logits on the default device vs the same model on JAX's CPU device, in fp32
           and in bf16: max |logit diff| over the valid positions (plus fp32 at matmul precision "highest",
           bf16 vs the fp32 CPU logits, and, when torch + transformers import, fp32 vs transformers).
  sampler  a random Qwen2.5-VL-3B-shaped model in bf16 (jaxr1.models.build), jaxr1.sampling.generate on 64
           text prompts of ~300 tokens, 8 samples each, 512 new tokens (eos_token_ids=() forces all of them),
           timed after a warm-up call (compile + first call reported apart): tokens/s, and the HBM roofline
           fraction: per decode step the text decoder's weights are read once plus the KV cache at the mean
           position (prompt KV once per prompt, each row's own KV at new_tokens/2); roofline time =
           new_tokens * bytes / HBM bandwidth; fraction = roofline time / measured decode time (prefill,
           timed alone, subtracted; if that timing fails, the whole call).
  train    one GRPO micro-step of the 3B shape with jaxr1.rl.learner.Learner (fp32 master weights, bf16
           compute, remat): 2 prompts x 8 samples, prompt 512 + completion 512 tokens, `Learner.grads`
           (forward + backward of the clipped loss) timed after a warm-up call; tokens/s and MFU =
           6 * text params * tokens / time / peak bf16 FLOP/s (tokens: every row's prompt + completion slots,
           which the training forward runs; the remat recompute is not counted). If the Learner API does not
           fit, a plain jax.value_and_grad of the mean completion log-prob (jaxr1.rl.policy) is timed
           instead and the JSON says so ("method").

--quick: the same code with tiny shapes for parts 2 and 3 (2 layers, hidden 256, small vocab), for a CPU check.
HBM bandwidth and peak FLOP/s come from a table by device_kind (H100 SXM 3.35e12 B/s, H200 4.8e12 B/s,
989e12 dense bf16 FLOP/s for both) or --hbm_gbps / --peak_tflops.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root

# device_kind substring -> (HBM bytes/s, dense bf16 FLOP/s); first match wins (PCIe before the SXM name).
DEVICE_TABLE = [
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100 NVL", 3.9e12, 835e12),
    ("H200", 4.8e12, 989e12),
    ("H100", 3.35e12, 989e12),
    ("GH200", 4.0e12, 989e12),
    ("A100-SXM4-80GB", 2.039e12, 312e12),
    ("A100", 1.555e12, 312e12),
]

PARTS = ("parity", "sampler", "train")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def device_info(args) -> dict:
    import jax
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "?")
    bw = peak = None
    for key, b, p in DEVICE_TABLE:
        if key.lower() in kind.lower():
            bw, peak = b, p
            break
    if args.hbm_gbps:
        bw = args.hbm_gbps * 1e9
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    return dict(platform=d.platform, device_kind=kind, num_devices=jax.device_count(),
                hbm_bytes_per_s=bw, peak_bf16_flops=peak)


def block(x):
    import jax
    return jax.block_until_ready(x)


def param_counts(model) -> dict:
    import jax
    from flax import nnx
    state = nnx.state(model, nnx.Param)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    text = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model.language_model, nnx.Param)))
    nbytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model.language_model, nnx.Param)))
    return dict(params_total=total, params_text=text, param_bytes_text=nbytes)


# ------------------------------------------------------------------------------------------------- parity
def image_prompt(text_len: int, grids, rng, cfg) -> list[int]:
    """Random text with each image's <|vision_start|> <|image_pad|>*n <|vision_end|> block (tests/hf_tiny.py)."""
    hi = cfg.text.vocab_size - 150
    merge = cfg.vision.spatial_merge_size ** 2
    ids = list(rng.integers(10, hi, text_len // 2))
    for t, h, w in grids:
        ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // merge) + [cfg.vision_end_token_id]
        ids += list(rng.integers(10, hi, 3))
    ids += list(rng.integers(10, hi, text_len - text_len // 2))
    return [int(i) for i in ids]


def left_pad(rows, pad_id: int = 0):
    t = max(map(len, rows))
    ids = np.full((len(rows), t), pad_id, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = r
        mask[i, t - len(r):] = 1
    return ids, mask


def parity_inputs(cfg, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows_grids = [[(1, 8, 8)], [(1, 4, 6)], []]   # two image rows of different sizes, one text-only row
    ids, mask = left_pad([image_prompt(20 + 7 * i, g, rng, cfg) for i, g in enumerate(rows_grids)])
    grids = [g for gs in rows_grids for g in gs]
    v = cfg.vision
    n = sum(t * h * w for t, h, w in grids)
    pixels = rng.standard_normal((n, v.in_channels * v.temporal_patch_size * v.patch_size ** 2)).astype(np.float32)
    return ids, mask, pixels, np.asarray(grids, np.int64)


def torch_logits(model_dir, ids, mask, pixels, grids):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    try:
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    except TypeError:
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    t_ids = torch.as_tensor(ids)
    with torch.no_grad():
        out = hf(input_ids=t_ids, attention_mask=torch.as_tensor(mask), pixel_values=torch.as_tensor(pixels),
                 image_grid_thw=torch.as_tensor(grids), mm_token_type_ids=(t_ids == hf.config.image_token_id).int())
    return out.logits.float().numpy(), torch.__version__


def run_parity(args, info) -> dict:
    import jax
    from flax import nnx

    from jaxr1 import models
    from jaxr1.assets import TINY_MODEL_DIR
    cpu = jax.devices("cpu")[0]
    cfg = models.config_from_dir(TINY_MODEL_DIR)
    ids, mask, pixels, grids = parity_inputs(cfg)
    valid = mask.astype(bool)

    def logits_on(device, dtype, precision=None):
        import contextlib
        ctx = jax.default_device(device) if device is not None else contextlib.nullcontext()
        prec = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
        with ctx, prec:
            model = models.load_hf(TINY_MODEL_DIR, dtype)
            if device is not None:   # committed to the device: the jitted forward runs there
                graphdef, state = nnx.split(model)
                model = nnx.merge(graphdef, jax.device_put(state, device))
            out = np.asarray(block(model(ids, mask, pixels, grids)), np.float32)
        return out

    def diff(a, b):
        return float(np.abs(a[valid] - b[valid]).max())

    t0 = time.perf_counter()
    res = dict(batch=list(ids.shape), images=grids.tolist(), device=info["device_kind"],
               reference_device=str(cpu.device_kind), default_matmul_precision=str(jax.config.jax_default_matmul_precision))
    ref32 = logits_on(cpu, "float32")
    ref16 = logits_on(cpu, "bfloat16")
    dev32 = logits_on(None, "float32")
    dev16 = logits_on(None, "bfloat16")
    res["logit_abs_max"] = float(np.abs(ref32[valid]).max())
    res["fp32_max_abs_diff"] = diff(dev32, ref32)
    res["bf16_max_abs_diff"] = diff(dev16, ref16)
    res["bf16_vs_cpu_fp32_max_abs_diff"] = diff(dev16, ref32)
    try:
        res["fp32_highest_max_abs_diff"] = diff(logits_on(None, "float32", "highest"), ref32)
    except Exception as e:   # noqa: BLE001
        res["fp32_highest_error"] = f"{type(e).__name__}: {e}"
    res["argmax_agree_fp32"] = float((dev32.argmax(-1) == ref32.argmax(-1))[valid].mean())
    res["argmax_agree_bf16"] = float((dev16.argmax(-1) == ref16.argmax(-1))[valid].mean())
    try:
        hf, torch_version = torch_logits(TINY_MODEL_DIR, ids, mask, pixels, grids)
        res["torch_version"] = torch_version
        res["fp32_vs_transformers_max_abs_diff"] = diff(dev32, hf)
        res["cpu_fp32_vs_transformers_max_abs_diff"] = diff(ref32, hf)
        res["bf16_vs_transformers_max_abs_diff"] = diff(dev16, hf)
    except Exception as e:   # noqa: BLE001  torch parity is optional
        res["transformers_reference"] = f"skipped: {type(e).__name__}: {e}"[:300]
    res["wall_s"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------------------------- models
def bench_config(quick: bool):
    from jaxr1.models.qwen2_5_vl.config import ModelConfig
    cfg = ModelConfig.qwen2_5_vl_3b()
    if not quick:
        return cfg, "qwen2_5_vl_3b"
    text = dataclasses.replace(cfg.text, vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, mrope_section=(8, 12, 12))
    vision = dataclasses.replace(cfg.vision, depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                                 out_hidden_size=256, fullatt_block_indexes=(1,))
    v = text.vocab_size
    return dataclasses.replace(cfg, text=text, vision=vision, image_token_id=v - 1, video_token_id=v - 2,
                               vision_start_token_id=v - 4, vision_end_token_id=v - 3, bos_token_id=None,
                               eos_token_id=None, pad_token_id=0), "quick (3B config cut to 2 layers x 256)"


def set_attention(model, name, dtype, res):
    try:
        from jaxr1.models import set_attention as set_attn
        res["attention"] = set_attn(model, name, dtype=dtype)
    except Exception as e:   # noqa: BLE001
        res["attention_error"] = f"{type(e).__name__}: {e}"


def text_prompts(n: int, length: int, spread: int, vocab: int, seed: int):
    """Text prompts of lengths length-spread .. length+spread, left padded."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(length - spread, length + spread + 1, n)
    return left_pad([list(rng.integers(10, vocab - 200, k)) for k in lens])


# ------------------------------------------------------------------------------------------------- sampler
def run_sampler(args, info) -> dict:
    import jax
    from flax import nnx

    from jaxr1 import models
    from jaxr1.sampling import generate
    cfg, name = bench_config(args.quick)
    q = args.quick
    n_prompts, plen, new, g = (4, 40, 32, 2) if q else (args.prompts, args.prompt_len, args.new_tokens, args.samples)
    res = dict(model=name, dtype="bfloat16", prompts=n_prompts, prompt_len_target=plen, samples=g, new_tokens=new,
               rows=n_prompts * g)
    t0 = time.perf_counter()
    model = models.build(cfg, "bfloat16", rngs=nnx.Rngs(0))
    block(nnx.state(model))
    res["build_s"] = time.perf_counter() - t0
    res.update(param_counts(model))
    set_attention(model, args.attention, "bfloat16", res)
    ids, mask = text_prompts(n_prompts, plen, max(plen // 15, 1), cfg.text.vocab_size, 0)
    res["prompt_slots"] = int(ids.shape[1])
    res["prompt_tokens_mean"] = float(mask.sum(1).mean())

    def call(seed):
        out = generate(model, ids, mask, max_new_tokens=new, num_generations=g, temperature=1.0, eos_token_ids=(),
                       seed=seed, layer_loop=args.layer_loop)
        return block(out)

    t0 = time.perf_counter()
    call(0)
    res["compile_and_first_call_s"] = time.perf_counter() - t0
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        out = call(1 + r)
        times.append(time.perf_counter() - t0)
    lengths = np.asarray(out.lengths)
    tokens = int(lengths.sum())
    res["call_s"] = min(times)
    res["call_s_all"] = times
    res["tokens_generated"] = tokens
    res["all_rows_full_length"] = bool((lengths == new).all())
    res["tokens_per_s"] = tokens / res["call_s"]

    # Prefill alone (the same jitted program generate runs), to isolate the decode loop.
    prefill_s = None
    try:
        from jaxr1.sampling import make_spec, prepare_prompts
        from jaxr1.sampling.sampler import prefill_fn
        spec = make_spec(cfg, max_new_tokens=new, temperature=1.0, num_generations=g, eos_token_ids=(),
                         layer_loop=args.layer_loop)
        batch = prepare_prompts(cfg, ids, mask, pad_token_id=spec.pad_token_id)
        graphdef, params = nnx.split(model)
        pf = lambda: block(prefill_fn(graphdef, params, batch, jax.random.key(0), new, 1.0, 1.0, spec=spec))
        pf()
        pts = []
        for _ in range(max(args.repeats, 2)):
            t0 = time.perf_counter()
            pf()
            pts.append(time.perf_counter() - t0)
        prefill_s = min(pts)
        res["prefill_s"] = prefill_s
        res["windows"] = list(spec.windows)
        res["prompt_slots_bucketed"] = int(batch.inputs.input_ids.shape[1])
    except Exception as e:   # noqa: BLE001
        res["prefill_error"] = f"{type(e).__name__}: {e}"[:300]
    decode_s = res["call_s"] - prefill_s if prefill_s is not None and prefill_s < res["call_s"] else res["call_s"]
    res["decode_s"] = decode_s
    res["decode_ms_per_step"] = 1e3 * decode_s / new
    res["decode_tokens_per_s"] = tokens / decode_s

    # HBM roofline of the decode loop.
    t = cfg.text
    kv_per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * 2   # K + V, bf16
    prompt_kv = int(mask.sum()) * kv_per_token   # the valid prompt tokens' KV, read once per prompt
    own_kv_mean = n_prompts * g * (new / 2) * kv_per_token
    step_bytes = res["param_bytes_text"] + prompt_kv + own_kv_mean
    res.update(kv_bytes_per_token=kv_per_token, prompt_kv_bytes=prompt_kv, own_kv_bytes_mean=own_kv_mean,
               step_bytes_mean=step_bytes)
    if "windows" in res:   # what the live-window cache actually reads: the whole segment a step sits in
        win = np.array([next(w for w in res["windows"] if w >= s + 1) for s in range(new)])
        res["own_kv_bytes_mean_live_window"] = float(n_prompts * g * win.mean() * kv_per_token)
    bw = info["hbm_bytes_per_s"]
    res["hbm_bytes_per_s"] = bw
    if bw:
        res["roofline_step_ms"] = 1e3 * step_bytes / bw
        res["roofline_decode_s"] = new * step_bytes / bw
        res["roofline_fraction"] = res["roofline_decode_s"] / decode_s
        res["roofline_tokens_per_s"] = tokens / res["roofline_decode_s"]
    return res


# ------------------------------------------------------------------------------------------------- train
def run_train(args, info) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1 import models
    cfg, name = bench_config(args.quick)
    b, g, tp, tc = (2, 2, 32, 32) if args.quick else (args.train_prompts, args.samples, args.train_prompt_len,
                                                    args.train_completion_len)
    res = dict(model=name, master_dtype="float32", compute_dtype="bfloat16", remat=True, prompts=b, samples=g,
               prompt_len=tp, completion_len=tc, rows=b * g)
    t0 = time.perf_counter()
    model = models.build(cfg, "float32", rngs=nnx.Rngs(0))
    block(nnx.state(model))
    res["build_s"] = time.perf_counter() - t0
    res.update(param_counts(model))
    set_attention(model, args.attention, "bfloat16", res)
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(10, cfg.text.vocab_size - 200, (b, tp)).astype(np.int64)
    prompt_mask = np.ones_like(prompt_ids)
    completions = rng.integers(10, cfg.text.vocab_size - 200, (b * g, tc)).astype(np.int32)
    cmask = np.ones((b * g, tc), np.int32)
    adv = np.linspace(-1, 1, b * g).astype(np.float32)
    tokens = b * g * (tp + tc)
    res["tokens_per_step"] = tokens

    def timed(fn):
        t0 = time.perf_counter()
        block(fn())
        first = time.perf_counter() - t0
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            block(fn())
            ts.append(time.perf_counter() - t0)
        return first, ts

    try:
        from jaxr1.config import OptimConfig, RLConfig
        from jaxr1.rl.learner import Learner, MicroBatch
        from jaxr1.rl.losses import compute_loss_normalizer
        from jaxr1.models.inputs import PromptArrays, model_inputs
        rl = RLConfig(num_generations=g, max_completion_length=tc)
        learner = Learner(model, rl, OptimConfig(), 10, compute_dtype="bfloat16", remat=True)
        state = learner.init(model)   # shares the model's arrays (no copy)
        if args.train_method == "fallback":
            raise RuntimeError("--train_method fallback")
        inputs, deltas = model_inputs(cfg, PromptArrays(prompt_ids, prompt_mask))
        mb = MicroBatch(inputs, deltas, completions, cmask, adv)
        norm = float(compute_loss_normalizer(cmask, rl.loss_aggregation))
        first, ts = timed(lambda: learner.grads(state.params, mb, norm)[0])
        res["method"] = "jaxr1.rl.learner.Learner.grads (clipped GRPO loss, on-policy)"
        try:   # the optimizer update alone (AdamW + clip over the fp32 master weights), for context
            grads = block(learner.grads(state.params, mb, norm)[0])
            t0 = time.perf_counter()
            state, _, _ = block(learner.apply(state, grads))
            res["apply_compile_and_first_s"] = time.perf_counter() - t0
            grads = block(learner.grads(state.params, mb, norm)[0])
            t0 = time.perf_counter()
            state, _, _ = block(learner.apply(state, grads))
            res["apply_s"] = time.perf_counter() - t0
        except Exception as e:   # noqa: BLE001
            res["apply_error"] = f"{type(e).__name__}: {e}"[:300]
    except Exception as e:   # noqa: BLE001  the learner API moved: time the plain gradient instead
        res["learner_error"] = f"{type(e).__name__}: {e}"[:500]
        from jaxr1.models.qwen2_5_vl import prepare_inputs
        from jaxr1.rl.policy import completion_logprobs
        graphdef, params = nnx.split(model, nnx.Param)
        inputs, deltas = prepare_inputs(cfg, prompt_ids, prompt_mask)

        @jax.jit
        def grads_fn(params, inputs, deltas, comps, m):
            def loss(p):
                p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, p)
                mdl = nnx.merge(graphdef, p16)
                lp, _ = completion_logprobs(mdl, inputs, deltas, comps, m, remat=True)
                return (lp * m).sum() / m.sum()
            return jax.value_and_grad(loss)(params)

        first, ts = timed(lambda: grads_fn(params, inputs, jnp.asarray(deltas), completions, cmask)[1])
        res["method"] = "fallback: jax.value_and_grad of the mean completion log-prob (jaxr1.rl.policy)"
    res["compile_and_first_call_s"] = first
    res["step_s"] = min(ts)
    res["step_s_all"] = ts
    res["tokens_per_s"] = tokens / res["step_s"]
    res["completion_tokens_per_s"] = b * g * tc / res["step_s"]
    res["model_flops_per_step"] = 6 * res["params_text"] * tokens
    peak = info["peak_bf16_flops"]
    res["peak_bf16_flops"] = peak
    res["mfu"] = res["model_flops_per_step"] / res["step_s"] / peak if peak else None
    return res


# ------------------------------------------------------------------------------------------------- report
def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(data: dict) -> str:
    m = data.get("meta", {})
    lines = [f"bench_device: {m.get('device_kind')} ({m.get('platform')}), jax {m.get('jax_version')}, "
             f"{m.get('date')}{' [quick]' if m.get('quick') else ''}"]
    p = data.get("parity", {})
    if "error" in p:
        lines.append(f"  parity   ERROR {p['error']}")
    elif p:
        t = p.get("fp32_vs_transformers_max_abs_diff")
        lines.append(f"  parity   max|dlogit| vs CPU: fp32 {fmt(p.get('fp32_max_abs_diff'), '.2e')} "
                     f"(precision highest {fmt(p.get('fp32_highest_max_abs_diff'), '.2e')}), bf16 "
                     f"{fmt(p.get('bf16_max_abs_diff'), '.2e')} (bf16 vs CPU fp32 "
                     f"{fmt(p.get('bf16_vs_cpu_fp32_max_abs_diff'), '.2e')}); |logit| max "
                     f"{fmt(p.get('logit_abs_max'), '.2f')}; vs transformers fp32 {fmt(t, '.2e')}")
    s = data.get("sampler", {})
    if "error" in s:
        lines.append(f"  sampler  ERROR {s['error']}")
    elif s:
        lines.append(f"  sampler  {s['model']}: {s['prompts']} prompts x {s['samples']} x {s['new_tokens']} new: "
                     f"{fmt(s.get('tokens_per_s'), ',.0f')} tok/s (call {fmt(s.get('call_s'), '.2f')} s, prefill "
                     f"{fmt(s.get('prefill_s'), '.3f')} s, decode {fmt(s.get('decode_ms_per_step'), '.2f')} ms/step); "
                     f"roofline {fmt(s.get('roofline_step_ms'), '.2f')} ms/step -> "
                     f"{fmt(s.get('roofline_fraction') and 100 * s['roofline_fraction'], '.0f')}% of HBM roofline; "
                     f"compile+first {fmt(s.get('compile_and_first_call_s'), '.1f')} s")
    t = data.get("train", {})
    if "error" in t:
        lines.append(f"  train    ERROR {t['error']}")
    elif t:
        lines.append(f"  train    {t['model']}: {t['prompts']}x{t['samples']} rows x ({t['prompt_len']}+"
                     f"{t['completion_len']}) tokens: step {fmt(t.get('step_s'), '.3f')} s, "
                     f"{fmt(t.get('tokens_per_s'), ',.0f')} tok/s, MFU "
                     f"{fmt(t.get('mfu') and 100 * t['mfu'], '.1f')}%; optimizer apply "
                     f"{fmt(t.get('apply_s'), '.3f')} s; compile+first {fmt(t.get('compile_and_first_call_s'), '.1f')} s"
                     f" [{t.get('method', '')[:40]}]")
    return "\n".join(lines)


def load(path):
    if path and os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "benchmarks/device"), "bench_device.json"))
    ap.add_argument("--part", action="append", choices=PARTS, help="run only these parts (repeatable; default all)")
    ap.add_argument("--merge", action="store_true", help="update --out in place (keep the parts not run now)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes for parts 2 and 3 (CPU check)")
    ap.add_argument("--record-error", nargs=2, metavar=("PART", "MESSAGE"),
                    help="only write MESSAGE as PART's error into --out (the shell's timeout guard)")
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    ap.add_argument("--hbm_gbps", type=float, default=None, help="HBM bandwidth in GB/s (overrides the table)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (overrides the table)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt_len", type=int, default=300)
    ap.add_argument("--new_tokens", type=int, default=512)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--train_prompts", type=int, default=2)
    ap.add_argument("--train_prompt_len", type=int, default=512)
    ap.add_argument("--train_completion_len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (min is reported)")
    ap.add_argument("--attention", default="auto", help="model.attention (auto | xla | cudnn)")
    ap.add_argument("--train_method", default="learner", choices=["learner", "fallback"],
                    help="fallback: time the plain value_and_grad of the mean completion log-prob")
    ap.add_argument("--layer_loop", default="unroll", choices=["unroll", "scan"])
    args = ap.parse_args()

    if args.table:
        print(table(load(args.out)))
        return
    data = load(args.out) if (args.merge or args.record_error) else {}
    if args.record_error:
        part, msg = args.record_error
        data[part] = {"error": msg, "date": now()}
        save(args.out, data)
        print(f"{part}: {msg}")
        return

    import jax
    info = device_info(args)
    data["meta"] = dict(data.get("meta", {}), **info, jax_version=jax.__version__,
                        jaxlib_version=getattr(__import__("jaxlib"), "__version__", "?"), date=now(),
                        quick=args.quick, host=platform.node(), python=platform.python_version(),
                        argv=sys.argv[1:])
    print(f"device: {info['device_kind']} ({info['platform']}, {info['num_devices']} device(s)); jax {jax.__version__}; "
          f"HBM {info['hbm_bytes_per_s']} B/s, peak bf16 {info['peak_bf16_flops']} FLOP/s", flush=True)
    runners = dict(parity=run_parity, sampler=run_sampler, train=run_train)
    for part in args.part or PARTS:
        t0 = time.perf_counter()
        print(f"[{part}] ...", flush=True)
        try:
            res = runners[part](args, info)
        except Exception as e:   # noqa: BLE001  one failure must not lose the other parts
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"[:2000]}
        res["part_wall_s"] = time.perf_counter() - t0
        res["date"] = now()
        data[part] = res
        save(args.out, data)   # after every part: a later crash or timeout keeps what was measured
        print(f"[{part}] done in {res['part_wall_s']:.1f} s", flush=True)
    print(table(data))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
