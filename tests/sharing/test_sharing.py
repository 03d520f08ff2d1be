"""Sharing checkpoints with users who lack hf_dynamic (hf_dynamic/sharing/; README, "Sharing a checkpoint").

Per model type (tiny random models built from tests/models/test_common.py's cases, plus a finalised PAD model and a
boosted early-exit model on a PartialMoEBert backbone):

- the folder ``save_pretrained`` writes (what ``push_to_hub`` uploads): config with ``auto_map``, the remote code,
  safetensors and a model card with the load instructions; the generated files import nothing of hf_dynamic;
- in a subprocess where hf_dynamic cannot be imported, ``AutoConfig`` / ``AutoModel*.from_pretrained(folder,
  trust_remote_code=True)`` loads it with an equal state dict and identical logits; without ``trust_remote_code``
  transformers stops with its "pass trust_remote_code=True" error;
- with hf_dynamic installed, the registered classes load it (with or without ``trust_remote_code``), exactly;
- ``BertForSequenceClassification.from_pretrained`` on a PAD folder: what the user sees.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, BertForSequenceClassification
from huggingface_hub import ModelCard
from transformers.testing_utils import CaptureLogger

import hf_dynamic
from hf_dynamic import sharing
from hf_dynamic.pad.imp import iterative_mode_partition

from test_common import CASES, PACKAGES, encoder_inputs, tiny_bert_kwargs

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------------- models
def _case_model(model_type: str, index: int = 0):
    case = CASES[model_type][index]
    config = PACKAGES[model_type].CONFIG_CLASS(**case.config_kwargs())
    model = getattr(transformers, case.train_head).from_config(config)
    return model, case.train_head, {k: v for k, v in case.inputs().items() if k not in case.labels_keys}


def _finalized_pad():
    dense = BertForSequenceClassification(transformers.BertConfig(**tiny_bert_kwargs(), num_labels=2))
    model = hf_dynamic.PartialMoEBertForSequenceClassification.from_dense(
        dense, num_experts=4, dynamic_ratio=0.5, partition_granularity="neuron")
    with torch.no_grad():  # experts that differ, so that a wrong load shows in the logits
        for layer in model.bert.pad_layers():
            layer.up_proj.add_(torch.randn_like(layer.up_proj) * 0.1)
    inputs = encoder_inputs()
    iterative_mode_partition(model, [inputs, encoder_inputs(seed=1)], iterations=1, num_batches=2)
    assert model.config.pad_state == "finalized"
    return model, "AutoModelForSequenceClassification", {k: v for k, v in inputs.items() if k != "labels"}


def _boosted_on_pad():
    backbone = hf_dynamic.PartialMoEBertModel(hf_dynamic.PartialMoEBertConfig(
        **tiny_bert_kwargs(), num_experts=4, num_experts_per_tok=2, dynamic_ratio=1.0))
    model = hf_dynamic.BoostedEarlyExitForSequenceClassification.from_backbone(
        backbone, num_labels=2, exit_thresholds=[0.55, 0.0], classifier_dropout=0.0)
    return model, "AutoModelForSequenceClassification", {k: v for k, v in encoder_inputs().items() if k != "labels"}


# Every registered type's first case of test_common.CASES, plus a finalised (compact) PAD checkpoint and a model
# type nested in another's config.
BUILDERS = {
    **{model_type: (lambda model_type=model_type: _case_model(model_type)) for model_type in sorted(CASES)},
    "partial_moe_bert-finalized": _finalized_pad,
    "boosted_early_exit-on-pad": _boosted_on_pad,
}


def _outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """name -> {folder, head, inputs, logits, state}: every builder's model saved with save_pretrained."""
    root = tmp_path_factory.mktemp("shared")
    out = {}
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        model, head, inputs = build()
        model.eval()
        folder = root / name
        model.save_pretrained(folder)
        torch.save(inputs, folder.parent / f"{name}.inputs.pt")
        out[name] = {"folder": folder, "head": head, "inputs": inputs, "logits": _outputs(model, inputs),
                     "state": {k: v.clone() for k, v in model.state_dict().items()}, "model": model}
    return out


