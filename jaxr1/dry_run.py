"""`python -m jaxr1.train --config FILE --dry_run`: will this config fit, before renting the hardware?

Builds abstract parameters and optimizer state (jax.eval_shape: nothing allocated), lowers and compiles the
train step (one micro-batch: forward + backward), the optimizer update, and the sampler's prefill and decode
loop for the configured shapes and mesh, then prints per-device memory from the compiled programs' memory
analysis and FLOPs from their cost analysis. On a CPU host it runs on forced host devices matching the mesh
(`jaxr1.train` sets XLA_FLAGS before JAX starts).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxr1 import targets
from jaxr1.flops import decoder_flops
from jaxr1.loading import resolve_model_dir
from jaxr1.models import config_from_dir, family
from jaxr1.models.inputs import PromptArrays, model_inputs, next_bucket
from jaxr1.parallel import batch_shardings
from jaxr1.rl.learner import Learner, MicroBatch
from jaxr1.rl.losses import compute_loss_normalizer
from jaxr1.rl.pack import choose_layout, key_cost, pack
from jaxr1.sampling import make_spec, prepare_prompts
from jaxr1.sampling.layout import batch_shards, gathered_param_shardings, prompt_shardings
from jaxr1.sampling.sampler import decode_fn, prefill_fn
from jaxr1.setup import set_up

log = logging.getLogger("jaxr1.dry_run")

# Hub names whose published config.json we ship as named sizes, so a dry run needs no download.
NAMED_SIZES = {"qwen/qwen2.5-vl-3b-instruct": ("qwen2_5_vl", "qwen2_5_vl_3b"),
               "qwen/qwen2.5-vl-7b-instruct": ("qwen2_5_vl", "qwen2_5_vl_7b"),
               "qwen/qwen2-vl-2b-instruct": ("qwen2_vl", "qwen2_vl_2b"),
               "qwen/qwen2-vl-7b-instruct": ("qwen2_vl", "qwen2_vl_7b"),
               "qwen/qwen3-vl-2b-instruct": ("qwen3_vl", "qwen3_vl_2b"),
               "qwen/qwen3-vl-4b-instruct": ("qwen3_vl", "qwen3_vl_4b"),
               "qwen/qwen3-vl-8b-instruct": ("qwen3_vl", "qwen3_vl_8b")}
GB = 1024**3


def model_config(path: str):
    key = path.lower().rstrip("/")
    if key in NAMED_SIZES and not os.path.isdir(path):
        model_type, size = NAMED_SIZES[key]
        return getattr(family(model_type).ModelConfig, size)()
    return config_from_dir(resolve_model_dir(path))


def required_devices(parallel) -> int | None:
    sizes = (parallel.data, parallel.fsdp, parallel.tensor)
    return None if -1 in sizes else int(np.prod(sizes))


def _bytes_per_device(tree) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        itemsize = x.dtype.itemsize if hasattr(x.dtype, "itemsize") else 8   # PRNG keys: 2 x uint32
        total += int(np.prod(shape)) * itemsize
    return total


def _abstract(x, sharding):
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype,
                                sharding=sharding)


def _shard_abstract(tree, mesh):
    """Host arrays -> ShapeDtypeStructs with the batch sharding shard_batch would give them."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s),
                        tree, batch_shardings(tree, mesh))


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias",
                                                                  "generated_code")}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def dry_run(cfg, device_memory_gb: float | None = None, target: str = "cpu") -> dict:
    """target: "cpu" (forced host devices), or "h100" / "tpu-v5p": the same programs compiled for that
    hardware without it (jaxr1.targets), with the attention kernel `model.attention` picks there."""
    t0 = time.time()
    if target == "cpu" and cfg.model.attention in ("cudnn", "splash"):
        log.info("model.attention=%s is for its hardware: the cpu dry run compiles xla (--target h100 or "
                 "tpu-v5p compiles the kernel)", cfg.model.attention)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention="xla"))
    mcfg = model_config(cfg.model.path)
    devices = None if target == "cpu" else targets.target_devices(target, required_devices(cfg.parallel) or 4)
    # data.batch_size is per host: a target's slice has mesh.size / chips-per-host hosts (the cpu dry run is
    # one process, so there it is the whole batch).
    hosts = max(1, len(devices) // targets.CHIPS_PER_HOST[target]) if target in targets.CHIPS_PER_HOST else 1
    s, state = set_up(cfg, hosts=hosts, devices=devices, platform=targets.PLATFORM[target], shapes_of=mcfg)
    shapes = step_shapes(cfg, s, mcfg, hosts)
    programs = compile_programs(cfg, s, state, shapes, target)
    report = make_report(cfg, s, state, shapes, programs, target, hosts, device_memory_gb)
    report["compile_s"] = time.time() - t0
    _print(report, cfg)
    return report


@dataclasses.dataclass
class Shapes:
    """One step's inputs, abstract: each prompt at the prompt-length bucket with one image of the largest patch
    count."""
    prompts: int                          # the global batch (the sampler runs on every host's prompts)
    micro_prompts: int
    prompt_len: int
    mb: Any                               # a host MicroBatch (zeros) of micro_prompts x G rows
    abstract_mb: Any                      # ... as shard_batch places it
    normalizer: Any
    sampler_batch: Any                    # the sampler's prompts, as prompt_shardings places them
    spec: Any                             # the sampler's static spec
    policy: Any                           # the sampler's weights: compute dtype, gathered shardings
    graphdef: Any


def step_shapes(cfg, s, mcfg, hosts: int) -> Shapes:
    b = cfg.data.batch_size * hosts
    mb_prompts = cfg.rl.micro_batch_prompts or b
    G, Tc = cfg.rl.num_generations, cfg.rl.max_completion_length
    max_pixels = cfg.data.max_pixels or 401408
    v = mcfg.vision
    side = max(2, int(np.sqrt(max_pixels) // (v.patch_size * v.spatial_merge_size)) * v.spatial_merge_size)
    n_img_tokens = side * side // v.merge_unit
    tp = -(-max(cfg.data.max_prompt_length, n_img_tokens + 16) // cfg.data.pad_multiple) * cfg.data.pad_multiple

    ids, mask, pv, grids = _prompts(mcfg, mb_prompts, tp, side, n_img_tokens)
    inputs, deltas = model_inputs(mcfg, PromptArrays(ids, mask, pv, grids), patches_per_slot=next_bucket(side * side, 64))
    rows = mb_prompts * G
    comp = np.zeros((rows, Tc), np.int32)
    lp = np.zeros((rows, Tc), np.float32)
    mb = MicroBatch(inputs, deltas, comp, comp, np.zeros(rows, np.float32), lp, lp if cfg.rl.beta > 0 else None)
    normalizer = compute_loss_normalizer(jnp.ones((rows, Tc)), cfg.rl.loss_aggregation)

    spec = make_spec(mcfg, max_new_tokens=Tc, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p,
                     top_k=cfg.rl.top_k, num_generations=G, eos_token_ids=mcfg.eos_token_id, mesh=s.mesh)
    sbatch = prepare_prompts(mcfg, *_prompts(mcfg, b, tp, side, n_img_tokens), pad_token_id=spec.pad_token_id)
    sbatch = jax.tree.map(_abstract, sbatch, prompt_shardings(sbatch, s.mesh))
    # What generate(mesh=) runs on: the weights (with LoRA: base + adapters, applied unmerged) cast to the
    # compute dtype and gathered once per rollout.
    graphdef, policy = nnx.split(s.abstract_model)
    policy = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(cfg.model.compute_dtype)), policy)
    policy = jax.tree.map(_abstract, policy, gathered_param_shardings(policy, s.mesh))
    return Shapes(b, mb_prompts, tp, mb, _shard_abstract(mb, s.mesh), normalizer, sbatch, spec, policy, graphdef)


def _prompts(mcfg, n: int, tp: int, side: int, n_img_tokens: int):
    """n prompts of tp tokens, each with one side x side image (input_ids, attention_mask, pixels, grids)."""
    ids = np.full((n, tp), 1, np.int32)
    ids[:, tp - n_img_tokens - 8: tp - 8] = mcfg.image_token_id
    pv = np.zeros((n * side * side, mcfg.vision.patch_dim), np.float32)
    return ids, np.ones_like(ids), pv, np.repeat(np.array([[1, side, side]]), n, 0)


@dataclasses.dataclass
class Programs:
    grads: Any                            # the train step on one micro-batch: forward + backward
    apply: Any                            # the optimizer update
    prefill: Any
    decode: Any
    sampler_state: Any                    # the prefill's outputs: KV cache + sampler state
    packed: Any = None                    # the packed train step (rl.pack_completions), and its layout
    packed_layout: tuple | None = None


def compile_programs(cfg, s, state, shapes: Shapes, target: str) -> Programs:
    learner, mesh, G, Tc = s.learner, s.mesh, cfg.rl.num_generations, cfg.rl.max_completion_length
    log.info("compiling the train step for %s (%d prompts x %d samples, prompt %d + completion %d tokens)",
             target, shapes.micro_prompts, G, shapes.prompt_len, Tc)
    key_dtype = jax.random.key(0).dtype   # on the host's CPU (no array may be made on compile-only devices)
    with targets.compiling_for(target, mesh):
        grads_c = Learner.grads_fn.lower(learner, state.params, learner.frozen, shapes.abstract_mb,
                                         shapes.normalizer).compile()
        apply_c = Learner.apply.lower(learner, state, _outputs(grads_c, mesh)[0]).compile()
        packed_c, packed_layout = None, None
        if cfg.rl.pack_completions and cfg.rl.shared_prompt:
            # The steady-state program: completions packed into shared rows (jaxr1.rl.pack). Its layout
            # depends on the lengths; this compiles the one for completions of Tc / 4 (the recipes' typical).
            packed_mb, packed_layout = _packed_micro_batch(shapes.mb, cfg.rl, mesh, learner.model_config.text)
            log.info("compiling the packed train step (%d rows x %d, up to %d prompts a row)", packed_layout[1],
                     packed_layout[0], packed_layout[2])
            packed_c = Learner.grads_fn.lower(learner, state.params, learner.frozen,
                                              _shard_abstract(packed_mb, mesh), shapes.normalizer).compile()

        log.info("compiling the sampler (%d prompts x %d samples, %d new tokens)", shapes.prompts, G, Tc)
        key = jax.ShapeDtypeStruct((), key_dtype, sharding=NamedSharding(mesh, PartitionSpec()))
        prefill_c = prefill_fn.lower(shapes.graphdef, shapes.policy, shapes.sampler_batch, key, Tc,
                                     cfg.rl.temperature or 1.0, cfg.rl.top_p, spec=shapes.spec).compile()
        sampler_state = _outputs(prefill_c, mesh)
        decode_c = decode_fn.lower(shapes.graphdef, shapes.policy, sampler_state, spec=shapes.spec).compile()
    return Programs(grads_c, apply_c, prefill_c, decode_c, sampler_state, packed_c, packed_layout)


def make_report(cfg, s, state, shapes: Shapes, p: Programs, target: str, hosts: int,
                device_memory_gb: float | None) -> dict:
    learner, mesh, mcfg = s.learner, s.mesh, s.learner.model_config
    params, opt_state = state.params, state.opt_state
    G, Tc, b, mb_prompts, tp = (cfg.rl.num_generations, cfg.rl.max_completion_length, shapes.prompts,
                                shapes.micro_prompts, shapes.prompt_len)
    rows = mb_prompts * G
    completions = shapes.abstract_mb.completions
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(s.abstract_model)))
    report = {"params": n_total, "trainable": n_params, "lora_rank": cfg.lora.rank, "mesh": dict(mesh.shape),
              "devices": mesh.size, "target": target, "hosts": hosts, "attention": s.attention,
              "rows_per_device": completions.sharding.shard_shape(completions.shape)[0], "rows": rows}
    kernel_call = {"splash": "tpu_custom_call", "cudnn": "__cudnn$fmha"}.get(s.attention["text"])
    has_kernel = lambda text: (None if kernel_call is None else
                               any(c.startswith(kernel_call) for c in targets.custom_calls(text)))
    report["kernel_in_train_step"] = has_kernel(targets.hlo_text(p.grads))
    if p.packed is not None:
        report["packed_train_step"] = {"layout": f"{p.packed_layout[1]} rows x {p.packed_layout[0]}, "
                                                 f"<= {p.packed_layout[2]} prompts a row",
                                       "temp": _memory(p.packed).get("temp", 0),
                                       "kernel": has_kernel(targets.hlo_text(p.packed))}
    loop = targets.loop_body_collectives(targets.hlo_text(p.decode))
    report["decode_loop_collectives"] = {k: len(v) for k, v in loop.items() if v}

    n_mb = b // mb_prompts
    train_m, apply_m = _memory(p.grads), _memory(p.apply)
    prefill_m, decode_m = _memory(p.prefill), _memory(p.decode)
    resident_mem = {
        "parameters (master)" if not learner.lora else "LoRA adapters (master)": _bytes_per_device(params),
        "frozen base (compute dtype)": _bytes_per_device(learner.frozen) if learner.lora else 0,
        "optimizer state": _bytes_per_device(opt_state),
        # LoRA: the reference is the base with zero adapters (adapter-sized), not a second model
        "reference model": _bytes_per_device(params) if cfg.rl.beta > 0 else 0,
    }
    grads = train_m.get("output", 0)
    # With several micro-batches the running sum and the next micro-batch's gradients are both live.
    train_grads = grads * (2 if n_mb > 1 else 1)
    # The sampler's copy: a gather of fsdp-sharded weights copies them all; else only the cast of the
    # trainable parameters to the compute dtype does (a LoRA base is stored in it already).
    compute = jnp.dtype(cfg.model.compute_dtype)
    cast = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, compute, sharding=x.sharding), params)
    sampler_weights = _bytes_per_device(shapes.policy) if mesh.shape["fsdp"] > 1 else (
        _bytes_per_device(cast) if compute != jnp.dtype(cfg.model.param_dtype) else 0)
    mem = {**resident_mem,
           "train step: activations/temporaries": train_m.get("temp", 0),
           "train step: gradients" + (" (x2: accumulating)" if n_mb > 1 else ""): train_grads,
           "optimizer update: temporaries": apply_m.get("temp", 0),
           "sampler: weights in compute dtype": sampler_weights,
           "sampler: KV cache + state": _bytes_per_device(p.sampler_state),
           "sampler: temporaries": max(prefill_m.get("temp", 0), decode_m.get("temp", 0))}
    resident = sum(resident_mem.values())
    train_peak = resident + mem["train step: activations/temporaries"] + train_grads
    sample_peak = resident + sampler_weights + mem["sampler: KV cache + state"] + mem["sampler: temporaries"]
    update_peak = resident + grads + mem["optimizer update: temporaries"]
    peak = max(train_peak, sample_peak, update_peak)
    # cost_analysis counts a loop body once (the layer scan, the decode loop): the analytic figures below
    # count every layer and step.
    flops = {"train step, cost analysis (loop bodies once)": _flops(p.grads) * n_mb * max(cfg.rl.num_iterations, 1),
             "sampler prefill": _flops(p.prefill), "sampler decode loop (one while-loop body)": _flops(p.decode)}
    # A target's usable memory (an H100 80GB leaves ~73 GiB to XLA), unless given on the command line.
    limit = (device_memory_gb or targets.USABLE_MEMORY_GB.get(target) or cfg.parallel.device_memory_gb) * GB
    # rl.shared_prompt: each prompt once through the decoder, not once per completion
    train_tokens = mb_prompts * tp + rows * Tc if cfg.rl.shared_prompt else rows * (tp + Tc)
    flops["train step, analytic (all layers)"] = _train_flops(mcfg, train_tokens, cfg.model.remat,
                                                              lora=learner.lora) * n_mb * \
        max(cfg.rl.num_iterations, 1) / mesh.size
    flops["sampler decode, analytic (all steps)"] = 2.0 * n_total * b * G * Tc / mesh.size
    report.update(memory=mem, peak=peak, limit=limit, fits=peak <= limit, flops=flops)
    return report


