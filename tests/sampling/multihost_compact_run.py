"""One process of a 2-process localhost run (4 CPU devices each): the data-parallel sampler with compaction
of finished rows on a (data=2, fsdp=4) mesh over both processes equals this process's own single-device,
uncompacted run. Run by test_compaction. Usage: python -m tests.sampling.multihost_compact_run PID PORT"""
import os
import sys

if __name__ == "__main__":
    pid, port = sys.argv[1:3]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=pid)
    import numpy as np

    from jaxr1.assets import tiny_model_dir
    from jaxr1.models import qwen2_5_vl
    from jaxr1.parallel import make_mesh, shard_params
    from jaxr1.parallel.distributed import initialize_from_env, to_host
    from jaxr1.sampling import CALLS, generate
    from tests.sampling.prompts import mixed_batch
    from flax import nnx

    assert initialize_from_env()
    model = qwen2_5_vl.load_hf(tiny_model_dir())
    cfg = model.config
    graphdef, params = nnx.split(model)
    mesh = make_mesh(2, 4, 1)
    sharded = nnx.merge(graphdef, shard_params(params, mesh))
    batch = mixed_batch(cfg, 8)
    kw = dict(max_new_tokens=16, temperature=1.0, top_k=8, seed=3, num_generations=4, min_window=4,
              eos_token_ids=tuple(range(1, cfg.text.vocab_size, 3)))
    out = generate(sharded, **batch, **kw, mesh=mesh)
    segments, rows = CALLS["segment"], CALLS["segment_rows"]
    ref = generate(model, **batch, **kw, compact=False)   # this process alone, every row to the end
    for name in ("tokens", "lengths", "stop_reason"):
        np.testing.assert_array_equal(to_host(getattr(out, name)), np.asarray(getattr(ref, name)), err_msg=name)
    np.testing.assert_allclose(to_host(out.logprobs), np.asarray(ref.logprobs), atol=1e-5)
    assert rows < segments * 32, (segments, rows)
    print(f"process {pid}: {segments} segments, {rows} rows decoded over them (32 without compaction each): ok")
