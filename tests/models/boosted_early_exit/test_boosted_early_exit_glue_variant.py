"""examples/glue/variant_exit.py: building boosted / joint models and the per-exit + cost-curve results."""

import os
import sys
from types import SimpleNamespace

import torch
from transformers import BertConfig, BertModel

import hf_dynamic  # noqa: F401  (registers the model types)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "glue"))
import variant_exit  # noqa: E402

VOCAB = 60


def tiny_checkpoint(tmp_path):
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32)
    BertModel(config).save_pretrained(tmp_path / "bert")
    return str(tmp_path / "bert")


def test_build_model_boosted_and_joint(tmp_path):
    script_args = SimpleNamespace(model_name_or_path=tiny_checkpoint(tmp_path))
    args = variant_exit.Arguments(exit_layers="2,4")
    boosted = variant_exit.build_model("boosted_exit", script_args, args, 2, "single_label_classification")
    joint = variant_exit.build_model("joint_exit", script_args, args, 2, "single_label_classification")
    assert boosted.config.boosting and boosted.config.gradient_rescale and boosted.config.exit_layers == [2, 4]
    assert not joint.config.boosting and not joint.config.gradient_rescale
    regression = variant_exit.build_model("boosted_exit", script_args, variant_exit.Arguments(), 1, "regression")
    assert regression.config.is_regression and regression.config.exit_layers == [1, 2, 3, 4]
    # a saved boosted checkpoint is reloaded as is
    boosted.save_pretrained(tmp_path / "boosted")
    again = variant_exit.build_model("boosted_exit", SimpleNamespace(model_name_or_path=str(tmp_path / "boosted")),
                                     args, 2, "single_label_classification")
    assert again.config.exit_layers == [2, 4]
    for name, p in boosted.state_dict().items():
        assert torch.equal(again.state_dict()[name], p)


def test_exit_results_anytime_and_curve(tmp_path):
    from datasets import Dataset

    script_args = SimpleNamespace(model_name_or_path=tiny_checkpoint(tmp_path))
    model = variant_exit.build_model("boosted_exit", script_args, variant_exit.Arguments(), 2,
                                     "single_label_classification").eval()
    with torch.no_grad():
        for head in model.exit_heads:
            head.classifier.weight.mul_(40)
    g = torch.Generator().manual_seed(0)
    n = 40
    ids, labels = torch.randint(3, VOCAB, (n, 8), generator=g), torch.randint(0, 2, (n,), generator=g)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * n,
                                 "labels": labels.tolist()}).with_format("torch")

    def dataloader_fn(ds):
        return torch.utils.data.DataLoader(ds, batch_size=16)

    anytime, curve = variant_exit.exit_results(model, dataloader_fn, dataset, "mrpc", budgets=[0.5, 1.0])
    with torch.no_grad():
        all_logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_all_exits=True).all_exit_logits
    assert [a["exit_layer"] for a in anytime] == [1, 2, 3, 4]
    for k, entry in enumerate(anytime):
        assert abs(entry["accuracy"] - float((all_logits[:, k].argmax(-1) == labels).double().mean())) < 1e-12
    assert [c["budget"] for c in curve] == [0.5, 1.0]
    assert curve[1]["cost"] == 1.0 and curve[1]["accuracy"] == anytime[-1]["accuracy"]
    assert abs(curve[0]["cost"] - 0.5) < 0.15 and sum(curve[0]["exit_counts"]) == n  # calibrated on the other half
    assert model.config.exit_thresholds is None
