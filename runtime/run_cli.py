"""`fusion run` / `fusion-run`: fuse live cameras, streams, videos or image folders.

    fusion-run --ir cam0 --vis cam1                                     # window with overlay
    fusion-run --ir v4l2:///dev/video1 --vis csi://0 --homography h.json --headless --output mjpeg://:8090
    fusion-run --ir ir.mp4 --vis vis.mp4 --output fused.mp4 --headless --stats stats.json
    fusion run --ir data/ir --vis data/vi --output fused/               # folder mode: one image per pair
    fusion run --ir data/ir --vis data/vi --names data/test.txt --output fused/   # only the listed pairs

Only numpy, OpenCV and ONNX Runtime are imported unless `--backend torch` is asked for.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from runtime.errors import FusionError

# CLI flag dest -> RunConfig field (flags left out keep the YAML/default value).
FIELDS = ("ir", "vis", "model", "backend", "device", "threads", "imgsz", "output_size", "sync_ms", "primary",
          "homography", "clahe", "realtime", "loop", "fps", "ir_fps", "vis_fps", "output_fps", "max_frames",
          "duration_s", "record_pairs", "stats", "headless", "bind", "auth_token", "max_clients", "overlay",
          "image_ext", "queue_size", "reconnect_max_s", "on_loss", "resume", "names", "ir_motion",
          "inference_workers", "segment_minutes", "temporal_filter")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
    io = parser.add_argument_group("sources and outputs (URIs)")
    io.add_argument("--ir", help="IR source: camera index (0, cam0), /dev/videoN, v4l2:///dev/videoN (16-bit Y16), "
                                 "csi://N, rtsp://..., a video file, an image folder or a GStreamer pipeline")
    io.add_argument("--vis", help="VIS source (same kinds as --ir)")
    io.add_argument("--output", "-o", action="append", dest="outputs", metavar="URI",
                    help="output, repeatable: display://0, a video file (.mp4/.avi/.mkv), a folder, "
                         "mjpeg://:PORT, rtp://HOST:PORT, rtsp://HOST:PORT/PATH")
    io.add_argument("--headless", action="store_true", default=None, help="never open a window")
    io.add_argument("--bind", help="address MJPEG outputs listen on (default 127.0.0.1: this machine only; any "
                                   "other address requires a stream token)")
    io.add_argument("--auth-token", metavar="TOKEN",
                    help="token viewers must give (?token=TOKEN or Authorization: Bearer TOKEN); default "
                         "$FUSION_STREAM_TOKEN, else generated and printed when --bind is not loopback")
    io.add_argument("--max-clients", type=int, help="concurrent MJPEG viewers (default 8; 503 beyond)")
    io.add_argument("--record-pairs", metavar="DIR", help="save the synchronised raw pairs to DIR/ir and DIR/vi")
    io.add_argument("--stats", metavar="FILE", help="write latency/throughput statistics as JSON at exit")
    model = parser.add_argument_group("model")
    model.add_argument("--model", "--weights", dest="model",
                       help="a .onnx file, a TensorRT .engine, a model folder, or 'default' (the shipped student)")
    from runtime.backends import backend_names  # the registry: a backend registered there is a choice here
    model.add_argument("--backend", choices=backend_names(),
                       help="auto: TensorRT engine with a GPU, else ONNX Runtime (best provider), else torch; "
                            "torch-gpu: fp16 + CUDA graphs, frames converted on the GPU")
    model.add_argument("--device", choices=("auto", "cpu"), help="cpu forces ONNX Runtime/torch onto the CPU")
    model.add_argument("--threads", type=int, help="inference threads (default: the runtime's choice)")
    model.add_argument("--inference-workers", type=int,
                       help="frames inferred at once, each on its own thread (default 0: 2 for ONNX Runtime on the "
                            "CPU with one thread per frame and 2+ cores, else 1)")
    model.add_argument("--imgsz", help="model input HxW (default: the model's fixed size, else 640 wide at the frame's aspect ratio), "
                            "or 'native'")
    model.add_argument("--output-size", choices=("auto", "model", "native"),
                       help="fused frames at the model size or the (cropped) VIS size; auto: native in folder mode")
    sync = parser.add_argument_group("timing and registration")
    sync.add_argument("--sync-ms", type=float, help="largest IR/VIS capture-time difference paired (default 60)")
    sync.add_argument("--primary", choices=("auto", "ir", "vis"), help="camera that drives the output rate "
                                                                       "(auto: the faster one)")
    sync.add_argument("--ir-motion", choices=("auto", "flow", "off"),
                      help="carry each IR frame to the VIS frame's time with optical flow measured on the VIS frames "
                           "(auto, the default: when the IR camera is slower; off: nearest-time pairing as before)")
    model.add_argument("--temporal-filter", metavar="S",
                       help="steadier video: blend each fused frame with the previous one moved along the VIS motion, "
                            "where they differ by less than a threshold (off, the default; on = 0.6; or a strength "
                            "in [0, 1)). Video only; costs ~2 ms a frame at 640x480 on the CPU")
    sync.add_argument("--homography", metavar="FILE", help="IR->VIS homography from `fusion calibrate`")
    sync.add_argument("--no-crop", dest="crop", action="store_false", default=None,
                      help="keep the whole VIS frame after warping (IR edges replicated)")
    sync.add_argument("--clahe", action="store_true", default=None, help="CLAHE after 16-bit thermal AGC")
    sync.add_argument("--realtime", action="store_true", default=None,
                      help="play files at their frame rate, dropping frames like a camera would")
    sync.add_argument("--loop", action="store_true", default=None, help="restart video files at their end")
    sync.add_argument("--fps", type=float, help="frame rate of image-folder sources (default 30)")
    sync.add_argument("--ir-fps", type=float, help="override the IR source's frame rate")
    sync.add_argument("--vis-fps", type=float, help="override the VIS source's frame rate")
    sync.add_argument("--output-fps", type=float, help="frame rate written into video outputs")
    io.add_argument("--segment-minutes", type=float, metavar="M",
                    help="write video files in segments of M minutes of video (NAME_0000.mp4, NAME_0001.mp4, ...), "
                         "each finalised when full: for long recordings (bounded memory, a power cut loses one "
                         "segment at most); default: one file")
    run = parser.add_argument_group("run")
    run.add_argument("--max-frames", type=int, help="stop after N fused frames")
    run.add_argument("--duration", dest="duration_s", type=float, help="stop after S seconds")
    run.add_argument("--overlay", choices=("auto", "on", "off"), help="status overlay (auto: display and MJPEG)")
    run.add_argument("--image-ext", help="image format of folder outputs (.png or .jpg)")
    run.add_argument("--queue-size", type=int, help="depth of each inter-stage queue (default: 1 for live sources, 2 for files)")
    run.add_argument("--reconnect-max", dest="reconnect_max_s", type=float,
                     help="longest wait between camera reconnection attempts, seconds (default 5)")
    run.add_argument("--on-loss", choices=("passthrough", "pause"),
                     help="while a camera is lost: show the other one (default) or pause the output")
    run.add_argument("--resume", action="store_true", default=None,
                     help="folder mode: skip pairs whose fused image is already in the output folder")
    run.add_argument("--names", metavar="FILE",
                     help="folder mode: fuse only the pairs listed in FILE, in its order (a split file such as test.txt)")
    run.add_argument("--config", help="YAML file of run settings, or the name of a packaged one (default, "
                                      "jetson_csi_boson: configs/runtime/NAME.yaml); flags override it")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, repeatable")
    run.add_argument("--quiet", "-q", action="store_true", help="print only the final statistics")
    parser.set_defaults(func=main)


def build_config(args: argparse.Namespace):
    """RunConfig from defaults <- --config YAML <- --set overrides <- explicit flags."""
    from runtime.config import load_config
    from runtime.pipeline import RunConfig
    config = load_config(RunConfig, args.config, args.overrides, sections=("runtime",))
    updates = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "crop", None) is not None:
        updates["crop"] = args.crop
    if args.outputs:
        updates["outputs"] = list(args.outputs)
    if args.quiet:
        updates["verbose"] = False
    import dataclasses
    return dataclasses.replace(config, **updates)


def write_resolved_config(config) -> None:
    """The resolved config beside each file/folder output (how this output was made; never the stream token)."""
    import dataclasses
    from runtime.config import save_config
    from runtime.sinks import output_error
    from runtime.sources import VIDEO_EXTENSIONS
    if config.auth_token:
        config = dataclasses.replace(config, auth_token="<redacted>")
    for uri in config.outputs:
        if "://" in uri or "!" in uri:
            continue
        path = Path(uri)
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            target = path.with_name(f"{path.stem}.run_config.yaml")
        elif path.is_dir():
            target = path / "run_config.yaml"
        else:
            continue
        try:
            save_config(config, target)
        except OSError as exc:
            raise output_error(f"the run config {target}", exc) from None


def main(args: argparse.Namespace) -> int:
    from runtime.pipeline import FusionPipeline
    config = build_config(args)
    if not config.ir or not config.vis:
        raise FusionError("give both --ir and --vis (cameras, streams, video files or image folders)")
    pipeline = FusionPipeline(config)
    restore = _install_signal_handlers(pipeline)
    try:
        pipeline.run()
    finally:
        restore()
    write_resolved_config(config)
    print(pipeline.summary(), file=sys.stderr if not config.verbose else sys.stdout, flush=True)
    if config.stats:
        print(f"statistics written to {config.stats}", flush=True)
    return 0


def _install_signal_handlers(pipeline):
    """SIGINT/SIGTERM: finish cleanly (outputs finalised); a second signal drops what is in flight."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handle(signum, _frame):
        if pipeline.stopping:
            pipeline.abort()
        else:
            print(f"\nstopping ({signal.Signals(signum).name}); again to drop frames in flight", file=sys.stderr,
                  flush=True)
            pipeline.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handle)

    def restore():
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore
