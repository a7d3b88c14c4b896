#!/usr/bin/env bash
# Set up irvis-fusion on a Jetson (JetPack 5.x = L4T R35, JetPack 6.x = L4T R36).
#
#   jetson/setup.sh                 # apt packages, a venv that sees JetPack's OpenCV and TensorRT, the runtime, a check
#   jetson/setup.sh --check         # only print what is installed and usable
#   jetson/setup.sh --dry-run       # print the commands instead of running them
#
# Why it looks like this:
# - OpenCV comes from JetPack (built with GStreamer, which csi:// cameras and GStreamer pipelines need). A pip
#   opencv-python wheel has no GStreamer and would shadow it, so the venv uses --system-site-packages and setup.py
#   already leaves opencv-python-headless (and onnxruntime) out on aarch64. The check fails loudly if one slipped in.
# - TensorRT's Python bindings come from JetPack (python3-libnvinfer); there is no pip wheel for Jetson.
# - ONNX Runtime with the GPU comes from a Jetson wheel you point at (ORT_WHEEL=/path/or/url.whl); without it the
#   runtime still runs TensorRT engines (jetson/build_engines.sh).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
RELEASE_FILE="${FUSION_L4T_RELEASE_FILE:-/etc/nv_tegra_release}"
ORT_WHEEL="${ORT_WHEEL:-}"
DRY_RUN=0
CHECK_ONLY=0
APT=1
PYCUDA=1

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --check        only run the check
  --dry-run      print every command instead of running it
  --no-apt       skip the apt packages (already installed, or no root)
  --no-pycuda    do not build pycuda (the TensorRT runner then needs cuda-python)
  --venv DIR     virtual environment to create/use (default: REPO/.venv)
environment: ORT_WHEEL (onnxruntime-gpu wheel for this JetPack), FUSION_L4T_RELEASE_FILE (testing)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --check) CHECK_ONLY=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --no-apt) APT=0 ;;
        --no-pycuda) PYCUDA=0 ;;
        --venv) VENV="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# L4T major release -> JetPack generation: R35 = JetPack 5 (Ubuntu 20.04, Python 3.8),
# R36 = JetPack 6 (Ubuntu 22.04, Python 3.10). Older releases are not supported.
l4t_release() {
    if [ -r "$RELEASE_FILE" ]; then
        sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' "$RELEASE_FILE" | head -n 1
    fi
}

jetpack_major() {
    case "$1" in
        35.*) echo 5 ;;
        36.*) echo 6 ;;
        *) echo 0 ;;
    esac
}

apt_packages() {
    # Common to JetPack 5 and 6. nvidia-opencv brings JetPack's OpenCV (with GStreamer) and its Python module;
    # python3-libnvinfer the TensorRT bindings; tensorrt provides trtexec in /usr/src/tensorrt/bin.
    local packages=(
        python3-pip python3-venv python3-dev build-essential
        nvidia-opencv python3-libnvinfer python3-libnvinfer-dev tensorrt
        gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
        gstreamer1.0-libav v4l-utils
    )
    if [ "$1" -eq 6 ]; then
        packages+=(nvidia-l4t-gstreamer)
    fi
    printf '%s\n' "${packages[@]}"
}

