#!/usr/bin/env bash
# Check the two cameras of a recipe before starting fusion-run: list the thermal camera's formats and pull a few
# frames from each camera through the same GStreamer elements the recipes use.
#
#   jetson/cameras/probe.sh                        # CSI sensor 0 and /dev/video1
#   jetson/cameras/probe.sh --csi 1 --ir /dev/video2 --ir-size 160x120 --ir-fps 9
#   jetson/cameras/probe.sh --dry-run              # print the commands only
set -euo pipefail

CSI=0
IR=/dev/video1
IR_SIZE=640x512
IR_FPS=60
VIS_SIZE=1280x720
VIS_FPS=30
FRAMES=60
DRY_RUN=0

while [ $# -gt 0 ]; do
    case "$1" in
        --csi) CSI="$2"; shift ;;
        --ir) IR="$2"; shift ;;
        --ir-size) IR_SIZE="$2"; shift ;;
        --ir-fps) IR_FPS="$2"; shift ;;
        --vis-size) VIS_SIZE="$2"; shift ;;
        --vis-fps) VIS_FPS="$2"; shift ;;
        --frames) FRAMES="$2"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "probe.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for size in "$IR_SIZE" "$VIS_SIZE"; do
    [[ "$size" =~ ^[0-9]+x[0-9]+$ ]] || { echo "probe.sh: sizes are WxH, for example 640x512, not '$size'" >&2; exit 2; }
done

run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+ %s\n' "$*"
    else
        echo "+ $*" >&2
        "$@"
    fi
}

vis_w="${VIS_SIZE%x*}"; vis_h="${VIS_SIZE#*x}"
ir_w="${IR_SIZE%x*}"; ir_h="${IR_SIZE#*x}"

# The thermal camera must offer Y16 (GREY is 8-bit AGC'd video: usable, but the radiometric range is lost).
run v4l2-ctl --device="$IR" --list-formats-ext
run gst-launch-1.0 -e v4l2src device="$IR" num-buffers="$FRAMES" \
    ! "video/x-raw,format=GRAY16_LE,width=${ir_w},height=${ir_h},framerate=${IR_FPS}/1" ! fakesink
run gst-launch-1.0 -e nvarguscamerasrc sensor-id="$CSI" num-buffers="$FRAMES" \
    ! "video/x-raw(memory:NVMM),width=${vis_w},height=${vis_h},framerate=${VIS_FPS}/1,format=NV12" \
    ! nvvidconv ! "video/x-raw,format=BGRx" ! fakesink
if [ "$DRY_RUN" -eq 0 ]; then
    echo "both cameras delivered ${FRAMES} frames; start fusion-run with one of jetson/cameras/*.yaml" >&2
fi
