"""Patch sampler with projection heads, and the PatchNCE loss."""

from __future__ import annotations

import math

import pytest
import torch

from vstk.errors import ConfigError
from vstk.translation import PatchNCELoss, PatchSampleMLP, l2_normalize


def unit_rows(n: int, dim: int, seed: int) -> torch.Tensor:
    return l2_normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)))


def test_nce_matches_hand_computed_cross_entropy() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    tau = 0.5
    # row 0: positive q0.k0 = 0.6, negatives [masked -10, q0.k1 = 0.8]
    row0 = -0.6 / tau + math.log(math.exp(0.6 / tau) + math.exp(-10 / tau) + math.exp(0.8 / tau))
    # row 1: positive q1.k1 = 0.6, negatives [q1.k0 = 0.8, masked -10]
    row1 = -0.6 / tau + math.log(math.exp(0.6 / tau) + math.exp(0.8 / tau) + math.exp(-10 / tau))
    loss = PatchNCELoss(tau=tau)(q, k, batch_size=1)
    torch.testing.assert_close(loss, torch.tensor([row0, row1]))


def test_nce_is_near_zero_for_identical_features_and_near_log_p_for_random_ones() -> None:
    batch, patches, dim = 2, 64, 256
    criterion = PatchNCELoss(tau=0.07)
    source = unit_rows(batch * patches, dim, seed=0)
    identical = criterion(source, source.clone(), batch_size=batch).mean().item()
    unrelated = criterion(unit_rows(batch * patches, dim, seed=1), source, batch_size=batch).mean().item()
    # Identical unit vectors: positive logit 1/0.07 beats 63 negatives near 0 by ~14 nats.
    assert identical < 1e-3
    # Unrelated vectors: about log(64 candidates) plus the spread of the logits.
    assert 4.0 < unrelated < 5.5
    assert unrelated > 1000 * identical


def test_nce_negatives_come_from_the_same_image_by_default() -> None:
    q = unit_rows(8, 16, seed=2)
    k = unit_rows(8, 16, seed=3)
    per_image = PatchNCELoss()(q, k, batch_size=2)
    separate = torch.cat([PatchNCELoss()(q[:4], k[:4], 1), PatchNCELoss()(q[4:], k[4:], 1)])
    torch.testing.assert_close(per_image, separate)
    pooled = PatchNCELoss(all_negatives_from_minibatch=True)(q, k, batch_size=2)
    assert pooled.shape == (8,)
    assert not torch.allclose(pooled, per_image)


def test_nce_does_not_backpropagate_into_keys() -> None:
    q = unit_rows(6, 8, seed=4).requires_grad_()
    k = unit_rows(6, 8, seed=5).requires_grad_()
    PatchNCELoss()(q, k, batch_size=1).mean().backward()
    assert q.grad is not None and k.grad is None


def features(seed: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=g) for c, s in [(1, 22), (16, 16), (32, 8)]]


def test_sampler_builds_one_head_per_layer_with_cut_keys() -> None:
    sampler = PatchSampleMLP(nc=32)
    assert not sampler.built and list(sampler.state_dict()) == []
    sampler.build(features(0))
    assert list(sampler.state_dict()) == [
        f"mlp_{i}.{j}.{p}" for i in range(3) for j in (0, 2) for p in ("weight", "bias")
    ]
    assert sampler.mlp_2[0].weight.shape == (32, 32)
    assert sampler.mlp_0[0].weight.shape == (32, 1)


def test_sampler_state_dict_loads_into_an_unbuilt_sampler() -> None:
    torch.manual_seed(0)
    trained = PatchSampleMLP(nc=32)
    trained.build(features(0))
    fresh = PatchSampleMLP(nc=32)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    ids = [torch.arange(10)] * 3
    a, _ = trained(features(1), patch_ids=ids)
    b, _ = fresh(features(1), patch_ids=ids)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_sampler_output_shapes_and_unit_norm() -> None:
    sampler = PatchSampleMLP(nc=32)
    feats, ids = sampler(features(0), num_patches=20, generator=torch.Generator().manual_seed(0))
    assert [f.shape for f in feats] == [(40, 32), (40, 32), (40, 32)]
    assert [i.shape for i in ids] == [(20,), (20,), (20,)]
    torch.testing.assert_close(feats[1].norm(dim=1), torch.ones(40))


def test_sampler_reuses_given_patch_ids() -> None:
    sampler = PatchSampleMLP(nc=32)
    source, fake = features(0), features(1)
    keys, ids = sampler(source, num_patches=16, generator=torch.Generator().manual_seed(4))
    queries, reused = sampler(fake, num_patches=16, patch_ids=ids)
    for a, b in zip(ids, reused, strict=True):
        assert torch.equal(a, b)
    # The queries are the heads applied at exactly those positions of the fake features.
    flat = fake[2].flatten(2).transpose(1, 2)[:, ids[2], :]
    torch.testing.assert_close(queries[2], sampler.project(flat, 2))


def test_sampler_draws_the_same_ids_for_the_same_seed() -> None:
    sampler = PatchSampleMLP(use_mlp=False)
    _, first = sampler(features(0), 16, generator=torch.Generator().manual_seed(9))
    _, second = sampler(features(0), 16, generator=torch.Generator().manual_seed(9))
    _, other = sampler(features(0), 16, generator=torch.Generator().manual_seed(10))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(len(set(i.tolist())) == 16 for i in first)  # without replacement


def test_sampler_with_zero_patches_takes_every_position() -> None:
    sampler = PatchSampleMLP(use_mlp=False)
    feats, ids = sampler(features(0, batch=1), num_patches=0)
    assert [f.shape[0] for f in feats] == [22 * 22, 16 * 16, 8 * 8]
    assert torch.equal(ids[2], torch.arange(64))


def test_sampler_accepts_per_image_ids() -> None:
    sampler = PatchSampleMLP(use_mlp=False)
    feat = features(0)[2]
    ids = torch.tensor([[0, 5], [63, 1]])
    (out,), _ = sampler([feat], patch_ids=[ids])
    expected = torch.stack([feat[0, :, 0, 0], feat[0, :, 0, 5], feat[1, :, 7, 7], feat[1, :, 0, 1]])
    torch.testing.assert_close(out, l2_normalize(expected))


def test_sampler_rejects_a_changed_channel_count() -> None:
    sampler = PatchSampleMLP(nc=8)
    sampler.build(features(0))
    with pytest.raises(ConfigError, match="layer 1 has 4 channels"):
        sampler([torch.randn(1, 1, 4, 4), torch.randn(1, 4, 4, 4)])


def test_sampling_one_layer_matches_sampling_the_list() -> None:
    sampler = PatchSampleMLP(nc=16)
    feats = features(0)
    together, ids = sampler(feats, num_patches=12, generator=torch.Generator().manual_seed(1))
    alone, same_ids = sampler.sample(feats[2], 2, patch_ids=ids[2])
    torch.testing.assert_close(alone, together[2])
    assert torch.equal(same_ids, ids[2])