def test_every_registered_type_is_shared():
    covered = {name.split("-")[0] for name in BUILDERS}
    assert covered == set(PACKAGES), f"add a builder to BUILDERS for {set(PACKAGES) - covered}"


# ----------------------------------------------------------------------------------------------- the folder
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_saved_folder_has_what_a_user_without_hf_dynamic_needs(shared, name):
    folder = shared[name]["folder"]
    config = json.loads((folder / "config.json").read_text())
    package = PACKAGES[config["model_type"]]
    assert config["auto_map"] == sharing.auto_map(package)
    assert set(config["auto_map"]) == {"AutoConfig", *package.AUTO_CLASSES}
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    for reference in config["auto_map"].values():
        assert f"{reference.split('.')[0]}.py" in files
    generated = sorted(p for p in folder.glob("*.py"))
    assert {p.name for p in generated} == set(sharing.remote_code_files(type(shared[name]["model"]),
                                                                       shared[name]["model"].config))
    for path in generated:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}:{node.lineno} reaches out of the folder"
                assert node.level == 1 or not (node.module or "").startswith("hf_dynamic"), (path.name, node.lineno)
                if node.level == 1 and node.module:
                    assert (folder / f"{node.module}.py").is_file(), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "hf_dynamic" for a in node.names), (path.name, node.lineno)
    card = ModelCard.load(folder / "README.md")
    head = shared[name]["head"]
    assert "trust_remote_code=True" in card.text and "import hf_dynamic" in card.text
    assert f"{head}.from_pretrained" in card.text
    assert card.data.library_name == "transformers" and card.data.tags[:2] == ["hf_dynamic", config["model_type"]]


@pytest.mark.parametrize("name", ["partial_moe_bert", "dynamic_resnet", "dms_llama"])
def test_save_pretrained_leaves_the_config_as_it_was(shared, tmp_path, name):
    """auto_map is in config.json, not left on the config: transformers' Auto classes read a config that has an
    auto_map attribute as remote code, so a left-behind None made from_pretrained(folder, config=model.config)
    raise a TypeError (transformers' test_load_with_mismatched_shapes)."""
    model = shared[name]["model"]
    assert "auto_map" not in vars(model.config)
    auto = getattr(transformers, shared[name]["head"])
    loaded = auto.from_pretrained(shared[name]["folder"], config=model.config).eval()
    assert type(loaded) is type(model)
    assert torch.equal(_outputs(loaded, shared[name]["inputs"]), shared[name]["logits"])
    model.config.auto_map = {"AutoConfig": "theirs.Config"}  # an auto_map the config had before is restored
    model.save_pretrained(tmp_path)
    assert model.config.auto_map == {"AutoConfig": "theirs.Config"}
    del model.config.auto_map


def test_nested_model_type_is_bundled_and_registered(shared):
    folder = shared["boosted_early_exit-on-pad"]["folder"]
    assert (folder / "modeling_partial_moe_bert.py").is_file() and (folder / "hfd_pad_layers.py").is_file()
    assert "_AutoConfig.register(_Nested.model_type, _Nested)" in (folder / "configuration_boosted_early_exit.py"
                                                                  ).read_text()


# --------------------------------------------------------------------------------------- without hf_dynamic
WORKER = textwrap.dedent('''
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):  # hf_dynamic's editable install finds it through a meta path hook
        def find_spec(self, name, path=None, target=None):
            if name == "hf_dynamic" or name.startswith("hf_dynamic."):
                raise ModuleNotFoundError("No module named %r (blocked)" % name)

    sys.meta_path.insert(0, Blocker())
    sys.modules["hf_dynamic"] = None
    sys.path[:] = [p for p in sys.path if p not in ("", {repo!r})]

    import json, torch, traceback, transformers
    from transformers import AutoConfig

    torch.set_num_threads(1)
    try:
        import hf_dynamic  # noqa: F401
        raise SystemExit("hf_dynamic is importable in the worker")
    except ImportError:
        pass
    report = {{}}
    for name, head in {jobs!r}:
        folder = {root!r} + "/" + name
        entry = report[name] = {{}}
        try:
            AutoConfig.from_pretrained(folder)
        except Exception as error:  # what a user without hf_dynamic sees without trust_remote_code
            entry["no_trust"] = f"{{type(error).__name__}}: {{error}}"
        try:  # one folder's failure is reported for that folder (its test fails), the others still run
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            model = getattr(transformers, head).from_pretrained(folder, trust_remote_code=True).eval()
            inputs = torch.load({root!r} + "/" + name + ".inputs.pt")
            with torch.no_grad():
                out = model(**inputs)
            logits = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
            torch.save({{"logits": logits, "state": model.state_dict()}}, {root!r} + "/" + name + ".remote.pt")
            entry.update(config_class=type(config).__module__, model_class=type(model).__module__ + "." +
                         type(model).__name__)
        except Exception:
            entry["error"] = traceback.format_exc()
    report["modules"] = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "hf_dynamic")
    print("REPORT" + json.dumps(report))
''')


