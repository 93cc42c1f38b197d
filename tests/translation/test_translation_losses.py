"""GAN objectives and the image history pool."""

from __future__ import annotations

import math

import pytest
import torch

from vstk.errors import ConfigError
from vstk.translation import GANLoss, ImagePool

PREDICTION = torch.tensor([[[[0.2, -0.5], [1.5, 0.0]]]])  # (1, 1, 2, 2) patch logits


def test_lsgan_is_mse_against_one_for_real() -> None:
    # ((0.2-1)^2 + (-0.5-1)^2 + (1.5-1)^2 + (0-1)^2) / 4 = (0.64 + 2.25 + 0.25 + 1) / 4
    assert GANLoss("lsgan")(PREDICTION, True).item() == pytest.approx(1.035, abs=1e-6)


def test_lsgan_is_mse_against_zero_for_fake() -> None:
    # (0.04 + 0.25 + 2.25 + 0) / 4
    assert GANLoss("lsgan")(PREDICTION, False).item() == pytest.approx(0.635, abs=1e-6)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("mode", ["vanilla", "nonsaturating"])
def test_logistic_modes_are_mean_softplus(mode: str) -> None:
    values = PREDICTION.flatten().tolist()
    real = sum(softplus(-v) for v in values) / 4
    fake = sum(softplus(v) for v in values) / 4
    loss = GANLoss(mode)  # type: ignore[arg-type]
    assert loss(PREDICTION, True).item() == pytest.approx(real, abs=1e-6)
    assert loss(PREDICTION, False).item() == pytest.approx(fake, abs=1e-6)


def test_gan_loss_is_a_scalar_with_gradient() -> None:
    prediction = torch.randn(3, 1, 6, 6, requires_grad=True)
    loss = GANLoss("lsgan")(prediction, True)
    assert loss.dim() == 0
    loss.backward()
    assert prediction.grad is not None


def test_unknown_gan_mode_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'wgan'"):
        GANLoss("wgan")  # type: ignore[arg-type]


def image(value: float) -> torch.Tensor:
    return torch.full((1, 1, 4, 4), value)


def test_pool_returns_its_input_until_full() -> None:
    pool = ImagePool(size=3, generator=0)
    for value in (1.0, 2.0, 3.0):
        torch.testing.assert_close(pool.query(image(value)), image(value))
    assert len(pool) == 3


def test_pool_of_size_zero_passes_through() -> None:
    pool = ImagePool(size=0)
    batch = torch.randn(5, 1, 4, 4, requires_grad=True)
    assert pool.query(batch) is batch
    assert len(pool) == 0


def test_full_pool_returns_new_or_stored_image_and_swaps() -> None:
    pool = ImagePool(size=2, generator=3)
    pool.query(torch.cat([image(1.0), image(2.0)]))
    stored = {1.0, 2.0}
    returned_old = 0
    for step in range(200):
        new = 10.0 + step
        out = pool.query(image(new)).flatten()[0].item()
        if out == new:
            assert new not in {t.flatten()[0].item() for t in pool.images}
        else:
            returned_old += 1
            assert out in stored
            stored = {t.flatten()[0].item() for t in pool.images}
            assert new in stored
        assert len(pool) == 2
    assert 70 < returned_old < 130  # probability 0.5 of serving a stored image


def test_pool_fills_within_a_batch_then_samples() -> None:
    pool = ImagePool(size=1, generator=0)
    out = pool.query(torch.cat([image(1.0), image(2.0), image(3.0)]))
    assert out.shape == (3, 1, 4, 4)
    assert out[0].flatten()[0].item() == 1.0  # stored while filling
    assert len(pool) == 1


def test_pool_is_deterministic_with_a_seed() -> None:
    batches = [torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(30)]
    first, second = ImagePool(4, generator=11), ImagePool(4, generator=11)
    for batch in batches:
        torch.testing.assert_close(first.query(batch), second.query(batch), rtol=0, atol=0)


def test_pool_returns_detached_images() -> None:
    pool = ImagePool(2, generator=0)
    out = pool.query(torch.randn(2, 1, 4, 4, requires_grad=True))
    assert not out.requires_grad
