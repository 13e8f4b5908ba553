#!/usr/bin/env bash
# GPU check of the DALI pipeline (data.device: gpu) and the training step, one run, under
# 8 minutes on one GPU (each part has its own timeout: 170 + 80 + 210 s at most):
#   1. correctness: the DALI parity and loader tests (tests/test_dali_*.py) on DALI's GPU
#      operators (HPT_DALI_TEST_DEVICE=gpu): the same statistics as on the CPU;
#   2. throughput: benchmarks/data_pipeline.py, two 224x224 views per 256x256 JPEG,
#      dali-gpu vs dali-cpu vs tv1-pil, interleaved in one process;
#   3. training throughput: benchmarks/train_throughput.py, MoCo-v2 steps of ResNet-18/50 at
#      224x224 and the quickstart model: ours (bf16, channels_last, fused SGD) on synthetic
#      input, on DALI-GPU input and with every switch off, vs the reference MoCo-v2 loop;
#      peak memory per configuration; the largest ResNet-50 batch that fits (--batch-search).
# GPU_CHECK_PARTS (default "dali train") picks parts: "dali" = 1+2, "train" = 3.
# Results go to $OUT when set, else benchmarks/results/: gpu_check-<stamp>-{env.txt,
# tests.log,tests.xml,summary.md}, gpu_check-<stamp>-bench-*.{json,md} and
# gpu_check-<stamp>-train.{json,md}.
#
# Needs: an NVIDIA GPU and a python (PYTHON=..., default .venv/bin/python, else python3)
# with torch, torchvision, nvidia-dali-cuda130, pytest, mlxtend and this package's
# dependencies; the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist, or
# HPT_FASHION_MNIST_DIR pointing at a folder with the four *-ubyte.gz files).
# GPU_CHECK_DEVICE=cpu dry-runs the same steps on CPU operators (no GPU figures).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
STAMP=gpu_check-$(date +%Y%m%d-%H%M%S)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${GPU_CHECK_DEVICE:-gpu}
PARTS=${GPU_CHECK_PARTS:-dali train}
VARIANTS="dali-gpu dali-cpu tv1-pil"
NEED="assert torch.cuda.is_available()"
if [ "$DEVICE" = cpu ]; then VARIANTS="dali-cpu tv1-pil"; NEED="pass"; fi

{
  echo "date: $(date -Is)  host: $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
import nvidia.dali, torchvision
print("dali", nvidia.dali.__version__, "torchvision", torchvision.__version__)
EOF
} | tee "$DEST/$STAMP-env.txt"

if ! "$PY" -c "import torch, nvidia.dali, pytest; $NEED" 2>/dev/null
then
  echo "gpu_check: needs a CUDA GPU and $PY with torch, nvidia-dali and pytest (see the" \
       "header of $0); nothing was measured" | tee "$DEST/$STAMP-summary.md"
  exit 2
fi

TESTS=skipped BENCH=skipped TRAIN=skipped
if [[ " $PARTS " == *" dali "* ]]; then
  # 1. correctness on GPU operators (about 2 minutes on 2 CPU cores; less on a GPU host)
  HPT_DALI_TEST_DEVICE=$DEVICE timeout 170 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_dali_parity.py tests/test_dali_loader.py \
    --junitxml="$DEST/$STAMP-tests.xml" 2>&1 | tee "$DEST/$STAMP-tests.log"
  TESTS=${PIPESTATUS[0]}

  # 2. throughput at 224x224 (dali-gpu first: it is what this check is for)
  timeout 80 "$PY" benchmarks/data_pipeline.py --variants $VARIANTS \
    --images 512 --batch 128 --threads 4 --rounds 3 --batches 3 \
    --out "$DEST" --tag "$STAMP-bench" 2>&1 | tee -a "$DEST/$STAMP-tests.log"
  BENCH=${PIPESTATUS[0]}
fi

if [[ " $PARTS " == *" train "* ]]; then
  # 3. training throughput (rounds stop after --budget s; the batch search takes ~1 min)
  TRAIN_ARGS="--batch-search"
  [ "$DEVICE" = cpu ] && TRAIN_ARGS="--cases quickstart-32 resnet18-224 --rounds 1"
  timeout 210 "$PY" benchmarks/train_throughput.py $TRAIN_ARGS --budget 60 \
    --out "$DEST" --tag "$STAMP-train" 2>&1 | tee -a "$DEST/$STAMP-tests.log"
  TRAIN=${PIPESTATUS[0]}
fi

{
  echo "# DALI GPU check ($STAMP, DALI operators: $DEVICE)"
  echo
  echo "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  echo
  for part in "parity and loader tests on $DEVICE operators:$TESTS" \
              "data-pipeline throughput:$BENCH" "training throughput:$TRAIN"; do
    code=${part##*:}
    echo "- ${part%:*}: $(case $code in 0) echo done;; skipped) echo skipped;;
                                       *) echo "FAILED (exit $code)";; esac)"
  done
  echo
  cat "$DEST/$STAMP"-bench-*.md "$DEST/$STAMP"-train.md 2>/dev/null
} | tee "$DEST/$STAMP-summary.md"
for code in "$TESTS" "$BENCH" "$TRAIN"; do
  [ "$code" = 0 ] || [ "$code" = skipped ] || exit 1
done
