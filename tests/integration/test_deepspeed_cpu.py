"""DeepSpeed ZeRO-2 and ZeRO-3 Trainer runs on the CPU (``DS_ACCELERATOR=cpu``, gloo, ``torch_adam``, 2 ranks):
PartialMoEBert with IMPCallback and the boosted early-exit model train, both ranks end with identical masks, and the
saved model loads back exactly (docs/pad.md, "## Resume and distributed training").

PartialMoEBert is built the way transformers documents for ZeRO-3: the ``TrainingArguments`` come first (under
ZeRO-3 they turn on ``zero.Init`` through ``HfDeepSpeedConfig``), then ``from_pretrained`` of a saved checkpoint
(loaded partitioned, compared with the file) and ``from_dense`` of a dense folder (whose ``from_pretrained`` is
partitioned too), with DeepSpeed's own calls, none faked."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytest.importorskip("deepspeed", reason="the dev extra installs deepspeed")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU ops build with g++")

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)

WORKER = textwrap.dedent('''
    import copy, os, sys, time
    import torch
    import torch.distributed as dist
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
    from hf_dynamic import (BoostedEarlyExitForSequenceClassification, IMPCallback,
                            PartialMoEBertForSequenceClassification)
    from hf_dynamic.core.zero import gathered
    from hf_dynamic.pad.imp import pad_layers
    from pad_testing import Rows

    torch.set_num_threads(1)
    stage, out = int(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, num_labels=3)
    DS = {"zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
          "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}},
          "train_micro_batch_size_per_gpu": "auto",  # train_batch_size: DeepSpeed derives it (2 ranks)
          "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_allow_untested_optimizer": True}


    class KeepMasks(TrainerCallback):  # runs after IMPCallback.on_train_begin: the masks IMP chose
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.masks = [layer.partition_mask() for layer in pad_layers(model)]


    def dense():
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(**TINY))


    def arguments(name):  # under ZeRO-3, models built or loaded while these live are partitioned (zero.Init)
        return TrainingArguments(output_dir=os.path.join(out, name), max_steps=3, per_device_train_batch_size=4,
                                 deepspeed=copy.deepcopy(DS), use_cpu=True, report_to="none", save_strategy="no",
                                 logging_steps=1, learning_rate=1e-3, seed=0, disable_tqdm=True)


    def run(args, name, model, callbacks):
        trainer = Trainer(model=model, args=args, train_dataset=Rows(32), callbacks=callbacks)
        trainer.train()
        with gathered(model.parameters()):  # whole weights under ZeRO-3 (every rank takes part)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        folder = os.path.join(out, name, "final")
        trainer.save_model(folder)
        return state, folder


    torch.manual_seed(2)  # the boosted model is built before any ZeRO-3 TrainingArguments exists
    exits = BoostedEarlyExitForSequenceClassification.from_backbone(dense().bert, num_labels=3)

    moe_args = arguments("moe")  # first, as transformers documents for ZeRO-3; then load and build
    loaded = PartialMoEBertForSequenceClassification.from_pretrained(os.path.join(out, "pad"))
    with gathered(loaded.parameters()):
        loaded_state = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    torch.manual_seed(1)
    moe = PartialMoEBertForSequenceClassification.from_dense(os.path.join(out, "dense"), num_experts=4,
                                                             dynamic_ratio=0.5, partition_granularity="neuron")
    keep = KeepMasks()
    imp = IMPCallback(num_batches=2)
    moe_state, moe_folder = run(moe_args, "moe", moe, [imp, keep])
    del moe_args
    exit_state, exit_folder = run(arguments("exits"), "exits", exits, [])
    torch.save({"masks": keep.masks, "summary": imp.summary, "pad_state": moe.config.pad_state,
                "moe": moe_state, "moe_folder": moe_folder, "exits": exit_state, "exit_folder": exit_folder,
                "loaded": loaded_state}, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
''')


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trainer_runs_with_identical_masks_and_exact_save_load(tmp_path, stage):
    from hf_dynamic import (BoostedEarlyExitForSequenceClassification, PartialMoEBertForSequenceClassification,
                            finalize_partition)
    from hf_dynamic.pad.imp import pad_layers

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torch.manual_seed(0)  # the folders the worker loads: a dense BERT and a PartialMoEBert upcycled from it
    dense = BertForSequenceClassification(BertConfig(**TINY))
    dense.save_pretrained(tmp_path / "dense")
    torch.manual_seed(3)
    saved = PartialMoEBertForSequenceClassification.from_dense(dense, num_experts=4, dynamic_ratio=0.5)
    saved.save_pretrained(tmp_path / "pad")
    path = os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])  # + pad_testing
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "ACCELERATE_USE_DEEPSPEED": "true", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(stage), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers: a hang fails the test, never the suite
        process.communicate()
        raise
    assert process.returncode == 0, output[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    assert rank0["summary"] is not None and rank0["summary"]["finalize_at"] == "train_end"
    assert len(rank0["masks"]) == 2 and all(torch.equal(a, b) for a, b in zip(rank0["masks"], rank1["masks"]))
    assert sum(int(m.sum()) for m in rank0["masks"]) == 64  # κ = 0.5 of 2 × 64 neurons
    for key, value in saved.state_dict().items():  # from_pretrained under zero.Init loads the file exactly
        assert torch.equal(rank0["loaded"][key], value) and torch.equal(rank1["loaded"][key], value), key
    for name in ("moe", "exits"):
        for key, value in rank0[name].items():
            assert torch.equal(value, rank1[name][key]), (name, key)  # data-parallel replicas agree

    loaded = PartialMoEBertForSequenceClassification.from_pretrained(rank0["moe_folder"])
    # ZeRO-2 finalises at train end; ZeRO-3 keeps the masked layout (its engine owns the shards) until loaded
    assert loaded.config.pad_state == ("finalized" if stage == 2 else "partitioned") == rank0["pad_state"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, rank0["moe"][key]), key
    if stage == 3:
        assert all(torch.equal(layer.partition_mask(), m) for layer, m in zip(pad_layers(loaded), rank0["masks"]))
        finalize_partition(loaded)
        assert loaded.config.pad_state == "finalized"
    exits = BoostedEarlyExitForSequenceClassification.from_pretrained(rank0["exit_folder"])
    for key, value in exits.state_dict().items():
        assert torch.equal(value, rank0["exits"][key]), key
