#!/usr/bin/env bash
# Container entry point: build the TensorRT engine on first start (engines are specific to the GPU and TensorRT
# version they run on, so they cannot be baked into the image), keep it in the engines volume, then run fusion-run.
set -euo pipefail

APP=/opt/irvis-fusion
ENGINES="${FUSION_ENGINES:-$APP/engines}"
PRECISION="${FUSION_PRECISION:-fp16}"

# INT8 needs its source mounted in: FUSION_CALIB (a calibration cache from `fusion export --format engine --precision
# int8`) or FUSION_INT8_ONNX (a QDQ ONNX from `fusion export --format onnx-int8 --qdq-target tensorrt`).
if [ ! -e "$ENGINES/model.engine" ]; then
    echo "no engine in $ENGINES yet: building a $PRECISION engine of the shipped model (takes a few minutes once)" >&2
    args=(--onnx "$APP/runtime/models/default/model.onnx" --out "$ENGINES" --precision "$PRECISION" --install "$PRECISION")
    if [ -n "${FUSION_CALIB:-}" ]; then args+=(--calib "$FUSION_CALIB"); fi
    if [ -n "${FUSION_INT8_ONNX:-}" ]; then args+=(--int8-onnx "$FUSION_INT8_ONNX"); fi
    "$APP/jetson/build_engines.sh" "${args[@]}"
fi
exec fusion-run --model "$ENGINES/model.engine" "$@"
