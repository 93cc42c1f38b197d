"""Query selection of QS-Attn: lowest-entropy rows, one set of weights for source and fake."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vstk.errors import ConfigError
from vstk.translation import query_selected_attention, select_queries

MODES = ["global", "local", "local_global"]
# Positions (flat y * W + x on a 12 x 12 map) given large, mutually orthogonal features.
DISTINCT = [3, 17, 40, 77, 100, 143]


def peaked_map(size: int = 12, channels: int = 16, seed: int = 0) -> torch.Tensor:
    """A (1, C, size, size) map: near-zero noise, plus norm-10 one-hot features at DISTINCT.

    A distinct position's dot product with itself is 100 and about 0 with everything else, so
    its attention row is a spike (entropy ~ 0); a near-zero position attends uniformly
    (entropy ~ log of the row length).
    """
    g = torch.Generator().manual_seed(seed)
    feat = 1e-3 * torch.randn(1, channels, size * size, generator=g)
    for channel, position in enumerate(DISTINCT):
        feat[0, :, position] = 0
        feat[0, channel, position] = 10.0
    return feat.view(1, channels, size, size)


@pytest.mark.parametrize("mode", MODES)
def test_selects_exactly_the_low_entropy_positions(mode: str) -> None:
    selection = select_queries(peaked_map(), mode=mode, num_patches=len(DISTINCT))
    assert sorted(selection.indices[0].tolist()) == DISTINCT
    assert selection.entropy.max() < 1e-3


@pytest.mark.parametrize(("mode", "row_length"), [("global", 144), ("local", 49)])
def test_uniform_rows_have_entropy_log_of_row_length(mode: str, row_length: int) -> None:
    selection = select_queries(peaked_map(), mode=mode, num_patches=144)
    rest = selection.entropy[0, len(DISTINCT) :]
    assert rest.min() > math.log(row_length) - 0.01
    assert rest.max() < math.log(row_length) + 1e-4


def test_indices_are_sorted_by_ascending_entropy() -> None:
    selection = select_queries(torch.randn(2, 8, 6, 6), num_patches=36)
    assert torch.all(selection.entropy[:, 1:] >= selection.entropy[:, :-1])


@pytest.mark.parametrize("mode", MODES)
def test_the_same_weights_apply_to_source_and_fake(mode: str) -> None:
    source = torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(1))
    values_source, values_fake, indices = query_selected_attention(source, 2 * source, mode=mode, num_patches=16)
    assert values_source.shape == values_fake.shape == (2, 16, 8)
    assert indices.shape == (2, 16)
    torch.testing.assert_close(values_fake, 2 * values_source)


@pytest.mark.parametrize("mode", MODES)
def test_selection_depends_on_the_source_only(mode: str) -> None:
    g = torch.Generator().manual_seed(2)
    source = torch.randn(1, 8, 10, 10, generator=g)
    _, _, with_noise = query_selected_attention(
        source, torch.randn(1, 8, 10, 10, generator=g), mode=mode, num_patches=12
    )
    _, _, with_zeros = query_selected_attention(source, torch.zeros(1, 8, 10, 10), mode=mode, num_patches=12)
    assert torch.equal(with_noise, with_zeros)


def test_global_values_are_attention_rows_times_features() -> None:
    g = torch.Generator().manual_seed(3)
    source, fake = torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 8, 6, 6, generator=g)
    values_source, values_fake, indices = query_selected_attention(source, fake, mode="global", num_patches=10)
    for b in range(2):
        f_src = source[b].flatten(1).T  # (HW, C)
        attention = torch.softmax(f_src @ f_src.T, dim=1)
        entropy = -(attention * attention.log()).sum(dim=1)
        expected = torch.argsort(entropy)[:10]
        assert torch.equal(indices[b], expected)
        torch.testing.assert_close(values_source[b], attention[expected] @ f_src)
        torch.testing.assert_close(values_fake[b], attention[expected] @ fake[b].flatten(1).T)


def test_local_values_are_window_weighted_sums() -> None:
    g = torch.Generator().manual_seed(4)
    source, fake = torch.randn(1, 4, 9, 9, generator=g), torch.randn(1, 4, 9, 9, generator=g)
    selection = select_queries(source, mode="local", num_patches=81)
    values = selection.apply(fake)
    padded_src, padded_fake = F.pad(source, (3, 3, 3, 3)), F.pad(fake, (3, 3, 3, 3))
    for p in (0, 40, 80):
        position = int(selection.indices[0, p])
        y, x = divmod(position, 9)
        window_src = padded_src[0, :, y : y + 7, x : x + 7].reshape(4, 49)  # raster order, zero outside
        window_fake = padded_fake[0, :, y : y + 7, x : x + 7].reshape(4, 49)
        weights = torch.softmax(source[0, :, y, x] @ window_src, dim=0)
        torch.testing.assert_close(selection.weights[0, p], weights)
        torch.testing.assert_close(values[0, p], window_fake @ weights)


def test_local_global_weights_are_global_rows_of_locally_selected_positions() -> None:
    source = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    local = select_queries(source, mode="local", num_patches=20)
    mixed = select_queries(source, mode="local_global", num_patches=20)
    assert torch.equal(local.indices, mixed.indices)
    f_src = source[0].flatten(1).T
    torch.testing.assert_close(mixed.weights[0], torch.softmax(f_src @ f_src.T, dim=1)[mixed.indices[0]])


@pytest.mark.parametrize("mode", MODES)
def test_attention_carries_gradient_unless_detached(mode: str) -> None:
    source = torch.randn(1, 8, 8, 8, requires_grad=True)
    fake = torch.randn(1, 8, 8, 8, requires_grad=True)
    _, values_fake, _ = query_selected_attention(source, fake, mode=mode, num_patches=8)
    (grad,) = torch.autograd.grad(values_fake.square().sum(), source)
    assert grad.abs().max() > 0  # as in the official code: the key encoder is backpropagated
    _, values_fake, _ = query_selected_attention(source, fake, mode=mode, num_patches=8, detach_attention=True)
    grads = torch.autograd.grad(values_fake.square().sum(), [source, fake], allow_unused=True)
    assert grads[0] is None and grads[1] is not None


def test_num_patches_is_capped_at_the_map_size() -> None:
    values, _, indices = query_selected_attention(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), num_patches=256)
    assert values.shape == (2, 9, 4)
    assert sorted(indices[0].tolist()) == list(range(9))


def test_bad_mode_and_window_are_rejected() -> None:
    with pytest.raises(ConfigError, match="'patch'"):
        select_queries(torch.randn(1, 4, 8, 8), mode="patch")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window=6"):
        select_queries(torch.randn(1, 4, 8, 8), mode="local", window=6)
