"""Two CPU processes (torchrun, gloo), different data per rank: IMP must leave identical masks on both ranks."""

import os
import signal
import subprocess
import sys
import textwrap

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent('''
    import os, sys
    import torch
    import torch.distributed as dist
    from transformers import BertConfig, BertForSequenceClassification
    from hf_dynamic import PartialMoEBertForSequenceClassification, iterative_mode_partition
    from hf_dynamic.pad.imp import pad_layers

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    out = sys.argv[1]

    def build():
        torch.manual_seed(0)
        dense = BertForSequenceClassification(BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3))
        torch.manual_seed(1)
        return PartialMoEBertForSequenceClassification.from_dense(
            dense, num_experts=4, dynamic_ratio=0.5, partition_granularity="neuron")

    g = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    data = [{"input_ids": torch.randint(0, 100, (4, 9), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}
            for _ in range(3)]

    local = build()  # before the process group exists: this rank's data only
    iterative_mode_partition(local, data, num_batches=3, finalize=False)
    dist.init_process_group("gloo")
    shared = build()
    iterative_mode_partition(shared, data, num_batches=3, finalize=False)
    torch.save({"local": [l.partition_mask() for l in pad_layers(local)],
                "shared": [l.partition_mask() for l in pad_layers(shared)]}, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
''')


def test_two_ranks_end_imp_with_identical_masks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(rank0["shared"], rank1["shared"]))
    # the test has teeth: on its own data alone each rank would pick different masks
    assert not all(torch.equal(a, b) for a, b in zip(rank0["local"], rank1["local"]))
    total = sum(m.numel() for m in rank0["shared"])
    assert sum(int(m.sum()) for m in rank0["shared"]) == total // 2
