"""ONNX export of hf_dynamic's encoders and CNNs for ONNX Runtime (``docs/onnx.md``).

:func:`export_onnx` writes a folder: ``model.onnx`` (dynamic batch; dynamic sequence length for text, height and
width for images), the model's ``config.json``, the tokenizer or image processor when given, and
``hf_dynamic_onnx.json`` (the manifest: graph inputs and outputs, exporter, opset, label names, preprocessing facts
and the check that was run). A boosted
early-exit model also gets one graph per exit and the torch-free runtime (:mod:`hf_dynamic.deploy.onnx_early_exit`,
:mod:`hf_dynamic.deploy.ort_early_exit`).

Both of torch's exporters are offered: ``exporter="dynamo"`` (``torch.onnx.export(..., dynamo=True)``, the default)
and ``"torchscript"`` (``dynamo=False``, tracing). Whatever the exporter, the graph is run in onnxruntime right after
export on inputs of another batch size (and sequence length) than the traced ones and compared with the PyTorch
model; a difference above ``atol`` raises :class:`OnnxExportError` and removes the graph, so no folder holds a graph
that runs and is wrong. Models are exported in eval mode (as both exporters do; a model built with its constructor or
``from_static`` / ``from_dense`` is in training mode until ``.eval()``, and comparing such a model's training-mode
outputs — batch-norm batch statistics, dropout — with the graph's shows differences that are not the graph's).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import warnings

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

MANIFEST = "hf_dynamic_onnx.json"
GRAPH = "model.onnx"
FORMAT_VERSION = 1
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Outputs that describe training (losses) or are debugging extras; the graph returns the predictions only.
_SKIPPED_OUTPUTS = ("loss", "aux_loss", "router_logits", "hidden_states", "attentions", "exit_losses", "exit_layer")


class OnnxExportError(RuntimeError):
    """The exporter failed, or the exported graph does not compute what the PyTorch model computes."""


# ------------------------------------------------------------------------------------------------- checks
def check_exporter(exporter) -> str:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    return exporter


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_atol(atol) -> float:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 < atol < 1:
        raise ValueError(f"atol must be a number in (0, 1), got {atol!r}")
    return float(atol)


def model_modality(model) -> str:
    """``"text"`` (the model reads ``input_ids``) or ``"image"`` (``pixel_values``); ``TypeError`` otherwise."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"export_onnx needs a transformers PreTrainedModel, got {type(model).__name__}")
    name = getattr(model, "main_input_name", None)
    if name == "input_ids":
        return "text"
    if name == "pixel_values":
        return "image"
    raise TypeError(f"export_onnx exports encoders reading input_ids and CNNs reading pixel_values; "
                    f"{type(model).__name__} reads {name!r}")


def is_early_exit(model) -> bool:
    return getattr(model.config, "model_type", None) == "boosted_early_exit"


# --------------------------------------------------------------------------------------------- the inputs
def text_input_names(model) -> list[str]:
    """``input_ids``, ``attention_mask`` and, when the model takes them and its embeddings have token types,
    ``token_type_ids`` (sentence-pair tasks such as MRPC need them)."""
    params = inspect.signature(model.forward).parameters
    text_config = model.config.get_text_config()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and (getattr(text_config, "type_vocab_size", 0) or 0) > 0:
        names.append("token_type_ids")
    return names