check() {
    local py="$VENV/bin/python"
    [ -x "$py" ] || py="python3"
    echo "== irvis-fusion on Jetson: what was found =="
    local release
    release="$(l4t_release)"
    echo "L4T release : ${release:-not a Jetson (no $RELEASE_FILE)}"
    if [ -n "$release" ]; then
        echo "JetPack     : $(jetpack_major "$release")"
    fi
    if [ -r /usr/local/cuda/version.json ]; then
        echo "CUDA        : $(sed -n 's/.*"cuda" *: *{ *"name"[^}]*"version" *: *"\([0-9.]*\)".*/\1/p' /usr/local/cuda/version.json | head -n 1)"
    elif command -v nvcc >/dev/null 2>&1; then
        echo "CUDA        : $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    else
        echo "CUDA        : not found"
    fi
    if command -v trtexec >/dev/null 2>&1 || [ -x /usr/src/tensorrt/bin/trtexec ]; then
        echo "trtexec     : $(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)"
    else
        echo "trtexec     : not found (apt install tensorrt)"
    fi
    if command -v nvpmodel >/dev/null 2>&1; then
        echo "power mode  : $(nvpmodel -q 2>/dev/null | tr '\n' ' ')"
    fi
    "$py" - <<'EOF'
import importlib, site, sys
status = 0
print(f"python      : {sys.version.split()[0]} ({sys.executable})")
try:
    import cv2
    info = cv2.getBuildInformation()
    gst = "YES" if any(l.strip().startswith("GStreamer:") and "YES" in l for l in info.splitlines()) else "NO"
    pip_site = [p for p in site.getsitepackages() if sys.prefix in p]
    shadow = any(cv2.__file__.startswith(p) for p in pip_site) and sys.prefix != sys.base_prefix
    print(f"OpenCV      : {cv2.__version__} from {cv2.__file__}, GStreamer {gst}")
    if gst != "YES" or shadow:
        print("  !! this OpenCV has no GStreamer or is a pip wheel shadowing JetPack's: "
              "pip uninstall -y opencv-python opencv-python-headless opencv-contrib-python")
        status = 1
except ImportError:
    print("OpenCV      : missing (apt install nvidia-opencv)")
    status = 1
for name in ("tensorrt", "onnxruntime", "pycuda", "cuda", "numpy"):
    try:
        module = importlib.import_module(name)
        extra = ""
        if name == "onnxruntime":
            extra = f", providers {module.get_available_providers()}"
        print(f"{name:<12}: {getattr(module, '__version__', 'present')}{extra}")
    except Exception as exc:
        print(f"{name:<12}: not usable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
try:
    import runtime  # noqa: F401
    from runtime.backends import create_backend  # noqa: F401
    print("irvis-fusion: runtime importable")
except Exception as exc:
    print(f"irvis-fusion: not importable ({exc})")
    status = 1
sys.exit(status)
EOF
}

if [ "$CHECK_ONLY" -eq 1 ]; then
    check
    exit $?
fi

RELEASE="$(l4t_release)"
JETPACK="$(jetpack_major "${RELEASE:-none}")"
if [ "$JETPACK" -eq 0 ]; then
    echo "setup.sh: this is not JetPack 5 or 6 (L4T release '${RELEASE:-unknown}' from $RELEASE_FILE); on a" \
         "desktop use 'pip install -e .' instead" >&2
    exit 2
fi
echo "JetPack $JETPACK (L4T R$RELEASE)"

if [ "$APT" -eq 1 ]; then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
    mapfile -t PACKAGES < <(apt_packages "$JETPACK")
    run "${SUDO[@]}" apt-get update
    run "${SUDO[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"
fi

# The venv sees the system's dist-packages: JetPack's cv2 and tensorrt.
if [ ! -x "$VENV/bin/python" ]; then
    run python3 -m venv --system-site-packages "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
run "${PIP[@]}" install --upgrade pip setuptools wheel
# A pip OpenCV would shadow JetPack's GStreamer build: remove any that an earlier install pulled in.
run "${PIP[@]}" uninstall -y opencv-python opencv-python-headless opencv-contrib-python
if [ -n "$ORT_WHEEL" ]; then
    run "${PIP[@]}" install "$ORT_WHEEL"
else
    echo "note: ORT_WHEEL is not set, so ONNX Runtime is not installed; TensorRT engines still run" \
         "(jetson/build_engines.sh). Point ORT_WHEEL at the onnxruntime-gpu wheel for JetPack $JETPACK to add it."
fi
if [ "$PYCUDA" -eq 1 ]; then
    # pycuda builds against the JetPack CUDA; the TensorRT runner uses it (or cuda-python) for device buffers.
    run env PATH="/usr/local/cuda/bin:$PATH" CUDA_ROOT=/usr/local/cuda "${PIP[@]}" install "pycuda>=2022.1"
fi
# The runtime itself, with the trt extra when pip can see JetPack's TensorRT (python3-libnvinfer installs its
# metadata into the system site-packages); otherwise the base install, since there is no TensorRT wheel for Jetson.
if [ "$DRY_RUN" -eq 0 ] && ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('tensorrt')" \
        >/dev/null 2>&1; then
    echo "note: pip sees no tensorrt distribution (is python3-libnvinfer installed?); installing the base runtime"
    run "${PIP[@]}" install -e "$REPO"
else
    run "${PIP[@]}" install -e "${REPO}[trt]"
fi

if [ "$DRY_RUN" -eq 1 ]; then
    echo "+ check"
else
    check
fi
