#!/usr/bin/env bash
# TPU pod (e.g. v5p-32, v5litepod-64): create a queued resource, copy the code, install, run on all workers,
# stream logs, delete. Needs gcloud with a project/zone configured.
#   scripts/launch/tpu_pod.sh NAME ACCELERATOR CONFIG.yaml [key=value ...]
#   scripts/launch/tpu_pod.sh jaxr1-7b v5p-32 configs/qwen2_5_vl_7b_multimodal_open_r1.yaml \
#       model.path=/gcs/bucket/Qwen2.5-VL-7B-Instruct output_dir=/gcs/bucket/runs/7b
set -euo pipefail
name=${1:?name}; accel=${2:?accelerator type}; config=${3:?config}; shift 3
zone=${ZONE:?set ZONE}; version=${RUNTIME_VERSION:-v2-alpha-tpuv5}
gcloud compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone" \
  --accelerator-type "$accel" --runtime-version "$version" ${SPOT:+--spot}
until gcloud compute tpus queued-resources describe "$name" --zone "$zone" --format='value(state.state)' \
  | grep -q ACTIVE; do sleep 30; done
trap 'gcloud compute tpus queued-resources delete "$name" --zone "$zone" --force --quiet' EXIT
tar czf /tmp/jaxr1.tgz --exclude=.git --exclude=runs .
gcloud compute tpus tpu-vm scp /tmp/jaxr1.tgz "$name":~/ --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  "mkdir -p jaxr1 && tar xzf jaxr1.tgz -C jaxr1 && cd jaxr1 && pip install -q -e . 'jax[tpu]' && \
   python -m jaxr1.train --config $config $* 2>&1 | tee train.log"
# jax.distributed.initialize() needs no arguments on a pod; on maintenance events JAX's preemption sync point
# makes every host save the same step and exit 0; rerun this script with the same output_dir to resume.