def sample_text_inputs(model, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids with the first sample's last third padded (so masks are exercised)."""
    text_config = model.config.get_text_config()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, text_config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length - max(1, length // 3):] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in text_input_names(model):
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(batch, -1).contiguous()
    return inputs


def image_size_of(model, image_processor) -> tuple[int, int]:
    """The ``(height, width)`` the image processor produces, else 32 × 32 (a size every ResNet stride divides)."""
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return 32, 32


def sample_image_inputs(model, batch: int, size: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, model.config.num_channels, *size, generator=generator)}


# ------------------------------------------------------------------------------------------- the wrapper
class OutputSelector(nn.Module):
    """``model`` with positional inputs (in ``input_names`` order) and a tuple of the outputs named
    ``output_names`` (what an ONNX graph has): the exporters see plain tensors in and out."""

    def __init__(self, model: nn.Module, input_names, output_names, **forward_kwargs):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.forward_kwargs = forward_kwargs

    def forward(self, *inputs):
        outputs = self.model(**dict(zip(self.input_names, inputs)), **self.forward_kwargs, return_dict=True)
        return tuple(outputs[name] for name in self.output_names)


def prediction_outputs(model, inputs: dict, forward_kwargs: dict) -> list[str]:
    """The names of the tensors the model's forward returns, training extras left out (``logits``,
    ``all_exit_logits``, ``start_logits`` / ``end_logits``, ``last_hidden_state`` / ``pooler_output``...)."""
    with torch.no_grad():
        outputs = model(**inputs, **forward_kwargs, return_dict=True)
    return [name for name, value in outputs.items()
            if name not in _SKIPPED_OUTPUTS and isinstance(value, torch.Tensor)]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode for the block, its training flags restored after (every module's)."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.training = flag


# ----------------------------------------------------------------------------------------------- export
def export_graph(module: nn.Module, args: tuple, path: str, input_names, output_names, dynamic: dict,
                 exporter: str, opset: int) -> None:
    """Export ``module(*args)`` to ``path``. ``dynamic`` maps an input name to ``{axis: name}`` (its dynamic axes;
    outputs get a dynamic batch axis, and a dynamic sequence axis where their shape shows one)."""
    if exporter == "dynamo":
        dims = {}
        shapes = []
        for name in input_names:
            axes = dynamic.get(name, {})
            shapes.append({axis: dims.setdefault(label, torch.export.Dim(label, **_dim_bounds(label, module)))
                           for axis, label in axes.items()})
        with warnings.catch_warnings():
            # torch.export's decomposition pass deep-copies a pytree LeafSpec, deprecated in torch 2.13 (not ours)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            torch.onnx.export(module, args, path, dynamo=True, input_names=list(input_names),
                              output_names=list(output_names), dynamic_shapes=_shapes_for(module, shapes),
                              opset_version=opset,
                              verbose=False, external_data=False)
        return
    axes = {name: dict(a) for name, a in dynamic.items()}
    with torch.no_grad():
        outputs = module(*args)
    traced = {label: args[input_names.index(name)].shape[axis]
              for name, a in dynamic.items() for axis, label in a.items()}
    for name, value in zip(output_names, outputs):
        axes[name] = {axis: label for label, size in traced.items() for axis in range(value.dim())
                      if value.shape[axis] == size and (axis == 0) == (label == "batch")}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, args, path, dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=axes, opset_version=opset)


def _shapes_for(module: nn.Module, shapes: list) -> tuple:
    """``dynamic_shapes`` laid out as ``module.forward``'s parameters: one entry per positional argument, or one tuple
    for a ``*args`` parameter."""
    kinds = [p.kind for p in inspect.signature(module.forward).parameters.values()]
    return (tuple(shapes),) if inspect.Parameter.VAR_POSITIONAL in kinds else tuple(shapes)


def _dim_bounds(label: str, module: nn.Module) -> dict:
    if label == "sequence":
        text_config = getattr(getattr(module, "config", None), "get_text_config", None)
        limit = getattr(text_config() if text_config else None, "max_position_embeddings", None)
        return {"max": limit} if limit else {}
    return {}


