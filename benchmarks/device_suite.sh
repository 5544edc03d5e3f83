#!/usr/bin/env bash
# Everything worth measuring on an accelerator, in one command of at most 8 minutes (the part
# limits below sum to 480 s, so a task's 15 minutes of device time leave room for the machine's
# start and one rerun):
#
#   DATA=data OUT=/tmp/suite bash benchmarks/device_suite.sh
#
# Runs as it is on a bare accelerator image (jax, flax, optax, numpy; no TensorFlow, no
# ml_collections): every script below imports only those and the project's TF-free modules.
# DATA is a folder holding beauty.txt (and ml-100k/u.data) carried with the call, e.g. a
# git-ignored data/ in the checkout; without it the input rows use synthetic corpora of the same
# shape and the Beauty evaluation is skipped. Each part has its own time limit, so one slow part
# cannot eat the others' time; a part that fails or times out is recorded as such.
#
# Writes $OUT/suite.json (per part: command, seconds, exit status, printed output) and
# $OUT/suite.md (the printed tables, one section per part), and prints the markdown at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_suite}
DATA=${DATA:-}
STEPS=${STEPS:-30}  # timed steps per row; a smaller number checks the script quickly
mkdir -p "$OUT"
data_flag=()
if [[ -n "$DATA" ]]; then data_flag=(--data="$DATA"); fi

parts=()
run() {  # run NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  local start=$SECONDS status=0
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" || status=$?
  echo "$name $status $((SECONDS - start))" >>"$OUT/status.txt"
  parts+=("$name")
  tail -n 30 "$OUT/$name.txt" >&2
}
: >"$OUT/status.txt"

# 1. The step alone at the paper's ML-1m and Beauty shapes, float32 and bfloat16.
run train_step 75 python benchmarks/train_step.py --shapes=ml-1m,beauty --dtypes=float32,bfloat16 \
  --inputs= --steps="$STEPS" --warmup=3
# 2. The step fed by the device input path vs the step alone (tf.data rows need TensorFlow).
run input_paths 45 python benchmarks/train_step.py --shapes= --inputs=ml-100k,beauty \
  "${data_flag[@]}" --dtypes=bfloat16 --steps="$STEPS" --warmup=3
# 3. Catalogue scaling: materialised vs chunked vs sampled losses up to 10M items.
if [[ -f benchmarks/catalog_scaling.py ]]; then
  run catalog_scaling 75 python benchmarks/catalog_scaling.py --sizes=3.4k,54k,200k,1M,10M --steps=5
fi
# 4. Full-ranking evaluation of every Beauty user (54,542 items).
if [[ -n "$DATA" && -f "$DATA/beauty.txt" ]]; then
  run full_ranking 30 python benchmarks/evaluation.py --data="$DATA/beauty.txt" --protocols=full
fi
# 5. Length buckets: Beauty's sequences/s with and without them, the exact (chunked) loss and
#    the sampled one (the step alone per bucket shape, weighted by the epoch's batches).
run buckets 45 python benchmarks/buckets.py "${data_flag[@]}" --buckets=4,6,8,12,16,24,32,50 \
  --steps="$STEPS" --rounds=2
run buckets_sampled 30 python benchmarks/buckets.py "${data_flag[@]}" \
  --buckets=4,6,8,12,16,24,32,50 --loss=sampled_softmax --steps="$STEPS" --rounds=2
# 6. Beauty time to quality (<= 3 min): configs/beauty_cpu.py on the device input path, validation
#    pop100 NDCG@10 against wall-clock seconds. Needs ml_collections and absl (and TensorFlow to
#    prepare the corpus unless DATA holds it prepared); skipped without them.
if [[ -n "$DATA" && -f "$DATA/beauty.txt" ]] && python -c "import ml_collections, absl" 2>/dev/null; then
  rm -rf "$OUT/ttq_beauty"
  run beauty_time_to_quality 180 python benchmarks/time_to_quality.py --config=configs/beauty_cpu.py \
    --workdir="$OUT/ttq_beauty" --config.manual_dir="$DATA" --config.data_dir="$OUT/tfds" \
    --config.input.pipeline=device --config.num_train_steps=3000 --config.eval.every_steps=500 \
    --config.eval.num_valid_users=0 --config.checkpoint_every_steps=0
fi

python - "$OUT" "${parts[@]}" <<'PY'
import json, pathlib, sys
out, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
status = {l.split()[0]: l.split()[1:] for l in (out / "status.txt").read_text().splitlines()}
import jax
device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax {jax.__version__}"
record, md = {"device": device, "parts": {}}, [f"# Device suite on {device}\n"]
for name in names:
    code, seconds = status[name]
    text = (out / f"{name}.txt").read_text()
    record["parts"][name] = {"exit": int(code), "seconds": int(seconds), "output": text,
                             "stderr_tail": (out / f"{name}.err").read_text()[-2000:]}
    state = "ok" if code == "0" else ("timed out" if code == "124" else f"failed ({code})")
    md.append(f"## {name} ({state}, {seconds} s)\n\n```\n{text.strip()}\n```\n")
(out / "suite.json").write_text(json.dumps(record, indent=2))
(out / "suite.md").write_text("\n".join(md))
print("\n".join(md))
PY
