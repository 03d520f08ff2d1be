"""core.masks (exact top-k, bit packing), core.routing (top-k softmax, router, balance loss), core.importance
(SNIP, cross-expert gradient variance)."""

import pytest
import torch

from hf_dynamic.core.importance import expert_gradient_variance, normalize_scores, snip_score
from hf_dynamic.core.masks import (
    count_to_keep,
    pack_bool_mask,
    packed_numel,
    topk_mask,
    topk_masks,
    unpack_bool_mask,
)
from hf_dynamic.core.routing import TopKRouter, load_balancing_loss, top_k_softmax


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (4, 16), (2, 3, 11)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape) > 0.5
    packed = pack_bool_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_numel(mask.numel())
    assert torch.equal(unpack_bool_mask(packed, shape), mask)


def test_pack_bit_order_is_little_endian():
    mask = torch.tensor([True, False, False, False, False, False, False, False, False, True])
    assert pack_bool_mask(mask).tolist() == [1, 2]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="bool"):
        pack_bool_mask(torch.ones(3))
    with pytest.raises(ValueError, match="needs 2"):
        unpack_bool_mask(torch.zeros(1, dtype=torch.uint8), (3, 4))


def test_topk_mask_exact_count_and_ties():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert topk_mask(scores, 2).tolist() == [False, True, True, False, False]  # ties: earlier first
    assert int(topk_mask(torch.zeros(10), 4).sum()) == 4
    with pytest.raises(ValueError, match="k must be"):
        topk_mask(scores, 6)


def test_topk_masks_is_global():
    a, b = torch.tensor([5.0, 1.0, 0.0]), torch.tensor([[4.0, 3.0], [2.0, -1.0]])
    ma, mb = topk_masks([a, b], 3)
    assert ma.tolist() == [True, False, False] and mb.tolist() == [[True, True], [False, False]]
    assert count_to_keep(0.5, 7) == 4 and count_to_keep(1.0, 3) == 3


def test_top_k_softmax_renormalises():
    logits = torch.randn(6, 5)
    weights, index = top_k_softmax(logits, 2)
    probs = torch.softmax(logits, -1)
    expected_idx = probs.topk(2, -1).indices
    assert torch.equal(index, expected_idx)
    top = probs.gather(1, expected_idx)
    torch.testing.assert_close(weights, top / top.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="top_k"):
        top_k_softmax(logits, 6)


def test_router_noise_only_in_training():
    router = TopKRouter(8, 4, 2, jitter_noise=0.1, noise_std=1.0)
    torch.nn.init.normal_(router.weight)
    x = torch.randn(10, 8)
    router.eval()
    l1, _, _ = router(x)
    l2, _, _ = router(x)
    assert torch.equal(l1, l2) and torch.allclose(l1, x @ router.weight.T)
    router.train()
    l3, _, _ = router(x)
    assert not torch.allclose(l1, l3)
    with pytest.raises(ValueError, match="top_k"):
        TopKRouter(8, 2, 3)


def test_load_balancing_loss_matches_switch_formula():
    torch.manual_seed(0)
    logits = (torch.randn(12, 4), torch.randn(12, 4))
    loss = load_balancing_loss(logits, 4, 2)
    all_logits = torch.cat(logits)
    probs = torch.softmax(all_logits, -1)
    idx = probs.topk(2, -1).indices
    frac = torch.nn.functional.one_hot(idx, 4).float().sum(1).mean(0)
    expected = 4 * (frac * probs.mean(0)).sum()
    torch.testing.assert_close(loss, expected)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[0, 2:] = 0
    masked = load_balancing_loss(logits, 4, 2, mask)
    keep = mask.reshape(-1).bool().repeat(2)
    frac_m = torch.nn.functional.one_hot(idx[keep], 4).float().sum(1).mean(0)
    torch.testing.assert_close(masked, 4 * (frac_m * probs[keep].mean(0)).sum())
    with pytest.raises(ValueError, match="non-empty"):
        load_balancing_loss((), 4, 2)


def test_importance_scores():
    g = torch.tensor([-2.0, 0.5])
    assert snip_score(g).tolist() == [2.0, 0.5]
    grads = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # 3 experts, 2 entries
    torch.testing.assert_close(expert_gradient_variance(grads), torch.tensor([8.0, 0.0]))
    identical = torch.randn(1, 5).expand(4, 5)
    assert torch.allclose(expert_gradient_variance(identical), torch.zeros(5))
    a, b = normalize_scores([torch.tensor([1.0, 3.0]), torch.tensor([4.0])])
    assert a.tolist() == [0.125, 0.375] and b.tolist() == [0.5]
