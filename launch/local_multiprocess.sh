#!/usr/bin/env bash
# Runs N training processes on this machine as one multi-process JAX job (a multi-host job in
# miniature: each process feeds its slice of every batch; CPU processes talk through gloo).
#
#   launch/local_multiprocess.sh 2 --config=configs/tiny.py --workdir=/tmp/bert4rec_mp
#
# Each process sees the devices XLA gives it (on CPU, set
# XLA_FLAGS=--xla_force_host_platform_device_count=K for K devices per process). The port of
# process 0's coordinator is $PORT, or a random free-looking one. Exits non-zero if any fails.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [train flags...]" >&2
  exit 2
fi
n=$1
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  python -m bert4rec_jax.train --distributed --coordinator_address="localhost:${port}" \
    --num_processes="${n}" --process_id="${i}" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "${pid}" || status=1
done
exit "${status}"