def _packed_micro_batch(mb, rl, mesh, text_cfg):
    """The micro-batch `mb` (completions [rows, Tc]) with every completion Tc / 4 tokens long, packed as the
    step packs it (jaxr1.rl.step._packing): (MicroBatch, (row length, rows, prompts a row))."""
    rows, tc = mb.completions.shape
    lengths = np.full(rows, max(1, tc // 4), np.int32)
    L, R, K = choose_layout([lengths], rl.num_generations, int(lengths.max()), tc, batch_shards(mesh),
                            prompt_len=mb.prompt.input_ids.shape[1], key_cost=key_cost(text_cfg),
                            max_prompts=rl.pack_prompts_per_row)
    t = min(L, tc)
    tokens = np.zeros((rows, t), np.int32)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    lp = np.zeros((rows, t), np.float32)
    packed = pack(tokens, lengths, rl.num_generations, L, R, K)
    return dataclasses.replace(mb, completions=tokens, mask=mask, old_logprobs=lp if mb.old_logprobs
                               is not None else None, ref_logprobs=lp if mb.ref_logprobs is not None else None,
                               packed=packed), (L, R, K)


def _train_flops(mcfg, tokens: int, remat: bool, lora: bool = False) -> float:
    """Matmul FLOPs of forward + backward over `tokens` through the text decoder's weights (2 per weight per
    token forward, 4 backward (2 with LoRA: no weight gradient for the frozen base; the adapters' own are
    negligible), 2 more with remat)."""
    f = decoder_flops(mcfg.text)
    passes = (4 if lora else 6) + (2 if remat else 0)
    return float(passes / 2 * (f["token"] + f["logit"]) * tokens)


def _on_mesh(sharding, mesh):
    """Scalars come back on one device; as program inputs they must be replicated over the mesh."""
    return sharding if isinstance(sharding, NamedSharding) else NamedSharding(mesh, PartitionSpec())


def _outputs(compiled, mesh):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_on_mesh(s, mesh)),
                        compiled.out_info, compiled.output_shardings)


