"""DAPO dynamic sampling: zero-variance groups are dropped and refilled from further batches."""
import json

import numpy as np


def test_refill_rows_carry_images_and_padding():
    """DAPO's refilled batch: single rows of several batches, concatenated (what refill_groups builds)."""
    from jaxr1.data.processing import PromptBatch
    a = PromptBatch(np.array([[0, 5, 6], [7, 8, 9]], np.int32), np.array([[0, 1, 1], [1, 1, 1]], np.int32),
                    np.arange(12, dtype=np.float32).reshape(6, 2), np.array([[1, 2, 2], [1, 1, 2]]),
                    [{"answer": "a0"}, {"answer": "a1"}], np.array([True, True]), np.array([1, 1], np.int32))
    b = PromptBatch(np.array([[1, 2], [3, 4]], np.int32), np.ones((2, 2), np.int32), None, None,
                    [{"answer": "b0"}, {"answer": "b1"}], np.array([True, False]), np.array([0, 0], np.int32))
    out = PromptBatch.concat([b.take([0]), a.take([1])])
    assert out.input_ids.tolist() == [[0, 1, 2], [7, 8, 9]]
    assert out.attention_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out.image_grid_thw.tolist() == [[1, 1, 2]] and out.pixel_values.tolist() == a.pixel_values[4:].tolist()
    assert [e["answer"] for e in out.reward_inputs] == ["b0", "a1"] and out.image_counts.tolist() == [0, 1]


def test_dynamic_sampling_run(tmp_path):
    from jaxr1.train import main
    out = tmp_path / "run"
    # A random model never answers right: every group has zero reward variance, so all are refilled (and,
    # with nothing informative found, kept): the step still runs with a full batch.
    assert main(["model.path=tiny-random", "steps=1", "data.batch_size=2", "rl.num_generations=2",
                 "rl.max_completion_length=6", "data.num_eval=2", "eval.batch_size=2", "eval.max_new_tokens=2",
                 "rl.dynamic_sampling=true", "rl.max_refill_rounds=1", f"output_dir={out}"]) == 0
    row = [json.loads(l) for l in open(out / "metrics.jsonl") if "train/loss" in l][0]
    assert row["rl/dynamic_sampling_refilled_groups"] == 2 and row["data/epoch"] > 0
