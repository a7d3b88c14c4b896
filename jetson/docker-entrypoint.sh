#!/usr/bin/env bash
# Container entry point: build the TensorRT engine on first start (engines are specific to the GPU and TensorRT
# version they run on, so they cannot be baked into the image), keep it in the engines volume, then run fusion-run.
set -euo pipefail

APP=/opt/irvis-fusion
ENGINES="${FUSION_ENGINES:-$APP/engines}"
PRECISION="${FUSION_PRECISION:-fp16}"

if [ ! -e "$ENGINES/model.engine" ]; then
    echo "no engine in $ENGINES yet: building a $PRECISION engine of the shipped model (takes a few minutes once)" >&2
    "$APP/jetson/build_engines.sh" --onnx "$APP/runtime/models/default/model.onnx" --out "$ENGINES" \
        --precision "$PRECISION" --install "$PRECISION"
fi
exec fusion-run --model "$ENGINES/model.engine" "$@"
