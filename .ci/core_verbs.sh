#!/usr/bin/env bash
# Every verb's main path on the core install (no extras), on the model directory the quick start
# wrote: predict, evaluate, export saved_model and tflite must work; ONNX and reading .pth are
# optional extras and must refuse in one line naming the extra (exit 2, no traceback).
#   bash .ci/core_verbs.sh MODEL_DIR WORK_DIR
set -euo pipefail
MODEL=$1
WORK=$2
mkdir -p "$WORK"

run() {  # run NAME CMD...: must succeed, no traceback
    local name=$1; shift
    echo "-- $name: $*"
    "$@" >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; echo "FAILED: $name"; exit 1; }
    if grep -q "Traceback" "$WORK/$name.log"; then cat "$WORK/$name.log"; echo "TRACEBACK: $name"; exit 1; fi
    tail -n 2 "$WORK/$name.log"
}

refuses() {  # refuses NAME HINT CMD...: must fail with one line naming HINT, no traceback
    local name=$1 hint=$2; shift 2
    echo "-- $name (optional extra missing): $*"
    if "$@" >"$WORK/$name.log" 2>&1; then cat "$WORK/$name.log"; echo "should have refused: $name"; exit 1; fi
    if grep -q "Traceback" "$WORK/$name.log"; then cat "$WORK/$name.log"; echo "TRACEBACK: $name"; exit 1; fi
    grep -F -- "$hint" "$WORK/$name.log" || { cat "$WORK/$name.log"; echo "no '$hint' in: $name"; exit 1; }
}

run predict keras-maskrcnn predict --model "$MODEL" "$MODEL/val_images" --output "$WORK/predictions"
test -s "$WORK/predictions/predictions.json"
run evaluate keras-maskrcnn evaluate --model "$MODEL" --dataset shapes --shapes-val-images 8 \
    --json "$WORK/metrics.json"
test -s "$WORK/metrics.json"
run export_saved_model keras-maskrcnn export --model "$MODEL" --format saved_model \
    --output "$WORK/saved_model/1"
test -s "$WORK/saved_model/1/saved_model.pb"
run export_tflite keras-maskrcnn export --model "$MODEL" --format tflite --output "$WORK/model.tflite"
test -s "$WORK/model.tflite"
refuses export_onnx '.[onnx]' keras-maskrcnn export --model "$MODEL" --format onnx --output "$WORK/model.onnx"
printf 'not a real state dict' >"$WORK/weights.pth"
refuses convert_pth '.[parity]' keras-maskrcnn convert torchvision "$WORK/weights.pth" --output "$WORK/converted"
echo "every verb ran on the core install"
