"""nnU-Net's own multi-GPU training (``num_gpus``) fails early and clearly where it cannot run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vstk.errors import ConfigError
from vstk_nnunet.config import CPU, PAPER
from vstk_nnunet.environment import resolve_device


def test_num_gpus_with_a_cpu_device_is_a_config_error():
    with pytest.raises(ConfigError, match="num_gpus=2 needs CUDA, but device='cpu'"):
        dataclasses.replace(CPU, device="cpu", num_gpus=2)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="needs a machine with fewer than 2 GPUs")
def test_num_gpus_beyond_the_visible_gpus_is_refused_before_training():
    config = dataclasses.replace(PAPER, num_gpus=2)
    with pytest.raises(ConfigError, match=r"num_gpus=2 but \d CUDA device\(s\) are visible"):
        resolve_device(config, for_training=True)
    assert resolve_device(config, for_training=False).type in ("cpu", "cuda")  # prediction uses one device
