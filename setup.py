"""Packaging for hf-dynamic: dynamic networks as Hugging Face transformers models."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "hf_dynamic" / "__init__.py").read_text(), re.M).group(1)

INSTALL_REQUIRES = [
    # Any torch >= 2.6 works; the range admits the CPU 2.13.0 wheel (`pip install torch==2.13.0`).
    "torch>=2.6,<2.15",
    "transformers>=5.20,<6",
    "accelerate>=1.0",
    "peft>=0.15",
    "datasets>=3.0",
    "evaluate>=0.4",
    "safetensors>=0.4",
    "gguf>=0.10",
    "scikit-learn>=1.3",
    "scipy>=1.10",
    "matplotlib>=3.7",
    "numpy>=1.24",
]

EXTRAS = {
    "deepspeed": ["deepspeed>=0.15"],
    # llama.cpp's Python binding, to run save_gguf's files (docs/gguf.md); built from source (25 min measured on
    # a busy 2-core machine, pip caches the wheel; docs/gguf.md, "Building llama-cpp-python")
    "llama": ["llama-cpp-python>=0.3"],
    # deepspeed: the CPU ZeRO tests; onnx/onnxruntime/onnxscript: the DynamicResNet ONNX round trip (torch's
    # default dynamo exporter needs onnxscript); llama-cpp-python: the GGUF tests run llama.cpp
    # parameterized: imported by transformers' tests/test_modeling_common.py (tests/models/test_transformers_common.py)
    "dev": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "parameterized>=0.9", "deepspeed>=0.15", "onnx>=1.16",
            "onnxruntime>=1.18", "onnxscript>=0.3", "llama-cpp-python>=0.3"],
}

setup(
    name="hf-dynamic",
    version=VERSION,
    description="Dynamic networks (PAD-Net MoE, boosted early exits, DMS pruning, PEMN) for Hugging Face transformers",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hf_dynamic", "hf_dynamic.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
