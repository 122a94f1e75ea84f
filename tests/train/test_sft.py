"""SFT warm start: the loss falls on a repeated batch, targets come from the template or a hook, and the CLI
writes an HF directory that loads back."""
import numpy as np


def test_target_ids_fill_template_and_mask():
    from transformers import AutoTokenizer

    from jaxr1.assets import TINY_MODEL_DIR
    from jaxr1.sft import target_ids
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    tokens, mask = target_ids(tok, [{"answer": "<answer>3</answer>"}, {"answer": "12"}], "<answer>{answer}</answer>",
                              length=12, eos_id=7)
    first = tok("<answer>3</answer>", add_special_tokens=False).input_ids + [7]
    assert tokens[0, :len(first)].tolist() == first and mask[0].sum() == len(first)
    assert tokens[0, len(first):].sum() == 0 and mask[0, len(first):].sum() == 0
    assert tok.decode(tokens[1, :mask[1].sum() - 1]) == "<answer>12</answer>"


def test_sft_cli_lowers_loss_and_writes_hf(tmp_path):
    import dataclasses

    from jaxr1.config import load_config
    from jaxr1.models.qwen2_5_vl import load_hf
    from jaxr1.sft import main, run_sft
    from jaxr1.loading import load_policy
    cfg = load_config(None, ["model.path=tiny-random", "data.max_objects=2"])
    model, tok, ip, _ = load_policy(cfg.model, cfg.data)
    # One batch over and over (one synthetic row repeated): the loss must fall well below its start.
    data = dataclasses.replace(cfg.data, batch_size=2, num_synthetic=2, shuffle=False)
    calls = []
    _, losses = run_sft(model, tok, ip, data, steps=12, lr=3e-3, template="<answer>{answer}</answer>",
                        max_target_length=8, callback=lambda step, trainer: calls.append(step))
    assert calls == list(range(1, 13)) and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses

    out = tmp_path / "sft"
    assert main(["model.path=tiny-random", "sft.steps=2", "sft.batch_size=2", f"output_dir={out}"]) == 0
    reloaded = load_hf(str(out / "hf"))
    assert reloaded.config.text.vocab_size == model.config.text.vocab_size
