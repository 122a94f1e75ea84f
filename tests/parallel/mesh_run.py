"""Run by test_mesh in a subprocess: a few GRPO steps of the tiny model per mesh, on n forced host devices.

    python tests/parallel/mesh_run.py N_DEVICES OUT:DATA:FSDP:TENSOR[:lora] [...]
"""
import os
import sys

ARGS = ["model.path=tiny-random", "data.batch_size=8", "rl.num_generations=2", "rl.max_completion_length=8",
        "optim.lr=1e-4", "data.num_eval=0", "steps=2",   # no held-out eval: the test compares training only
        "rl.beta=0.01", "optim.warmup_steps=0",   # update 1 counts (the default warms up from lr 0)
        "rewards.functions=[{name: 'tests.train.plugins:distinct_chars'}]"]

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[1]}"
    from jaxr1.train import main
    for run in sys.argv[2:]:
        out, data, fsdp, tensor, *lora = run.split(":")
        extra = ["lora.rank=4", "lora.alpha=8"] if lora else []
        rc = main([*ARGS, f"output_dir={out}", f"parallel.data={data}", f"parallel.fsdp={fsdp}",
                   f"parallel.tensor={tensor}", *extra])
        if rc:
            sys.exit(rc)
