#!/usr/bin/env bash
# Trains on a Cloud TPU slice: every worker (host) of the slice runs the same training command
# with --distributed, and jax.distributed.initialize() finds the others from the TPU metadata.
#
#   launch/tpu_pod.sh --name=bert4rec --zone=us-east5-a --accelerator=v5p-32 --create --delete \
#     -- --config=configs/steam.py --workdir=/mnt/shared/steam --config.data_dir=/mnt/shared/tfds
#
# In order: [--create] create the slice; copy this checkout to every worker and install it in a
# virtual environment; run the training on all workers, streaming worker 0's output here (each
# worker also keeps its own in ~/bert4rec_train.log); [--delete] delete the slice at the end, also
# when training fails or is interrupted (a forgotten slice costs money; results are in --workdir).
#
# --workdir must be one place that every worker reads and writes (each process writes its part of
# every checkpoint there), and --config.data_dir should be (process 0 prepares the corpus, the
# others read its cache). The training runs in the foreground of the ssh session: if the
# connection drops, run the script again without --create (and with --skip_install): it resumes
# from the workdir's latest checkpoint. Processes of an earlier run still holding the TPU keep a
# new one from starting; stop them first, e.g. with
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command='pkill -f bert4rec_jax'
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name=NAME --zone=ZONE [options] -- TRAIN_FLAGS...

Runs `python -m bert4rec_jax.train --distributed TRAIN_FLAGS...` on every worker of a TPU slice.

  --name=NAME           the TPU slice (required)
  --zone=ZONE           its zone (required)
  --project=PROJECT     the Google Cloud project (default: gcloud's configured one)
  --accelerator=TYPE    with --create: the slice type, e.g. v5p-32, v5litepod-16, v6e-16, v4-32
  --version=RUNTIME     with --create: the TPU software version (default: the base image of the
                        accelerator's generation, e.g. v2-alpha-tpuv5 for v5p)
  --create              create the slice first (otherwise it must exist)
  --delete              delete the slice at the end, whether training succeeded or not
  --skip_install        do not copy and install the checkout again (a rerun on the same slice)
  --dry_run             print every command and run none
  -h, --help            this text

example:
  launch/tpu_pod.sh --name=bert4rec --zone=us-east5-a --accelerator=v5p-32 --create --delete \
    -- --config=configs/steam.py --workdir=/mnt/shared/steam
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  echo "run launch/tpu_pod.sh --help for usage" >&2
  exit 2
}

name="" zone="" project="" accelerator="" version=""
create=0 delete=0 skip_install=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --create) create=1 ;;
    --delete) delete=1 ;;
    --skip_install) skip_install=1 ;;
    --dry_run) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      break
      ;;
    *) die "unknown option '$1' (training flags go after '--')" ;;
  esac
  shift
done
train_flags=("$@")

