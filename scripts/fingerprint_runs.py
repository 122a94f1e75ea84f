"""Fingerprint short training runs (same seeds): sampled completions, losses/metrics, final weights, to check that a
refactor changed no number. Usage: python scripts/fingerprint_runs.py OUT.json (from the repo root whose jaxr1 to test;
compare two with scripts/compare_fingerprints.py A.json B.json)"""
import hashlib, json, os, subprocess, sys, tempfile
import numpy as np
from safetensors.numpy import load_file

RUNS = {"default": [], "qwen3_vl": ["model.path=tiny-qwen3-vl"], "qwen2_vl": ["model.path=tiny-qwen2-vl"]}
SKIP = ("time/", "perf/", "tokens_per_s", "throughput", "mfu")
out = {}
for name, extra in RUNS.items():
    d = tempfile.mkdtemp() + "/run"
    r = subprocess.run([sys.executable, "-m", "jaxr1.train", "steps=3", "data.num_eval=16", "sample_every=1",
                        f"output_dir={d}", *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    metrics = [{k: v for k, v in m.items() if not any(s in k for s in SKIP)} for m in metrics]
    samples = [json.loads(l) for l in open(f"{d}/samples.jsonl")]
    texts = [s.get("completion") for s in samples]
    w = load_file(f"{d}/hf/model.safetensors")
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(k.encode()); h.update(np.ascontiguousarray(w[k]).tobytes())
    held = [l for l in r.stdout.splitlines() if "held-out" in l]
    out[name] = dict(metrics=metrics, completions=texts, weights_sha256=h.hexdigest(), held_out=held)
    print(name, h.hexdigest(), held, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1, sort_keys=True)
