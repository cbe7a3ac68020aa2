#!/usr/bin/env bash
# Registration accuracy on synthetic scans of every dataset layout, against their ground truth.
#   bash bench/register_layouts.sh [FLAME_DIR=runs/demo/flame] [OUT=/tmp/regeval] [SUBJECTS=4] [EXPRESSIONS=2]
# For each layout: `p3dmm synth scans` -> `p3dmm register` (local Ray, 2 CPUs) -> `p3dmm register eval`.
set -u
cd "$(dirname "$0")/.."
FLAME=${1:-runs/demo/flame}
R=${2:-/tmp/regeval}
SUBJECTS=${3:-4}
EXPRESSIONS=${4:-2}
B=.venv/bin
mkdir -p "$R"
for L in nphm facescape facescape-mview ava256 generic; do
  rm -rf "$R/scans/$L" "$R/reg/$L"
  $B/p3dmm synth scans --layout $L --out "$R/scans/$L" --flame "$FLAME" --subjects "$SUBJECTS" \
      --expressions "$EXPRESSIONS" --seed 7
  opts=()
  case $L in
    facescape) opts=(--source_options "{\"landmark_indices\": \"$R/scans/facescape/landmark_indices.npz\"}");;
    facescape-mview) opts=(--source_options "{\"rt_scale_dict\": \"$R/scans/facescape-mview/Rt_scale_dict.json\"}");;
    ava256) opts=(--source_options "{\"topology\": \"$R/scans/ava256/assets/face_topology.obj\"}");;
  esac
  start=$(date +%s)
  $B/p3dmm register --source $L --root "$R/scans/$L" --flame "$FLAME" --out "$R/reg/$L" --num-cpus 2 \
      --progress false "${opts[@]}"
  echo "$L: registered in $(( $(date +%s) - start )) s"
  $B/p3dmm register eval --out "$R/reg/$L" --truth "$R/scans/$L"
done
