"""End to end: `fusion run` on files, folders and live-like sources, with every kind of output checked by reading it
back (video files with OpenCV, MJPEG with a real HTTP client, image folders against the inputs)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.cli import main as fusion
from runtime.color import split_luminance
from runtime.imageio import discover_pairs, read_raw, read_vis
from runtime.pipeline import FusionPipeline
from runtime.sink_base import OutputInfo
from runtime.sinks import VideoFileSink
from helpers import count_frames, make_onnx_model, run_until_pairs_then_signal, wait_until, write_clip

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "runtime" / "assets" / "samples"
STEMS = ("FLIR_00060", "FLIR_05095", "FLIR_00233")   # training split


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {op: make_onnx_model(folder / f"{op}.onnx", op) for op in ("vis", "max", "mean")}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 9 fps IR clip and a 30 fps VIS clip of 2 s each (small, so the tests stay fast)."""
    folder = tmp_path_factory.mktemp("clips")
    return {"ir": write_clip(folder / "ir.mp4", 18, 9, colour=False, seed=1),
            "vis": write_clip(folder / "vis.mp4", 60, 30, seed=2)}


@pytest.fixture()
def real_pairs(tmp_path, roadscene, train_names):
    for stem in STEMS:
        assert stem in train_names
        for sub in ("ir", "vi"):
            (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
            (tmp_path / "in" / sub / f"{stem}.jpg").write_bytes((roadscene / sub / f"{stem}.jpg").read_bytes())
    return tmp_path / "in"


@pytest.mark.parametrize("ir_motion", ["off", "auto"])
def test_video_files_in_video_out_playable_with_expected_frames(tmp_path, clips, models, ir_motion):
    out = tmp_path / "fused.mp4"
    stats = tmp_path / "stats.json"
    code = fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["mean"]),
                   "--imgsz", "96x128", "--output", str(out), "--headless", "--stats", str(stats), "-q",
                   "--ir-motion", ir_motion])
    assert code == 0
    report = json.loads(stats.read_text())
    # 60 VIS frames at 30 fps against 18 IR frames at 9 fps. Nearest-time pairing (off): all but the last VIS frame
    # (78 ms after the last IR frame) lie within 60 ms of an IR frame. IR motion compensation (auto, as the IR camera
    # is slower): each VIS frame takes the latest IR frame, up to 60 ms + one IR period old, so all 60 are fused.
    expected = 59 if ir_motion == "off" else 60
    assert report["frames"] == expected and report["counters"].get("unpaired", 0) == 60 - expected
    if ir_motion == "auto":
        counters = report["counters"]
        assert counters["ir_motion_applied"] + counters["ir_motion_held"] == 60
        assert report["stages_ms"]["motion"]["count"] == 60
    frames, shape = count_frames(out)
    assert frames == expected and shape == (96, 128)
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    for key in ("capture", "preprocess", "inference", "postprocess", "output"):
        assert {"p50", "p90", "p99", "max", "mean"} <= set(report["stages_ms"][key])
    assert report["latency_ms"]["count"] == expected
    assert report["pair_error_ms"]["max"] <= (60.0 if ir_motion == "off" else 60.0 + 1000.0 / 9)
    assert (tmp_path / "fused.run_config.yaml").is_file()
    assert not list(tmp_path.glob(".*partial*"))                    # nothing half-written left behind


