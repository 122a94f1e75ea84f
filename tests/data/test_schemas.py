"""Each row schema and each image form loads into prompts with the right reward example."""
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jaxr1.data import R1_SYSTEM_PROMPT, build_dataset
from tests.data.conftest import config, make_image, png_bytes, save_image, write_jsonl

REWARD_KEYS = {"answer", "choices", "task", "problem", "source", "row"}


def rows_of(ds):
    """(prompt text, reward example, image count) for every real row, in order."""
    tok = ds.preprocess.tokenizer
    out = []
    for b in ds:
        for i in np.flatnonzero(b.valid):
            text = tok.decode(b.input_ids[i][b.attention_mask[i] == 1])
            out.append((text, b.reward_inputs[i], int(b.image_counts[i])))
    return out


def test_r1v_jsonl_relative_and_absolute_paths(tmp_path, processors):
    save_image(str(tmp_path / "imgs/a.png"))
    absolute = save_image(str(tmp_path / "elsewhere/b.png"), 90, 50)
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"image": "imgs/a.png", "problem": "How many?", "solution": "<answer> 3 </answer>"},
        {"image": absolute, "problem": "Area?", "solution": "12.5"},
    ])
    got = rows_of(build_dataset(config(path), *processors))
    assert [ex["answer"] for _, ex, _ in got] == ["3", "12.5"]
    text, ex, n_img = got[0]
    assert set(ex) == REWARD_KEYS and n_img == 1
    assert ex == {"answer": "3", "choices": None, "task": None, "problem": "How many?", "source": path, "row": 0}
    assert R1_SYSTEM_PROMPT in text and text.endswith("How many?<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|vision_start|>") == 1


def test_parquet_bytes_dicts_and_raw_bytes(tmp_path, processors):
    img = make_image(70, 40)
    table = pa.table({
        "image": [{"bytes": png_bytes(img), "path": "x.png"}, {"bytes": None, "path": "rel.png"}],
        "problem": ["q0", "q1"], "solution": ["1", "2"]})
    save_image(str(tmp_path / "rel.png"))
    pq.write_table(table, tmp_path / "d.parquet")
    pq.write_table(pa.table({"image": [png_bytes(img)], "question": ["q"], "answer": ["7"]}), tmp_path / "raw.parquet")
    ds = build_dataset(config([tmp_path / "d.parquet", tmp_path / "raw.parquet"], batch_size=3), *processors)
    got = rows_of(ds)
    assert [(ex["answer"], ex["row"], n) for _, ex, n in got] == [("1", 0, 1), ("2", 1, 1), ("7", 0, 1)]
    assert got[2][1]["source"].endswith("raw.parquet")


def test_saved_datasets_dir_with_image_feature(tmp_path, processors):
    features = datasets.Features({"image": datasets.Image(), "problem": datasets.Value("string"),
                                  "solution": datasets.Value("string")})
    hf = datasets.Dataset.from_dict({"image": [make_image(), make_image(50, 90, 1)], "problem": ["a", "b"],
                                     "solution": ["<answer>4</answer>", "<answer>5</answer>"]}, features=features)
    hf.save_to_disk(str(tmp_path / "saved"))
    got = rows_of(build_dataset(config(tmp_path / "saved"), *processors))
    assert [(ex["answer"], ex["row"], n) for _, ex, n in got] == [("4", 0, 1), ("5", 1, 1)]


def test_lmmr1_json_string_messages(tmp_path, processors):
    save_image(str(tmp_path / "p.png"))
    message = [{"role": "user", "content": [{"type": "image", "image": "file://" + str(tmp_path / "p.png")},
                                            {"type": "text", "text": "Solve for x."}]}]
    path = write_jsonl(tmp_path / "lmm.jsonl", [{"message": json.dumps(message), "answer": "$\\boxed{2}$"}])
    (text, ex, n), = rows_of(build_dataset(config(path), *processors))
    assert n == 1 and ex["answer"] == "$\\boxed{2}$" and ex["problem"] == "Solve for x."
    assert text.index("<|vision_end|>") < text.index("Solve for x.")


def test_swift_messages_two_images_in_order(tmp_path, processors):
    save_image(str(tmp_path / "a.png"), 56, 112)
    save_image(str(tmp_path / "b.png"), 112, 56)
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "<image>Left, then right:<image>Which is taller?"},
                        {"role": "assistant", "content": "the right one"}],
           "images": ["a.png", "b.png"], "solution": "right"}
    ds = build_dataset(config(write_jsonl(tmp_path / "s.jsonl", [row]), batch_size=1), *processors)
    batch = next(iter(ds))
    text = ds.preprocess.tokenizer.decode(batch.input_ids[0][batch.attention_mask[0] == 1])
    assert batch.image_counts.tolist() == [2] and batch.reward_inputs[0]["answer"] == "right"
    h, w = batch.image_grid_thw[:, 1], batch.image_grid_thw[:, 2]
    assert w[0] > h[0] and h[1] > w[1]  # the images keep their order
    assert "Be brief." in text and R1_SYSTEM_PROMPT not in text  # the row's own system turn wins
    assert "the right one" not in text and text.count("<|vision_start|>") == 2
    assert text.index("Left, then right:") < text.rindex("<|vision_start|>")


def test_text_only_rows_mixed_with_image_rows(tmp_path, processors):
    save_image(str(tmp_path / "a.png"))
    path = write_jsonl(tmp_path / "mix.jsonl", [
        {"image": "a.png", "problem": "Count.", "solution": "2"},
        {"problem": "What is 2+2?", "solution": "4"},
        {"image": None, "problem": "What is 3+3?", "solution": "6"}])
    ds = build_dataset(config(path, batch_size=3), *processors)
    batch = next(iter(ds))
    assert batch.image_counts.tolist() == [1, 0, 0]
    assert len(batch.image_grid_thw) == 1 and len(batch.pixel_values) == int(batch.image_grid_thw[0].prod())


def test_json_list_choices_and_templates(tmp_path, processors):
    rows = [{"question": "Which animal?", "choices": ["cat", "dog"], "answer": "B"},
            {"question": "Pick one: A. red B. blue", "options": {"A": "red", "B": "blue"}, "answer": "A"}]
    (tmp_path / "mc.json").write_text(json.dumps(rows))
    cfg = config(tmp_path / "mc.json", question_template="r1v", system_prompt=None, task="mcq")
    (t0, e0, _), (t1, e1, _) = rows_of(build_dataset(cfg, *processors))
    assert e0["choices"] == ["cat", "dog"] and e1["choices"] == ["red", "blue"] and e0["task"] == "mcq"
    assert "Which animal?\nA. cat\nB. dog Output the thinking process" in t0
    assert "Pick one: A. red B. blue Output" in t1  # options already in the question: not repeated
    assert "You are a helpful assistant." in t0  # no system prompt: Qwen's template default


def test_grounding_row_keys(tmp_path, processors):
    save_image(str(tmp_path / "g.png"), 200, 300)
    path = write_jsonl(tmp_path / "rec.jsonl", [{"image": "g.png", "problem": "Box the dog.",
                                                  "solution": [10, 20, 110, 80]}])
    (_, ex, _), = rows_of(build_dataset(config(path), *processors))
    assert ex["task"] == "grounding" and ex["bbox"] == [10.0, 20.0, 110.0, 80.0]
    assert json.loads(ex["answer"]) == ex["bbox"]
    assert ex["image_size"] == [200, 300]
    h, w = ex["resized_size"]
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 112 * 112 and w > h
