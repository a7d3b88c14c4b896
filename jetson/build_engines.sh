#!/usr/bin/env bash
# Build TensorRT engines of the shipped ONNX on this Jetson (engines are tied to the GPU and TensorRT version that
# built them, so they are built on the device, never shipped).
#
#   jetson/build_engines.sh                          # fp16 engine of runtime/models/default/model.onnx -> model.engine
#   jetson/build_engines.sh --precision all          # fp16 and int8 (int8: a calibration cache or a TensorRT QDQ ONNX)
#   jetson/build_engines.sh --precision int8 --dla 0 # INT8 on DLA core 0, GPU fallback for unsupported layers
#   jetson/build_engines.sh --via fusion             # the same through `fusion export --format engine`
#   jetson/build_engines.sh --dry-run                # print the commands only
#
# The dynamic ONNX gets one optimisation profile: MIN..MAX with its optimum at --imgsz (the camera's size).
# INT8 comes from a calibration cache (implicit INT8 of model.onnx; `fusion export --format engine --precision int8
# --data DIR` writes one from training pairs) or from a QDQ ONNX quantised for TensorRT (explicit INT8; `fusion export
# --format onnx-int8 --qdq-target tensorrt`). The shipped model.int8.onnx is quantised for ONNX Runtime on the CPU
# (asymmetric uint8, which TensorRT cannot build), so it is never used here. With neither, trtexec would quantise
# with made-up ranges, so this script refuses.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ONNX="$REPO/runtime/models/default/model.onnx"
OUT_DIR=""
PRECISION="fp16"
IMGSZ="480x640"
MIN_IMGSZ="64x64"
MAX_IMGSZ="1088x1920"
CALIB=""
INT8_ONNX=""
DATA=""
DLA=""
VIA="trtexec"
INSTALL="fp16"
WORKSPACE_MIB=1024
DRY_RUN=0
TRTEXEC="${TRTEXEC:-}"

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --onnx FILE          ONNX model (default runtime/models/default/model.onnx)
  --out DIR            where engines go (default: beside the ONNX)
  --precision P        fp16 | int8 | all (default fp16)
  --imgsz HxW          optimum of the profile, the camera's size (default 480x640)
  --min-imgsz HxW      smallest size the engine accepts (default 64x64; a 160x120 Lepton at native size fits)
  --max-imgsz HxW      largest size the engine accepts (default 1088x1920)
  --calib FILE         INT8 calibration cache (default: model.int8.engine.calib, model.engine.calib or calib.cache
                       beside the ONNX, as written by fusion export --format engine --precision int8)
  --int8-onnx FILE     INT8 from this QDQ ONNX quantised for TensorRT (symmetric) instead of a cache (default when
                       no cache: model.int8.trt.onnx or model.int8.onnx beside the ONNX whose FILE.json record
                       says "qdq_target": "tensorrt")
  --data DIR           pairs (ir/, vi/, train.txt) `fusion export` calibrates INT8 on (--via fusion)
  --dla CORE           build for this DLA core (Xavier / Orin), with GPU fallback
  --install P          which engine becomes model.engine, the one `fusion run` picks (default fp16; none: no link)
  --workspace MIB      builder workspace (default 1024)
  --via trtexec|fusion build with trtexec (default) or with `fusion export --format engine`
  --dry-run            print the commands instead of running them
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --onnx) ONNX="$2"; shift ;;
        --out) OUT_DIR="$2"; shift ;;
        --precision) PRECISION="$2"; shift ;;
        --imgsz) IMGSZ="$2"; shift ;;
        --min-imgsz) MIN_IMGSZ="$2"; shift ;;
        --max-imgsz) MAX_IMGSZ="$2"; shift ;;
        --calib) CALIB="$2"; shift ;;
        --int8-onnx) INT8_ONNX="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --dla) DLA="$2"; shift ;;
        --install) INSTALL="$2"; shift ;;
        --workspace) WORKSPACE_MIB="$2"; shift ;;
        --via) VIA="$2"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build_engines.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "build_engines.sh: $*" >&2; exit 2; }

case "$PRECISION" in
    fp16) PRECISIONS=(fp16) ;;
    int8) PRECISIONS=(int8) ;;
    all) PRECISIONS=(fp16 int8) ;;
    *) die "--precision must be fp16, int8 or all, not '$PRECISION'" ;;
esac
case "$VIA" in trtexec|fusion) ;; *) die "--via must be trtexec or fusion, not '$VIA'" ;; esac
for size in "$IMGSZ" "$MIN_IMGSZ" "$MAX_IMGSZ"; do
    [[ "$size" =~ ^[0-9]+x[0-9]+$ ]] || die "sizes are HxW, for example 480x640, not '$size'"
done
[[ -z "$DLA" || "$DLA" =~ ^[0-9]+$ ]] || die "--dla takes a core number (0 or 1), not '$DLA'"
[ -f "$ONNX" ] || [ "$DRY_RUN" -eq 1 ] || die "no ONNX model at $ONNX (export one with: fusion export --weights default --format onnx --dynamic)"

MODEL_DIR="$(dirname "$ONNX")"
if [ -d "$MODEL_DIR" ]; then MODEL_DIR="$(cd "$MODEL_DIR" && pwd)"; fi
OUT_DIR="${OUT_DIR:-$MODEL_DIR}"
# A QDQ ONNX TensorRT can build: its export record (FILE.json) says it was quantised for TensorRT (symmetric).
is_trt_qdq() {
    [ -f "$1" ] && [ -f "$1.json" ] && grep -Eq '"qdq_target": *"tensorrt"' "$1.json"
}