def test_segmented_recording_splits_the_video_into_playable_files(tmp_path, clips, models):
    """--segment-minutes: NAME_0000.mp4, NAME_0001.mp4, ... of that much video each (counted in frames at the output
    rate, not in wall-clock time), the last one holding the rest; together every fused frame, in order."""
    out = tmp_path / "fused.mp4"
    minutes = 25 / 30 / 60                         # 25 frames at 30 fps
    code = fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["vis"]),
                   "--imgsz", "96x128", "--output", str(out), "--headless", "-q", "--segment-minutes", str(minutes)])
    assert code == 0
    segments = sorted(tmp_path.glob("fused_*.mp4"))
    assert [p.name for p in segments] == ["fused_0000.mp4", "fused_0001.mp4", "fused_0002.mp4"]
    assert [count_frames(p)[0] for p in segments] == [25, 25, 10]
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    # In order: the VIS luminance model gives back the VIS clip, so each segment starts where the last one ended.
    source = cv2.VideoCapture(str(clips["vis"]))
    expected = [source.read()[1] for _ in range(60)]
    for index, path in enumerate(segments):
        capture = cv2.VideoCapture(str(path))
        ok, first = capture.read()
        assert ok
        errors = [np.abs(first.astype(int) - expected[k].astype(int)).mean() for k in range(60)]
        assert int(np.argmin(errors)) == 25 * index, (path.name, errors)


def test_a_full_segment_is_finalised_while_recording_goes_on(tmp_path):
    """A segment is playable as soon as it is full (a power cut then loses the open segment only)."""
    sink = VideoFileSink(tmp_path / "rec.mp4", fps=30.0, segment_s=10 / 30)
    frame = np.zeros((64, 96, 3), np.uint8)

    def write(first: int, count: int) -> None:
        for k in range(first, first + count):
            frame[:] = 8 * k
            sink.write(frame.copy(), OutputInfo(index=k, name=str(k)))
    first, second, third = (tmp_path / f"rec_{k:04d}.mp4" for k in range(3))
    write(0, 10)            # exactly one segment: finalised without waiting for another frame
    wait_until(first.exists, 20.0, "the full first segment was not finalised while the sink was still open")
    assert count_frames(first)[0] == 10 and not second.exists()
    write(10, 13)
    wait_until(second.exists, 20.0, "the second segment was not finalised")
    sink.close()
    assert [count_frames(p)[0] for p in (first, second, third)] == [10, 10, 3]
    assert sink.segments == [first, second, third]
    assert not list(tmp_path.glob(".*partial*"))


def test_folder_mode_writes_fused_colour_per_pair(tmp_path, real_pairs, models):
    """With a model whose output is the VIS luminance, the fused colour image must give back the VIS image: this
    checks luminance split, chroma restoration, native size and stems on real RoadScene pairs."""
    out = tmp_path / "out"
    code = fusion(["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output", str(out),
                   "--model", str(models["vis"]), "-q"])
    assert code == 0
    written = sorted(p.stem for p in out.glob("*.png"))
    assert written == sorted(STEMS)
    for stem in STEMS:
        fused = read_raw(out / f"{stem}.png").astype(int)
        vis = read_raw(real_pairs / "vi" / f"{stem}.jpg").astype(int)
        assert fused.shape == vis.shape                             # native size, colour
        assert np.abs(fused - vis).max() <= 2                       # YCbCr round trip, rounding only

    # A real fusion (pixel-wise max of IR and VIS luminance) keeps VIS chroma and lifts the luminance to the IR
    # where the IR is brighter.
    out_max = tmp_path / "out_max"
    assert fusion(["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output",
                   str(out_max), "--model", str(models["max"]), "-q"]) == 0
    for pair in discover_pairs(ir_dir=real_pairs / "ir", vis_dir=real_pairs / "vi"):
        fused_y, _ = split_luminance(read_vis(out_max / f"{pair.name}.png"))
        vis_y, _ = split_luminance(read_vis(pair.vis))
        ir = read_raw(pair.ir).astype(np.float32) / 255.0
        ir = ir if ir.ndim == 2 else ir[:, :, 0]
        expected = np.maximum(ir, vis_y)
        assert np.mean(np.abs(fused_y - expected)) < 0.01
        assert fused_y.mean() > vis_y.mean() + 0.01


def test_folder_mode_at_a_fixed_model_size_returns_native_size(tmp_path, real_pairs):
    static = make_onnx_model(tmp_path / "static.onnx", "mean", size=(128, 160))
    out = tmp_path / "out"
    assert fusion(["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output", str(out),
                   "--model", str(static), "-q"]) == 0
    for stem in STEMS:
        assert read_raw(out / f"{stem}.png").shape == read_raw(real_pairs / "vi" / f"{stem}.jpg").shape


