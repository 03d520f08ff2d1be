"""Boosted early exit in ONNX Runtime, without torch (``docs/onnx.md``, "## Early exit in ONNX Runtime").

This module imports only numpy, onnxruntime and (for :meth:`EarlyExitSession.tokenize`) the ``tokenizers`` package:
:func:`hf_dynamic.export_onnx` copies it into every early-exit export folder, so a machine without torch,
transformers or hf_dynamic runs the folder with ``sys.path.insert(0, folder); from ort_early_exit import
EarlyExitSession``.

The folder holds one graph per exit (``stage_<k>.onnx``): stage 0 maps ``input_ids`` / ``attention_mask`` (/
``token_type_ids``) through the embeddings and the layers up to the first exit; stage ``k`` maps the previous
stage's ``hidden_states`` (and the padding mask) through the layers up to exit ``k``; each stage returns its exit
head's logits ``f_k``. :meth:`EarlyExitSession.run` walks them as the PyTorch dynamic mode does:

- the ensemble ``F_k = t·F_{k-1} + f_k`` (BoostNet, ``boosting``) or ``F_k = f_k`` (joint exits);
- the exit rule: a sample leaves at the first exit whose criterion fires (``confidence``: max softmax probability
  ``≥ θ_k``; ``entropy``: softmax entropy in nats ``≤ θ_k``; ``patience``: ``patience`` consecutive exits agree
  on the argmax, or within ``patience_tolerance`` for a regression); the last exit takes every sample left;
- batch compaction: the next stage runs only on the samples still in the batch, with the trailing positions that
  are padding for all of them dropped.

Thresholds, exit layers, criterion, temperature and label names are read from ``hf_dynamic_onnx.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

MANIFEST = "hf_dynamic_onnx.json"
CRITERIA = ("confidence", "entropy", "patience")
# onnxruntime session config key (onnxruntime_session_options_config_keys.h): "0" stops idle intra-op threads spinning
ALLOW_SPINNING = "session.intra_op.allow_spinning"


@dataclass
class EarlyExitOutput:
    """``logits [batch, num_labels]``: each sample's prediction at the exit it took; ``exit_layer [batch]``: that
    exit's backbone layer (1-based), also the number of backbone layers run for the sample."""

    logits: np.ndarray
    exit_layer: np.ndarray


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (max subtracted first)."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def exit_confidence(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per sample."""
    return softmax(logits).max(axis=-1)


def exit_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the softmax per sample, ``−Σ p·log p`` with ``log p`` the log-softmax."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(np.exp(log_probs) * log_probs).sum(axis=-1)


