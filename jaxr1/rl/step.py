"""The GRPO step as a unit: `grpo_step(state, batch, ctx) -> (state, metrics, record)`.

rollout (DAPO refills around it) -> rewards, scored once per row, in worker processes while the device
computes old / reference log-probs -> advantages -> prompt micro-batches on completions cut to the step's
longest -> `rl.num_iterations` optimizer updates. `ctx` holds what does not change over steps; the rollout is
a callable in it, so tests drive the step with fixed completions.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any, Callable

import jax
import numpy as np

from jaxr1.data.processing import PromptBatch
from jaxr1.models.inputs import model_inputs
from jaxr1.parallel import shard_batch
from jaxr1.parallel.distributed import to_host
from jaxr1.rl.advantages import advantage_options, compute_advantages, zero_variance_groups
from jaxr1.rl.learner import Learner, LearnerState, MicroBatch
from jaxr1.rl.losses import compute_loss_normalizer
from jaxr1.rl.pack import choose_layout, key_cost, pack
from jaxr1.rl.rollout import Rollout, RolloutFn
from jaxr1.rl.trim import trimmed_length
from jaxr1.sampling import STOP_LENGTH
from jaxr1.sampling.layout import batch_shards

# Sampler seeds: round 0 is the step's rollout, rounds 1.. its DAPO refills. jax.random.key keeps 32 bits of
# an int seed, so rounds are spaced 2^24 apart: every (step, round) of a run has its own seed while
# step < 2^24 and round < 2^8 (the old `seed + 7919 * round` met step + 7919's rollout seed).
SEED_STRIDE = 1 << 24
MAX_SEED_ROUNDS = 1 << 8


def rollout_seed(seed: int, step: int, round_: int = 0) -> int:
    if not (0 <= step < SEED_STRIDE and 0 <= round_ < MAX_SEED_ROUNDS):
        raise ValueError(f"step {step} / refill round {round_} outside the seed layout "
                         f"(step < {SEED_STRIDE}, round < {MAX_SEED_ROUNDS})")
    return (seed * 1_000_003 + step + round_ * SEED_STRIDE) % (1 << 32)


@dataclasses.dataclass(frozen=True)
class StepContext:
    cfg: Any                              # jaxr1.config.Config
    learner: Learner
    rollout: RolloutFn                    # (params, PromptBatch, seed) -> Rollout
    scorer: Any                           # RewardScorer: score() / submit() -> RewardResult
    next_batch: Callable[[], Any] | None = None   # the global PromptBatch after this one (DAPO refills)
    mesh: Any = None                      # micro-batches are sharded over it (None: left to jit)
    micro_batches: int = 1
    patches_per_slot: int | None = None
    ref_params: Any = None                # frozen initial parameters when rl.beta > 0


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """The rows the step trained on (after refills), for sample tables."""
    batch: Any                            # PromptBatch
    rollout: Rollout
    rewards: Any                          # RewardResult


def _score_args(batch, roll: Rollout, num_generations: int, max_len: int):
    examples = [ex for ex in batch.reward_inputs for _ in range(num_generations)]
    return (roll.texts, examples), dict(completion_lengths=roll.lengths, max_completion_length=max_len)


def _take_rewards(result, index: np.ndarray):
    return dataclasses.replace(result, per_function={k: v[index] for k, v in result.per_function.items()},
                               total=result.total[index])


def _concat_rewards(parts, scored):
    """Rows of several RewardResults; stats and seconds are those of every row scored (`scored`)."""
    stats = Counter()
    for r in scored:
        stats.update(r.stats)
    return dataclasses.replace(parts[0], per_function={k: np.concatenate([p.per_function[k] for p in parts])
                                                       for k in parts[0].per_function},
                               total=np.concatenate([p.total for p in parts]), stats=dict(stats),
                               seconds=sum(r.seconds for r in scored))


def refill_groups(rollout: RolloutFn, params, batch, roll: Rollout, *, seed_of_round: Callable[[int], int],
                  next_batch: Callable[[], Any], score: Callable, num_generations: int, max_rounds: int):
    """DAPO dynamic sampling around `rollout`: replace zero-variance groups with non-zero-variance groups sampled
    from further batches (at most `max_rounds`); groups still missing after that are kept (their advantage is
    0). score(batch, roll) -> RewardResult is called once per sampled batch and its rows are reused.
    Returns (batch, rollout, rewards, number of dropped groups)."""
    G = num_generations

    def informative(b, result):
        return ~np.asarray(zero_variance_groups(np.asarray(result.total, np.float32), G)) & b.valid

    first = score(batch, roll)
    keep = informative(batch, first)
    batches, rolls, scored = [batch], [roll], [first]
    picks = [(0, i) for i in np.flatnonzero(keep)]
    dropped = int((~keep).sum())
    for round_ in range(1, max_rounds + 1):
        if len(picks) >= len(keep):
            break
        extra = next_batch()
        extra_roll = rollout(params, extra, seed_of_round(round_))
        result = score(extra, extra_roll)
        batches.append(extra)
        rolls.append(extra_roll)
        scored.append(result)
        picks += [(len(batches) - 1, i) for i in np.flatnonzero(informative(extra, result))]
    picks = picks[:len(keep)]
    picks += [(0, i) for i in np.flatnonzero(~keep)][:len(keep) - len(picks)]   # not enough: keep some zero groups
    rows = lambda i: np.arange(i * G, (i + 1) * G)
    merged = Rollout.concat([rolls[b].rows(rows(i)) for b, i in picks])
    rewards = _concat_rewards([_take_rewards(scored[b], rows(i)) for b, i in picks], scored)
    return PromptBatch.concat([batches[b].take([i]) for b, i in picks]), merged, rewards, dropped


def _micro_batches(ctx: StepContext, state: LearnerState, batch, roll: Rollout, valid_rows: np.ndarray):
    """Prompt micro-batches on completions cut to the step's longest (bucketed; with rl.pack_completions
    packed into shared rows, see jaxr1.rl.pack), with old (rl.num_iterations > 1; else the first update's
    own forward gives them) and reference log-probs, dispatched asynchronously."""
    rl, learner = ctx.cfg.rl, ctx.learner
    Tc = rl.max_completion_length
    lengths = np.where(valid_rows, roll.lengths, 0)
    per = len(lengths) // ctx.micro_batches
    Tt = trimmed_length(roll.lengths, Tc) if rl.trim_completions else Tc
    packing = _packing(ctx, lengths, per, Tt, batch.input_ids.shape[1])
    if packing is not None and rl.trim_completions:
        # The loss layout [completions, Tt] takes the row length, so a step's shapes are (rows, length) only.
        Tt = min(packing[0], Tc)
    tokens = roll.tokens[:, :Tt]
    mask = (np.arange(Tt)[None] < lengths[:, None]).astype(np.int32)
    shard = (lambda x: shard_batch(x, ctx.mesh)) if ctx.mesh is not None else (lambda x: x)
    mbs = []
    for c, chunk in enumerate(batch.split(ctx.micro_batches)):
        inputs, deltas = model_inputs(learner.model_config, chunk, patches_per_slot=ctx.patches_per_slot)
        rows = slice(c * per, (c + 1) * per)
        packed = None if packing is None else pack(tokens[rows], lengths[rows], rl.num_generations, *packing)
        mb = shard(MicroBatch(inputs, deltas, tokens[rows], mask[rows], np.zeros(per, np.float32), packed=packed))
        mb = dataclasses.replace(
            mb, old_logprobs=learner.logprobs(state.params, mb) if rl.num_iterations > 1 else None,
            ref_logprobs=learner.logprobs(ctx.ref_params, mb) if ctx.ref_params is not None else None)
        mbs.append(mb)
    return mbs, mask, Tt, shard


# Below this many trimmed completion slots a step is too small for packing to pay for the compilations
# its layouts add (the embedded default: 0.2 s steps, ~7 s per new layout; with packing every early step
# compiled a new one). The realistic shape (64 completions x 512) is 8x above it.
MIN_PACK_SLOTS = 4096


def _packing(ctx: StepContext, lengths: np.ndarray, per: int, trimmed: int, prompt_len: int
             ) -> tuple[int, int, int] | None:
    """rl.pack_completions: the step's (row length, rows per micro-batch, prompts per row), one layout for
    all its micro-batches (jaxr1.rl.pack.choose_layout, costed with the model's FLOPs per token and per
    attention key); None when completions run one per row (packing off, or a step under MIN_PACK_SLOTS
    trimmed slots)."""
    rl = ctx.cfg.rl
    if not (rl.pack_completions and rl.shared_prompt) or len(lengths) * trimmed < MIN_PACK_SLOTS:
        return None
    chunks = [lengths[i:i + per] for i in range(0, len(lengths), per)]
    shards = 1 if ctx.mesh is None else batch_shards(ctx.mesh)
    return choose_layout(chunks, rl.num_generations, max(int(lengths.max()), 1), rl.max_completion_length, shards,
                         prompt_len=prompt_len, key_cost=key_cost(ctx.learner.model_config.text),
                         max_prompts=rl.pack_prompts_per_row)


def grpo_step(state: LearnerState, batch, ctx: StepContext) -> tuple[LearnerState, dict, StepRecord]:
    """One GRPO step on the global PromptBatch `batch`: step number int(state.step) + 1. `state`'s buffers are
    donated to the update (use the returned state); `batch` is not changed. Returns the new state, the scalars
    the trainer logs, and the rows trained on."""
    cfg, learner = ctx.cfg, ctx.learner
    rl = cfg.rl
    G, Tc = rl.num_generations, rl.max_completion_length
    step = int(state.step) + 1
    t0 = time.time()
    roll = ctx.rollout(state.params, batch, rollout_seed(cfg.seed, step))
    t_sample = time.time() - t0
    dropped_groups, rewards, future = 0, None, None

    def score(b, r):
        args, kw = _score_args(b, r, G, Tc)
        return ctx.scorer.score(*args, **kw)

    if rl.dynamic_sampling:
        # DAPO: groups whose rewards all agree carry no signal; swap them for groups of fresh prompts.
        batch, roll, rewards, dropped_groups = refill_groups(
            ctx.rollout, state.params, batch, roll, seed_of_round=lambda r: rollout_seed(cfg.seed, step, r),
            next_batch=ctx.next_batch, score=score, num_generations=G, max_rounds=rl.max_refill_rounds)

    # Rewards run in worker processes while the device computes old/reference log-probs.
    t1 = time.time()
    if rewards is None:
        args, kw = _score_args(batch, roll, G, Tc)
        future = ctx.scorer.submit(*args, **kw)
    valid_rows = np.repeat(batch.valid, G)
    mbs, mask, Tt, shard = _micro_batches(ctx, state, batch, roll, valid_rows)
    if future is not None:
        rewards = future.result()
    jax.block_until_ready([(mb.old_logprobs, mb.ref_logprobs) for mb in mbs])
    t_reward = time.time() - t1   # rewards and old/reference log-probs, overlapped

    t2 = time.time()
    total = np.where(valid_rows, rewards.total, 0.0).astype(np.float32)
    adv, adv_stats = compute_advantages(rl.algorithm, total, G, **advantage_options(rl.algorithm, rl))
    adv = to_host(adv)
    per = len(total) // len(mbs)
    mbs = [dataclasses.replace(mb, advantages=shard(adv[c * per:(c + 1) * per])) for c, mb in enumerate(mbs)]
    normalizer = float(compute_loss_normalizer(mask, rl.loss_aggregation))
    for i in range(rl.num_iterations):
        state, train_metrics, logprobs = learner.update(state, mbs, normalizer)
        if i == 0:   # on-policy micro-batches: the first pass's log-probs are their old log-probs
            old = [mb.old_logprobs if mb.old_logprobs is not None else lp for mb, lp in zip(mbs, logprobs)]
    state = dataclasses.replace(state, step=state.step + 1)
    t_train = time.time() - t2

    times = {"time/sample_s": t_sample, "time/reward_s": t_reward, "time/train_s": t_train}
    metrics = step_metrics(cfg, roll, rewards, total, valid_rows, mask, Tt, mbs, old, adv_stats, train_metrics,
                           dropped_groups=dropped_groups, lr=float(learner.schedule(step - 1)), times=times,
                           started=t0)
    return state, metrics, StepRecord(batch, roll, rewards)


def step_metrics(cfg, roll: Rollout, rewards, total: np.ndarray, valid_rows: np.ndarray, mask: np.ndarray,
                 Tt: int, mbs, old: list, adv_stats: dict, train_metrics: dict, *, dropped_groups: int, lr: float,
                 times: dict, started: float) -> dict:
    """The scalars the trainer logs for one step (over the valid rows): rewards, completion lengths, how full
    the training forward is, the sampler-trainer log-prob gap (`old`: the first update's log-probs), timings
    (time/step_s since `started`, once the gap has waited for the update)."""
    gap = np.abs(np.concatenate([to_host(x) for x in old]) - roll.logprobs[:, :Tt])[mask > 0]
    v, lengths = valid_rows, roll.lengths
    names = [r.name for r in cfg.rewards.functions]
    metrics = {f"reward/{k}": float(np.mean(rewards.per_function[k][v])) for k in names}
    metrics.update({
        "reward/total_mean": float(total[v].mean()), "reward/total_std": float(total[v].std()),
        "completion/length_mean": float(lengths[v].mean()), "completion/length_max": float(lengths[v].max()),
        "completion/truncated_frac": float(np.mean(roll.stop_reason[v] == STOP_LENGTH)),
        "completion/trained_length": float(Tt),
        # real completion tokens / completion slots the training forward runs (packing, trimming)
        "completion/train_token_fill": float(mask.sum()) / max(sum(
            (mb.packed.tokens if mb.packed is not None else mb.completions).size for mb in mbs), 1),
        "rl/dynamic_sampling_refilled_groups": float(dropped_groups),
        "rl/zero_std_frac": float(adv_stats.get("zero_std_frac", 0.0)),
        "rl/sampler_trainer_logprob_gap": float(gap.mean()) if gap.size else 0.0,
        "rl/sampler_trainer_logprob_gap_max": float(gap.max()) if gap.size else 0.0,
        "optim/lr": lr,
        **times, "time/step_s": time.time() - started,
        "throughput/tokens_per_s": float(lengths[v].sum()) / max(times["time/sample_s"], 1e-9),
        **{f"reward_stats/{k}": float(x) for k, x in rewards.stats.items() if np.isscalar(x)},
        **{f"train/{k}": float(x) for k, x in train_metrics.items()},
    })
    if "accuracy" in rewards.per_function:
        metrics["accuracy"] = metrics["reward/accuracy"]
    if "format" in rewards.per_function:
        metrics["format_rate"] = metrics["reward/format"]
    return metrics
