"""Rollout throughput: jaxr1 `generate` vs transformers `generate` on the same random Qwen2.5-VL, one command.

    python scripts/bench_sampling.py                                   # CPU preset (results in benchmarks/RESULTS.md)
    python scripts/bench_sampling.py --preset 3b --dtype bfloat16 --skip-hf --hbm-bandwidth 3.35e12   # one GPU

Each side runs in its own process (no thread pool of one competes with the other) and the timed runs of all
sides are interleaved, so that they see the same load on a shared machine. Two settings, both by default:
  all cores  jaxr1 with XLA's default thread pool; transformers with 1 or all torch threads, whichever runs
             a few decode steps faster just before each timed run (on a loaded CPU one OpenMP thread is
             often several times faster than two);
  one core   both sides pinned to the same single core, single-threaded: a per-core comparison that the
             load of other processes hardly moves.
Besides wall-clock tokens/s the ratio is also given in tokens per process CPU-second.

B prompts with one image each, G samples per prompt, a fixed number of new tokens (no EOS, so both sides
generate the same count), sampling on (temperature 1, no top-k / top-p unless asked). jaxr1's compile time is
reported apart from its steady-state time. The decode roofline counts the bytes one decode step must read:
text weights + the prompt KV cache (once per prompt) + the samples' own KV (on average half the new tokens).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

import numpy as np

XLA_FLAGS_BASE = os.environ.get("XLA_FLAGS", "")

PRESETS = {
    # Qwen2.5-VL-3B's shape scaled down to be compute-bound on a CPU: widths / 4 (text 2048 -> 512, ffn
    # 11008 -> 2752, vision 1280 -> 320, ffn 3420 -> 864), depths / 4 (36 -> 8 text, 32 -> 8 vision layers,
    # one in eight with full attention), vocab 151936 -> 32768, same GQA ratio, patching and windows.
    "cpu": dict(text=dict(vocab_size=32768, hidden_size=512, intermediate_size=2752, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=2, mrope_section=[8, 12, 12]),
                vision=dict(depth=8, hidden_size=320, intermediate_size=864, num_heads=5,
                            fullatt_block_indexes=[7], window_size=112)),
    "3b": None,  # ModelConfig.qwen2_5_vl_3b()
}


def model_config(preset: str):
    from jaxr1.models.qwen2_5_vl import ModelConfig, TextConfig, VisionConfig
    if preset == "3b":
        return ModelConfig.qwen2_5_vl_3b()
    p = PRESETS[preset]
    text = TextConfig(**{**p["text"], "mrope_section": tuple(p["text"]["mrope_section"])})
    vision = VisionConfig(**{**p["vision"], "fullatt_block_indexes": tuple(p["vision"]["fullatt_block_indexes"]),
                             "out_hidden_size": text.hidden_size})
    v = text.vocab_size
    return ModelConfig(text=text, vision=vision, image_token_id=v - 1, video_token_id=v - 2,
                       vision_start_token_id=v - 4, vision_end_token_id=v - 3, bos_token_id=None, eos_token_id=None)


def build_model(cfg, dtype: str, seed: int, save_dir: str | None = None):
    """The random jaxr1 model (deterministic in seed); saved as an HF directory for transformers when asked."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1.models import qwen2_5_vl
    model = qwen2_5_vl.Qwen2_5_VL(cfg, jnp.dtype(dtype), nnx.Rngs(seed))
    if save_dir:
        qwen2_5_vl.save_hf(model, save_dir)
        return qwen2_5_vl.load_hf(save_dir, dtype)   # exactly what transformers will read
    return model