def test_mjpeg_stream_fetched_over_http(tmp_path, clips, models):
    pipeline = FusionPipeline(ir=str(clips["ir"]), vis=str(clips["vis"]), model=str(models["mean"]),
                              imgsz="96x128", outputs=["mjpeg://127.0.0.1:0"], headless=True, realtime=True,
                              loop=True, verbose=False)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        server = wait_until(lambda: pipeline.sinks, 10, "the pipeline opened no output")[0].server
        assert server.host == "127.0.0.1"                           # loopback unless --bind says otherwise
        base = f"http://127.0.0.1:{server.port}"
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "stream.mjpg" in page
        with urllib.request.urlopen(base + "/stream.mjpg", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            data = b""
            while data.count(b"\xff\xd9") < 3 and len(data) < 5_000_000:
                data += response.read1(65536)
        jpegs = []
        for part in data.split(b"--fusionframe")[1:]:
            header, _, body = part.partition(b"\r\n\r\n")
            if b"Content-Length" in header:
                length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    jpegs.append(body[:length])
        assert len(jpegs) >= 2
        for jpeg in jpegs:
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (96, 128, 3)
        snapshot = urllib.request.urlopen(base + "/snapshot.jpg", timeout=10).read()
        assert cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR).shape == (96, 128, 3)
        stats = json.loads(urllib.request.urlopen(base + "/stats.json", timeout=10).read())
        assert stats["frames"] >= 2 and stats["sources"]["ir"]["state"] == "ok"
    finally:
        pipeline.stop()
        runner.join(10)
    assert not runner.is_alive()


def test_mjpeg_refuses_a_public_address_without_bind(models, clips, capsys):
    code = fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["mean"]),
                   "--output", "mjpeg://0.0.0.0:0", "--headless"])
    assert code == 2
    assert "--bind 0.0.0.0" in capsys.readouterr().err


def test_record_pairs_writes_a_dataset(tmp_path, clips, models):
    record = tmp_path / "pairs"
    code = fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["mean"]),
                   "--imgsz", "96x128", "--headless", "--record-pairs", str(record), "--max-frames", "12", "-q"])
    assert code == 0
    pairs = discover_pairs(data=record, validate=True)             # a dataset `fusion distill` can read
    assert len(pairs) == 12
    ir = read_raw(pairs[0].ir)
    vis = read_raw(pairs[0].vis)
    assert ir.ndim == 2 and vis.ndim == 3                          # raw frames, as captured


def test_sigint_finalises_the_video(tmp_path, models):
    """Ctrl-C in the middle of a (real-time paced) run, once 5 pairs are recorded: exit 0, stats written, and a
    playable video holding every frame the stats counted."""
    out = tmp_path / "fused.mp4"
    stats = tmp_path / "stats.json"
    pairs = tmp_path / "pairs"
    code, output = run_until_pairs_then_signal(
        ["--ir", SAMPLES / "ir.mp4", "--vis", SAMPLES / "vis.mp4", "--model", models["mean"], "--imgsz", "120x160",
         "--realtime", "--headless", "--output", out, "--stats", stats], pairs, signal.SIGINT)
    assert code == 0, output
    assert "stopping (SIGINT)" in output
    report = json.loads(stats.read_text())
    assert 5 <= report["frames"] < 300                              # stopped early, after real work
    frames, shape = count_frames(out)
    assert frames == report["frames"] and shape == (120, 160)


