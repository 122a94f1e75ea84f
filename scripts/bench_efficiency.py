"""How much of the GRPO step's work is necessary: executed / necessary FLOPs at a realistic VLM-RL shape.

    python scripts/bench_efficiency.py                  # 3B-shaped (abstract) and the 61M CPU preset
    python scripts/bench_efficiency.py --seeds 0 1 2    # more length draws
    python scripts/bench_efficiency.py --timed realistic --skip-3b   # + the timed GRPO step vs TRL (CPU, long)

The shape: 8 prompts, each one 448 x 448 image (a 32 x 32 patch grid: 256 image tokens) and 40-90 text
tokens, left padded to a multiple of 64; G = 8 samples; max_completion_length 512; completion lengths drawn
long-tailed (lognormal, mean ~120, capped at 512), the same draw for every variant.

Executed: the matmul FLOPs of the program each variant traces (jaxr1.flops.dot_flops: every layer of the
scan counted, padding and masked attention blocks included; remat off). Train step = value_and_grad of the
completion log-probs (the loss's own work is elementwise). Decode = the sampler's prefill plus its
decode-loop schedule (segments of 64, 128, ... cache slots; the rows still live after each segment are
compacted as `jaxr1.sampling.sampler.compaction_plan` regroups them, or, "no compaction", every row runs
until the longest stops), counted per step from the model's sizes (jaxr1.flops.decoder_flops). The 61M
preset also times the rollout both ways, each row stopped at its drawn length.
Necessary: each prompt once at its real length, each completion to its own length, attention over the
real causal context only; forward + backward = 3 x forward; the vision tower once per image as executed.
Timed (--timed small|realistic|both): whole GRPO steps of `python -m jaxr1.train` and TRL's GRPOTrainer on
the 61M preset, interleaved one step at a time with the lengths forced through EOS (scripts/interleaved_steps.py):
"realistic" is the shape above (TRL in micro-batches of 16 rows to fit 24 GiB), "small" is
scripts/bench_grpo_step.py's (4 prompts, one 224px image each, G = 8, 64 tokens, every completion at the limit).
Variants: "repeated" (the prompt once per completion, padded to max_completion_length: the first CPU
version), "shared + trimmed" (rl.shared_prompt, rl.trim_completions), "shared + packed" (+
rl.pack_completions, the default).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROMPTS, G, MAX_LEN, SIDE = 8, 8, 512, 32


def draw_lengths(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(rng.lognormal(np.log(90), 0.75, PROMPTS * G).astype(int) + 1, MAX_LEN)


def prompt_batch(mcfg, seed: int, pad_multiple: int = 64):
    """Host ids / mask / pixels of PROMPTS prompts with one SIDE x SIDE-patch image each (the pipeline's
    layout: left padding, <|vision_start|> image pads <|vision_end|> inside the text)."""
    rng = np.random.default_rng(seed + 1000)
    n_img = SIDE * SIDE // mcfg.vision.merge_unit
    real = n_img + 2 + rng.integers(40, 91, PROMPTS)
    tp = -(-int(real.max()) // pad_multiple) * pad_multiple
    ids = np.zeros((PROMPTS, tp), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(real):
        row = rng.integers(10, 500, n).astype(np.int32)
        at = 20   # the image follows the system prompt
        row[at] = mcfg.vision_start_token_id
        row[at + 1: at + 1 + n_img] = mcfg.image_token_id
        row[at + 1 + n_img] = mcfg.vision_end_token_id
        ids[i, tp - n:], mask[i, tp - n:] = row, 1
    pv = np.zeros((PROMPTS * SIDE * SIDE, mcfg.vision.patch_dim), np.float32)
    grids = np.tile([[1, SIDE, SIDE]], (PROMPTS, 1))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grids), real


def variants(lengths: np.ndarray, mcfg, prompt_len: int):
    """{name: (shared prompt, completion slots, PackedRows)} and the packed layouts {name: (L, R, K)}; the
    packed ones as rl.step packs them (cost by jaxr1.rl.pack.key_cost), one prompt a row and up to two."""
    from jaxr1.rl.pack import choose_layout, key_cost, pack
    from jaxr1.rl.trim import trimmed_length
    tokens = np.ones((len(lengths), MAX_LEN), np.int32)
    trimmed = trimmed_length(lengths, MAX_LEN)
    out = {"repeated": (False, MAX_LEN, None), "shared + trimmed": (True, trimmed, None)}
    layouts = {}
    for name, most in (("packed, 1 prompt/row", 1), ("shared + packed", 2)):
        L, R, K = choose_layout([lengths], G, int(lengths.max()), MAX_LEN, 1, prompt_len=prompt_len,
                                key_cost=key_cost(mcfg.text), max_prompts=most)
        t = min(L, MAX_LEN)
        out[name] = (True, t, pack(tokens[:, :t], lengths, G, L, R, K))
        layouts[name] = (L, R, K)
    return out, layouts


def train_flops(model, mcfg, batch, lengths) -> tuple[dict, float, tuple]:
    """Executed FLOPs per variant, and the vision tower's forward FLOPs."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1.flops import dot_flops
    from jaxr1.rl.policy import completion_logprobs
    from jaxr1.models.inputs import PromptArrays, model_inputs
    inputs, deltas = model_inputs(mcfg, PromptArrays(**batch), patches_per_slot=SIDE * SIDE)
    graphdef, params = nnx.split(model, nnx.Param)
    out = {}
    specs, layout = variants(lengths, mcfg, batch["input_ids"].shape[1])
    for name, (shared, t, packed) in specs.items():
        comp = jnp.ones((len(lengths), t), jnp.int32)
        mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)

        def loss(p):
            lp, _ = completion_logprobs(nnx.merge(graphdef, p), inputs, deltas, comp, mask, shared_prompt=shared,
                                        packed=packed)
            return (lp * mask).sum()
        out[name] = dot_flops(jax.value_and_grad(loss), params)
    vision = dot_flops(lambda p: nnx.merge(graphdef, p).encode_images(inputs.vision), params)
    if getattr(inputs.vision, "window_slots", None) is not None:   # window layers over the masked slot instead
        import dataclasses
        masked = dataclasses.replace(inputs.vision, window_slots=None)
        whole = dot_flops(lambda p: nnx.merge(graphdef, p).encode_images(masked), params)
        print(f"  vision tower forward {vision:.3e} FLOPs with windows as blocks, {whole:.3e} over the masked "
              f"slot ({whole / vision:.2f}x)")
    return out, vision, layout


