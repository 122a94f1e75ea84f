"""python -m jaxr1.eval: its accuracy equals an independent greedy decode + integer check of the same rows."""
import json
import re

import numpy as np


def naive_greedy(model, input_ids, attention_mask, pixel_values, grid, steps, eos):
    """Full forward per token (no cache, no sampler): the reference the sampler must agree with."""
    b, t0 = np.asarray(input_ids).shape
    # Right-pad with masked slots so every step has one shape (one compilation); causal attention means the
    # masked future slots never influence the logits read at the last real position.
    ids = np.concatenate([np.asarray(input_ids), np.zeros((b, steps), np.int32)], 1)
    mask = np.concatenate([np.asarray(attention_mask), np.zeros((b, steps), np.int32)], 1)
    out = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    for k in range(steps):
        nxt = np.asarray(model(ids, mask, pixel_values, grid))[:, t0 + k - 1].argmax(-1)
        for i, t in enumerate(nxt):
            if not done[i]:
                out[i].append(int(t))
                done[i] = int(t) in eos
        ids[:, t0 + k], mask[:, t0 + k] = nxt, 1
    return out


def test_eval_cli_matches_independent_accuracy(tmp_path, capsys):
    from jaxr1.config import load_config
    from jaxr1.data import write_synthetic_dataset
    from jaxr1.eval import main
    from jaxr1.data.text import eos_ids
    from jaxr1.loading import build_eval_batches, load_policy
    data = write_synthetic_dataset(str(tmp_path / "data"), 8, seed=7)
    out = tmp_path / "answers.jsonl"
    assert main(["--model", "tiny", "--data", data, "--out", str(out), "eval.max_new_tokens=24",
                 "eval.batch_size=8"]) == 0
    printed = capsys.readouterr().out
    reported = json.loads(printed[printed.index("{"):])
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == 8

    cfg = load_config(None, [f"data.path={data}", "model.path=tiny", "eval.batch_size=8"])
    model, tok, ip, _ = load_policy(cfg.model, cfg.data)
    (batch,) = build_eval_batches(cfg, tok, ip, data_cfg=cfg.data)
    gen = naive_greedy(model, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw, 24,
                       set(eos_ids(tok)))
    expected = []
    for g, ex in zip(gen, batch.reward_inputs):
        text = tok.decode(g, skip_special_tokens=True)
        m = re.findall(r"<answer>\s*(-?\d+)\s*</answer>", text)
        gold = int(re.search(r"\d+", ex["answer"]).group())
        expected.append(bool(m) and int(m[-1]) == gold)
    assert [r["correct"] for r in sorted(rows, key=lambda r: r["row"])] == expected
    assert reported["accuracy"] == sum(expected) / len(expected) and reported["num_rows"] == 8
    print(f"independent accuracy {np.mean(expected):.3f}")
