"""core.checkpoints: tensor shapes from safetensors headers, filtered by a key pattern."""

import torch
from safetensors.torch import save_file

from hf_dynamic.core.checkpoints import checkpoint_tensor_shapes


def test_shapes_and_matches_over_every_file_of_the_folder(tmp_path):
    save_file({"a.layer.0.w": torch.zeros(3, 4), "a.other": torch.zeros(2)}, str(tmp_path / "model-1.safetensors"))
    save_file({"a.layer.1.w": torch.zeros(5)}, str(tmp_path / "model-2.safetensors"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    found = checkpoint_tensor_shapes(tmp_path, r"layer\.(\d+)\.w$")
    assert {key: shape for key, (_, shape) in found.items()} == {"a.layer.0.w": (3, 4), "a.layer.1.w": (5,)}
    assert sorted(int(match.group(1)) for match, _ in found.values()) == [0, 1]


def test_empty_folder_has_no_shapes(tmp_path):
    assert checkpoint_tensor_shapes(tmp_path, "anything") == {}
