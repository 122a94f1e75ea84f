"""Start-up check that a step's batch splits over the batch axes (data x fsdp) of the mesh.

shard_batch splits an array's batch dim over data x fsdp only when it divides; otherwise the array is
replicated and every chip computes all of it. For the completion rows of a micro-batch (prompts x G: the
policy forward/backward, nearly all of a step's FLOPs) that would silently turn 16 chips into 16 copies of
one, so it is an error here, at start, with a setting that works. The prompt-side arrays of a micro-batch
(its P prompts, their images) are embedded once per prompt and repeated for the G completions; when P does
not divide they stay replicated by design (a small share of the step), which is logged. The sampler's
B x G rollout rows are n_micro_batches x rows, so they divide whenever the micro-batch rows do.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping

from jaxr1.parallel.mesh import MeshError

log = logging.getLogger("jaxr1.parallel")


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    prompts: int              # global prompts per step (data.batch_size x processes)
    micro_batches: int
    mb_prompts: int           # prompts per micro-batch
    mb_rows: int              # completion rows per micro-batch (mb_prompts x G)
    shards: int               # data x fsdp

    @property
    def prompts_split(self) -> bool:
        return self.mb_prompts % self.shards == 0


def _head_counts(model_config) -> dict[str, int]:
    text = model_config.text
    return {"num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads}


def check_tensor_heads(tensor: int, model_config) -> None:
    """A tensor axis that does not divide the heads would split a head."""
    for name, n in _head_counts(model_config).items():
        if n % tensor:
            raise MeshError(f"parallel.tensor={tensor} does not divide text {name}={n}; use a tensor size dividing {n}")


def _suggestions(layout: MicroBatchPlan, g: int, shape: Mapping[str, int], model_config) -> list[str]:
    out = []
    # More prompts per micro-batch: the smallest count above today's that splits the step and the chips.
    for p in range(layout.mb_prompts + 1, layout.prompts + 1):
        if layout.prompts % p == 0 and p * g % layout.shards == 0:
            out.append(f"rl.micro_batch_prompts={p} ({p * g} rows)")
            break
    # Or fewer batch shards (fsdp kept as large as they allow: it also splits the parameters), the rest of
    # the devices moved to the tensor axis, if the heads allow it.
    shards = math.gcd(layout.mb_rows, layout.shards)
    fsdp = math.gcd(shape["fsdp"], shards)
    new = {"data": shards // fsdp, "fsdp": fsdp, "tensor": shape["tensor"] * layout.shards // shards}
    if model_config is None or all(n % new["tensor"] == 0 for n in _head_counts(model_config).values()):
        out.append(" ".join(f"parallel.{a}={n}" for a, n in new.items() if n != shape[a]))
    if not out:   # neither works: more samples per prompt
        step = layout.shards // math.gcd(layout.mb_prompts, layout.shards)
        more = (g // step + 1) * step
        out.append(f"rl.num_generations={more} ({layout.mb_prompts * more} rows)")
    return out


def check_batch_layout(data, rl, mesh_shape: Mapping[str, int], process_count: int = 1,
                       model_config=None) -> MicroBatchPlan:
    """Raise MeshError at start unless each micro-batch's rows split over data x fsdp (and, with a model
    config, unless the tensor axis divides its heads). `data` / `rl` are the config sections (batch_size;
    micro_batch_prompts, num_generations); `mesh_shape` maps data/fsdp/tensor to sizes (mesh.shape)."""
    shape = {a: int(mesh_shape[a]) for a in ("data", "fsdp", "tensor")}
    if model_config is not None:
        check_tensor_heads(shape["tensor"], model_config)
    prompts = data.batch_size * process_count
    hosts = f" (data.batch_size={data.batch_size} x {process_count} processes)" if process_count > 1 else ""
    mbp = rl.micro_batch_prompts or prompts
    if mbp > prompts or prompts % mbp:
        fits = [str(p) for p in range(1, prompts + 1) if prompts % p == 0]
        raise MeshError(f"rl.micro_batch_prompts={rl.micro_batch_prompts} does not split the {prompts} prompts of "
                        f"a step{hosts} into equal micro-batches; use one of {', '.join(fits)}")
    g = rl.num_generations
    layout = MicroBatchPlan(prompts, prompts // mbp, mbp, mbp * g, shape["data"] * shape["fsdp"])
    if layout.mb_rows % layout.shards:
        fix = _suggestions(layout, g, shape, model_config)
        raise MeshError(
            f"a micro-batch of {mbp} prompt{'s' * (mbp != 1)} x {g} samples = {layout.mb_rows} rows does not split "
            f"over data x fsdp = {shape['data']} x {shape['fsdp']} = {layout.shards} chips (every chip would compute "
            f"all of it); use {' or '.join(fix)}")
    if not layout.prompts_split:
        log.info("micro-batch: %d rows split %d per chip over %d; its %d prompts (vision tower, prompt embedding) "
                 "are not split, each chip embeds them all", layout.mb_rows, layout.mb_rows // layout.shards,
                 layout.shards, mbp)
    return layout
