"""Query-selected attention (QS-Attn, Hu et al. CVPR 2022): pick the patches worth contrasting.

For one encoder layer, the attention of every position over the others is computed on the
SOURCE features only; the positions whose attention row has the lowest entropy (the most
distinctive ones) become the queries, and their attention rows, the same for source and
translation, turn both feature maps into the values that go through the projection head and
into PatchNCE. QS-Attn applies this to the two deepest of CUT's five NCE layers (12 and 16);
the shallow ones keep CUT's random patches.

Modes (``F`` is the (HW, C) feature matrix of one image, rows in raster order ``y * W + x``):

* ``global``: ``A = softmax(F F^T)`` row-wise (no temperature), entropy per row, rows of
  lowest entropy kept: weights (P, HW), values ``A_QS F``.
* ``local``: the same within a ``window`` x ``window`` neighbourhood (zero padding outside
  the image, as ``F.unfold(padding=3)`` in the official code): weights (P, window**2), values
  the weighted sums over each selected position's window.
* ``local_global``: selected by local entropy, weighted with the global rows.

As in the official code, gradients flow through the attention weights unless
``detach_attention`` is set (then only the values carry gradients). ``global`` and
``local_global`` weights reproduce the official ones; the official ``local`` mode reshapes
``F.unfold`` output (channel-major) as if it were window-major, which mixes channels with
window positions, so there it is the intended window attention that is implemented.

Use with :class:`~vstk.translation.PatchSampleMLP` (built for all five layers), for a deep
layer ``i``::

    v_src, v_fake, _ = query_selected_attention(feats_src[i], feats_fake[i], num_patches=256)
    keys, queries = sampler.project(v_src, i), sampler.project(v_fake, i)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

QSMode = Literal["global", "local", "local_global"]
_MODES = ("global", "local", "local_global")


@dataclasses.dataclass(frozen=True)
class QuerySelection:
    """Selected query positions of one layer and their attention weights.

    Attributes:
        indices: (B, P) flat positions ``y * W + x`` in ascending order of entropy.
        weights: attention rows of the selected positions: (B, P, H * W) for ``global`` and
            ``local_global``, (B, P, window**2) over the raster-ordered window for ``local``.
        entropy: (B, P) entropy of the selecting attention rows, in nats.
        mode: the mode that produced the selection.
        window: side of the local window in positions.
        height: feature map height H.
        width: feature map width W.
    """

    indices: Tensor
    weights: Tensor
    entropy: Tensor
    mode: str
    window: int
    height: int
    width: int

    def apply(self, features: Tensor) -> Tensor:
        """Values for the selected queries: attention-weighted sums of ``features``.

        Args:
            features: (B, C, H, W), the source map the selection came from or a map of the same
                layer and size (the translated image's).

        Returns:
            (B, P, C).
        """
        batch, channels, height, width = features.shape
        if (height, width) != (self.height, self.width) or batch != self.indices.shape[0]:
            raise ValueError(
                f"features {tuple(features.shape)} do not match a selection made on "
                f"{self.indices.shape[0]} maps of {self.height} x {self.width}"
            )
        weights = self.weights.to(features.dtype)
        if self.mode == "local":
            windows = _gather_windows(features, self.indices, self.window)  # (B, P, K, C)
            return torch.einsum("bpk,bpkc->bpc", weights, windows)
        flat = features.flatten(2).transpose(1, 2)  # (B, HW, C)
        return torch.bmm(weights, flat)


def _window_offsets(window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column offsets (K,) of a raster-ordered window, K = window**2."""
    half = window // 2
    steps = torch.arange(-half, half + 1, device=device)
    dy = steps.repeat_interleave(window)
    dx = steps.repeat(window)
    return dy, dx


def _gather_windows(features: Tensor, indices: Tensor, window: int) -> Tensor:
    """Neighbourhoods of the given positions, zero outside the image: (B, P, window**2, C)."""
    batch, channels, height, width = features.shape
    half = window // 2
    padded = F.pad(features, (half, half, half, half))  # zeros, as F.unfold pads
    padded_width = width + 2 * half
    dy, dx = _window_offsets(window, features.device)
    y = torch.div(indices, width, rounding_mode="floor") + half
    x = indices % width + half
    flat_ids = (y[:, :, None] + dy) * padded_width + (x[:, :, None] + dx)  # (B, P, K)
    flat = padded.flatten(2).transpose(1, 2)  # (B, (H+2h)(W+2h), C)
    gathered = torch.gather(flat, 1, flat_ids.flatten(1)[:, :, None].expand(-1, -1, channels))
    return gathered.view(batch, indices.shape[1], window * window, channels)


def _row_entropy(logits: Tensor, dim: int = -1) -> Tensor:
    """Entropy in nats of ``softmax(logits)`` along ``dim`` (0 log 0 counted as 0)."""
    log_p = torch.log_softmax(logits, dim=dim)
    return -(log_p.exp() * log_p).sum(dim=dim)


def _global_logits(features: Tensor, rows: Tensor | None = None) -> Tensor:
    """``F F^T`` for all rows (B, HW, HW) or only ``rows`` (B, P) -> (B, P, HW)."""
    flat = features.flatten(2).transpose(1, 2)  # (B, HW, C)
    queries = flat if rows is None else torch.gather(flat, 1, rows[:, :, None].expand(-1, -1, flat.shape[2]))
    return torch.bmm(queries, flat.transpose(1, 2))


def _local_logits(features: Tensor, window: int) -> Tensor:
    """Dot products of every position with its window, (B, HW, window**2), zero-padded."""
    batch, channels, height, width = features.shape
    half = window // 2
    padded = F.pad(features, (half, half, half, half))
    dy, dx = _window_offsets(window, features.device)
    logits = torch.empty(batch, window * window, height, width, dtype=features.dtype, device=features.device)
    # One shifted product per offset: memory stays at one feature map, not window**2 of them.
    for k, (oy, ox) in enumerate(zip(dy.tolist(), dx.tolist(), strict=True)):
        shifted = padded[:, :, half + oy : half + oy + height, half + ox : half + ox + width]
        logits[:, k] = (features * shifted).sum(dim=1)
    return logits.flatten(2).transpose(1, 2)


def select_queries(
    features: Tensor,
    mode: QSMode = "global",
    num_patches: int = 256,
    window: int = 7,
    detach_attention: bool = False,
) -> QuerySelection:
    """Select the ``num_patches`` lowest-entropy positions of each source map.

    The selection itself (sorting) carries no gradient; the returned weights are the attention
    rows of the selected positions, differentiable with respect to ``features`` unless
    ``detach_attention``. Only the selected rows are kept for the backward pass, which gives the
    same values and gradients as indexing the full attention matrix.

    Args:
        features: source features (B, C, H, W) of one layer.
        mode: ``global``, ``local`` or ``local_global`` (see the module docstring).
        num_patches: queries per image P, capped at H * W.
        window: side of the local window (odd), 7 in QS-Attn.
        detach_attention: compute the weights without gradients (the official code does not).

    Returns:
        The selection; see :class:`QuerySelection` for shapes.
    """
    if mode not in _MODES:
        raise ConfigError(f"QS mode {mode!r} is not supported", fix=f"use one of {', '.join(_MODES)}")
    if num_patches < 1:
        raise ConfigError(f"num_patches={num_patches} selects nothing", fix="use 1 or more (QS-Attn uses 256)")
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"window={window} has no centre", fix="use an odd window size such as 7")
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    count = min(num_patches, height * width)

    with torch.no_grad():
        scores = _local_logits(features, window) if mode in ("local", "local_global") else _global_logits(features)
        entropy_all = _row_entropy(scores.float())
        # Stable sort: ties (e.g. identical rows) keep raster order, so selection is deterministic.
        order = torch.sort(entropy_all, dim=1, stable=True).indices[:, :count]
        entropy = torch.gather(entropy_all, 1, order)
        del scores, entropy_all

    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_attention):
        if mode == "local":
            windows = _gather_windows(features, order, window)  # (B, P, K, C)
            centre = torch.gather(features.flatten(2), 2, order[:, None, :].expand(-1, channels, -1))
            logits = torch.einsum("bpkc,bcp->bpk", windows, centre)
        else:
            logits = _global_logits(features, order)
        weights = torch.softmax(logits, dim=-1)
    return QuerySelection(order, weights, entropy, mode, window, height, width)


def query_selected_attention(
    source: Tensor,
    fake: Tensor,
    mode: QSMode = "global",
    num_patches: int = 256,
    window: int = 7,
    detach_attention: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Query-selected values of a source map and of its translation, with the SAME weights.

    Args:
        source: source-image features (B, C, H, W) of one layer (what the attention comes from).
        fake: translated-image features of the same layer, (B, C, H, W).
        mode: ``global``, ``local`` or ``local_global``.
        num_patches: queries per image P, capped at H * W.
        window: side of the local window (odd).
        detach_attention: stop gradients through the attention weights.

    Returns:
        ``(values_source, values_fake, indices)``: (B, P, C), (B, P, C) and the selected flat
        positions (B, P). Feed the values to :meth:`PatchSampleMLP.project` as keys and queries.
    """
    if source.shape != fake.shape:
        raise ValueError(f"source {tuple(source.shape)} and fake {tuple(fake.shape)} features differ in shape")
    selection = select_queries(source, mode, num_patches, window, detach_attention)
    return selection.apply(source), selection.apply(fake), selection.indices