@pytest.mark.parametrize("args, message", [
    (["--ir", "no_such.mp4", "--vis", "0"], "not found"),
    (["--ir", "bogus://x", "--vis", "0"], "unknown source scheme"),
    (["--ir", "{clip}", "--vis", "{clip}", "--backend", "torch"], "--backend torch needs"),
    (["--ir", "{clip}", "--vis", "{clip}", "--backend", "tensorrt"], "TensorRT"),
    (["--ir", "{clip}", "--vis", "{clip}", "--model", "{static}", "--imgsz", "64x64"], "takes 128x160"),
    (["--ir", "{garbage}", "--vis", "{clip}"], "cannot open video file"),
    (["--ir", "{clip}", "--vis", "{clip}", "--model", "{garbage_onnx}"], "ONNX Runtime cannot load"),
    (["--ir", "{clip}", "--vis", "{clip}", "--output", "out.xyz"], "unknown extension"),
    (["--ir", "{clip}", "--vis", "{clip}", "--segment-minutes", "-1"], "--segment-minutes must be positive"),
    (["--ir", "{clip}", "--vis", "{clip}", "--output", "display://0"], "window" if not os.environ.get("DISPLAY")
     else "--headless"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, clips, models, capsys, args, message):
    static = make_onnx_model(tmp_path / "static.onnx", "mean", size=(128, 160))
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 100)
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    values = {"clip": str(clips["vis"]), "static": str(static), "garbage": str(tmp_path / "garbage.mp4"),
              "garbage_onnx": str(tmp_path / "garbage.onnx")}
    argv = [a.format(**values) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(models["mean"])]
    code = fusion(["run", *argv] + ([] if "display://0" in argv else ["--headless"]))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_run_never_imports_torch_with_onnxruntime(tmp_path, real_pairs, models):
    script = (
        "import sys\n"
        "from runtime.cli import main\n"
        f"code = main(['run', '--ir', {str(real_pairs / 'ir')!r}, '--vis', {str(real_pairs / 'vi')!r}, '--output', "
        f"{str(tmp_path / 'o')!r}, '--model', {str(models['mean'])!r}, '-q'])\n"
        "heavy = sorted(m for m in ('torch', 'distill', 'teacher', 'diffusers') if m in sys.modules)\n"
        "print('HEAVY', heavy, code)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in result.stdout, result.stdout + result.stderr
    light = subprocess.run([sys.executable, "-c", "import runtime, sys; runtime.FusionPipeline; "
                            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert light.stdout.strip() == "[]", light.stdout + light.stderr


def test_api_is_what_the_cli_uses():
    import runtime
    from runtime import FusionPipeline as exported
    from runtime.pipeline import FusionPipeline as module_level
    assert exported is module_level is runtime.FusionPipeline


def test_torch_backend_matches_onnxruntime_on_a_real_pair(tmp_path, real_pairs):
    """A student (tiny variant, random weights) saved as safetensors and exported to ONNX gives the same fused image
    through --backend torch and --backend onnxruntime."""
    torch = pytest.importorskip("torch")
    from distill.models import create_student, save_student
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_student("tiny-test").eval()
    folder = save_student(model, tmp_path / "student")
    example = (torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96))
    axes = {0: "N", 2: "H", 3: "W"}
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    torch.onnx.export(model, example, str(folder / "model.onnx"), input_names=["ir", "vis"], output_names=["fused"],
                      opset_version=17, dynamic_axes={"ir": axes, "vis": axes, "fused": axes}, **kwargs)
    outputs = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        assert fusion(["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output",
                       str(out), "--model", str(folder), "--backend", backend, "-q"]) == 0
        outputs[backend] = {p.stem: read_raw(p).astype(int) for p in out.glob("*.png")}
    assert outputs["torch"].keys() == outputs["onnxruntime"].keys() == set(STEMS)
    for stem in STEMS:
        assert np.abs(outputs["torch"][stem] - outputs["onnxruntime"][stem]).max() <= 1


def test_overlay_marks_a_lost_camera_in_red():
    from runtime.sinks import OutputInfo, draw_overlay
    frame = np.full((240, 320, 3), 200, np.uint8)
    ok = draw_overlay(frame, OutputInfo(0, "x", fps=30, health={"ir": "ok", "vis": "ok"}))
    lost = draw_overlay(frame, OutputInfo(0, "x", fps=30, health={"ir": "lost", "vis": "ok"}, mode="vis only"))
    assert (frame == 200).all()                                     # the frame itself is untouched

    def reddish(img):
        return int(((img[:, :, 0] > 200) & (img[:, :, 1] < 120)).sum())
    assert reddish(lost) > 20 and reddish(ok) == 0
    assert (lost[200:, 200:] == 200).all()                          # only the top-left band is drawn on


def test_radiometric_16bit_ir_goes_through_agc(tmp_path, roadscene):
    """A 16-bit thermal frame (14-bit counts in a narrow band, as FLIR cores deliver) is stretched by the shared
    AGC: with a model that returns the IR, the output is agc_16bit(frame), not a black image."""
    from runtime.imageio import agc_16bit, write_image
    ir8 = read_raw(roadscene / "ir" / "FLIR_00060.jpg")
    ir8 = ir8 if ir8.ndim == 2 else ir8[:, :, 0]
    counts = (7000 + ir8.astype(np.uint16) * 6).astype(np.uint16)          # 7000..8530 of 65535
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
    write_image(tmp_path / "ir" / "f.png", counts)
    write_image(tmp_path / "vi" / "f.png", read_raw(roadscene / "vi" / "FLIR_00060.jpg"))
    model = make_onnx_model(tmp_path / "ir.onnx", "ir")
    assert fusion(["run", "--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--output",
                   str(tmp_path / "out"), "--model", str(model), "-q"]) == 0
    fused_y, _ = split_luminance(read_vis(tmp_path / "out" / "f.png"))
    expected = agc_16bit(counts)
    assert np.abs(fused_y - expected).mean() < 0.01
    assert fused_y.std() > 0.15                                              # full contrast, not a flat frame


def test_fuse_one_pair_through_the_api(roadscene, models):
    ir = read_raw(roadscene / "ir" / "FLIR_00060.jpg")
    ir = ir if ir.ndim == 2 else ir[:, :, 0]
    vis = read_raw(roadscene / "vi" / "FLIR_00060.jpg")
    pipe = FusionPipeline(model=str(models["mean"]), imgsz="native", verbose=False)
    rgb = pipe.fuse(ir, vis)
    assert rgb.shape == vis.shape and rgb.dtype == np.float32
    fused_y, fused_cbcr = split_luminance(rgb)
    vis_y, vis_cbcr = split_luminance(vis.astype(np.float32) / 255.0)
    assert np.abs(fused_y - (ir / 255.0 + vis_y) / 2).max() < 0.02
    assert np.abs(fused_cbcr - vis_cbcr).mean() < 0.01             # colour from VIS (clipping aside)


def test_gstreamer_outputs_explain_themselves_without_gstreamer(clips, models, capsys):
    from runtime.sources import gstreamer_available
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer; the error path cannot be exercised")
    for uri in ("rtp://127.0.0.1:5004", "rtsp://127.0.0.1:8554/fused"):
        code = fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["mean"]),
                       "--output", uri, "--headless"])
        assert code == 2
        assert "GStreamer" in capsys.readouterr().err