@pytest.fixture(scope="module")
def remote(shared, tmp_path_factory):
    """One subprocess, hf_dynamic blocked, loads every shared folder with trust_remote_code=True."""
    root = str(next(iter(shared.values()))["folder"].parent)
    jobs = [(name, entry["head"]) for name, entry in shared.items()]
    script = tmp_path_factory.mktemp("worker") / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), jobs=jobs, root=root))
    home = tmp_path_factory.mktemp("hf_home")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(home), HF_MODULES_CACHE=str(home / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(result.stdout.rpartition("REPORT")[2])  # after the prompts transformers printed


def test_worker_never_imported_hf_dynamic(remote):
    assert remote["modules"] == []


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_loads_without_hf_dynamic_with_trust_remote_code(shared, remote, name):
    entry, expected = remote[name], shared[name]
    assert "error" not in entry, f"loading {name} with trust_remote_code=True without hf_dynamic failed:\n" + \
        entry.get("error", "")
    assert entry["config_class"].startswith("transformers_modules."), entry
    assert entry["model_class"].startswith("transformers_modules."), entry
    assert entry["model_class"].endswith("." + type(expected["model"]).__name__)
    loaded = torch.load(expected["folder"].parent / f"{name}.remote.pt")
    assert loaded["state"].keys() == expected["state"].keys()
    for key, value in expected["state"].items():
        assert torch.equal(loaded["state"][key], value), key
    assert torch.equal(loaded["logits"], expected["logits"])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_without_hf_dynamic_and_without_trust_remote_code_transformers_asks_for_it(remote, name):
    message = remote[name]["no_trust"]
    assert message.startswith("ValueError") and "trust_remote_code=True" in message, message


# ------------------------------------------------------------------------------------------ with hf_dynamic
@pytest.mark.parametrize("trust_remote_code", [None, True])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_with_hf_dynamic_the_registered_classes_load_it_exactly(shared, name, trust_remote_code):
    expected = shared[name]
    kwargs = {} if trust_remote_code is None else {"trust_remote_code": True}
    config = AutoConfig.from_pretrained(expected["folder"], **kwargs)
    assert type(config) is type(expected["model"].config)
    model = getattr(transformers, expected["head"]).from_pretrained(expected["folder"], **kwargs).eval()
    assert type(model) is type(expected["model"])
    state = model.state_dict()
    assert state.keys() == expected["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in expected["state"].items())
    assert torch.equal(_outputs(model, expected["inputs"]), expected["logits"])


# --------------------------------------------------------------------------------------------- the card
def test_existing_card_is_kept_and_metrics_are_shown(tmp_path):
    model, _, _ = _case_model("partial_moe_bert")
    (tmp_path / "README.md").write_text("my card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my card\n"
    (tmp_path / "eval_results.json").write_text(json.dumps({"metrics": {"validation": {"accuracy": 0.75,
                                                                                      "runtime": 1.0}}}))
    sharing.write_model_card(tmp_path, model.config, overwrite=True, details="Trained on X.")
    card = (tmp_path / "README.md").read_text()
    assert "| validation | accuracy 0.7500 |" in card and "Trained on X." in card and "runtime" not in card
    assert "| `dynamic_ratio` | `0.5` |" in card
    assert not list(tmp_path.glob(".README.*"))  # written through a temporary file, renamed


def test_card_is_a_hub_model_card_with_its_metadata():
    """The card is huggingface_hub's ModelCard: its front matter parses back to the ModelCardData it was made of."""
    model, _, _ = _case_model("dynamic_resnet")
    card = sharing.build_model_card(model.config, title="Tiny", tags=("vision", "hf_dynamic"),
                                    pipeline_tag="image-classification")
    assert isinstance(card, ModelCard) and str(card) == sharing.model_card(
        model.config, title="Tiny", tags=("vision", "hf_dynamic"), pipeline_tag="image-classification")
    parsed = ModelCard(str(card))
    assert parsed.data.tags == ["hf_dynamic", model.config.model_type, "vision"]
    assert parsed.data.pipeline_tag == "image-classification" and parsed.data.library_name == "transformers"
    assert parsed.text.startswith("\n# Tiny\n") and "## Results" not in parsed.text


def test_transformers_upload_step_is_where_we_hook():
    """HubSharingMixin overrides transformers' private PushToHubMixin._upload_modified_files (the only point between
    "files written" and "upload" of push_to_hub and save_pretrained(push_to_hub=True)). Fails loudly when
    transformers renames it, changes its arguments, or stops calling it from those two paths."""
    import inspect

    from transformers.utils import hub

    method = getattr(hub.PushToHubMixin, "_upload_modified_files", None)
    assert method is not None, "transformers removed PushToHubMixin._upload_modified_files: see sharing/mixin.py"
    assert list(inspect.signature(method).parameters)[:4] == ["self", "working_dir", "repo_id", "files_timestamps"]
    assert "self._upload_modified_files(" in inspect.getsource(hub.PushToHubMixin.push_to_hub)
    assert "self._upload_modified_files(" in inspect.getsource(transformers.PreTrainedModel.save_pretrained)


def test_push_to_hub_uploads_the_remote_code_and_our_card(tmp_path, monkeypatch):
    """push_to_hub cannot reach the Hub here: the upload is replaced by a copy of the folder it would upload."""
    from huggingface_hub import ModelCard, ModelCardData
    from transformers.utils import hub

    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

    def fake_upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        uploaded.update({f: Path(working_dir, f).read_bytes() for f in os.listdir(working_dir)})

    def template_card(repo_id, tags=None, token=None):  # what transformers makes for a repo without a card
        return ModelCard.from_template(ModelCardData(tags=tags or [], library_name="transformers"),
                                       model_description=sharing.TEMPLATE_CARD_MARK + ".")

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(transformers.modeling_utils, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", template_card)
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", fake_upload)
    model, _, _ = _case_model("dms_llama")
    model.push_to_hub("me/tiny-dms", tags=["pruning"])
    assert {"config.json", "model.safetensors", "README.md", "modeling_dms_llama.py", "configuration_dms_llama.py",
            "hfd_dms_export.py"} <= set(uploaded)
    assert "auto_map" in json.loads(uploaded["config.json"])
    card = uploaded["README.md"].decode()
    assert "trust_remote_code=True" in card and "pruning" in card and sharing.TEMPLATE_CARD_MARK not in card

    uploaded.clear()  # save_pretrained(push_to_hub=True) uploads the saved folder itself
    model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="me/tiny-dms")
    assert {"README.md", "modeling_dms_llama.py", "hfd_dms_export.py"} <= set(uploaded)


# ------------------------------------------------------------------------------------- a plain BERT class
def test_plain_bert_class_on_a_pad_folder_warns_and_computes_something_else(shared):
    """What ``BertForSequenceClassification.from_pretrained(pad_folder)`` does (transformers decides; the keys are
    BERT's by design, so the shared weights load): a model-type warning, then a load report listing the FFN weights
    as MISSING (initialised at random) and the PAD weights as UNEXPECTED. The logits are not the PAD model's."""
    expected = shared["partial_moe_bert-finalized"]
    logger = transformers.utils.logging.get_logger("transformers")
    with CaptureLogger(logger) as captured:
        bert = BertForSequenceClassification.from_pretrained(expected["folder"]).eval()
    text = captured.out
    assert "You are using a model of type `partial_moe_bert` to instantiate a model of type `bert`" in text
    assert "LOAD REPORT" in text and "MISSING" in text and "intermediate.dense.weight" in text
    assert "UNEXPECTED" in text and ".mlp." in text
    assert not torch.allclose(_outputs(bert, expected["inputs"]), expected["logits"])
