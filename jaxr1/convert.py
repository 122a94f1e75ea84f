"""python -m jaxr1.convert from-hf HF_DIR OUT_DIR | to-hf CKPT_DIR OUT_DIR | merge-lora BASE ADAPTER_DIR OUT_DIR

from-hf: an HF Qwen2.5-VL directory -> a jaxr1 (orbax) model checkpoint, tokenizer files alongside.
to-hf:   a jaxr1 checkpoint (a model checkpoint, a training checkpoint RUN/checkpoints/STEP, or a run directory:
         its newest) -> an HF directory that transformers' from_pretrained loads.
merge-lora: a base model (HF directory, jaxr1 checkpoint or run) + a PEFT LoRA adapter directory (RUN/adapter,
         or one PEFT wrote for this base) -> an HF directory with W + (alpha / r) A B in every adapted kernel.
"""
from __future__ import annotations

import argparse
import sys
import time
from jaxr1.checkpointing import save_model
from jaxr1.errors import UserError
from jaxr1.errors import run_cli
from jaxr1.loading import load_checkpoint, resolve_model_dir
from jaxr1.loading import load_model_dir
from jaxr1.models import load_hf, save_hf
from jaxr1.models.lora import merge_adapters
from jaxr1.models.peft import is_adapter_dir, load_peft_adapter
from jaxr1.run_dir import processor_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxr1.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("from-hf", help="HF directory -> jaxr1 checkpoint")
    a.add_argument("src")
    a.add_argument("out")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    b = sub.add_parser("to-hf", help="jaxr1 checkpoint -> HF directory")
    b.add_argument("src")
    b.add_argument("out")
    b.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    c = sub.add_parser("merge-lora", help="base model + PEFT LoRA adapter -> merged HF directory")
    c.add_argument("src", help="the adapter's base model")
    c.add_argument("adapter", help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    c.add_argument("out")
    c.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="of the merged weights (default: float32 for an HF base, else as saved)")
    args = ap.parse_args(argv)

    import jax
    jax.config.update("jax_platforms", jax.config.jax_platforms or "cpu")  # conversion needs no accelerator
    return run_cli(lambda: _convert(args), "jaxr1.convert")


def _convert(args) -> int:

    t0 = time.time()
    src = resolve_model_dir(args.src)
    if args.cmd == "from-hf":
        model = load_hf(src, dtype=args.dtype)
        save_model(model, args.out, source_dir=src)
    elif args.cmd == "merge-lora":
        if not is_adapter_dir(args.adapter):
            raise UserError(f"{args.adapter}: not a PEFT adapter directory (no adapter_config.json)")
        # W + s A B is formed in float32 and cast to the kernel's dtype (the same as merging a float32 copy).
        model = merge_adapters(load_peft_adapter(load_model_dir(src, args.dtype), args.adapter))
        save_hf(model, args.out, source_dir=processor_dir(src))
    else:   # a model checkpoint, a training checkpoint (RUN/checkpoints/STEP) or a run directory (its newest)
        model = load_checkpoint(src, dtype=args.dtype)
        save_hf(model, args.out, source_dir=processor_dir(src))
    print(f"{args.cmd}: {args.src} -> {args.out} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
