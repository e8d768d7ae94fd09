#!/usr/bin/env bash
# The GPU checks of megatron-codistill in one call of at most 8 minutes, on a machine without network.
#
#   bash benchmarks/gpu/run_checks.sh [OUT_DIR]          (default: benchmarks/gpu/results)
#
# Parts, each under its own time limit and all within BUDGET_S (default 450 s); a part that fails or
# times out is reported loudly (FAILED / TIMEOUT with the end of its log) and the next one runs:
#   install      pip install --no-index --find-links <this dir> megatron-core math-verify (the wheels, and
#                any dependency the machine lacks, placed beside this script; skipped when none are here)
#   environment  torch, CUDA device, megatron-core, math-verify, Transformer Engine versions
#   gpu_tests    pytest -m gpu (tests marked for a CUDA GPU)
#   tiny_example the tiny example on CUDA/NCCL: torchrun, one rank per GPU (up to 2; large TP=2 with 2),
#                a short warm start and 3 RL steps, then its metrics file is checked
#   step_pair    one step of a random ~1B / ~0.25B pair: seconds per phase and the large update's MFU
# Writes OUT_DIR/checks.md (part, status, seconds, log) followed by the step_pair table, one log per part,
# and exits 0 only if every part passed. Environment: PYTHON (default python), BUDGET_S, NGPU (ranks of
# the tiny example), STEP_PAIR_ARGS (extra arguments of step_pair.py, e.g. "--size tiny" on a CPU).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$HERE/results}
PY=${PYTHON:-python}
BUDGET_S=${BUDGET_S:-450}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
TABLE="$OUT/checks.md.rows"
: > "$TABLE"
FAILED=0

# part NAME LIMIT_S COMMAND...: run COMMAND with a limit of min(LIMIT_S, budget left), log to OUT/NAME.log
part() {
    local name=$1 limit=$2 rc status t0 secs left
    shift 2
    left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        echo "| $name | SKIPPED (budget of ${BUDGET_S} s spent) | 0 | |" >> "$TABLE"
        echo "!!! $name skipped: the ${BUDGET_S} s budget is spent" >&2
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit} s)" >&2
    t0=$(date +%s)
    timeout --kill-after=15 "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${limit} s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    echo "| $name | $status | $secs | $name.log |" >> "$TABLE"
    if [ "$rc" -ne 0 ]; then
        FAILED=1
        echo "!!! $name: $status; last lines of $OUT/$name.log:" >&2
        tail -n 15 "$OUT/$name.log" >&2
    fi
}

install_wheels() {
    shopt -s nullglob
    local wheels=("$HERE"/*.whl)
    if [ "${#wheels[@]}" -eq 0 ]; then
        echo "no wheels in $HERE: nothing to install (using what the machine has)"
        return 0
    fi
    "$PY" -m pip install --no-index --find-links "$HERE" megatron-core math-verify
}

environment() {
    "$PY" - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for name in ("megatron.core", "math_verify", "transformer_engine", "transformers"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(name, "NOT IMPORTABLE:", type(e).__name__, e)
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible to torch")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.1f} GiB")
EOF
}

gpu_count() {
    if command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi --list-gpus 2> /dev/null | wc -l
    else
        echo 0
    fi
}

tiny_example() {
    local n=${NGPU:-$(gpu_count)} extra=()
    [ "$n" -gt 2 ] && n=2
    [ "$n" -lt 1 ] && n=1
    [ "$n" -eq 2 ] && extra=(large.tensor_parallel=2)
    rm -rf "$OUT/tiny_run"
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$n" -m megatron_codistill.cli train \
        examples/tiny_cpu/config.yaml "run.dir=$OUT/tiny_run" run.steps=3 run.eval_every=3 \
        warm_start.small_steps=20 warm_start.large_steps=20 logging.tensorboard=false logging.progress=false \
        checkpoint.every=0 "data.eval=[{name: arith, path: ./data/test.jsonl, preset: arith, limit: 16}]" \
        ${extra[@]+"${extra[@]}"} || return $?
    "$PY" - "$OUT/tiny_run/metrics.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
last = rows[-1]
print("steps logged:", [r.get("step") for r in rows])
print({k: last[k] for k in sorted(last) if k.endswith("/loss") or k.startswith("time/")})
bad = [k for k, v in last.items() if isinstance(v, float) and not math.isfinite(v)]
if last.get("step") != 3 or bad:
    raise SystemExit(f"the run did not finish 3 finite steps: last step {last.get('step')}, non-finite {bad}")
EOF
}

# shellcheck disable=SC2086  # STEP_PAIR_ARGS is a list of words
step_pair() { "$PY" benchmarks/gpu/step_pair.py --out "$OUT/step_pair.md" ${STEP_PAIR_ARGS:-}; }

export -f install_wheels environment gpu_count tiny_example step_pair
export HERE OUT PY

part install 60 install_wheels
part environment 30 environment
part gpu_tests 170 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
part tiny_example 100 tiny_example
part step_pair 150 step_pair

{
    echo "# GPU checks"
    echo
    echo "\`bash benchmarks/gpu/run_checks.sh\` on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - START )) s in all."
    echo
    echo "| part | status | seconds | log |"
    echo "|---|---|---|---|"
    cat "$TABLE"
    echo
    [ -f "$OUT/step_pair.md" ] && cat "$OUT/step_pair.md"
} > "$OUT/checks.md"
rm -f "$TABLE"
cat "$OUT/checks.md"
exit $FAILED