def test_several_outputs_at_once_get_the_same_frames(tmp_path, clips, models):
    video, folder = tmp_path / "fused.avi", tmp_path / "frames"
    code = fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["max"]),
                   "--imgsz", "96x128", "--output", str(video), "--output", str(folder), "--headless",
                   "--max-frames", "20", "-q"])
    assert code == 0
    frames, shape = count_frames(video)
    images = sorted(folder.glob("*.png"))
    assert frames == len(images) == 20 and shape == (96, 128)
    capture = cv2.VideoCapture(str(video))
    for path in images[:3]:                                         # MJPG-in-AVI keeps them close to the PNGs
        ok, bgr = capture.read()
        assert ok and np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - read_raw(path).astype(int)).mean() < 4


def test_rgb_student_models_are_fed_rgb(tmp_path, real_pairs):
    """A 3-channel student (vis (N,3,H,W) in, RGB out): the runtime feeds it RGB and writes its output as is."""
    model = make_onnx_model(tmp_path / "rgb.onnx", "max", channels=3)
    out = tmp_path / "out"
    assert fusion(["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output", str(out),
                   "--model", str(model), "-q"]) == 0
    for stem in STEMS:
        fused = read_raw(out / f"{stem}.png").astype(int)
        vis = read_raw(real_pairs / "vi" / f"{stem}.jpg").astype(int)
        ir = read_raw(real_pairs / "ir" / f"{stem}.jpg").astype(int)
        ir = ir if ir.ndim == 2 else ir[:, :, 0]
        assert np.abs(fused - np.maximum(vis, ir[:, :, None])).max() <= 1