def load_manifest(folder) -> dict:
    """The export's ``hf_dynamic_onnx.json``; ``ValueError`` when the folder has none or it describes no early exit."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no {MANIFEST}: not a folder written by hf_dynamic.export_onnx")
    with open(path) as handle:
        manifest = json.load(handle)
    if "early_exit" not in manifest:
        raise ValueError(f"{path} describes a {manifest.get('model_type')!r} export without early-exit stages; "
                         "run its model.onnx with onnxruntime.InferenceSession")
    exits = manifest["early_exit"]
    if exits.get("criterion") not in CRITERIA:
        raise ValueError(f"{path}: early_exit.criterion must be one of {CRITERIA}, got {exits.get('criterion')!r}")
    return manifest


class ExitRule:
    """Which samples leave at exit ``k`` (0-based), given the ensemble prediction ``F_k`` of the samples still in the
    batch; :meth:`keep` compacts the per-sample state (the patience counters) with the batch."""

    def __init__(self, settings: dict, batch_size: int):
        self.criterion = settings["criterion"]
        self.thresholds = settings.get("thresholds")
        self.patience = settings.get("patience")
        self.tolerance = settings.get("patience_tolerance", 0.1)
        self.regression = settings.get("regression", False)
        self.last = len(settings["exit_layers"]) - 1
        self.count = np.zeros(batch_size, dtype=np.int64)
        self.previous = None

    @property
    def enabled(self) -> bool:
        """Whether samples may leave before the last exit (thresholds, or a patience, are set)."""
        return (self.patience if self.criterion == "patience" else self.thresholds) is not None

    def fires(self, prediction: np.ndarray, k: int) -> np.ndarray:
        if k == self.last:
            return np.ones(prediction.shape[0], dtype=bool)
        if self.criterion == "patience":
            return self._patience(prediction, k)
        if not self.enabled:
            return np.zeros(prediction.shape[0], dtype=bool)
        if self.criterion == "confidence":
            return exit_confidence(prediction) >= np.float32(self.thresholds[k])
        return -exit_entropy(prediction) >= -np.float32(self.thresholds[k])

    def _patience(self, prediction, k):
        if self.regression:
            current = prediction.astype(np.float32).reshape(-1)
            agree = np.abs(current - self.previous) <= self.tolerance if k > 0 else None
        else:
            current = prediction.argmax(axis=-1)
            agree = current == self.previous if k > 0 else None
        if agree is not None:
            self.count = np.where(agree, self.count + 1, 0)
        self.previous = current
        if self.patience is None:
            return np.zeros(prediction.shape[0], dtype=bool)
        return self.count >= self.patience

    def keep(self, keep: np.ndarray) -> None:
        self.count = self.count[keep]
        if self.previous is not None:
            self.previous = self.previous[keep]


def trim_trailing_padding(hidden_states: np.ndarray, attention_mask: np.ndarray):
    """Drop the trailing positions that are padding for every sample left (at least one position stays)."""
    present = attention_mask.any(axis=0)
    length = int(np.nonzero(present)[0].max()) + 1 if present.any() else 1
    if length == attention_mask.shape[1]:
        return hidden_states, attention_mask
    return hidden_states[:, :length], attention_mask[:, :length]


class EarlyExitSession:
    """Run an early-exit export folder in ONNX Runtime with per-sample exits and batch compaction.

    ``providers``: onnxruntime execution providers (default CPU); ``threads``: intra-op threads per session
    (default: onnxruntime's); ``session_options``: an ``onnxruntime.SessionOptions`` used instead (then used as
    given: set ``session.intra_op.allow_spinning`` to ``"0"`` in it too, or the stage sessions' idle thread pools
    slow each other down).
    """

    def __init__(self, folder, providers=None, threads: int | None = None, session_options=None):
        self.folder = os.fspath(folder)
        self.manifest = load_manifest(self.folder)
        self.settings = self.manifest["early_exit"]
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        if session_options is None:
            session_options = ort.SessionOptions()
            if threads is not None:
                session_options.intra_op_num_threads = threads
                session_options.inter_op_num_threads = 1
            # Each stage session owns an intra-op thread pool whose threads spin after their work by default; the
            # stages run back to back, so the spinning pools of the stages just run take the cores from the next
            # one (measured: all six MiniLM stages at batch 1 took 49.7 ms spinning, 9.5 ms not; the one-graph
            # model 7.4 / 8.6 ms). onnxruntime's documented session config key turns the spinning off.
            session_options.add_session_config_entry(ALLOW_SPINNING, "0")
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.session_options = session_options
        self.stages = [ort.InferenceSession(os.path.join(self.folder, name), session_options,
                                            providers=self.providers)
                       for name in self.settings["stages"]]
        self.stage_inputs = [{i.name for i in stage.get_inputs()} for stage in self.stages]
        self._full = None
        self._tokenizer = None

    # ------------------------------------------------------------------------------------------------ running
    def run(self, input_ids, attention_mask=None, token_type_ids=None, dynamic: bool = True) -> EarlyExitOutput:
        """Predict a batch; ``dynamic=False`` runs every stage for every sample (the last exit's prediction).

        ``input_ids`` / ``attention_mask`` / ``token_type_ids``: int arrays ``[batch, sequence]``.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, sequence], got shape {input_ids.shape}")
        batch = input_ids.shape[0]
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {input_ids.shape}")
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.stage_inputs[0]:
            feeds["token_type_ids"] = (np.zeros_like(input_ids) if token_type_ids is None
                                       else np.asarray(token_type_ids, dtype=np.int64))
        exit_layers = self.settings["exit_layers"]
        num_labels = self.settings["num_labels"]
        temperature = np.float32(self.settings["ensemble_temperature"])
        logits = np.zeros((batch, num_labels), dtype=np.float32)
        exit_layer = np.zeros(batch, dtype=np.int64)
        active = np.arange(batch)
        rule = ExitRule(self.settings, batch)
        previous = hidden = None
        for k, stage in enumerate(self.stages):
            if k > 0:
                feeds = {"hidden_states": hidden, "attention_mask": mask}
            outputs = stage.run(None, feeds)
            head = outputs[-1]
            hidden = outputs[0] if len(outputs) > 1 else None
            previous = head if previous is None or not self.settings["boosting"] else temperature * previous + head
            fire = rule.fires(previous, k) if dynamic else np.full(len(active), k == len(self.stages) - 1)
            if fire.any():
                leaving = active[fire]
                logits[leaving] = previous[fire]
                exit_layer[leaving] = exit_layers[k]
                keep = ~fire
                if not keep.any():
                    break
                active, previous, hidden = active[keep], previous[keep], hidden[keep]
                hidden, mask = trim_trailing_padding(hidden, mask[keep])
                rule.keep(keep)
        return EarlyExitOutput(logits=logits, exit_layer=exit_layer)

    def run_all_exits(self, input_ids, attention_mask=None, token_type_ids=None) -> dict:
        """The anytime graph ``model.onnx``: ``{"logits": last exit [batch, C], "all_exit_logits": [batch, N, C]}``."""
        if self._full is None:
            self._full = ort.InferenceSession(os.path.join(self.folder, self.manifest["graph"]),
                                              self.session_options, providers=self.providers)
        input_ids = np.asarray(input_ids, dtype=np.int64)
        feeds = {"input_ids": input_ids,
                 "attention_mask": np.ones_like(input_ids) if attention_mask is None
                 else np.asarray(attention_mask, dtype=np.int64)}
        names = {i.name for i in self._full.get_inputs()}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = (np.zeros_like(input_ids) if token_type_ids is None
                                       else np.asarray(token_type_ids, dtype=np.int64))
        values = self._full.run(None, feeds)
        return dict(zip([o.name for o in self._full.get_outputs()], values))

    # -------------------------------------------------------------------------------------------- text in/out
    def tokenize(self, texts, text_pairs=None, max_length: int | None = None) -> dict:
        """Encode ``texts`` (and ``text_pairs``) with the folder's ``tokenizer.json`` (the ``tokenizers`` package),
        padded to the longest; returns int64 arrays ``input_ids``, ``attention_mask``, ``token_type_ids``."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            path = os.path.join(self.folder, "tokenizer.json")
            if not os.path.isfile(path):
                raise ValueError(f"{self.folder} has no tokenizer.json: export with tokenizer=... or tokenize yourself")
            self._tokenizer = Tokenizer.from_file(path)
            pad = self.manifest.get("pad_token")
            if pad is not None:
                self._tokenizer.enable_padding(pad_id=self._tokenizer.token_to_id(pad), pad_token=pad)
            else:
                self._tokenizer.enable_padding()
        if max_length is not None:
            self._tokenizer.enable_truncation(max_length)
        texts = list(texts)
        batch = (self._tokenizer.encode_batch(list(zip(texts, text_pairs))) if text_pairs is not None
                 else self._tokenizer.encode_batch(texts))
        return {"input_ids": np.array([e.ids for e in batch], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64)}

    def predict(self, texts, text_pairs=None, max_length: int | None = None) -> list[dict]:
        """Label name, label index and exit layer per text (``id2label`` of the export's config)."""
        out = self.run(**self.tokenize(texts, text_pairs, max_length))
        names = self.manifest.get("id2label") or {}
        return [{"label": names.get(str(int(i)), str(int(i))), "index": int(i), "exit_layer": int(layer)}
                for i, layer in zip(out.logits.argmax(axis=-1), out.exit_layer)]


__all__ = ["EarlyExitOutput", "EarlyExitSession", "ExitRule", "load_manifest", "exit_confidence", "exit_entropy"]
