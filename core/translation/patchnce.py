"""Patch sampling with a projection head, and the PatchNCE contrastive loss (CUT, QS-Attn).

Typical use in a training step, with ``feats_src`` and ``feats_fake`` from
:meth:`ResnetGenerator.encode` on the source and on the translated image::

    keys, ids = sampler(feats_src, num_patches=256, generator=gen)
    queries, _ = sampler(feats_fake, num_patches=256, patch_ids=ids)
    nce = sum(criterion(q, k, batch_size=B).mean() for q, k in zip(queries, keys)) / len(keys)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .networks import InitName, init_weights

# Added to the L2 norm before dividing, as the official Normalize layer does.
_NORM_EPS = 1e-7


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / (||x||_2 + 1e-7)`` along ``dim`` (the official ``Normalize(2)``)."""
    return x / (x.norm(p=2, dim=dim, keepdim=True) + _NORM_EPS)


class PatchSampleMLP(nn.Module):
    """CUT's ``PatchSampleF``: sample positions of feature maps, project them, L2-normalise.

    One head per feature layer, ``mlp_<i>`` = Linear(C_i, nc), ReLU, Linear(nc, nc), created
    on the first call (or :meth:`build`) from the channel counts of the features, on their
    device, and initialised with :func:`init_weights` (``init_type``, ``init_gain``). State-dict
    keys are CUT's (``mlp_0.0.weight``, ``mlp_0.2.bias``, ...); loading a state dict into an
    unbuilt sampler creates the heads from the stored shapes.

    Args:
        use_mlp: project with the heads (CUT's ``mlp_sample``); False only samples and normalises.
        nc: output width of the heads.
        init_type: initialisation of new heads (CUT default ``normal``, QS-Attn ``xavier``).
        init_gain: gain for that initialisation.
    """

    def __init__(
        self, use_mlp: bool = True, nc: int = 256, init_type: InitName = "normal", init_gain: float = 0.02
    ) -> None:
        super().__init__()
        self.use_mlp = use_mlp
        self.nc = nc
        self.init_type = init_type
        self.init_gain = init_gain
        self.layer_channels: list[int] = []
        self._register_load_state_dict_pre_hook(self._build_from_state_dict)

    @property
    def built(self) -> bool:
        """Whether at least one head exists (always False without ``use_mlp``)."""
        return bool(self.layer_channels)

    def _add_head(self, channels: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        index = len(self.layer_channels)
        head = nn.Sequential(nn.Linear(channels, self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc))
        init_weights(head, self.init_type, self.init_gain)
        self.add_module(f"mlp_{index}", head.to(device=device, dtype=dtype))
        self.layer_channels.append(channels)

    def build(self, feats: Sequence[Tensor]) -> None:
        """Create the heads for feature maps ``feats[i]`` of shape (B, C_i, H_i, W_i).

        Heads that exist are kept (their channel count must match); missing ones are added.
        Call it once with dummy features before creating the optimizer. No-op without ``use_mlp``.
        """
        if not self.use_mlp:
            return
        for index, feat in enumerate(feats):
            channels = int(feat.shape[1])
            if index < len(self.layer_channels):
                if self.layer_channels[index] != channels:
                    raise ConfigError(
                        f"feature layer {index} has {channels} channels but its head was built for "
                        f"{self.layer_channels[index]}",
                        fix="pass the same encoder layers, in the same order, on every call",
                    )
                continue
            dtype = feat.dtype if feat.dtype in (torch.float32, torch.float64) else torch.float32
            self._add_head(channels, device=feat.device, dtype=dtype)

    def _build_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if not self.use_mlp:
            return
        index = len(self.layer_channels)
        while f"{prefix}mlp_{index}.0.weight" in state_dict:
            weight = state_dict[f"{prefix}mlp_{index}.0.weight"]
            self._add_head(int(weight.shape[1]), device=None, dtype=None)
            index += 1

    def project(self, x: Tensor, layer: int) -> Tensor:
        """Project already-gathered feature vectors of layer ``layer`` and L2-normalise them.

        Used for query-selected values (QS-Attn), which are formed before the head.

        Args:
            x: vectors (..., C_layer), e.g. (B, P, C) from :func:`~vstk.translation.query_selected_attention`.
            layer: index of the head (position of the layer in the ``feats`` lists).

        Returns:
            (N, nc) with N the product of the leading dimensions (batch-major), unit L2 norm
            per row; (N, C) without ``use_mlp``.
        """
        x = x.reshape(-1, x.shape[-1])
        if self.use_mlp:
            if layer >= len(self.layer_channels):
                raise ConfigError(
                    f"no projection head for layer {layer}; {len(self.layer_channels)} are built",
                    fix="call build() with the features of every layer first",
                )
            x = getattr(self, f"mlp_{layer}")(x)
        return l2_normalize(x)

    def sample(
        self,
        feat: Tensor,
        layer: int,
        num_patches: int = 256,
        patch_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sample positions of one feature map and project them with head ``layer``.

        Args:
            feat: feature map (B, C, H, W) of layer ``layer`` (its head must be built).
            layer: index of the head.
            num_patches: positions per image (capped at H * W); 0 takes every position in
                raster order.
            patch_ids: flat positions ``y * W + x`` to reuse, (P,) shared by the batch or
                (B, P) per image; None draws random ones without replacement.
            generator: random source for new ids; None uses torch's global generator.

        Returns:
            ``(features, ids)``: (B * P, nc) unit vectors, image-major, and the ids used.
        """
        channels, positions = feat.shape[1], feat.shape[2] * feat.shape[3]
        flat = feat.flatten(2).transpose(1, 2)  # (B, HW, C)
        ids = patch_ids
        if ids is None:
            if num_patches > 0:
                device = generator.device if generator is not None else torch.device("cpu")
                ids = torch.randperm(positions, generator=generator, device=device)[: min(num_patches, positions)]
            else:
                ids = torch.arange(positions)
        ids = ids.to(device=feat.device, dtype=torch.long)
        if ids.dim() == 1:
            picked = flat[:, ids, :]
        else:
            picked = torch.gather(flat, 1, ids[:, :, None].expand(-1, -1, channels))
        return self.project(picked, layer), ids

    def forward(
        self,
        feats: Sequence[Tensor],
        num_patches: int = 256,
        patch_ids: Sequence[Tensor | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Sample, project and normalise patches of each feature map (head ``i`` for ``feats[i]``).

        Builds missing heads first. Arguments as in :meth:`sample`, with ``patch_ids`` a list
        holding one entry (or None) per layer.

        Returns:
            ``(features, ids)``: per layer, (B * P, nc) unit vectors ordered image-major (the
            layout :class:`PatchNCELoss` expects), and the ids used, (P,) or (B, P).
        """
        if self.use_mlp:
            self.build(feats)
        out_feats: list[Tensor] = []
        out_ids: list[Tensor] = []
        for index, feat in enumerate(feats):
            ids = None if patch_ids is None else patch_ids[index]
            sampled, ids = self.sample(feat, index, num_patches, ids, generator)
            out_feats.append(sampled)
            out_ids.append(ids)
        return out_feats, out_ids


class PatchNCELoss(nn.Module):
    """CUT's PatchNCE loss: each query patch must pick its own key patch among the others.

    For queries q (from the translated image) and keys k (from the source, detached as in the
    official code), logits are ``[q_i . k_i, q_i . k_j (j != i)] / tau``, with the
    self-similarity in the negative block masked to -10 before the division; the loss is
    cross-entropy with target 0, unreduced. Negatives come from the same image
    (``all_negatives_from_minibatch=False``, the official default) or from every image of the
    minibatch (True; CUT's ``--nce_includes_all_negatives_from_minibatch``, meant for single-image
    training).

    Args:
        tau: temperature (``nce_T``, 0.07).
        all_negatives_from_minibatch: draw negatives from the whole minibatch.
    """

    def __init__(self, tau: float = 0.07, all_negatives_from_minibatch: bool = False) -> None:
        super().__init__()
        self.tau = tau
        self.all_negatives_from_minibatch = all_negatives_from_minibatch

    def forward(self, feat_q: Tensor, feat_k: Tensor, batch_size: int) -> Tensor:
        """Per-patch loss.

        Args:
            feat_q: queries (B * P, D), image-major, usually unit vectors.
            feat_k: keys (B * P, D) at the same positions; gradients do not flow into them.
            batch_size: B, the number of images the rows come from.

        Returns:
            (B * P,) cross-entropy values in nats.
        """
        if feat_q.shape != feat_k.shape or feat_q.dim() != 2:
            raise ValueError(f"queries {tuple(feat_q.shape)} and keys {tuple(feat_k.shape)} must both be (B*P, D)")
        n, dim = feat_q.shape
        if n % batch_size:
            raise ValueError(f"{n} patch rows do not split into batch_size={batch_size} images")
        feat_k = feat_k.detach()
        l_pos = (feat_q * feat_k).sum(dim=1, keepdim=True)  # (N, 1)
        groups = 1 if self.all_negatives_from_minibatch else batch_size
        q = feat_q.view(groups, -1, dim)
        k = feat_k.view(groups, -1, dim)
        l_neg = torch.bmm(q, k.transpose(1, 2))  # (groups, P', P')
        diagonal = torch.eye(q.shape[1], device=q.device, dtype=torch.bool)[None]
        l_neg = l_neg.masked_fill(diagonal, -10.0).view(n, -1)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.tau
        target = torch.zeros(n, dtype=torch.long, device=feat_q.device)
        return F.cross_entropy(logits, target, reduction="none")
