"""Run by test_sharding in a subprocess with 8 host devices: the data-parallel sampler (`generate(..., mesh=)`)
on a (data=2, fsdp=4) mesh with fsdp-sharded weights (`shard_params`, as the trainer holds them).

Checks: greedy tokens / log-probs equal the single-device run; outputs, the prompt cache and the per-row cache
are split by row; the compiled decode program's while-loop bodies hold no all-gather. Prints per-device rows
and the collectives in the decode loop bodies for the old call (sharded weights, host prompts, no mesh) and
the new one. Usage: python -m tests.sampling.dp_run [DATA FSDP]"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxr1.assets import tiny_model_dir  # noqa: E402
from jaxr1.models import qwen2_5_vl  # noqa: E402
from jaxr1.parallel import make_mesh, shard_params  # noqa: E402
from jaxr1.sampling import CALLS, generate, make_spec, prepare_prompts  # noqa: E402
from jaxr1.sampling.layout import gather_params, place_prompts  # noqa: E402
from jaxr1.sampling.sampler import decode_fn, prefill_fn  # noqa: E402
from jaxr1.targets import loop_body_collectives  # noqa: E402
from tests.sampling.prompts import mixed_batch as prompts  # noqa: E402

def summary(found) -> str:
    return ", ".join(f"{op} {len(v)}" for op, v in found.items() if v) or "none"


def rows_per_device(x) -> int:
    return x.sharding.shard_shape(x.shape)[0]


def decode_hlo(graphdef, params, batch, spec, new):
    state = prefill_fn(graphdef, params, batch, jax.random.key(0), new, 1e-6, 1.0, spec=spec)
    return decode_fn.lower(graphdef, params, state, spec=spec).compile().as_text(), state


def main(data: int, fsdp: int):
    model = qwen2_5_vl.load_hf(tiny_model_dir())
    cfg = model.config
    graphdef, params = nnx.split(model)
    mesh = make_mesh(data, fsdp, 1)
    sharded = shard_params(params, mesh)           # what the trainer holds: fsdp-sharded fp32 weights
    sharded_model = nnx.merge(graphdef, sharded)
    new, n = 12, 2
    lines = []
    for b in (8, 4):   # 8 prompts split over the 8 devices; 4 do not (replicated prompts, rows still split)
        batch = prompts(cfg, b)
        kw = dict(max_new_tokens=new, temperature=0.0, num_generations=n, eos_token_ids=(), min_window=4)
        ref = generate(model, **batch, **kw)   # one device
        old = generate(sharded_model, **batch, **kw)   # the trainer's call before: sharded weights, host prompts
        out = generate(sharded_model, **batch, **kw, mesh=mesh)
        for o in (old, out):
            np.testing.assert_array_equal(o.tokens, ref.tokens)
            np.testing.assert_allclose(o.logprobs, ref.logprobs, atol=1e-5)
        if b == 8:   # the stacked ("scan") cache layout too
            np.testing.assert_array_equal(generate(sharded_model, **batch, **kw, mesh=mesh, layer_loop="scan").tokens,
                                          ref.tokens)
        # Sampled (temperature 1, top-k): the same draws too (threefry bits do not depend on the sharding).
        samp = dict(kw, temperature=1.0, top_k=8, seed=3)
        np.testing.assert_array_equal(generate(sharded_model, **batch, **samp, mesh=mesh).tokens,
                                      generate(model, **batch, **samp).tokens)
        # Rows that stop (a third of the vocabulary is EOS) leave between segments: the same rows as one
        # device without compaction, and the output still split by row.
        stop = dict(samp, eos_token_ids=tuple(range(1, cfg.text.vocab_size, 3)), max_new_tokens=16, num_generations=4)
        seg0, rows0 = CALLS["segment"], CALLS["segment_rows"]
        compacted = generate(sharded_model, **batch, **stop, mesh=mesh)
        assert CALLS["segment_rows"] - rows0 < (CALLS["segment"] - seg0) * b * 4, "no segment ran on fewer rows"
        plain = generate(model, **batch, **stop, compact=False)
        for name in ("tokens", "lengths", "stop_reason"):
            np.testing.assert_array_equal(getattr(compacted, name), getattr(plain, name), err_msg=name)
        assert rows_per_device(compacted.tokens) == b * 4 // 8
        rows = b * n
        for name in ("tokens", "lengths", "logprobs", "sampling_logprobs", "stop_reason"):
            x = getattr(out, name)
            assert len(x.sharding.device_set) == 8 and rows_per_device(x) == rows // 8, (name, x.sharding)

        # Compiled decode programs: before (no mesh; fsdp-sharded weights; host prompts) and after (mesh).
        spec_old = make_spec(cfg, max_new_tokens=new, temperature=0.0, num_generations=n, eos_token_ids=(),
                             min_window=4)
        spec = make_spec(cfg, max_new_tokens=new, temperature=0.0, num_generations=n, eos_token_ids=(),
                         min_window=4, mesh=mesh)
        host = prepare_prompts(cfg, **batch)
        hlo_old, state_old = decode_hlo(graphdef, sharded, host, spec_old, new)
        placed = place_prompts(host, mesh)
        hlo_new, state = decode_hlo(graphdef, gather_params(sharded, mesh), placed, spec, new)
        hlo_fsdp, _ = decode_hlo(graphdef, sharded, placed, spec, new)   # weights gathered inside, before loops
        before, after, after_fsdp = (loop_body_collectives(h) for h in (hlo_old, hlo_new, hlo_fsdp))
        assert hlo_new.count(" while(") >= len(spec.windows), "expected one while loop per window"
        assert not after["all-gather"] and not after_fsdp["all-gather"], after["all-gather"] + after_fsdp["all-gather"]

        # Caches: the prompt cache split by prompt (when B divides), the per-row cache by row.
        pk = state.prompt.k[0]
        assert rows_per_device(pk) == (b // 8 if b % 8 == 0 else b), pk.sharding
        assert rows_per_device(state.tokens) == rows // 8
        cached = decode_fn(graphdef, gather_params(sharded, mesh), state, spec=spec, keep_cache=True)
        for x in jax.tree.leaves(cached.gen):
            assert rows_per_device(x) == rows // 8, x.sharding
        np.testing.assert_array_equal(cached.tokens[:, :new], ref.tokens)

        lines.append(f"B={b} G={n} ({rows} rows) on mesh {dict(mesh.shape)}: rows per device before "
                     f"{rows_per_device(old.tokens)} (tokens {old.tokens.sharding.spec}), after "
                     f"{rows_per_device(out.tokens)} (tokens {out.tokens.sharding.spec}); prompt cache per device "
                     f"{rows_per_device(state_old.prompt.k[0])} -> {rows_per_device(pk)} prompts; per-row cache "
                     f"{rows_per_device(jax.tree.leaves(cached.gen)[0])} rows per device")
        lines.append(f"  decode loop-body collectives ({hlo_new.count(' while(')} while loops, one per window): "
                     f"before {summary(before)}; after {summary(after)}; after, fsdp-sharded weights passed "
                     f"straight in {summary(after_fsdp)}; loop conditions before "
                     f"{summary(loop_body_collectives(hlo_old, 'condition'))}, after "
                     f"{summary(loop_body_collectives(hlo_new, 'condition'))} (all rows stopped?)")
        lines.append("  greedy and sampled tokens equal the single-device run: ok")
    print("\n".join(lines))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]) if a else 2, int(a[1]) if len(a) > 1 else 4)
