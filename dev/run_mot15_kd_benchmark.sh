#!/usr/bin/env bash
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
#
# The seed paper's Table 1 (ResNet-50 students) and Table 3 (ResNet-18 students) rows that run on
# mot15-ps-mini, end to end: train the teachers (DET_18, DET_50, OIM_18, OIM_50), export the OIM
# teachers' lookup tables for KD_reid, train the students, and print one results table with
# dev/benchmark.py. What is done already is skipped: trained configs (OUTPUT_DIR/model_final.pth),
# exported tables, saved evaluations. Extra arguments go to dev/benchmark.py (e.g. --retrain).
#
#   DETECTRON2_DATASETS=/path/to/datasets dev/run_mot15_kd_benchmark.sh cpu    # or: gpu
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:?usage: $0 cpu|gpu [dev/benchmark.py arguments]}
shift
configs() { for name in "$@"; do echo "configs/mot15/${name}_${size}.yaml"; done; }

# 1. The teachers, which are also the baselines of the table.
python3 dev/benchmark.py "$@" --config-files $(configs det_R_50_C4 det_R_18_C4 oim_R_50_C4 oim_R_18_C4)

# 2. KD_reid: the OIM teachers' lookup tables, where the students' LUTFileTeacher expects them.
for depth in 50 18; do
  out="output/mot15_oim_R_${depth}_C4_${size}"
  if [ ! -f "$out/lut.pth" ]; then
    python3 tools/export_lut.py --config-file "configs/mot15/oim_R_${depth}_C4_${size}.yaml" \
      --from-checkpoint --weights "$out/model_final.pth" --output "$out/lut.pth"
  fi
done

# 3. The students, in the order of the paper's tables, and the whole table.
python3 dev/benchmark.py "$@" --config-files $(configs \
  det_R_50_C4 \
  oim_R_50_C4 \
  kd_det_R_50_C4_teacher_R_50 \
  kd_det_R_50_C4_teacher_R_50_oim_0.3 \
  kd_reid_R_50_C4_teacher_R_50 \
  kd_det_kd_reid_R_50_C4_teacher_R_50 \
  kd_reid_R_50_C4_teacher_R_18 \
  det_R_18_C4 \
  oim_R_18_C4 \
  kd_det_R_18_C4_teacher_R_50 \
  kd_reid_R_18_C4_teacher_R_50 \
  kd_det_kd_reid_R_18_C4_teacher_R_50 \
  kd_reid_R_18_C4_teacher_R_18)
