"""python -m jaxr1.sft [--config FILE.yaml] [key.sub=value ...]

Supervised warm start on the same data code as RL: teacher-forced cross-entropy of a target completion
(`sft.target_template`, filled with the row's gold answer) after the prompt, images encoded once per prompt.
Writes an HF directory (and tokenizer files) to `<output_dir>/hf` for RL to start from.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxr1 import compile_cache
from jaxr1.config import load_config
from jaxr1.data import build_dataset
from jaxr1.data.text import eos_ids
from jaxr1.loading import load_policy
from jaxr1.models import save_hf
from jaxr1.models.inputs import max_patches, model_inputs
from jaxr1.rewards import extract_answer
from jaxr1.rl.policy import completion_logprobs

log = logging.getLogger("jaxr1.sft")


def encode_targets(tokenizer, texts: list[str], length: int, eos_id: int):
    """[B, length] target tokens (each text + eos, cut to length) and their mask."""
    tokens = np.zeros((len(texts), length), np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        ids = (tokenizer(text, add_special_tokens=False).input_ids + [eos_id])[:length]
        tokens[i, :len(ids)] = ids
        mask[i, :len(ids)] = 1
    return tokens, mask


def target_ids(tokenizer, examples: list[dict], template: str, length: int, eos_id: int):
    """encode_targets of the template filled with each row's gold answer (unwrapped from its tags)."""
    answers = [extract_answer(str(ex["answer"])) or str(ex["answer"]) for ex in examples]
    return encode_targets(tokenizer, [template.format(answer=a.strip()) for a in answers], length, eos_id)


class SFTTrainer:
    def __init__(self, model, lr: float, steps: int, *, compute_dtype="float32", remat: bool = False):
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self.tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), max(steps, 2)),
                              weight_decay=0.0)
        self.opt_state = self.tx.init(self.params)
        self.compute_dtype, self.remat = jnp.dtype(compute_dtype), remat

    def _loss(self, params, prompt, deltas, tokens, mask):
        model = nnx.merge(self.graphdef, jax.tree.map(lambda x: x.astype(self.compute_dtype), params))
        lp, _ = completion_logprobs(model, prompt, deltas, tokens, mask, remat=self.remat)
        m = mask.astype(jnp.float32)
        return -(lp * m).sum() / jnp.maximum(m.sum(), 1.0)

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
    def step(self, params, opt_state, prompt, deltas, tokens, mask):
        loss, grads = jax.value_and_grad(self._loss)(params, prompt, deltas, tokens, mask)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def model(self):
        return nnx.merge(self.graphdef, self.params)


def run_sft(model, tokenizer, image_processor, data_cfg, *, steps: int, lr: float, template: str | None = None,
            max_target_length: int = 32, log_every: int = 20, callback=None, targets=None,
            schedule_steps: int | None = None):
    """Train `model` for `steps` batches of `data_cfg`; returns the updated model and the loss history.

    Targets come from `template` (filled with each row's answer) or from targets(examples, length, eos_id) ->
    ([B, length] tokens, mask), e.g. a reasoning text built from each row's metadata (see encode_targets).
    schedule_steps (default: steps) is the length of the warmup-cosine schedule; stopping before its end leaves
    a partly trained model.
    """
    if (template is None) == (targets is None):
        raise ValueError("run_sft needs exactly one of template and targets")
    trainer = SFTTrainer(model, lr, schedule_steps or steps)
    if targets is None:
        targets = functools.partial(target_ids, tokenizer, template=template)
    it = iter(build_dataset(data_cfg, tokenizer, image_processor))
    eos = eos_ids(tokenizer)[0] if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    patches = max_patches(image_processor)
    losses, t0 = [], time.time()
    for step in range(1, steps + 1):
        batch = next(it)
        inputs, deltas = model_inputs(model.config, batch, patches_per_slot=patches)
        tokens, mask = targets(batch.reward_inputs, length=max_target_length, eos_id=eos)
        mask = mask * batch.valid[:, None]
        trainer.params, trainer.opt_state, loss = trainer.step(trainer.params, trainer.opt_state, inputs, deltas,
                                                               tokens, mask)
        losses.append(float(loss))
        if step % log_every == 0 or step == steps:
            log.info("sft step %d/%d loss %.4f (%.0fs)", step, steps, np.mean(losses[-log_every:]), time.time() - t0)
        if callback is not None:
            callback(step, trainer)
    return trainer.model(), losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxr1.sft", description=__doc__.splitlines()[2])
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import dataclasses

    cfg = load_config(args.config, args.overrides)
    compile_cache.enable(cfg.compilation_cache)
    model, tokenizer, image_processor, model_dir = load_policy(cfg.model)
    data_cfg = dataclasses.replace(cfg.data, batch_size=cfg.sft.batch_size)
    model, _ = run_sft(model, tokenizer, image_processor, data_cfg, steps=cfg.sft.steps, lr=cfg.sft.lr,
                       template=cfg.sft.target_template, max_target_length=cfg.sft.max_target_length)
    out = os.path.join(cfg.output_dir, "hf")
    save_hf(model, out, source_dir=model_dir)
    print(f"sft model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
