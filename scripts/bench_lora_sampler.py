"""LoRA in the sampler: adapters applied unmerged (x W + s (x A) B, what jaxr1 runs) vs merged once per rollout.

    python scripts/bench_lora_sampler.py                  # CPU, the 61M "small" model of bench_grpo_step.py
    python scripts/bench_lora_sampler.py --rank 64 --dtype bfloat16

One invocation, one process, the same adapters (rank r on the text decoder's q/k/v/o/gate/up/down, B drawn at
the size of a few early updates, --delta), measured in this run:
  1. decode wall time of `generate` (greedy, no EOS, --new-tokens per row, min over --repeats) for the model
     with unmerged adapters and for the merged model (`lora.merge_adapters`, the merge's own time printed);
  2. the precision of each in the compute dtype: the max |log-softmax| difference of the prompts' forward
     against the float32 unmerged model, and the same for the base model without adapters (how much of the
     adapter's effect survives); in bfloat16 a merged W + s A B rounds away updates below W's ulp, the
     sampler/trainer gap this choice is about.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--delta", type=float, default=1e-3, help="scale of B (the adapter's learned part)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bench_decode import build_model, make_prompts
    from jaxr1.models import lora
    from jaxr1.sampling import generate

    base = build_model(0, "float32")
    model = lora.add_lora(base, rank=args.rank, alpha=2 * args.rank, target=lora.DEFAULT_TARGET)
    keys = iter(jax.random.split(jax.random.key(1), 100))
    nnx.update(model, jax.tree.map(lambda x: x if x.shape[-2] != args.rank else
                                   args.delta * jax.random.normal(next(keys), x.shape, x.dtype),
                                   lora.adapter_state(model)))

    def cast(m, dtype):
        graphdef, state = nnx.split(m)
        return nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(dtype), state))

    ids, mask = make_prompts(args.prompts, args.prompt_len, 0)
    kw = dict(max_new_tokens=args.new_tokens, temperature=0.0, num_generations=args.samples)
    t = time.perf_counter()
    merged = jax.block_until_ready(lora.merge_adapters(cast(model, args.dtype)))
    merge_s = time.perf_counter() - t
    runs = {"unmerged": cast(model, args.dtype), "merged": merged}
    reference = generate(model, ids, mask, **kw)   # float32, unmerged: the trainer's numbers
    print(f"model: {sum(x.size for x in jax.tree.leaves(nnx.state(base))) / 1e6:.1f}M params, LoRA rank "
          f"{args.rank} ({sum(x.size for x in jax.tree.leaves(lora.adapter_state(model))) / 1e6:.2f}M), "
          f"{args.dtype}, {args.prompts} prompts x {args.samples} samples x {args.new_tokens} tokens, "
          f"load {os.getloadavg()[0]:.1f}")
    logsm = lambda m: np.asarray(jax.nn.log_softmax(m(ids, mask).astype(jnp.float32), -1))[mask > 0]
    exact = logsm(model)
    effect = np.abs(logsm(base) - exact).max()
    print(f"  the adapters move the fp32 log-probs by up to {effect:.2e}")
    times = {}
    for name, m in runs.items():
        out = generate(m, ids, mask, **kw)   # compile + warm
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = generate(m, ids, mask, **kw)
            jax.block_until_ready(out.tokens)
            best = min(best, time.perf_counter() - t)
        times[name] = best
        gap = np.abs(logsm(m) - exact).max()
        same = float((np.asarray(out.tokens) == np.asarray(reference.tokens)).mean())
        print(f"  {name:9s} generate {best * 1e3:8.1f} ms ({best * 1e3 / args.new_tokens:.2f} ms/step); "
              f"max |log-prob - fp32 unmerged| {gap:.2e}; greedy tokens equal to fp32's {same:.3f}")
    print(f"  merge once: {merge_s * 1e3:.1f} ms; unmerged / merged decode time {times['unmerged'] / times['merged']:.3f}")


if __name__ == "__main__":
    main()
