#!/bin/bash
# What one node of a CoDistill job runs: a torchrun agent (trainer) or the SGLang servers. Called by
# slurm/codistill.sbatch through srun (one task per node), and usable by hand outside SLURM, e.g. two
# agents of a two-node rendezvous on one machine:
#
#   slurm/node_launch.sh trainer --nnodes 2 --node-rank 0 --nproc-per-node 1 --master-addr 127.0.0.1 \
#       --master-port 29555 --python .venv/bin/python -- train examples/tiny_cpu/config.yaml &
#   slurm/node_launch.sh trainer --nnodes 2 --node-rank 1 ... (same options) -- train examples/tiny_cpu/config.yaml
#
#   slurm/node_launch.sh sglang --python PY --model PATH --servers K --tp T [--first-gpu G] [--port P] \
#       [--host H] [--args "more launch_server arguments"]
#
# trainer: `PY -m torch.distributed.run --nnodes N --nproc-per-node P --node-rank R --master-addr A
#   --master-port PORT --max-restarts=0 -m MODULE ARGS...` (MODULE: --module, default
#   $CODISTILL_MODULE or megatron_codistill.cli; node rank default $SLURM_PROCID). A stop signal
#   (SIGUSR1, SIGTERM) reaches torchrun from SLURM too; torchrun passes it to its workers, waits for
#   them and reports the signal as a failure, which this script turns into status 0 so that srun's
#   --kill-on-bad-exit does not cut other nodes short while they write their part of a checkpoint. A
#   failure without a signal keeps its status.
# sglang: K servers on ports P, P+1, ..., server i on GPUs [G + i*T, G + (i+1)*T) of this node
#   (CUDA_VISIBLE_DEVICES); the launcher is $CODISTILL_SGLANG_LAUNCH, default "PY -m sglang.launch_server".
#   Waits for all of them.
# --dry-run prints the command line(s) instead of running them (shell-quoted, one per line).
set -uo pipefail

die() { echo "node_launch.sh: error: $*" >&2; exit 2; }
quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; echo "${out% }"; }

[[ $# -ge 1 ]] || die "usage: node_launch.sh trainer|sglang [options] (see the header of this script)"
ROLE=$1; shift
DRY=0 PY=python3 NNODES=1 NPROC=1 NODE_RANK=${SLURM_PROCID:-0} MASTER=${MASTER_ADDR:-127.0.0.1}
PORT=${MASTER_PORT:-29500} MODULE=${CODISTILL_MODULE:-megatron_codistill.cli}
MODEL="" SERVERS=1 TP=1 FIRST_GPU=0 SPORT=30000 HOST=0.0.0.0 SARGS=""
while [[ $# -gt 0 && $1 != -- ]]; do
    case $1 in
        --dry-run) DRY=1; shift; continue ;;
        --python) PY=$2 ;;
        --nnodes) NNODES=$2 ;;
        --nproc-per-node) NPROC=$2 ;;
        --node-rank) NODE_RANK=$2 ;;
        --master-addr) MASTER=$2 ;;
        --master-port) PORT=$2 ;;
        --module) MODULE=$2 ;;
        --model) MODEL=$2 ;;
        --servers) SERVERS=$2 ;;
        --tp) TP=$2 ;;
        --first-gpu) FIRST_GPU=$2 ;;
        --port) SPORT=$2 ;;
        --host) HOST=$2 ;;
        --args) SARGS=$2 ;;
        *) die "unknown option $1 for $ROLE" ;;
    esac
    [[ $# -ge 2 ]] || die "option $1 needs a value"
    shift 2
done
[[ $# -gt 0 && $1 == -- ]] && shift
ARGS=("$@")

case $ROLE in
trainer)
    CMD=("$PY" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC" --node-rank="$NODE_RANK"
         --master-addr="$MASTER" --master-port="$PORT" --max-restarts=0 -m "$MODULE" ${ARGS[@]+"${ARGS[@]}"})
    if (( DRY )); then quote "${CMD[@]}"; exit 0; fi
    stop=0
    trap 'stop=1' USR1 TERM
    "${CMD[@]}" &
    pid=$!
    while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
    if (( stop && rc != 0 )); then
        echo "node ${SLURM_NODEID:-$NODE_RANK}: torchrun exited $rc after the stop signal (it reports the signal itself)"
        rc=0
    fi
    exit "$rc"
    ;;
sglang)
    [[ -n $MODEL ]] || die "sglang needs --model"
    read -r -a LAUNCH <<<"${CODISTILL_SGLANG_LAUNCH:-$PY -m sglang.launch_server}"
    read -r -a EXTRA <<<"$SARGS"
    pids=()
    for ((i = 0; i < SERVERS; i++)); do
        first=$((FIRST_GPU + i * TP))
        gpus=$(seq -s, "$first" $((first + TP - 1)))
        CMD=("${LAUNCH[@]}" --model-path "$MODEL" --host "$HOST" --port $((SPORT + i)) --tp-size "$TP"
             ${EXTRA[@]+"${EXTRA[@]}"})
        if (( DRY )); then echo "CUDA_VISIBLE_DEVICES=$gpus $(quote "${CMD[@]}")"; continue; fi
        CUDA_VISIBLE_DEVICES=$gpus "${CMD[@]}" &
        pids+=($!)
    done
    (( DRY )) && exit 0
    rc=0
    for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" || rc=$?; done
    exit "$rc"
    ;;
*) die "unknown role $ROLE (valid: trainer, sglang)" ;;
esac
