#!/usr/bin/env bash
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
#
# The seed paper's Table 1 (ResNet-50 students) and Table 3 (ResNet-18 students) rows that run on
# mot15-ps-mini, end to end: train the teachers (DET_18, DET_50, OIM_18, OIM_50), export the OIM
# teachers' lookup tables for KD_reid, train the students, and print the results with
# dev/benchmark.py (one table per group: the teacher and loss-weight variants are command-line
# keys of one config). What is done already is skipped: trained configs
# (OUTPUT_DIR/model_final.pth), exported tables, saved evaluations. Extra arguments go to dev/benchmark.py (e.g. --retrain).
#
#   DETECTRON2_DATASETS=/path/to/datasets dev/run_mot15_kd_benchmark.sh cpu    # or: gpu
# gpu merges configs/mot15/gpu.yaml after each config (tools/train_net.py --override); the runs
# write the configs' own OUTPUT_DIRs, as on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:?usage: $0 cpu|gpu [dev/benchmark.py arguments]}
shift
case "$size" in
  cpu) hardware=() ;;
  gpu) hardware=(--override configs/mot15/gpu.yaml) ;;
  *) echo "usage: $0 cpu|gpu [dev/benchmark.py arguments]" >&2; exit 2 ;;
esac
configs() { for name in "$@"; do echo "configs/mot15/${name}.yaml"; done; }
# benchmark CONFIG... [--opts KEY VALUE ...]
benchmark() { python3 dev/benchmark.py "${hardware[@]}" "${extra[@]}" --config-files "$@"; }
extra=("$@")

# 1. The teachers, which are also the baselines of the table.
benchmark $(configs det_R_50 det_R_18 oim_R_50 oim_R_18)

# 2. KD_reid: the OIM teachers' lookup tables, where the students' LUTFileTeacher expects them.
for depth in 50 18; do
  out="output/mot15_oim_R_${depth}"
  if [ ! -f "$out/lut.pth" ]; then
    python3 tools/export_lut.py --config-file "configs/mot15/oim_R_${depth}.yaml" \
      --from-checkpoint --weights "$out/model_final.pth" --output "$out/lut.pth"
  fi
done

# 3. The students, in the order of the paper's tables.
benchmark $(configs kd_det_R_50)
benchmark $(configs kd_det_R_50) \
  --opts MODEL.OIM.LOSS_WEIGHT 0.3 OUTPUT_DIR output/mot15_kd_det_R_50_oim_0.3
benchmark $(configs kd_reid_R_50 kd_det_kd_reid_R_50)
benchmark $(configs kd_reid_R_50) --opts MODEL.TEACHERS.table.WEIGHTS \
  output/mot15_oim_R_18/lut.pth OUTPUT_DIR output/mot15_kd_reid_R_50_teacher_R_18
benchmark $(configs kd_det_R_18)
benchmark $(configs kd_reid_R_18) --opts MODEL.TEACHERS.table.WEIGHTS \
  output/mot15_oim_R_50/lut.pth OUTPUT_DIR output/mot15_kd_reid_R_18_teacher_R_50
benchmark $(configs kd_det_kd_reid_R_18 kd_reid_R_18)