def test_folder_mode_resume_skips_finished_pairs(tmp_path, real_pairs, models):
    out = tmp_path / "out"
    args = ["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output", str(out),
            "--model", str(models["mean"]), "-q"]
    assert fusion(args + ["--max-frames", "2"]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert len(first) == 2
    assert fusion(args + ["--resume", "--stats", str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["frames"] == 1 and report["counters"]["skipped_done"] == 2
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(STEMS)
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in first.items())   # untouched


def test_wide_cameras_are_not_squashed(tmp_path, models):
    """16:9 frames: a dynamic model runs at 640 wide with the frame's aspect ratio; a fixed 4:3 model's output goes
    back to the native size. Either way the fused video keeps the camera's geometry."""
    ir = write_clip(tmp_path / "ir.mp4", 6, 9, size=(72, 128), colour=False)
    vis = write_clip(tmp_path / "vis.mp4", 20, 30, size=(72, 128))
    static = make_onnx_model(tmp_path / "static.onnx", "mean", size=(48, 64))
    for model, expected in ((models["mean"], (360, 640)), (static, (72, 128))):
        out = tmp_path / f"{Path(model).stem}.mp4"
        assert fusion(["run", "--ir", str(ir), "--vis", str(vis), "--model", str(model), "--output", str(out),
                       "--headless", "-q"]) == 0
        frames, shape = count_frames(out)
        assert frames > 0 and shape == expected


def test_fast_uint8_conversion_is_to_uint8(roadscene):
    """The output stage's one-pass OpenCV conversion gives to_uint8's values (round half to even, saturated) on
    everything the pipeline hands it: [0, 1] floats, exact half levels and the ends included."""
    from runtime.imageio import to_uint8
    from runtime.stages import unit_to_uint8
    rng = np.random.default_rng(1)
    half_levels = (np.arange(256, dtype=np.float32) + 0.5) / 255.0
    for img in (rng.random((37, 53, 3), dtype=np.float32), np.clip(half_levels, 0, 1).reshape(16, 16),
                np.array([[0.0, 1.0, 1e-9, 1 - 1e-9]], dtype=np.float64), read_vis(roadscene / "vi" / "FLIR_00060.jpg")):
        assert np.array_equal(unit_to_uint8(img), to_uint8(img))
    raw = read_raw(roadscene / "vi" / "FLIR_00060.jpg")
    assert unit_to_uint8(raw) is raw


def test_folder_mode_names_picks_pairs(tmp_path, real_pairs, models, clips):
    """--names FILE fuses only the listed pairs (a split file such as test.txt, with or without extensions); a
    missing list or --names with non-folder sources is one sentence and exit code 2."""
    names = tmp_path / "subset.txt"
    names.write_text(f"{STEMS[-1]}.jpg\n{STEMS[0]}\n")
    out = tmp_path / "out"
    args = ["run", "--ir", str(real_pairs / "ir"), "--vis", str(real_pairs / "vi"), "--output", str(out),
            "--model", str(models["mean"]), "-q"]
    assert fusion(args + ["--names", str(names)]) == 0
    assert sorted(p.stem for p in out.glob("*.png")) == sorted([STEMS[-1], STEMS[0]])
    assert fusion(args + ["--names", str(tmp_path / "absent.txt")]) == 2
    assert fusion(["run", "--ir", str(clips["ir"]), "--vis", str(clips["vis"]), "--model", str(models["mean"]),
                   "--names", str(names), "--headless", "-q"]) == 2
