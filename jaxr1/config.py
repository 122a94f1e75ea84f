"""The one config schema: dataclasses, YAML files, dotted command-line overrides, validation.

`load_config(path, overrides)` reads YAML (or the embedded default when path is None), applies
`section.key=value` overrides (values parsed as YAML scalars), and rejects unknown keys naming the closest
valid one. `to_dict` gives the resolved config that a run saves as config.yaml.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from jaxr1.data.config import DataConfig
from jaxr1.errors import UserError
from jaxr1.models.lora import DEFAULT_TARGET as LORA_TARGET

import yaml
from jaxr1.rl.advantages import ADVANTAGE_ESTIMATORS, SCALE_REWARDS
from jaxr1.rl.losses import AGGREGATIONS, KL_ESTIMATORS


@dataclasses.dataclass
class ModelConfig:
    path: str = "tiny"                 # HF dir, jaxr1 checkpoint dir, or "tiny" (the embedded checkpoint)
    param_dtype: str = "float32"       # master weights
    compute_dtype: str = "float32"     # forward/backward and sampling ("bfloat16" on accelerators)
    freeze_vision: bool = False
    remat: bool = False                # rematerialise each layer in the backward pass
    attention: str = "auto"            # auto (splash on TPU, cudnn on GPU in bf16, xla on CPU) | xla | splash | cudnn


@dataclasses.dataclass
class LoraConfig:
    # rank 0: full fine-tuning. rank > 0: only adapters train; the base stays frozen in the compute dtype and
    # the KL reference (rl.beta > 0) is the base itself (the adapter off), so it costs no second model.
    rank: int = 0
    alpha: float = 16.0                  # scale alpha / rank (PEFT's lora_alpha)
    dropout: float = 0.0                 # only 0: see validate()
    # regex over parameter paths (language_model/layers/q_kernel, visual/blocks/qkv_kernel, ...); the default
    # is the text decoder's attention and MLP projections. Add "|visual/blocks/\w+_kernel" for the vision tower.
    target: str = LORA_TARGET


@dataclasses.dataclass
class EvalConfig:
    # The held-out data is data.eval_path (or, for synthetic training data, data.num_eval unseen scenes).
    batch_size: int = 32
    max_new_tokens: int = 64
    num_samples: int = 1                  # pass@k with k = num_samples (greedy when temperature = 0)
    temperature: float = 0.0
    every: int = 0                        # during training, every N steps (0 = before and after only)


@dataclasses.dataclass
class RLConfig:
    algorithm: str = "grpo"               # advantage estimator: grpo | dr_grpo | rloo | reinforce_pp
    num_generations: int = 8
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    scale_rewards: str = "group"          # grpo only: group | batch | none
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2             # DAPO clip-higher: 0.28
    importance_level: str = "token"       # token | sequence (GSPO)
    loss_aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    beta: float = 0.0                     # KL weight; 0 never builds the reference model
    kl_estimator: str = "k3"
    num_iterations: int = 1               # optimisation passes over each rollout
    micro_batch_prompts: int = 0          # prompts per micro-batch (0 = the whole batch)
    dynamic_sampling: bool = False        # DAPO: drop zero-variance groups and refill
    max_refill_rounds: int = 3
    logprob_chunk: int = 128
    trim_completions: bool = True         # train on completions cut to the step's longest (bucketed); false: pad to max
    shared_prompt: bool = True            # each prompt once through the decoder for its G completions; false: repeat it
    pack_completions: bool = True         # with shared_prompt: a prompt's completions packed into shared rows
    pack_prompts_per_row: int = 2         # packing: rows may hold completions of up to this many prompts (1 or 2)
    compact_finished_rows: bool = True    # sampler: stopped rows leave the batch between decode segments (same tokens)


@dataclasses.dataclass
class RewardSpec:
    name: str = "accuracy"                # registry name or module.path:function
    weight: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RewardsConfig:
    functions: list[RewardSpec] = dataclasses.field(
        default_factory=lambda: [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.5)])
    num_workers: int = 2
    timeout_s: float = 5.0
    # How the verifier compares numbers (the accuracy reward and held-out accuracy): "exact" (equal after
    # rounding to 6 decimals; a rounded-decimal gold matches values that round to it) or "rounded" (a
    # prediction decimal with >= min_sig_digits significant digits matches an exact gold it rounds to).
    numeric_match: str = "exact"
    min_sig_digits: int = 3


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-6
    schedule: str = "constant"            # constant | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    max_grad_norm: float = 1.0


@dataclasses.dataclass
class SFTConfig:
    steps: int = 200                      # python -m jaxr1.sft: supervised warm start on the same data
    lr: float = 1e-3
    batch_size: int = 16
    target_template: str = "<think>I count the objects in the image.</think><answer>{answer}</answer>"
    max_target_length: int = 32


@dataclasses.dataclass
class ParallelConfig:
    data: int = -1                        # -1: the devices left over by the other axes
    fsdp: int = 1                         # splits parameters/optimizer state and the batch
    tensor: int = 1                       # splits heads and MLP columns (must divide the attention heads)
    device_memory_gb: float = 80.0        # per-device memory the dry run checks against (H100: 80)


@dataclasses.dataclass
class WandbConfig:
    # Off until a project is set. mode "offline" writes RUN/wandb/ with no network (upload later: wandb sync).
    project: str | None = None
    entity: str | None = None
    name: str | None = None               # the run's display name (default: wandb's)
    mode: str = "online"                  # online | offline | disabled


@dataclasses.dataclass
class LoggingConfig:
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(path="synthetic:counting"))
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    rl: RLConfig = dataclasses.field(default_factory=RLConfig)
    rewards: RewardsConfig = dataclasses.field(default_factory=RewardsConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    steps: int = 100
    seed: int = 0
    output_dir: str = "runs/default"
    log_every: int = 1
    sample_every: int = 10                # write samples.jsonl rows every N steps
    save_every: int = 0                   # orbax checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    export_hf: bool = True
    # XLA's persistent compilation cache (a restart loads what it compiled before): auto
    # ($JAX_COMPILATION_CACHE_DIR, else ~/.cache/jaxr1/xla) | off | a directory
    compilation_cache: str = "auto"
    # An output_dir that holds a run: "auto" resumes it when the config is compatible (else stops, naming the
    # differing keys); "never" starts over (old files moved aside); "force" continues it anyway; STEP resumes
    # from that checkpoint.
    resume: int | str = "auto"


class ConfigError(UserError, ValueError):
    pass


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else f" (valid: {', '.join(sorted(options))})"


def _build(cls, data: Any, where: str):
    if not dataclasses.is_dataclass(cls):
        return data
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}{_closest(key, fields)}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _coerce(hint, value, path):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_build(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, list) and any(typing.get_origin(a) is tuple for a in args):
        return tuple(value)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ConfigError(f"{path}: may not be null")
    if origin in (typing.Union, types.UnionType) and len([a for a in args if a is not type(None)]) > 1:
        if isinstance(value, bool) or not isinstance(value, tuple(a for a in args if a is not type(None))):
            raise ConfigError(f"{path}: expected {' or '.join(a.__name__ for a in args)}, got {value!r}")
        return value
    base = next((a for a in args if a is not type(None)), hint) if origin in (typing.Union, types.UnionType) else hint
    if base is float and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "1e-6" as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if base is str and isinstance(value, bool):
        return str(value).lower()   # YAML 1.1 reads off / no / on / yes as booleans
    if base in (int, bool, str) and not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {base.__name__}, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    """The resolved config as plain YAML data (tuples as lists): what a run saves as config.yaml."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def apply_override(raw: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key.sub=value")
    key, value = dotted.split("=", 1)
    node, cls = raw, Config
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}{_closest(part, fields)}")
        if i == len(parts) - 1:
            node[part] = yaml.safe_load(value) if value.strip() else None
        else:
            cls = typing.get_type_hints(cls)[part]
            node = node.setdefault(part, {})


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    raw: dict = {}
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for o in overrides:
        apply_override(raw, o)
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    # rl.* names are checked against the registries that run them: a new estimator needs no edit here.
    choices = {
        "rl.algorithm": (cfg.rl.algorithm, tuple(ADVANTAGE_ESTIMATORS)),
        "rl.scale_rewards": (cfg.rl.scale_rewards, SCALE_REWARDS),
        "rl.importance_level": (cfg.rl.importance_level, ("token", "sequence")),
        "rl.loss_aggregation": (cfg.rl.loss_aggregation, tuple(AGGREGATIONS)),
        "rl.kl_estimator": (cfg.rl.kl_estimator, tuple(KL_ESTIMATORS)),
        "optim.schedule": (cfg.optim.schedule, ("constant", "cosine")),
        "model.param_dtype": (cfg.model.param_dtype, ("float32", "bfloat16")),
        "model.compute_dtype": (cfg.model.compute_dtype, ("float32", "bfloat16")),
        "model.attention": (cfg.model.attention, ("auto", "xla", "splash", "cudnn")),
        "rewards.numeric_match": (cfg.rewards.numeric_match, ("exact", "rounded")),
        "logging.wandb.mode": (cfg.logging.wandb.mode, ("online", "offline", "disabled")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            match = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ConfigError(f"{key}={value!r}: expected one of {allowed}{hint}")
    if cfg.rl.num_generations < 1 or cfg.data.batch_size < 1 or cfg.rl.max_completion_length < 1:
        raise ConfigError("rl.num_generations, data.batch_size and rl.max_completion_length must be >= 1")
    if not (cfg.resume in ("auto", "never", "force") or isinstance(cfg.resume, int) and cfg.resume >= 0):
        raise ConfigError(f"resume={cfg.resume!r}: expected auto, never, force or a checkpoint step")
    if cfg.rl.pack_prompts_per_row not in (1, 2):
        raise ConfigError(f"rl.pack_prompts_per_row={cfg.rl.pack_prompts_per_row}: expected 1 or 2 (a row's "
                          f"attention reads every prompt it holds, so more would cost more than it fills)")
    if cfg.lora.rank < 0:
        raise ConfigError(f"lora.rank={cfg.lora.rank}: must be >= 0 (0 = full fine-tuning)")
    if cfg.lora.dropout != 0.0:
        # GRPO's ratio compares the update's log-probs with the sampler's (taken without dropout): dropout
        # noise would move it off 1 on-policy and shows up as clipping, so adapters train without it.
        raise ConfigError(f"lora.dropout={cfg.lora.dropout}: only 0.0 is supported (dropout perturbs the "
                          f"importance ratio against the sampler's log-probs); set lora.dropout=0")
    if cfg.lora.rank:
        import re
        try:
            re.compile(cfg.lora.target)
        except re.error as e:
            raise ConfigError(f"lora.target={cfg.lora.target!r}: not a regular expression ({e})") from None
    mb = cfg.rl.micro_batch_prompts
    if mb and cfg.data.batch_size % mb:
        raise ConfigError(f"rl.micro_batch_prompts={mb} must divide data.batch_size={cfg.data.batch_size}")
