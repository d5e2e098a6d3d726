#!/usr/bin/env bash
# One call on a lent GPU machine (about 9 minutes): quality first, then throughput, then the quickstart's wall time.
# Prepared here with `python -m bench.gpu_pack --out .devpack`; the mpnet pieces travel first, one call each
# (docs/backbones.md, "GPU session"). Then, from the repository root on the machine:
#
#     bash bench/gpu_session.sh            # carry: [.devpack/base]; results under $OUT
#
# Budgets (seconds; a phase's processes are stopped at its budget, finished rows are kept):
#   QUALITY_S (330), THROUGHPUT_S (130), QUICKSTART_S (60). QUALITY_EPOCHS: --epochs of both arms (default:
#   the baseline's 5 and the example config's). PHASES: which of "quality throughput quickstart" to run;
#   DATASETS ("banking77 hwu64") and SEEDS ("42 43 44") of the quality phase.
# On a machine without a GPU it runs the same steps (tiny: SMOKE=1, 2 steps each) so that it can be tested.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hf_metric_gpu_session}
PACK=${PACK:-.devpack}
MODELS=${MODELS:-/tmp/hf_metric_models}
PY=${PY:-python3}
PHASES=${PHASES:-quality throughput quickstart}
QUALITY_S=${QUALITY_S:-330}
THROUGHPUT_S=${THROUGHPUT_S:-130}
QUICKSTART_S=${QUICKSTART_S:-60}
SMOKE=${SMOKE:-0}
DATASETS=${DATASETS:-banking77 hwu64}
SEEDS=${SEEDS:-42 43 44}
mkdir -p "$OUT" "$MODELS"
LOGS=$(mktemp -d /tmp/hf_metric_session_logs.XXXX)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT/session.log") 2>&1
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start)) s] $*"; }

# --- environment: the wheels the image lacks, the staged backbones ------------------------------------------
if compgen -G "$PACK/base/whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$PACK"/base/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
[ -d "$MODELS/all-MiniLM-L6-v2" ] || tar -x -C "$MODELS" -f "$PACK/base/minilm.tar" || exit 1
if [ ! -d "$MODELS/all-mpnet-base-v2" ]; then
  cat "$PACK"/mpnet*/part | tar -x -C "$MODELS" || { echo "mpnet pieces missing or incomplete"; exit 1; }
fi
MPNET=$MODELS/all-mpnet-base-v2
MINILM=$MODELS/all-MiniLM-L6-v2
DATA=$PACK/base/data
(nvidia-smi || echo "no nvidia-smi") > "$OUT/device.txt" 2>&1
$PY -c "import torch, transformers, datasets; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())" >> "$OUT/device.txt"
stamp "environment ready"
if [ "$SMOKE" = 1 ]; then small=(--max-steps 2); steps=(--steps 2 --warmup 1 --num-workers 0); else small=(); steps=(); fi

# --- quality: Banking77 and HWU64, 3 seeds, plain CE vs the recipe, mpnet, bf16, every (dataset, arm, seed) at once
if [[ " $PHASES " == *" quality "* ]]; then
  epochs=(); [ -n "${QUALITY_EPOCHS:-}" ] && epochs=(--epochs "$QUALITY_EPOCHS")
  pids=()
  for dataset in $DATASETS; do
    for seed in $SEEDS; do
      for variant in baseline hf_metric; do
        timeout "$QUALITY_S" $PY bench/quality.py --data "$DATA/$dataset" --protocol test --seeds 3 \
          --only-seed "$seed" --variants "$variant" --model "$MPNET" --bf16 --threads 1 "${epochs[@]}" "${small[@]}" \
          --results "$OUT/quality.jsonl" --docs "" --run-id "$dataset-mpnet-gpu" \
          --launched-by "bash bench/gpu_session.sh (every dataset, arm and seed at once)" \
          > "$LOGS/quality-$dataset-$variant-$seed.log" 2>&1 &
        pids+=($!)
      done
    done
  done
  wait "${pids[@]}"  # not a bare `wait`: it would also wait for the `tee` of the log, forever
  stamp "quality done: $(cat "$OUT/quality.jsonl" 2>/dev/null | wc -l) rows"
fi

# --- throughput: recipe vs plain Trainer, with and without length grouping, text / image / audio -------------
if [[ " $PHASES " == *" throughput "* ]]; then
  timeout "$THROUGHPUT_S" $PY -m bench.gpu_throughput --model "text-minilm=$MINILM" "text-mpnet=$MPNET" \
    --data "text-minilm=$DATA/banking77/train.parquet" "text-mpnet=$DATA/banking77/train.parquet" "${steps[@]}" \
    --out "$OUT/throughput.jsonl" > "$LOGS/throughput.log" 2>&1
  stamp "throughput done (exit $?): $(cat "$OUT/throughput.jsonl" 2>/dev/null | wc -l) rows"
  [ -s "$OUT/throughput.jsonl" ] && $PY -m bench.gpu_throughput --render "$OUT/throughput.jsonl"
fi

# --- the quickstart as shipped (MiniLM, fp32), wall time --------------------------------------------------
if [[ " $PHASES " == *" quickstart "* ]]; then
  qs=(); [ "$SMOKE" = 1 ] && qs=(--set scheduler.num_training_steps=2)
  t0=$(date +%s%N)
  timeout "$QUICKSTART_S" $PY -m hf_metric.cli --config configs/quickstart.yaml --set "model_name=$MINILM" \
    --set checkpointing.checkpoints_dir=/tmp/hf_metric_quickstart "${qs[@]}" > "$LOGS/quickstart.log" 2>&1
  code=$?
  echo "quickstart: exit $code, wall $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee "$OUT/quickstart.txt"
fi

tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . && stamp "done"