def timed_train(model, mcfg, batch, lengths, repeats: int) -> dict:
    """Seconds per call (best of `repeats`, after a compiling call) of the log-prob forward and of its
    value_and_grad for the default layout (shared + packed; remat off): the backward's cost against the
    forward's. (The unpacked 64 x 512 rows do not fit this machine's 24 GiB with fp32 attention scores.)"""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1.rl.policy import completion_logprobs
    from jaxr1.models.inputs import PromptArrays, model_inputs
    inputs, deltas = model_inputs(mcfg, PromptArrays(**batch), patches_per_slot=SIDE * SIDE)
    graphdef, params = nnx.split(model, nnx.Param)
    out = {}
    for name, (shared, t, packed) in variants(lengths, mcfg, batch["input_ids"].shape[1])[0].items():
        if name != "shared + packed":
            continue
        comp = jnp.ones((len(lengths), t), jnp.int32)
        mask = jnp.asarray((np.arange(t)[None] < lengths[:, None]).astype(np.int32))

        def loss(p, inputs, comp, mask, packed):
            lp, _ = completion_logprobs(nnx.merge(graphdef, p), inputs, deltas, comp, mask, shared_prompt=shared,
                                        packed=packed)
            return (lp * mask).sum()
        times = {}
        for kind, fn in (("forward", jax.jit(loss)), ("forward+backward", jax.jit(jax.value_and_grad(loss)))):
            jax.block_until_ready(fn(params, inputs, comp, mask, packed))
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, inputs, comp, mask, packed))
                best = min(best, time.perf_counter() - t0)
            times[kind] = best
        out[name] = times
    return out