def make_prompts(cfg, batch: int, text_len: int, image_size: int, seed: int):
    rng = np.random.default_rng(seed)
    g = image_size // cfg.vision.patch_size
    grid = (1, g, g)
    n_img = g * g // cfg.vision.merge_unit
    rows = []
    for i in range(batch):
        head = list(rng.integers(10, 5000, text_len // 2 + i))   # different lengths: left padding on
        tail = list(rng.integers(10, 5000, text_len - text_len // 2))
        rows.append(head + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id]
                    + tail)
    t = max(map(len, rows))
    ids = np.zeros((batch, t), np.int64)
    mask = np.zeros((batch, t), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    pv = rng.standard_normal((batch * g * g, cfg.vision.patch_dim)).astype(np.float32)
    return ids, mask, pv, np.asarray([grid] * batch, np.int64)


def decode_bytes(cfg, dtype_bytes: int, batch: int, prompt_len: int, samples: int, new_tokens: int) -> float:
    t = cfg.text
    hd, kv = t.head_dim, t.num_key_value_heads
    layer = (t.hidden_size * (t.num_attention_heads * hd) * 2 + t.hidden_size * kv * hd * 2
             + 3 * t.hidden_size * t.intermediate_size)
    weights = t.num_hidden_layers * layer + t.vocab_size * t.hidden_size   # lm head (embedding rows: negligible)
    kv_token = t.num_hidden_layers * 2 * kv * hd
    kv_read = batch * prompt_len * kv_token + batch * samples * (new_tokens / 2) * kv_token
    return (weights + kv_read) * dtype_bytes


def _pin(cores):
    if cores:
        os.sched_setaffinity(0, cores)


def jaxr1_worker(conn, cores, save_dir, ids, mask, pv, thw, args):
    """A process holding the jaxr1 side: compiles once, then one timed rollout per request."""
    _pin(cores)
    import jax
    from flax import nnx

    from jaxr1.sampling import compile_count, make_spec, prepare_prompts
    from jaxr1.sampling.sampler import decode_fn, prefill_fn
    model = build_model(model_config(args.preset), args.dtype, args.seed, save_dir)
    cfg = model.config
    spec = make_spec(cfg, max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p,
                     top_k=args.top_k, num_generations=args.samples, eos_token_ids=())
    graphdef, params = nnx.split(model)

    def run(seed):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = prepare_prompts(cfg, ids, mask, pv, thw)   # host work is part of the measured time
        state = prefill_fn(graphdef, params, batch, jax.random.key(seed), args.new_tokens, args.temperature,
                           args.top_p, spec=spec)
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        out = decode_fn(graphdef, params, state, spec=spec)
        tokens = int(np.asarray(out.lengths).sum())
        t2 = time.perf_counter()
        return dict(wall=t2 - t0, prefill=t1 - t0, decode=t2 - t1, cpu=time.process_time() - c0, tokens=tokens,
                    prompt_len=batch.inputs.input_ids.shape[1])

    c0 = compile_count()
    first = run(0)
    conn.send(dict(first=first["wall"], device=jax.devices()[0].device_kind))
    for seed in iter(conn.recv, None):
        conn.send(run(seed))
    assert compile_count() - c0 == 2, "steady-state runs recompiled"


def torch_step_seconds(hf, rows: int, thread_counts) -> dict[int, float]:
    """Seconds per decode step of `rows` rows (short prompt) for each torch thread count."""
    import torch
    ids = torch.randint(10, 5000, (rows, 16))
    timings = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        with torch.no_grad():
            pkv, tok, steps = hf.model.language_model(input_ids=ids, use_cache=True).past_key_values, ids[:, -1:], []
            for _ in range(4):
                t0 = time.perf_counter()
                o = hf(input_ids=tok, past_key_values=pkv, use_cache=True, logits_to_keep=1)
                pkv, tok = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
                steps.append(time.perf_counter() - t0)
        timings[threads] = float(np.median(steps[1:]))
    return timings


def hf_worker(conn, cores, hf_dir, ids, mask, pv, thw, args):
    """A process holding the transformers side (no JAX in it): one timed generate per request."""
    _pin(cores)
    import torch
    import transformers
    from transformers import Qwen2_5_VLForConditionalGeneration
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=getattr(torch, args.dtype)).eval()
    candidates = [1] if cores else sorted({1, len(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    it = torch.as_tensor(ids)
    kw = dict(input_ids=it, attention_mask=torch.as_tensor(mask), pixel_values=torch.as_tensor(pv),
              image_grid_thw=torch.as_tensor(thw), mm_token_type_ids=(it == hf.config.image_token_id).int(),
              do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
              num_return_sequences=args.samples, eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.no_grad():
        hf.generate(**kw, max_new_tokens=2)   # warm up allocators / kernels
        conn.send(dict(version=transformers.__version__, torch=torch.__version__))
        for seed in iter(conn.recv, None):
            step_s = torch_step_seconds(hf, len(ids) * args.samples, candidates) if len(candidates) > 1 else {}
            threads = min(step_s, key=step_s.get) if step_s else 1
            torch.set_num_threads(threads)
            torch.manual_seed(seed)
            t0, c0 = time.perf_counter(), time.process_time()
            out = hf.generate(**kw, max_new_tokens=args.new_tokens)
            conn.send(dict(wall=time.perf_counter() - t0, cpu=time.process_time() - c0, threads=threads,
                           tokens=int(out.shape[0] * (out.shape[1] - ids.shape[1]))))


class Worker:
    """One side of the benchmark in its own (spawned) process, answering one timed run per request."""

    def __init__(self, fn, *args, env: dict | None = None):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        saved = dict(os.environ)
        os.environ.update(env or {})
        self.proc = ctx.Process(target=fn, args=(child, *args))
        self.proc.start()
        os.environ.clear()
        os.environ.update(saved)
        self.setup = self._recv()
        self.runs = []

    def _recv(self):
        if not self.conn.poll(3600):
            raise SystemExit("benchmark worker timed out")
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            raise SystemExit(f"benchmark worker died (exit code {self.proc.exitcode})") from None

    def run(self, seed: int):
        self.conn.send(seed)
        self.runs.append(self._recv())

    def stop(self):
        self.conn.send(None)
        self.proc.join()

    def median(self, key: str) -> float:
        return float(np.median([r[key] for r in self.runs]))

    def rate(self) -> float:
        return self.runs[0]["tokens"] / self.median("wall")

    def cpu_rate(self) -> float:
        return self.runs[0]["tokens"] / self.median("cpu")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=8, help="prompts, one image each")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--text-len", type=int, default=40, help="text tokens per prompt around the image")
    ap.add_argument("--image-size", type=int, default=224, help="square image side in pixels")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved (medians reported)")
    ap.add_argument("--threads", choices=["all", "one", "both"], default=None,
                    help="CPU settings to compare (see above); default both for the cpu preset, all otherwise")
    ap.add_argument("--skip-hf", action="store_true", help="jaxr1 only (e.g. on a GPU without CUDA torch)")
    ap.add_argument("--hbm-bandwidth", type=float, default=None, help="bytes/s, e.g. 3.35e12 for an H100 SXM")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = model_config(args.preset)
    ids, mask, pv, thw = make_prompts(cfg, args.batch, args.text_len, args.image_size, args.seed)
    t = cfg.text
    print(f"model: text {t.num_hidden_layers} layers x {t.hidden_size} (ffn {t.intermediate_size}, heads "
          f"{t.num_attention_heads}/{t.num_key_value_heads}), vocab {t.vocab_size}; vision {cfg.vision.depth} x "
          f"{cfg.vision.hidden_size}; {args.dtype}; {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    print(f"work: {args.batch} prompts (one {args.image_size}px image, {ids.shape[1]} tokens max) x {args.samples} "
          f"samples x {args.new_tokens} new tokens, temperature {args.temperature}, top_p {args.top_p}, "
          f"top_k {args.top_k}")
    tmp = tempfile.TemporaryDirectory()
    threads = args.threads or ("both" if args.preset == "cpu" else "all")
    modes = {"all": ["all cores"], "one": ["one core"], "both": ["all cores", "one core"]}[threads]
    one_core = {min(os.sched_getaffinity(0))}
    sides = {}
    for i, mode in enumerate(modes):   # set up one at a time, so compile times are not disturbed
        cores = one_core if mode == "one core" else None
        flags = XLA_FLAGS_BASE + (" --xla_cpu_multi_thread_eigen=false" if cores else "")
        save = tmp.name if i == 0 and not args.skip_hf else None
        sides[("jaxr1", mode)] = Worker(jaxr1_worker, cores, save, ids, mask, pv, thw, args,
                                        env={"XLA_FLAGS": flags})
        if not args.skip_hf:
            sides[("transformers", mode)] = Worker(hf_worker, cores, tmp.name, ids, mask, pv, thw, args)
    for r in range(args.repeats):   # interleaved, so every side sees the same (shared machine) load
        for w in sides.values():
            w.run(1 + r)
    for w in sides.values():
        w.stop()

    for mode in modes:
        j = sides[("jaxr1", mode)]
        step_s = j.median("decode") / (args.new_tokens - 1)
        print(f"[{mode}] jaxr1 ({j.setup['device']}): compile {j.setup['first'] - j.median('wall'):.2f} s (first "
              f"call {j.setup['first']:.2f} s); steady {j.median('wall'):.3f} s (prefill {j.median('prefill'):.3f} s, "
              f"decode {j.median('decode'):.3f} s = {1e3 * step_s:.2f} ms/step); {j.rate():.1f} tokens/s; "
              f"process CPU {j.median('cpu'):.1f} s")
        nbytes = decode_bytes(cfg, 2 if args.dtype == "bfloat16" else 4, args.batch, j.runs[0]["prompt_len"],
                              args.samples, args.new_tokens)
        line = f"[{mode}]   decode reads {nbytes / 1e6:.1f} MB per step -> {nbytes / step_s / 1e9:.1f} GB/s"
        if args.hbm_bandwidth:
            line += (f" = {100 * nbytes / step_s / args.hbm_bandwidth:.1f}% of the "
                     f"{args.hbm_bandwidth / 1e9:.0f} GB/s HBM roofline")
        print(line)
        if ("transformers", mode) in sides:
            h = sides[("transformers", mode)]
            print(f"[{mode}] transformers {h.setup['version']} (torch {h.setup['torch']}, torch threads per run "
                  f"{[r['threads'] for r in h.runs]}): steady {h.median('wall'):.3f} s; {h.rate():.1f} tokens/s; "
                  f"process CPU {h.median('cpu'):.1f} s")
            print(f"[{mode}] ratio jaxr1 / transformers ({args.repeats} interleaved runs each): tokens/s "
                  f"{j.rate() / h.rate():.2f}x; tokens per CPU-second {j.cpu_rate() / h.cpu_rate():.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
