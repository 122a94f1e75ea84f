"""The run's set-up, one function for train and the dry run: mesh, batch layout check, model, LoRA, attention
kernel and Learner. The dry run passes `shapes_of` and gets the abstract version (nnx.eval_shape, nothing
allocated) of exactly what train builds, so what it compiles is the run it describes."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
from flax import nnx

from jaxr1.loading import load_policy
from jaxr1.models import build, set_attention
from jaxr1.models.lora import adapter_state, add_lora
from jaxr1.parallel import check_batch_layout, make_mesh
from jaxr1.parallel.layout import MicroBatchPlan
from jaxr1.parallel.rules import check_heads
from jaxr1.rl.learner import Learner, LearnerState

log = logging.getLogger("jaxr1.setup")


@dataclasses.dataclass
class Setup:
    mesh: jax.sharding.Mesh
    layout: MicroBatchPlan
    learner: Learner
    attention: dict                       # the kernels set_attention chose: {"text", "vision", "decode"}
    abstract_model: Any = None            # the dry run's model (train's own is dropped: the state holds it)
    tokenizer: Any = None                 # train: from model.path
    image_processor: Any = None
    model_dir: str | None = None


def set_up(cfg, *, hosts: int, devices=None, platform: str | None = None, shapes_of=None
           ) -> tuple[Setup, LearnerState]:
    """(the run's set-up, the learner state at step 0: abstract, shapes and shardings only, with shapes_of). hosts: processes the data batch is split over (data.batch_size is per host). devices / platform: the
    mesh's devices and the attention kernel's platform (default: this process's). shapes_of: a model config
    whose shapes to build instead of loading `model.path` (the dry run)."""
    mesh = make_mesh(cfg.parallel.data, cfg.parallel.fsdp, cfg.parallel.tensor, devices=devices)
    layout = check_batch_layout(cfg.data, cfg.rl, mesh.shape, hosts, shapes_of)   # before any slow set-up
    tokenizer = image_processor = model_dir = None
    if shapes_of is None:
        model, tokenizer, image_processor, model_dir = load_policy(cfg.model, cfg.data, attention=False)
        log.info("model %s (%s params)", model_dir, f"{sum(x.size for x in jax.tree.leaves(model)):,}")
        model = with_lora(model, cfg.lora, cfg.seed)
    else:
        model = nnx.eval_shape(lambda: with_lora(build(shapes_of, cfg.model.param_dtype), cfg.lora, cfg.seed))
    # The kernel is chosen (and refused, with the key to change) before any data or compile work.
    attention = set_attention(model, cfg.model.attention, platform=platform, dtype=cfg.model.compute_dtype)
    check_heads(model.config, mesh)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, mesh.devices.flat[0].platform)
    learner = Learner(model, cfg.rl, cfg.optim, cfg.steps, compute_dtype=cfg.model.compute_dtype,
                      remat=cfg.model.remat, freeze_vision=cfg.model.freeze_vision, mesh=mesh)
    abstract = shapes_of is not None
    state = learner.init(model, abstract=abstract)
    return Setup(mesh, layout, learner, attention, model if abstract else None, tokenizer, image_processor,
                 model_dir), state


def with_lora(model, lora_cfg, seed: int):
    """The model with the config's LoRA adapters (itself when lora.rank is 0); works under nnx.eval_shape."""
    if not lora_cfg.rank:
        return model
    model = add_lora(model, rank=lora_cfg.rank, alpha=lora_cfg.alpha, target=lora_cfg.target, seed=seed)
    adapters = jax.tree.leaves(adapter_state(model))
    log.info("LoRA rank %d on %d kernels: %s trainable params", lora_cfg.rank, len(adapters) // 2,
             f"{sum(x.size for x in adapters):,}")
    return model
