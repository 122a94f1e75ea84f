"""Decode cost against the position: attention over the live window of the per-row cache vs the whole buffer.

    python scripts/bench_decode.py                        # CPU, the 61M "small" model of bench_grpo_step.py
    python scripts/bench_decode.py --prompts 4 --samples 8 --repeats 3

One invocation, one process, both behaviours of the same sampler (`make_spec(..., live_window=False)`: every
step attends over all gen_len slots, masked past the current one; `live_window=True`: the cache grows by
power-of-two segments and a step at position p reads at most 2p slots (min_window at least)):

  1. per-step decode time at positions 64 and 960 of a max_new_tokens=1024 buffer: the decode program is
     started from a prefilled state with `step` set to the position (the skipped slots hold zeros; a step
     costs the same whatever they hold), timed for K1 and K2 steps; per step = (t(K2) - t(K1)) / (K2 - K1),
     which cancels the fixed cost of a call (dispatch, growing the cache to the position's window);
  2. total decode time of one rollout at max_new_tokens=512 whose completion lengths are long tailed: the
     random model samples at temperature 1 and `--eos-fraction` of the vocabulary (a fixed random set) ends
     a row, so lengths are about geometric (printed: mean, median, max). Both behaviours sample the same
     tokens (checked). Also printed: the share of row-steps that are live (a row past its EOS still costs a
     full step until every row has stopped), i.e. what compacting stopped rows could save at most.

Every figure printed is measured in this run (min over --repeats); compile times are reported apart.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

# The "small" preset of scripts/bench_grpo_step.py (~61M parameters with its vision tower).
SMALL = dict(text=dict(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12),
                       rope_theta=10000.0, max_position_embeddings=4096),
             vision=dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, window_size=112,
                         fullatt_block_indexes=(1, 3)))


def build_model(seed: int, dtype: str):
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, TextConfig, VisionConfig
    text = TextConfig(**SMALL["text"])
    v = text.vocab_size
    cfg = ModelConfig(text=text, vision=VisionConfig(**SMALL["vision"], out_hidden_size=text.hidden_size),
                      tie_word_embeddings=False, image_token_id=v - 1, video_token_id=v - 2,
                      vision_start_token_id=v - 4, vision_end_token_id=v - 3, bos_token_id=None,
                      eos_token_id=None, pad_token_id=0)
    return Qwen2_5_VL(cfg, jnp.dtype(dtype), nnx.Rngs(seed))


def make_prompts(batch: int, length: int, seed: int):
    """Text prompts of different lengths (left padding on), as a tokenizer emits them."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int64)
    mask = np.zeros((batch, length), np.int64)
    for i in range(batch):
        n = length - 3 * i
        ids[i, length - n:], mask[i, length - n:] = rng.integers(10, 5000, n), 1
    return ids, mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8, help="rows per prompt (G)")
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--positions", type=int, nargs="+", default=[64, 960])
    ap.add_argument("--step-buffer", type=int, default=1024, help="max_new_tokens of the per-step figures")
    ap.add_argument("--steps", type=int, nargs=2, default=[4, 28], metavar=("K1", "K2"))
    ap.add_argument("--tail-tokens", type=int, default=512, help="max_new_tokens of the long-tailed rollout")
    ap.add_argument("--eos-fraction", type=float, default=1 / 140, help="share of the vocabulary that ends a row")
    ap.add_argument("--min-window", type=int, default=64)
    ap.add_argument("--layer-loop", default="unroll", choices=["unroll", "scan"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1.sampling import make_spec, prepare_prompts
    from jaxr1.sampling.sampler import TRACES, decode_fn, prefill_fn

    model = build_model(args.seed, args.dtype)
    cfg = model.config
    graphdef, params = nnx.split(model)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    ids, mask = make_prompts(args.prompts, args.prompt_len, args.seed)
    batch = prepare_prompts(cfg, ids, mask)
    rows = args.prompts * args.samples
    t = cfg.text
    print(f"model: {n_params / 1e6:.0f}M parameters, text {t.num_hidden_layers} x {t.hidden_size} (ffn "
          f"{t.intermediate_size}, heads {t.num_attention_heads}/{t.num_key_value_heads}, head_dim {t.head_dim}), "
          f"vocab {t.vocab_size}; {args.dtype}, layer_loop {args.layer_loop}; {jax.devices()[0].platform}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    print(f"rollout: {args.prompts} prompts ({batch.inputs.input_ids.shape[1]} slots) x {args.samples} samples = "
          f"{rows} rows; min_window {args.min_window}")

    def spec_for(new_tokens, live, eos=()):
        return make_spec(cfg, max_new_tokens=new_tokens, temperature=1.0, num_generations=args.samples,
                         eos_token_ids=eos, layer_loop=args.layer_loop, live_window=live,
                         min_window=args.min_window)

    def prefill(spec, new_tokens, seed):
        s = prefill_fn(graphdef, params, batch, jax.random.key(seed), new_tokens, 1.0, 1.0, spec=spec)
        return jax.block_until_ready(s)

    def timed_decode(spec, state):
        t0 = time.perf_counter()
        out = jax.block_until_ready(decode_fn(graphdef, params, state, spec=spec))
        return time.perf_counter() - t0, out

    # ---- 1. per-step time at a position
    k1, k2 = args.steps
    print(f"\n1. per-step decode time, max_new_tokens {args.step_buffer} (per step = (t({k2} steps) - t({k1} "
          f"steps)) / {k2 - k1}, min of {args.repeats}, the two behaviours interleaved)")
    modes = (False, True)
    name = {False: "full buffer", True: "live window"}
    specs = {live: spec_for(args.step_buffer, live) for live in modes}
    start = lambda spec, pos, k: dataclasses.replace(prefill(spec, args.step_buffer, 0),
                                                     step=jnp.asarray(pos + 1, jnp.int32),
                                                     max_new_tokens=jnp.asarray(pos + 1 + k, jnp.int32))
    compile_s = {}
    for live in modes:
        d0, c0 = TRACES["decode"], time.perf_counter()
        timed_decode(specs[live], start(specs[live], 0, 1))
        compile_s[live] = (time.perf_counter() - c0, TRACES["decode"] - d0)
    best = {}
    for _ in range(args.repeats):
        for pos in args.positions:
            for live in modes:
                for k in (k1, k2):
                    t_run = timed_decode(specs[live], start(specs[live], pos, k))[0]
                    best[live, pos, k] = min(best.get((live, pos, k), np.inf), t_run)
    step_ms = {(live, pos): 1e3 * (best[live, pos, k2] - best[live, pos, k1]) / (k2 - k1)
               for live in modes for pos in args.positions}
    for live in modes:
        figures = ", ".join(f"position {p}: {step_ms[live, p]:.2f} ms/step" for p in args.positions)
        print(f"  {name[live]} (windows {specs[live].windows}; {compile_s[live][1]} decode program, compile + first "
              f"call {compile_s[live][0]:.1f} s): {figures}")
    for pos in args.positions:
        print(f"  position {pos}: full buffer / live window = {step_ms[False, pos] / step_ms[True, pos]:.2f}x")

    # ---- 2. total decode time, long-tailed completion lengths
    rng = np.random.default_rng(args.seed + 1)
    eos = tuple(int(x) for x in rng.choice(np.arange(10, t.vocab_size - 4), max(1, round(args.eos_fraction
                                                                                     * t.vocab_size)), False))
    print(f"\n2. one rollout at max_new_tokens {args.tail_tokens}, temperature 1, {len(eos)} EOS ids "
          f"({100 * len(eos) / t.vocab_size:.2f}% of the vocabulary); decode time min of {args.repeats}")
    total, outs, compile_s = {}, {}, {}
    specs = {live: spec_for(args.tail_tokens, live, eos) for live in modes}
    for live in modes:
        c0 = time.perf_counter()
        timed_decode(specs[live], prefill(specs[live], args.tail_tokens, 1))   # compile
        compile_s[live] = time.perf_counter() - c0
    for _ in range(args.repeats):
        for live in modes:
            t_run, outs[live] = timed_decode(specs[live], prefill(specs[live], args.tail_tokens, 1))
            total[live] = min(total.get(live, np.inf), t_run)
    for live in modes:
        lengths = np.asarray(outs[live].lengths)
        steps = int(lengths.max())
        print(f"  {name[live]}: decode {total[live]:.2f} s for {steps} steps ({1e3 * total[live] / steps:.1f} ms/step "
              f"on average), {int(lengths.sum())} tokens, {lengths.sum() / total[live]:.0f} tokens/s (compile + "
              f"first call {compile_s[live]:.1f} s)")
    lengths = np.asarray(outs[True].lengths)
    same = bool((np.asarray(outs[True].tokens) == np.asarray(outs[False].tokens)).all())
    print(f"  completion lengths: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, p90 "
          f"{np.percentile(lengths, 90):.0f}, max {lengths.max()}, {int((lengths == args.tail_tokens).sum())} of "
          f"{rows} hit max_new_tokens; same tokens in both: {same}")
    print(f"  full buffer / live window = {total[False] / total[True]:.2f}x; live row-steps "
          f"{100 * lengths.sum() / (rows * lengths.max()):.0f}% of those run (the rest: rows already stopped)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
