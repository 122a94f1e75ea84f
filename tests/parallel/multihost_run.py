"""Run by test_multihost: one process of a localhost jax.distributed run (or the single-process reference).

    python tests/parallel/multihost_run.py OUT LOCAL_DEVICES BATCH_PER_HOST [PROCESS_ID NUM_PROCESSES PORT]
"""
import os
import sys

ARGS = ["model.path=tiny-random", "data.shuffle=false", "rl.num_generations=2", "rl.max_completion_length=8",
        "optim.lr=1e-4", "data.num_eval=8", "eval.batch_size=8", "eval.max_new_tokens=4", "steps=2",
        "save_every=1", "rewards.functions=[{name: 'tests.train.plugins:distinct_chars'}]"]

if __name__ == "__main__":
    out, devices, batch = sys.argv[1:4]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    if len(sys.argv) > 4:
        pid, n, port = sys.argv[4:7]
        os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=pid)
    from jaxr1.train import main
    sys.exit(main([*ARGS, f"output_dir={out}", f"data.batch_size={batch}", "parallel.data=-1"]))