[[ -n "${name}" ]] || die "--name=NAME (the TPU slice) is required"
[[ -n "${zone}" ]] || die "--zone=ZONE is required"
[[ ${#train_flags[@]} -gt 0 ]] || die "no training flags after '--' (at least --config and --workdir)"
if ((create)); then
  [[ -n "${accelerator}" ]] || die "--create needs --accelerator=TYPE (e.g. v5p-32)"
  ((!skip_install)) || die "--skip_install with --create: a new slice has nothing installed"
  if [[ -z "${version}" ]]; then
    # The generations' base images (cloud.google.com/tpu/docs/runtimes); --version overrides.
    case "${accelerator}" in
      v4-*) version=tpu-ubuntu2204-base ;;
      v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      *) die "no default runtime for --accelerator=${accelerator}; give --version=RUNTIME" ;;
    esac
  fi
fi

# Runs a command, or with --dry_run prints it (quoted so that it can be pasted into a shell).
run() {
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

where=(--zone="${zone}")
if [[ -n "${project}" ]]; then
  where+=(--project="${project}")
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# On the workers, where their shell expands `~` (not here: these are quoted on purpose).
# shellcheck disable=SC2088
remote_repo='~/bert4rec_jax'
# shellcheck disable=SC2088
remote_venv='~/bert4rec_venv'
# shellcheck disable=SC2088
remote_log='~/bert4rec_train.log'

if ((delete)); then
  # On any exit (success, failure, Ctrl-C), keeping the script's exit status.
  cleanup() {
    local status=$?
    run gcloud compute tpus tpu-vm delete "${name}" "${where[@]}" --quiet ||
      echo "tpu_pod.sh: deleting ${name} failed; delete it by hand" >&2
    exit "${status}"
  }
  trap cleanup EXIT
fi

if ((create)); then
  run gcloud compute tpus tpu-vm create "${name}" "${where[@]}" \
    --accelerator-type="${accelerator}" --version="${version}"
fi

if ((!skip_install)); then
  # Why copy the checkout rather than `pip install git+URL` or a wheel: the configs
  # (configs/*.py) are read by path and are not part of the package, the checkout need not be
  # pushed anywhere, and every worker gets exactly the code here, uncommitted edits included.
  # The archive holds git's view of the tree (tracked and untracked-but-not-ignored files), so no
  # virtual environments, data or runs are copied.
  tarball_dir="$(if ((dry_run)); then echo "${TMPDIR:-/tmp}/tmp.XXXXXXXXXX"; else mktemp -d; fi)"
  tarball="${tarball_dir}/bert4rec_jax.tgz"
  if ((dry_run)); then
    printf '+ (cd %q && git ls-files -z --cached --others --exclude-standard | tar -czf %q --null -T -)\n' \
      "${repo}" "${tarball}"
  else
    # Files deleted but not yet committed are still listed by git: skip what does not exist.
    (cd "${repo}" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do if [[ -e "${f}" ]]; then printf '%s\0' "${f}"; fi; done |
      tar -czf "${tarball}" --null -T -)
  fi
  run gcloud compute tpus tpu-vm scp "${tarball}" "${name}:bert4rec_jax.tgz" "${where[@]}" --worker=all
  if ((!dry_run)); then
    rm -rf "${tarball_dir}"
  fi
  # The TPU images' system Python (3.10 on Ubuntu 22.04) is older than the 3.11 the package
  # needs, and may lack venv: uv (its standalone installer) creates the environment with a Python
  # of its own where the system has none that fits.
  install="set -e
rm -rf ${remote_repo} && mkdir -p ${remote_repo} && tar -xzf ~/bert4rec_jax.tgz -C ${remote_repo}
if [ ! -x ${remote_venv}/bin/python ]; then
  export PATH=\"\$HOME/.local/bin:\$PATH\"
  command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  uv venv -q --seed --python 3.11 ${remote_venv}
fi
cd ${remote_repo} && ${remote_venv}/bin/pip install -q -e \".[tpu]\""
  run gcloud compute tpus tpu-vm ssh "${name}" "${where[@]}" --worker=all --command="${install}"
fi

# The training command, each flag quoted for the workers' shell (spaces and quotes survive).
train="${remote_venv}/bin/python -m bert4rec_jax.train --distributed$(printf ' %q' "${train_flags[@]}")"
# Worker 0 streams its output back through ssh; the others only write their log file (their
# output would interleave with worker 0's). The worker number comes from the TPU VM metadata.
worker_number='curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number'
remote="set -o pipefail; cd ${remote_repo} || exit 1
if [ \"\$(${worker_number})\" = 0 ]; then
  ${train} 2>&1 | tee ${remote_log}
else
  ${train} > ${remote_log} 2>&1
fi"
if ! run gcloud compute tpus tpu-vm ssh "${name}" "${where[@]}" --worker=all --command="${remote}"; then
  echo "tpu_pod.sh: training failed on some worker; its log is ${remote_log} there, e.g." >&2
  echo "  gcloud compute tpus tpu-vm ssh ${name} --zone=${zone} --worker=1 --command='tail -n 100 ${remote_log}'" >&2
  exit 1
fi