def _print(r: dict, cfg) -> None:
    lora = f" (LoRA rank {r['lora_rank']}: {r['trainable'] / 1e6:.1f}M trainable)" if r["lora_rank"] else ""
    print(f"dry run for {r['target']}: {cfg.model.path}, {r['params'] / 1e9:.3f}B parameters{lora}, mesh {r['mesh']} "
          f"({r['devices']} devices, {r['hosts']} host(s)), compute {cfg.model.compute_dtype}, remat {cfg.model.remat}")
    print(f"{'per-device memory':44s} {'GiB':>8s}")
    for k, v in r["memory"].items():
        print(f"  {k:42s} {v / GB:8.2f}")
    print(f"  {'peak (resident + largest phase)':42s} {r['peak'] / GB:8.2f}   limit {r['limit'] / GB:.0f} GiB")
    for k, v in r["flops"].items():
        print(f"  FLOPs per device, {k:34s} {v:.3e}")
    print(f"  attention: {r['attention']}; fused kernel in the train step: {r['kernel_in_train_step']}")
    print(f"  micro-batch rows per device: {r['rows_per_device']} of {r['rows']}"
          f"{' (replicated: every chip computes all)' if r['rows_per_device'] == r['rows'] and r['devices'] > 1 else ''}")
    if "packed_train_step" in r:
        pk = r["packed_train_step"]
        print(f"  packed train step (completions of max/4 tokens, {pk['layout']}): activations/"
              f"temporaries {pk['temp'] / GB:.2f} GiB; fused kernel: {pk['kernel']}")
    print(f"  decode loop body collectives: {r['decode_loop_collectives'] or 'none'}")
    verdict = "fits" if r["fits"] else "does NOT fit"
    print(f"verdict: {verdict} ({r['peak'] / GB:.1f} of {r['limit'] / GB:.0f} GiB per device); "
          f"compiled in {r['compile_s']:.0f}s")