# INT8 source when none is given: the cache `fusion export --format engine --precision int8` writes beside its
# engine (E.calib) or calib.cache, else a TensorRT QDQ ONNX beside the model; a dry run prints the calib.cache line.
if [ -z "$CALIB" ] && [ -z "$INT8_ONNX" ]; then
    for candidate in "$MODEL_DIR/model.int8.engine.calib" "$MODEL_DIR/model.engine.calib" "$MODEL_DIR/calib.cache"; do
        if [ -f "$candidate" ]; then CALIB="$candidate"; break; fi
    done
    if [ -z "$CALIB" ]; then
        for candidate in "$MODEL_DIR/model.int8.trt.onnx" "$MODEL_DIR/model.int8.onnx"; do
            if is_trt_qdq "$candidate"; then INT8_ONNX="$candidate"; break; fi
        done
    fi
    if [ -z "$CALIB" ] && [ -z "$INT8_ONNX" ]; then CALIB="$MODEL_DIR/calib.cache"; fi
fi

run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# ir:1x1xHxW,vis:1x1xHxW for trtexec's shape options (the model takes the visible luminance: 1 channel).
shapes() {
    echo "ir:1x1x$1,vis:1x1x$1"
}

find_trtexec() {
    if [ -n "$TRTEXEC" ]; then echo "$TRTEXEC"; return; fi
    if command -v trtexec >/dev/null 2>&1; then command -v trtexec; return; fi
    if [ -x /usr/src/tensorrt/bin/trtexec ]; then echo /usr/src/tensorrt/bin/trtexec; return; fi
    echo ""
}

engine_name() {
    local precision="$1"
    if [ -n "$DLA" ]; then
        echo "$OUT_DIR/model.${precision}.dla${DLA}.engine"
    else
        echo "$OUT_DIR/model.${precision}.engine"
    fi
}

trtexec_build() {
    local precision="$1" engine="$2" exe source="$ONNX"
    exe="$(find_trtexec)"
    if [ -z "$exe" ]; then
        [ "$DRY_RUN" -eq 1 ] || die "trtexec not found (apt install tensorrt; it lives in /usr/src/tensorrt/bin)"
        exe="trtexec"
    fi
    if [ "$precision" = "int8" ] && [ -n "$INT8_ONNX" ]; then
        [ -f "$INT8_ONNX" ] || [ "$DRY_RUN" -eq 1 ] || die "no INT8 ONNX at $INT8_ONNX"
        source="$INT8_ONNX"
    fi
    local cmd=("$exe" "--onnx=$source" "--saveEngine=$engine"
               "--minShapes=$(shapes "$MIN_IMGSZ")" "--optShapes=$(shapes "$IMGSZ")" "--maxShapes=$(shapes "$MAX_IMGSZ")"
               "--memPoolSize=workspace:${WORKSPACE_MIB}M" "--skipInference" "--fp16")
    if [ "$precision" = "int8" ] && [ -n "$INT8_ONNX" ]; then
        cmd+=("--int8")     # explicit INT8: the scales are the Q/DQ nodes', no calibration
    elif [ "$precision" = "int8" ]; then
        if [ ! -f "$CALIB" ] && [ "$DRY_RUN" -eq 0 ]; then
            die "INT8 needs a calibration cache or a QDQ ONNX quantised for TensorRT beside $ONNX and there is neither (the shipped model.int8.onnx is quantised for the CPU: asymmetric uint8, which TensorRT cannot build); make one from training pairs with \`fusion export --weights default --format engine --precision int8 --dynamic --data DIR\` (writes the cache) or \`fusion export --weights default --format onnx-int8 --qdq-target tensorrt --dynamic --data DIR --out $MODEL_DIR/model.int8.trt.onnx\`, or pass --calib FILE / --int8-onnx FILE"
        fi
        cmd+=("--int8" "--calib=$CALIB")
    fi
    if [ -n "$DLA" ]; then
        cmd+=("--useDLACore=$DLA" "--allowGPUFallback")
    fi
    run "${cmd[@]}"
}

fusion_build() {
    local precision="$1" engine="$2"
    local cmd=(fusion export --weights "$MODEL_DIR" --format engine --precision "$precision" --dynamic
               --imgsz "$IMGSZ" --min-imgsz "$MIN_IMGSZ" --max-imgsz "$MAX_IMGSZ" --workspace "$WORKSPACE_MIB"
               --onnx "$ONNX" --out "$engine")
    if [ -n "$DLA" ]; then
        cmd+=(--dla "$DLA")
    fi
    if [ -n "$DATA" ]; then
        cmd+=(--data "$DATA")
    fi
    run "${cmd[@]}"
}

if [ "$DRY_RUN" -eq 0 ]; then mkdir -p "$OUT_DIR"; fi
for precision in "${PRECISIONS[@]}"; do
    engine="$(engine_name "$precision")"
    echo "building $precision engine: $engine" >&2
    if [ "$VIA" = "fusion" ]; then
        fusion_build "$precision" "$engine"
    else
        trtexec_build "$precision" "$engine"
    fi
done

# `fusion run` (backend auto) uses model.engine beside model.onnx when a GPU is present.
if [ "$INSTALL" != "none" ]; then
    for precision in "${PRECISIONS[@]}"; do
        if [ "$precision" = "$INSTALL" ]; then
            run ln -sf "$(basename "$(engine_name "$precision")")" "$OUT_DIR/model.engine"
        fi
    done
fi