def compare_with_torch(module: nn.Module, path: str, input_names, output_names, inputs: dict, atol: float) -> float:
    """Run the graph in onnxruntime and ``module`` in torch on ``inputs``; return the largest absolute difference
    over every output, or raise :class:`OnnxExportError` above ``atol`` (or on a shape disagreement)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]
    feeds = {name: inputs[name].numpy() for name in graph_inputs}
    try:
        got = session.run(list(output_names), feeds)
    except Exception as error:  # onnxruntime raises its own exception types
        raise OnnxExportError(f"{os.path.basename(path)} fails in onnxruntime on inputs of shapes "
                              f"{ {k: tuple(v.shape) for k, v in feeds.items()} }: {error}") from error
    with torch.no_grad():
        expected = module(*(inputs[name] for name in input_names))
    worst = 0.0
    for name, value, reference in zip(output_names, got, expected):
        if tuple(value.shape) != tuple(reference.shape):
            raise OnnxExportError(f"{os.path.basename(path)}: output {name!r} has shape {tuple(value.shape)} in "
                                  f"onnxruntime, {tuple(reference.shape)} in torch")
        difference = float((torch.from_numpy(value) - reference.float()).abs().max()) if value.size else 0.0
        worst = max(worst, difference)
    if not worst <= atol:
        raise OnnxExportError(
            f"{os.path.basename(path)}: onnxruntime and torch differ by {worst:.3g} (> atol={atol:g}) on inputs of "
            f"shapes { {k: tuple(v.shape) for k, v in feeds.items()} }; the graph was removed")
    return worst


def export_and_check(module, sample: dict, check: dict, path: str, input_names, output_names, dynamic: dict,
                     exporter: str, opset: int, atol: float) -> float:
    """:func:`export_graph` then :func:`compare_with_torch` on ``check`` (other shapes than ``sample``); the graph
    file is removed when either fails."""
    args = tuple(sample[name] for name in input_names)
    # The TorchScript exporter traces in eval mode and then restores the *wrapper's* mode recursively: a wrapper
    # left in training mode would put the model in training mode (batch-norm batch statistics) for the check.
    module.eval()
    try:
        export_graph(module, args, path, input_names, output_names, dynamic, exporter, opset)
        return compare_with_torch(module, path, input_names, output_names, check, atol)
    except OnnxExportError:
        _remove(path)
        raise
    except Exception as error:
        _remove(path)
        raise OnnxExportError(f"the {exporter} exporter could not export {type(module).__name__} to "
                              f"{os.path.basename(path)}: {type(error).__name__}: {error}") from error


def _remove(path: str) -> None:
    for candidate in (path, path + ".data"):
        if os.path.exists(candidate):
            os.remove(candidate)


def export_onnx(model, folder, tokenizer=None, *, image_processor=None, exporter: str = "dynamo",
                opset: int = DEFAULT_OPSET, atol: float = 1e-4, early_exit_stages: bool = True) -> dict:
    """Export ``model`` to ``folder`` for ONNX Runtime and check the graph; return the manifest (``docs/onnx.md``).

    Args:
        model: a text encoder with a head (PartialMoEBert, a boosted early-exit model, any transformers encoder
            reading ``input_ids``) or an image model reading ``pixel_values`` (DynamicResNet, ResNet).
        folder: created if needed; ``model.onnx``, ``config.json``, ``hf_dynamic_onnx.json`` and, when given, the
            tokenizer's / image processor's files are written into it.
        tokenizer: saved with ``save_pretrained`` (its ``tokenizer.json`` serves the torch-free runtime).
        image_processor: saved with ``save_pretrained``; its size, mean and std are recorded in the manifest.
        exporter: ``"dynamo"`` (``torch.onnx.export(..., dynamo=True)``) or ``"torchscript"`` (``dynamo=False``).
        opset: the ONNX opset.
        atol: the largest absolute difference between onnxruntime and torch the check accepts.
        early_exit_stages: boosted early-exit models: also write one graph per exit and ``ort_early_exit.py``
            (``docs/onnx.md``, "## Early exit in ONNX Runtime").

    The batch axis is dynamic, and the sequence axis for text, the height and width for images. Every graph is
    checked in onnxruntime against the model at a batch size and length (size) other than the traced ones;
    :class:`OnnxExportError` if it differs by more than ``atol`` (the graph is then removed). ``ValueError`` /
    ``TypeError`` for bad arguments, before any work.
    """
    modality = model_modality(model)
    check_exporter(exporter)
    check_positive_int("opset", opset)
    atol = check_atol(atol)
    if early_exit_stages not in (True, False):
        raise ValueError(f"early_exit_stages must be a bool, got {early_exit_stages!r}")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must be a transformers tokenizer (with save_pretrained), got "
                        f"{type(tokenizer).__name__}")
    if image_processor is not None and not hasattr(image_processor, "save_pretrained"):
        raise TypeError(f"image_processor must be a transformers image processor (with save_pretrained), got "
                        f"{type(image_processor).__name__}")
    if modality == "image" and tokenizer is not None:
        raise ValueError(f"tokenizer given for {type(model).__name__}, which reads pixel_values (pass "
                         "image_processor=...)")
    if modality == "text" and image_processor is not None:
        raise ValueError(f"image_processor given for {type(model).__name__}, which reads input_ids")
    early_exit = is_early_exit(model)
    if early_exit and early_exit_stages:
        from .onnx_early_exit import check_stage_backbone

        check_stage_backbone(model)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)

    with eval_mode(model):
        if modality == "text":
            input_names = text_input_names(model)
            sample, check = sample_text_inputs(model, 2, 8, seed=0), sample_text_inputs(model, 3, 11, seed=1)
            dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
            preprocessing = {"inputs": input_names}
        else:
            input_names = ["pixel_values"]
            size = image_size_of(model, image_processor)
            other = (size[0] + 8, size[1] + 16)
            sample, check = sample_image_inputs(model, 2, size, 0), sample_image_inputs(model, 3, other, 1)
            dynamic = {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
            preprocessing = {"num_channels": model.config.num_channels, "image_size": list(size),
                             "image_mean": getattr(image_processor, "image_mean", None),
                             "image_std": getattr(image_processor, "image_std", None),
                             "note": "pixel_values are [batch, num_channels, height, width] float32, normalised "
                                     "with image_mean / image_std (the image processor's, when one was given)"}
        forward_kwargs = {"output_all_exits": True} if early_exit else {}
        output_names = prediction_outputs(model, sample, forward_kwargs)
        module = OutputSelector(model, input_names, output_names, **forward_kwargs)
        module.config = model.config
        worst = export_and_check(module, sample, check, os.path.join(folder, GRAPH), input_names, output_names,
                                 dynamic, exporter, opset, atol)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_type": model.config.model_type,
            "architecture": type(model).__name__,
            "graph": GRAPH,
            "inputs": input_names,
            "outputs": output_names,
            "dynamic_axes": dynamic,
            "exporter": exporter,
            "opset": opset,
            "torch_version": torch.__version__,
            "check": {"atol": atol, "max_abs_diff": worst,
                      "shapes": {k: list(v.shape) for k, v in check.items() if k in input_names}},
            "preprocessing": preprocessing,
            "id2label": {str(k): v for k, v in (model.config.id2label or {}).items()},
        }
        if tokenizer is not None:
            manifest["pad_token"] = getattr(tokenizer, "pad_token", None)
        if early_exit and early_exit_stages:
            from .onnx_early_exit import export_stages

            manifest["early_exit"] = export_stages(model, folder, sample, check, exporter, opset, atol)
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if image_processor is not None:
        image_processor.save_pretrained(folder)
    _write_json(os.path.join(folder, MANIFEST), manifest)
    logger.info(f"exported {type(model).__name__} to {folder} ({exporter}, max |onnxruntime - torch| = {worst:.2g})")
    return manifest


def _write_json(path: str, value) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(value, handle, indent=2)
    os.replace(temporary, path)


def copy_runtime(folder: str) -> str:
    """Copy the torch-free runtime :mod:`hf_dynamic.deploy.ort_early_exit` into ``folder``; return its path."""
    from . import ort_early_exit

    target = os.path.join(folder, "ort_early_exit.py")
    shutil.copyfile(ort_early_exit.__file__, target)
    return target


__all__ = ["export_onnx", "OnnxExportError", "EXPORTERS", "MANIFEST"]
