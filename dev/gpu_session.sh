#!/usr/bin/env bash
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
#
# The GPU measurements of a session lent a GPU, as one call from the repository root:
#   1. installs what the machine lacks: wheels carried in .whl/ (fvcore, iopath, yacs,
#      pycocotools, faiss-cpu, omegaconf, hydra-core, ... for its Python) and detectron2 from the
#      source snapshot carried as .d2/detectron2-*.tar.gz (built there with its nvcc);
#   2. training-step and gallery-inference benchmarks of R18 and R50 at 576x768 and 900x1500, in
#      fp32, fp16 (with a gradient scaler, as detectron2's AMP trainer) and bf16, re-ID on the
#      proposals or on the final boxes; inference with SeqNet's test settings (6000/300
#      proposals, 100 detections per image, BatchNorm statistics calibrated, as the random
#      weights find no proposal otherwise) and SeqNet itself alternated in when a checkout of
#      serend1p1ty/SeqNet is carried as .seqnet/ (or named by $SEQNET_ROOT);
#   3. trains configs/mot15/oim_R_18.yaml with --override configs/mot15/gpu.yaml (SEED 0) to the
#      end and evaluates it
#      (dev/benchmark.py), with mot15-ps-mini under $DATASETS.
# Every table lands in $OUT (default ./gpu_session). `dev/gpu_session.sh --tiny` runs the same
# steps on CPU at toy sizes on the shipped sample (what the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_session}"
mkdir -p "$OUT"

if [ "${1:-}" = "--tiny" ]; then
    DEVICE=cpu
    SIZES=("96 128")
    PRECISIONS=(fp32 bf16)
    # Inference refuses a precision the CPU would emulate; auto is bf16 where it is native.
    INFERENCE_PRECISIONS=(fp32 auto)
    DEPTHS=(18)
    STEPS=(--warmup 0 --iters 1)
    TRAIN_CONFIG=configs/mot15/oim_R_18_sample_quickstart.yaml
    TRAIN_OVERRIDES=()
    TRAIN_OPTS=(SOLVER.MAX_ITER 2 SOLVER.WARMUP_ITERS 0 SOLVER.STEPS "()" INPUT.MIN_SIZE_TRAIN "(96,)"
        INPUT.MIN_SIZE_TEST 96 MODEL.RPN.POST_NMS_TOPK_TEST 30 TEST.DETECTIONS_PER_IMAGE 10
        DATALOADER.NUM_WORKERS 0 TEST.PERSON_SEARCH.VIS_QUERIES 0)
    export DETECTRON2_DATASETS="${DATASETS:-datasets}"
else
    DEVICE=cuda
    SIZES=("576 768" "900 1500")
    PRECISIONS=(fp32 fp16 bf16)
    INFERENCE_PRECISIONS=(fp32 fp16 bf16)
    DEPTHS=(18 50)
    STEPS=(--warmup 2 --iters 10)
    TRAIN_CONFIG=configs/mot15/oim_R_18.yaml
    TRAIN_OVERRIDES=(--override configs/mot15/gpu.yaml)
    TRAIN_OPTS=()
    export DETECTRON2_DATASETS="${DATASETS:-shared/data}"
    nvidia-smi > "$OUT/nvidia-smi.txt"
fi

# 1. What the machine lacks.
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
if ! python3 -c "import detectron2" 2>/dev/null; then
    src=$(mktemp -d)
    tar xzf .d2/detectron2-*.tar.gz -C "$src"
    python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site "$src/detectron2"
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
SEQNET_ROOT="${SEQNET_ROOT:-$PWD/.seqnet}"
SEQNET=()
if [ -f "$SEQNET_ROOT/models/seqnet.py" ]; then
    SEQNET=(--seqnet-root "$SEQNET_ROOT" --seqnet-device "$DEVICE" --seqnet-detections 100)
fi
python3 -c "import torch, detectron2; print('torch', torch.__version__, 'detectron2', detectron2.__version__)" \
    | tee "$OUT/versions.txt"

# 2. Training steps and gallery inference, every setting stepped in turns in one process.
for depth in "${DEPTHS[@]}"; do
    for size in "${SIZES[@]}"; do
        read -r height width <<< "$size"
        config=configs/scratch/oim_R_${depth}_C4_scratch.yaml
        python3 dev/benchmark_train_step.py --config-file "$config" \
            --precision "${PRECISIONS[@]}" --height "$height" --width "$width" --batch 2 \
            "${STEPS[@]}" MODEL.DEVICE "$DEVICE" MODEL.OIM.NUM_IDS 5532 \
            > "$OUT/train_step_R${depth}_${height}x${width}.md"
        python3 tools/benchmark_inference.py --config-files "$config" \
            --precision "${INFERENCE_PRECISIONS[@]}" --reid-on-proposals 0 1 --height "$height" \
            --width "$width" "${STEPS[@]}" --calibrate-bn 2 --score-thresh 0 "${SEQNET[@]}" \
            MODEL.DEVICE "$DEVICE" MODEL.RPN.PRE_NMS_TOPK_TEST 6000 \
            MODEL.RPN.POST_NMS_TOPK_TEST 300 TEST.DETECTIONS_PER_IMAGE 100 \
            > "$OUT/inference_R${depth}_${height}x${width}.md"
    done
done

# 3. A full GPU training with its evaluation.
python3 dev/benchmark.py "${TRAIN_OVERRIDES[@]}" --config-files "$TRAIN_CONFIG" \
    --opts SEED 0 MODEL.DEVICE "$DEVICE" OUTPUT_DIR "$OUT/train" "${TRAIN_OPTS[@]}" \
    > "$OUT/train_and_evaluate.md"
echo "gpu_session: tables in $OUT"
