"""The GRPO learner: optimizer, old/reference log-probs, and the clipped-loss update over micro-batches.

The learner holds only what does not change over a run (graph definition, shardings, optimizer, schedule);
everything that does is one pytree, `LearnerState` (parameters, optimizer state, counters), passed in and
returned, which checkpoints save and restore as a unit. Each jitted function merges the fp32 (or configured)
parameters with the static graph definition, casts to the compute dtype, and runs the policy forward.
Micro-batch gradients are summed with a normaliser computed on the whole rollout (see rl.losses), so
accumulation gives the full-batch gradient. A non-finite gradient skips the update and is counted.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxr1.config import OptimConfig, RLConfig
from jaxr1.models.inputs import ModelInputs
from jaxr1.models.lora import LoRAParam, has_adapters
from jaxr1.models.lora import merge_adapters
from jaxr1.models.vlm import VisionLanguageModel
from jaxr1.parallel.rules import param_shardings, place
from jaxr1.rl.losses import policy_loss
from jaxr1.rl.pack import PackedRows
from jaxr1.rl.policy import completion_logprobs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MicroBatch:
    prompt: ModelInputs          # b prompts
    rope_deltas: jax.Array       # [b]
    completions: jax.Array       # [b*G, Tc]
    mask: jax.Array              # [b*G, Tc]
    advantages: jax.Array        # [b*G]
    old_logprobs: jax.Array | None = None
    ref_logprobs: jax.Array | None = None
    packed: PackedRows | None = None   # the completions packed into rows (jaxr1.rl.pack); None: one per row


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LearnerState:
    params: Any                  # nnx.State of the model's nnx.Param values (master dtype)
    opt_state: Any
    step: jax.Array              # int32 []: GRPO steps completed (the trainer's step, the checkpoint's number)
    skipped_updates: jax.Array   # int32 []: optimizer updates skipped for a non-finite gradient


def make_schedule(cfg: OptimConfig, total_steps: int):
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "cosine":
        if not warm:   # starts at lr: optax's warmup schedule with one warmup step would make update 1 a no-op
            return optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1), alpha=0.0)
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, max(total_steps, warm + 1), end_value=0.0)
    if warm:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), optax.constant_schedule(cfg.lr)],
                                    [warm])
    return optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: OptimConfig, total_steps: int, params, *, freeze_vision: bool = False):
    schedule = make_schedule(cfg, total_steps)
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else optax.identity(),
                     optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    if freeze_vision:
        labels = jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if str(getattr(path[0], "key", "")) == "visual" else "train", params)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def _abstract_on(tree, shardings):
    """Shapes and dtypes of `tree` with the given shardings, nothing allocated (the dry run's inputs)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Learner:
    def __init__(self, model: VisionLanguageModel, rl: RLConfig, optim: OptimConfig, total_steps: int, *,
                 compute_dtype: str = "float32", remat: bool = False, freeze_vision: bool = False, mesh=None):
        """The model gives the graph definition and parameter shapes only; `init(model)` gives the state.
        A model with LoRA adapters (jaxr1.models.lora.add_lora) trains its adapters only: the state's params
        are the adapters, and the base weights are `self.frozen` (set by init, in the compute dtype, never
        updated, not checkpointed: a run reloads them from model.path)."""
        self.graphdef, params, frozen = _split(model)
        self.lora = frozen is not None
        self.model_config = model.config
        self.mesh = mesh
        self.frozen = None
        # The parameters' shardings, which the gradients are constrained to as well: left to propagation,
        # XLA keeps some gradients (e.g. the embedding's) replicated, an all-reduce where a reduce-scatter
        # does (1.6x the gradient memory per device in the 7B dry run).
        self.param_shardings = self.frozen_shardings = None
        if mesh is not None:
            self.param_shardings = param_shardings(params, mesh)
            self.frozen_shardings = param_shardings(frozen, mesh) if frozen is not None else None
        self.rl = rl
        self.compute_dtype = jnp.dtype(compute_dtype)
        self.remat, self.freeze_vision = remat, freeze_vision
        self.tx, self.schedule = make_optimizer(optim, total_steps, params, freeze_vision=freeze_vision)

    def init(self, model: VisionLanguageModel, *, abstract: bool = False) -> LearnerState:
        """The state at step 0: the model's (trainable) parameters, placed on the mesh, and a fresh optimizer
        state; with LoRA also sets `self.frozen` (the base weights). abstract=True (a model from
        nnx.eval_shape): shapes and shardings only, nothing allocated (dry run)."""
        _, params, frozen = _split(model)
        if frozen is not None:
            frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, self._cast_dtype(x)) if abstract
                                  else x.astype(self._cast_dtype(x)), frozen)
        abstract_opt = jax.eval_shape(self.tx.init, params)
        counter = jax.ShapeDtypeStruct((), jnp.int32)
        if self.mesh is None:
            self.frozen = frozen
            if abstract:
                return LearnerState(params, abstract_opt, counter, counter)
            return LearnerState(params, self.tx.init(params), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        from jax.sharding import NamedSharding, PartitionSpec

        # Adam moments sit at the parameters' paths (e.g. .../mu/language_model/layers/q_kernel), so the same
        # path rules shard them like their parameters; step counters stay replicated.
        opt_shardings = param_shardings(abstract_opt, self.mesh)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        if abstract:
            counter = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
            self.frozen = None if frozen is None else _abstract_on(frozen, self.frozen_shardings)
            return LearnerState(_abstract_on(params, self.param_shardings), _abstract_on(abstract_opt, opt_shardings),
                                counter, counter)
        self.frozen = None if frozen is None else place(frozen, self.frozen_shardings)
        params = place(params, self.param_shardings)
        zero = lambda: place(jnp.zeros((), jnp.int32), replicated)   # two buffers: the update donates both
        return LearnerState(params, jax.jit(self.tx.init, out_shardings=opt_shardings)(params), zero(), zero())

    def reference_params(self, state: LearnerState):
        """What `logprobs` takes for the KL reference: a copy of the initial parameters (the update donates
        the state's buffers), or with LoRA zero adapters, i.e. the base model itself (B = 0: x W + s (x A) 0
        is x W exactly), so the reference costs no second model."""
        if self.lora:
            return jax.tree.map(jnp.zeros_like, state.params)
        return jax.tree.map(lambda x: x.copy(), state.params)

    # ---- pure functions (jitted once per shape); `frozen` is self.frozen, passed in, never closed over ----
    def _cast_dtype(self, x):
        return self.compute_dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype

    def _model(self, params, frozen) -> VisionLanguageModel:
        cast = lambda tree: jax.tree.map(lambda x: x.astype(self._cast_dtype(x)), tree)
        return _merge(self.graphdef, cast(params), frozen)

    def _logprobs(self, params, frozen, mb: MicroBatch):
        return completion_logprobs(self._model(params, frozen), mb.prompt, mb.rope_deltas, mb.completions, mb.mask,
                                   temperature=self.rl.temperature or 1.0, chunk_size=self.rl.logprob_chunk,
                                   remat=self.remat, freeze_vision=self.freeze_vision,
                                   shared_prompt=self.rl.shared_prompt, packed=mb.packed)

    @functools.partial(jax.jit, static_argnums=0)
    def logprobs_fn(self, params, frozen, mb: MicroBatch) -> jax.Array:
        return self._logprobs(params, frozen, mb)[0]

    def logprobs(self, params, mb: MicroBatch) -> jax.Array:
        """Log-probs of mb's completions under `params` (the state's, or reference_params)."""
        return self.logprobs_fn(params, self.frozen, mb)

    def _loss(self, params, frozen, mb: MicroBatch, normalizer):
        logprobs, entropy = self._logprobs(params, frozen, mb)
        rl = self.rl
        loss, metrics = policy_loss(
            logprobs, mb.old_logprobs, mb.advantages, mb.mask, ref_logprobs=mb.ref_logprobs,
            epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high, importance_level=rl.importance_level,
            aggregation=rl.loss_aggregation, max_tokens=rl.max_completion_length, beta=rl.beta,
            kl_estimator=rl.kl_estimator, loss_normalizer=normalizer)
        m = mb.mask.astype(jnp.float32)
        metrics["entropy"] = (entropy * m).sum() / jnp.maximum(m.sum(), 1.0)
        return loss, (metrics, jax.lax.stop_gradient(logprobs))

    @functools.partial(jax.jit, static_argnums=0)
    def grads_fn(self, params, frozen, mb: MicroBatch, normalizer):
        """Gradients with respect to `params` only (the frozen base gets none)."""
        (loss, (metrics, logprobs)), grads = jax.value_and_grad(self._loss, has_aux=True)(params, frozen, mb,
                                                                                          normalizer)
        if self.param_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, self.param_shardings)
        metrics["loss"] = loss
        return grads, metrics, logprobs

    def grads(self, params, mb: MicroBatch, normalizer):
        return self.grads_fn(params, self.frozen, mb, normalizer)

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=(5, 6))
    def accumulate(self, params, frozen, mb: MicroBatch, normalizer, total, metrics_sum):
        """grads() added into the running sums on the device; the sums' buffers are donated (updated in
        place), so a later micro-batch adds no second gradient copy and no host sync."""
        g, m, logprobs = self.grads_fn(params, frozen, mb, normalizer)
        total = jax.tree.map(jnp.add, total, g)
        return total, {k: metrics_sum[k] + v for k, v in m.items()}, logprobs

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
    def apply(self, state: LearnerState, grads) -> tuple[LearnerState, jax.Array, jax.Array]:
        """One optimizer update of the (donated) state; a non-finite gradient leaves parameters and optimizer
        state untouched and counts a skipped update."""
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)
        updates, new_opt = self.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new = dataclasses.replace(state, params=keep(new_params, state.params),
                                  opt_state=keep(new_opt, state.opt_state),
                                  skipped_updates=state.skipped_updates + (~finite).astype(jnp.int32))
        return new, grad_norm, finite

    # ---- host-side driver ----
    def update(self, state: LearnerState, micro_batches: list[MicroBatch], normalizer
               ) -> tuple[LearnerState, dict, list[jax.Array]]:
        """One optimizer update over the micro-batches: (new state, metrics, each micro-batch's log-probs under
        the state's parameters). `state`'s buffers are donated: use the returned one. A micro-batch without
        old_logprobs is on-policy (the first pass over a fresh rollout): its ratio is exp(logp -
        stop_gradient(logp)) = 1, and the log-probs returned are its old log-probs, saving a forward pass."""
        total = metrics_sum = None
        logprobs = []
        for mb in micro_batches:
            if total is None:
                total, metrics_sum, lp = self.grads(state.params, mb, normalizer)
            else:
                total, metrics_sum, lp = self.accumulate(state.params, self.frozen, mb, normalizer, total,
                                                         metrics_sum)
            logprobs.append(lp)
        state, grad_norm, _ = self.apply(state, total)
        metrics_sum, grad_norm, skipped = jax.device_get((metrics_sum, grad_norm, state.skipped_updates))
        n = len(micro_batches)   # one host sync, at the end
        out = {k: float(v) / n for k, v in metrics_sum.items() if k not in ("loss", "num_tokens", "num_seqs")}
        out["loss"] = float(metrics_sum.get("loss", 0.0))   # normalised over the whole rollout: the sum is the loss
        out["grad_norm"] = float(grad_norm)
        out["skipped_updates"] = int(skipped)
        return state, out, logprobs

    def model(self, params, dtype=None) -> VisionLanguageModel:
        """The policy of `params` as a module (arrays shared, cast when dtype is given); with LoRA, the base
        with its adapters, which the sampler applies unmerged (x W + s (x A) B, as the update computes; no
        merged copy per rollout; scripts/bench_lora_sampler.py: same decode time as merged)."""
        cast = (lambda t: t) if dtype is None else (lambda t: jax.tree.map(lambda x: x.astype(dtype), t))
        return _merge(self.graphdef, cast(params), None if self.frozen is None else cast(self.frozen))

    def export_model(self, params) -> VisionLanguageModel:
        """The plain model to save / export: adapters merged into the kernels in the master dtype."""
        if not self.lora:
            return self.model(params)
        return merge_adapters(self.model(params, jax.tree.leaves(params)[0].dtype))


def _split(model):
    """(graphdef, trainable params, frozen params or None): a model with adapters trains only those."""
    if has_adapters(model):
        return nnx.split(model, LoRAParam, nnx.Param)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params, None


def _merge(graphdef, params, frozen):
    return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
