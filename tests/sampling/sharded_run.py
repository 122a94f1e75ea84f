"""Run by test_sharding in a subprocess with 4 host devices: the sampler under a (data=2, model=2) mesh with
sharded weights and a data-sharded prompt batch must give the unsharded result."""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from jaxr1.assets import tiny_model_dir  # noqa: E402
from jaxr1.models import qwen2_5_vl  # noqa: E402
from jaxr1.sampling import make_spec, prepare_prompts, sample  # noqa: E402
from tests import hf_tiny  # noqa: E402


def param_spec(path, x):
    name = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
    if x.ndim == 3 and "kernel" in name and x.shape[-1] % 2 == 0:
        return P(None, None, "model")   # stacked [L, in, out] text / vision kernels: shard the output features
    return P()


def main(axis_type: str):
    model = qwen2_5_vl.load_hf(tiny_model_dir())
    cfg = model.config
    img = cfg.image_token_id
    grids = [(1, 4, 4), (1, 2, 4)]
    rows = [[5, 6, cfg.vision_start_token_id] + [img] * 4 + [cfg.vision_end_token_id, 7, 8],
            [9, 10, 11], [12, cfg.vision_start_token_id] + [img] * 2 + [cfg.vision_end_token_id, 13, 14, 15, 16],
            [17, 18, 19, 20, 21]]
    ids, mask = hf_tiny.left_pad(rows)
    pv, thw = hf_tiny.random_image_inputs(grids)
    batch = prepare_prompts(cfg, ids, mask, pv, thw)
    graphdef, params = nnx.split(model)
    results = []
    for temperature, top_k in [(1.0, 8)]:
        spec = make_spec(cfg, max_new_tokens=6, temperature=temperature, top_k=top_k, num_generations=2)
        kw = dict(max_new_tokens=6, temperature=max(temperature, 1e-6), top_p=1.0, spec=spec)
        ref = sample(graphdef, params, batch, jax.random.key(0), **kw)
        mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(getattr(AxisType, axis_type),) * 2)
        put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
        sharded_params = jax.tree_util.tree_map_with_path(lambda p, x: put(x, param_spec(p, x)), params)
        data = lambda x: put(x, P(*([None] * (x.ndim - 2)), "data", None) if x.ndim >= 2 else P("data"))
        inputs = batch.inputs
        sharded_inputs = type(inputs)(data(inputs.input_ids), data(inputs.attention_mask),
                                      put(inputs.positions, P(None, "data", None)), data(inputs.image_index),
                                      jax.tree.map(lambda x: put(x, P()), inputs.vision))
        sharded = type(batch)(sharded_inputs, put(batch.prompt_lengths, P("data")), put(batch.rope_deltas, P("data")))
        with jax.set_mesh(mesh):
            out = sample(graphdef, sharded_params, sharded, jax.random.key(0), **kw)
        assert len(out.tokens.sharding.device_set) == 4, out.tokens.sharding
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
        results.append(f"T={temperature} ok, tokens sharding {out.tokens.sharding.spec}")
    print("\n".join(results))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Auto")
