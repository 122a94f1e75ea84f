"""python -m jaxr1.convert from-hf HF_DIR OUT_DIR | to-hf CKPT_DIR OUT_DIR

from-hf: an HF Qwen2.5-VL directory -> a jaxr1 (orbax) model checkpoint, tokenizer files alongside.
to-hf:   a jaxr1 checkpoint (a model checkpoint, a training checkpoint RUN/checkpoints/STEP, or a run directory:
         its newest) -> an HF directory that transformers' from_pretrained loads.
"""
from __future__ import annotations

import argparse
import sys
import time


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
    args = ap.parse_args(argv)

    import jax
    jax.config.update("jax_platforms", jax.config.jax_platforms or "cpu")  # conversion needs no accelerator
    from jaxr1.errors import run_cli
    return run_cli(lambda: _convert(args), "jaxr1.convert")


def _convert(args) -> int:
    from jaxr1.checkpointing import load_model, save_model
    from jaxr1.loading import processor_dir, resolve_model_dir
    from jaxr1.models import load_hf, save_hf

    t0 = time.time()
    src = resolve_model_dir(args.src)
    if args.cmd == "from-hf":
        model = load_hf(src, dtype=args.dtype)
        save_model(model, args.out, source_dir=src)
    else:   # a model checkpoint, a training checkpoint (RUN/checkpoints/STEP) or a run directory (its newest)
        model = load_model(src, dtype=args.dtype)
        save_hf(model, args.out, source_dir=processor_dir(src))
    print(f"{args.cmd}: {args.src} -> {args.out} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
