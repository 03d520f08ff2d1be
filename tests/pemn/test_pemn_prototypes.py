"""Prototypes: each strategy's structure, and the same weights from the seed in a fresh process."""

import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch

from hf_dynamic.pemn.prototypes import build_prototype, kaiming_scale

LAYERS = {"conv": (4, 1, 3, 3), "fc1": (32, 144), "fc2": (10, 32), "fc3": (10, 32)}


def digest(strategy: str, seed: int, init: str) -> str:
    proto = build_prototype(LAYERS, strategy, seed, init=init, ratio=0.05, permute=True)
    h = hashlib.sha256()
    for name in sorted(LAYERS):
        h.update(proto.unit(name).contiguous().numpy().tobytes())
        h.update(proto.bias(name, LAYERS[name][0]).numpy().tobytes())
    return h.hexdigest()


CASES = [(s, i) for s in ("one_layer", "mp", "rp") for i in ("signed_constant", "kaiming_normal")]


def test_each_strategy_reproduces_its_weights_from_the_seed_in_a_fresh_process():
    code = (
        "import json, sys; sys.path.insert(0, %r); import test_pemn_prototypes as t; "
        "print(json.dumps({f'{s}/{i}': t.digest(s, 7, i) for s, i in t.CASES}))" % __file__.rsplit("/", 1)[0]
    )
    torch.manual_seed(1234)  # the global RNG must not matter
    here = {f"{s}/{i}": digest(s, 7, i) for s, i in CASES}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here
    assert len(set(here.values())) == len(here)
    assert digest("mp", 8, "signed_constant") != here["mp/signed_constant"]


def test_one_layer_shares_one_tensor_per_shape():
    proto = build_prototype(LAYERS, "one_layer", 0)
    assert torch.equal(proto.unit("fc2"), proto.unit("fc3"))
    assert proto.source_numel == 4 * 9 + 32 * 144 + 10 * 32


def test_mp_layers_are_prefixes_of_the_largest_layer():
    proto = build_prototype(LAYERS, "mp", 0, init="kaiming_normal")
    largest = proto.unit("fc1").reshape(-1)
    for name, shape in LAYERS.items():
        assert torch.equal(proto.unit(name).reshape(-1), largest[: math.prod(shape)])
    assert proto.source_numel == 32 * 144


@pytest.mark.parametrize("permute", [False, True])
def test_rp_repeats_a_vector_of_ratio_times_the_largest_layer(permute):
    proto = build_prototype(LAYERS, "rp", 0, ratio=0.05, permute=permute)
    length = math.ceil(0.05 * 32 * 144)
    assert proto.source_numel == length
    vector = proto.sources["vector"]
    flat = proto.unit("fc1").reshape(-1)
    if permute:
        tiled = vector.repeat(math.ceil(flat.numel() / length))[: flat.numel()]
        assert torch.equal(flat.sort().values, tiled.sort().values)
        assert not torch.equal(proto.unit("fc2"), proto.unit("fc3"))  # per-layer permutations
    else:
        assert torch.equal(flat[:length], vector) and torch.equal(flat[length : 2 * length], vector)


def test_signed_constant_is_plus_minus_one_and_layer_scale_is_kaiming():
    proto = build_prototype(LAYERS, "mp", 0)
    assert set(proto.unit("fc1").unique().tolist()) == {-1.0, 1.0}
    assert kaiming_scale((32, 144)) == pytest.approx(math.sqrt(2 / 144))
    assert kaiming_scale((32, 144), 0.75, scale_fan=True) == pytest.approx(math.sqrt(2 / 36))