def timed_decode(model, batch, lengths, repeats: int) -> dict:
    """Seconds per rollout (prefill + decode, best of `repeats` after a compiling call) with and without
    compaction of finished rows, each row stopped at its drawn length (the sampler's stop bookkeeping is
    wrapped for this process only: a row is done once it holds its target count; no EOS otherwise)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxr1.sampling import generate, sampler
    real_record, target = sampler._record, jnp.asarray(lengths, jnp.int32)

    def forced(s, spec, token, lp, slp, gen):
        out = real_record(s, spec, token, lp, slp, gen)
        stop = ~out.done & (out.lengths >= target[jnp.maximum(out.row_id, 0)])
        return dataclasses.replace(out, done=out.done | stop,
                                   stop_reason=jnp.where(stop, sampler.STOP_EOS, out.stop_reason))
    sampler._record = forced
    times = {}
    try:
        for compact in (False, True):
            run = lambda: generate(model, **batch, max_new_tokens=MAX_LEN, temperature=1.0, num_generations=G,
                                   eos_token_ids=(), seed=0, compact=compact)
            out = jax.block_until_ready(run())
            np.testing.assert_array_equal(np.asarray(out.lengths), lengths)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(run())
                best = min(best, time.perf_counter() - t0)
            times[compact] = best
    finally:
        sampler._record = real_record
    return times


def necessary_train(mcfg, prompt_lengths, lengths, vision) -> float:
    from jaxr1.flops import decoder_flops
    f = decoder_flops(mcfg.text)
    fwd = vision
    for p, P in enumerate(prompt_lengths):
        fwd += P * f["token"] + f["pair"] * P * (P + 1) / 2
        for n in lengths[p * G:(p + 1) * G]:
            fwd += n * (f["token"] + f["logit"]) + f["pair"] * (n * P + n * (n + 1) / 2)
    return 3.0 * fwd


def decode_schedule(lengths: np.ndarray, windows, compact: bool) -> list[tuple[int, int, int]]:
    """(window, decode steps, rows) of each segment the sampler runs for these completion lengths: every row
    until the longest stops, or (compact) the rows sampler.compaction_plan keeps after each segment."""
    from jaxr1.sampling.sampler import compaction_plan
    out, lo, n = [], 0, G
    steps, group_prompt = int(lengths.max()) - 1, np.arange(len(lengths) // G)   # token 0 comes from the prefill
    for w in windows:
        if lo >= steps:
            break
        out.append((w, min(w, steps) - lo, len(group_prompt) * n))
        lo = w
        # After window w each row has made w + 1 tokens (token 0 in the prefill): done once that holds it.
        plan = compaction_plan(lengths <= w + 1, group_prompt, n) if compact else None
        if plan is not None:   # the kept rows' lengths, in their new places (padding rows: 0, done)
            src_rows, _, group_prompt, n = plan
            lengths = np.where(src_rows >= 0, lengths[np.maximum(src_rows, 0)], 0)
    return out


def decode_flops(mcfg, prompt_lengths, tp, lengths, vision, compact: bool = True) -> tuple[float, float]:
    """(executed, necessary) FLOPs of a rollout: prefill + decode loop (see the module docstring)."""
    from jaxr1.flops import decoder_flops
    from jaxr1.sampling.sampler import DecodeSpec
    f = decoder_flops(mcfg.text)
    windows = DecodeSpec(mode=None, num_generations=G, gen_len=MAX_LEN, eos_token_ids=(), pad_token_id=0).windows
    executed = vision + PROMPTS * (tp * f["token"] + f["pair"] * tp * tp + f["logit"])   # XLA prefill: T x T
    executed += sum(steps * r * (f["token"] + f["logit"] + f["pair"] * (tp + w))
                    for w, steps, r in decode_schedule(lengths, windows, compact))
    necessary = vision
    for p, P in enumerate(prompt_lengths):
        necessary += P * f["token"] + f["pair"] * P * (P + 1) / 2 + f["logit"]
        for n in lengths[p * G:(p + 1) * G]:
            k = n - 1
            necessary += k * (f["token"] + f["logit"]) + f["pair"] * (k * P + k * (k + 1) / 2)
    return executed, necessary


def report(title, model, mcfg, seeds, timed_repeats: int = 0):
    print(f"\n== {title}")
    rows = {}
    for seed in seeds:
        lengths = draw_lengths(seed)
        batch, real = prompt_batch(mcfg, seed)
        t0 = time.time()
        executed, vision, layouts = train_flops(model, mcfg, batch, lengths)
        need = necessary_train(mcfg, real, lengths, vision)
        d_exec, d_need = decode_flops(mcfg, real, batch["input_ids"].shape[1], lengths, vision)
        d_full, _ = decode_flops(mcfg, real, batch["input_ids"].shape[1], lengths, vision, compact=False)
        print(f"seed {seed}: completion lengths mean {lengths.mean():.0f}, max {lengths.max()}, sum {lengths.sum()}; "
              f"prompts {real.min()}-{real.max()} tokens (padded {batch['input_ids'].shape[1]}); packed into " + ", ".join(
                  f"{R} rows x {L} of <= {K} prompts ({lengths.sum() / (R * L):.0%} full)"
                  for L, R, K in layouts.values()) + f"; traced in {time.time() - t0:.0f} s")
        print(f"  train step necessary {need:.3e} FLOPs")
        for name, x in executed.items():
            print(f"  train step {name:<17} executed {x:.3e}  executed/necessary {x / need:.2f}")
            rows.setdefault(name, []).append(x / need)
        print(f"  decode (rollout)             executed {d_exec:.3e}  necessary {d_need:.3e}  "
              f"executed/necessary {d_exec / d_need:.2f} (without compaction of finished rows {d_full / d_need:.2f})")
        rows.setdefault("decode", []).append(d_exec / d_need)
        rows.setdefault("decode, no compaction", []).append(d_full / d_need)
    print("  mean over seeds: " + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in rows.items()))
    if timed_repeats:
        lengths = draw_lengths(seeds[0])
        batch, _ = prompt_batch(mcfg, seeds[0])
        print(f"  timed on this CPU (seed {seeds[0]}, best of {timed_repeats}, load {os.getloadavg()[0]:.1f}):")
        for name, t in timed_train(model, mcfg, batch, lengths, timed_repeats).items():
            print(f"    {name:<17} forward {t['forward']:.2f} s, forward+backward {t['forward+backward']:.2f} s: "
                  f"{t['forward+backward'] / t['forward']:.2f}x the forward")
        t = timed_decode(model, batch, lengths, timed_repeats)
        print(f"    rollout (prefill + decode, {len(lengths)} rows to their own lengths): all rows to the longest "
              f"{t[False]:.2f} s, finished rows compacted {t[True]:.2f} s: {t[False] / t[True]:.2f}x")
    return rows


def timed_steps(which: str, steps: int):
    import tempfile

    from bench_grpo_step import make_model_dir
    from interleaved_steps import Shape, interleave
    from jaxr1.data import write_synthetic_dataset
    shape = Shape(PROMPTS, G, MAX_LEN, trl_micro_rows=16) if which == "realistic" else Shape(4, 8, 64)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir("small", os.path.join(tmp, "model"), 0)
        if which == "realistic":   # 448 x 448 images stay 448 x 448: 32 x 32 patches, 256 image tokens
            import json
            path = os.path.join(model_dir, "preprocessor_config.json")
            with open(path) as f:
                pre = json.load(f)
            pre.update(max_pixels=448 * 448, size={"shortest_edge": 3136, "longest_edge": 448 * 448})
            with open(path, "w") as f:
                json.dump(pre, f)
        data = write_synthetic_dataset(os.path.join(tmp, "data"), shape.prompts * (steps + 1) * 2, seed=0,
                                       **({"size": (448, 448)} if which == "realistic" else {}))
        lengths = [draw_lengths(k) if which == "realistic" else np.full(shape.prompts * shape.generations, 64)
                   for k in range(steps + 1)]
        print(f"\n== timed GRPO steps, {which} shape: {shape}; lengths forced per step (mean "
              f"{np.mean([x.mean() for x in lengths]):.0f}); load {os.getloadavg()[0]:.1f}", flush=True)
        out = interleave(model_dir, data, tmp, shape, lengths, log=lambda m: print(m, flush=True))
    j, t = out["jaxr1"][1:], out["trl"][1:]
    js, ts = np.mean([r["wall"] for r in j]), np.mean([r["wall"] for r in t])
    print(f"  TRL: {out['trl_versions']}; torch threads per timed step {[r['threads'] for r in t]}")
    print(f"  jaxr1 {js:.1f} s/step (sample {np.mean([r['sample'] for r in j]):.1f}, train "
          f"{np.mean([r['train'] for r in j]):.1f}; warm-up {out['jaxr1'][0]['wall']:.1f}); TRL {ts:.1f} s/step "
          f"(generate {np.mean([r['sample'] for r in t]):.1f}); completion length jaxr1 "
          f"{np.mean([r['length'] for r in j]):.1f} / TRL {np.mean([r['length'] for r in t]):.1f}")
    print(f"  jaxr1 speedup (TRL s/step / jaxr1 s/step): {ts / js:.2f}x (target >= 3x); load "
          f"{os.getloadavg()[0]:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--skip-3b", action="store_true")
    ap.add_argument("--skip-61m", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per program (61M preset; 0: no timing)")
    ap.add_argument("--timed", choices=["none", "small", "realistic", "both"], default="none",
                    help="also time whole GRPO steps against TRL (minutes per step on a CPU)")
    ap.add_argument("--steps", type=int, default=2, help="timed GRPO steps per side after one warm-up step")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from flax import nnx

    from jaxr1.dry_run import model_config
    from jaxr1.models import build
    print(f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"shape: {PROMPTS} prompts x one 448px image, G = {G}, max_completion_length {MAX_LEN}, lengths "
          f"lognormal(mean ~120) capped at {MAX_LEN}; remat off")
    mcfg = model_config("Qwen/Qwen2.5-VL-3B-Instruct")
    if not args.skip_3b:
        report("Qwen2.5-VL-3B shape (abstract: traced, nothing allocated)",
               nnx.eval_shape(lambda: build(mcfg, "bfloat16")), mcfg, args.seeds)
    if not args.skip_61m:
        import tempfile

        from jaxr1 import models
        from bench_grpo_step import make_model_dir
        with tempfile.TemporaryDirectory() as tmp:
            model = models.load_hf(make_model_dir("small", os.path.join(tmp, "m"), 0))
        report("61M CPU preset (scripts/bench_grpo_step.py small; concrete weights)", model, model.config, args.seeds,
               timed_repeats=args.repeats)
    for which in {"none": [], "both": ["small", "realistic"]}.get(args.timed, [args.timed]):
        timed_steps(which, args.steps)


if __name__ == "__main__":
    main()
