"""Prediction with nnU-Net's ``nnUNetPredictor``, in-process, from a weights-only checkpoint.

Imports torch and nnunetv2: call only inside :func:`vstk_nnunet.environment.nnunet_environment`.
The predictor is built with ``manual_initialization`` from the model folder's plans.json and
dataset.json and a state dict loaded with ``weights_only=True`` (nnU-Net's own
``initialize_from_trained_model_folder`` unpickles the checkpoint without restrictions).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vstk.volume import Volume

from .config import NnUNetConfig
from .layout import FINAL_CHECKPOINT, read_json
from .trainer import load_checkpoint_file, load_network_weights, nnUNetTrainerVstk

log = logging.getLogger(__name__)


def load_predictor(fold_dir: Path, config: NnUNetConfig, device: Any) -> Any:
    """An ``nnUNetPredictor`` holding the final weights of the model in ``fold_dir``.

    Sliding windows overlap by ``1 - config.tile_step_size`` and are Gaussian-weighted;
    test-time mirroring follows ``config.mirroring``. On CPU everything stays on the CPU
    (``perform_everything_on_device`` is a CUDA feature).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_dir = fold_dir.parent
    plans_manager = PlansManager(read_json(model_dir / "plans.json"))
    dataset_json = read_json(model_dir / "dataset.json")
    checkpoint_path = fold_dir / FINAL_CHECKPOINT
    checkpoint = load_checkpoint_file(checkpoint_path, "cpu")
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    network = nnUNetTrainerVstk.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    load_network_weights(network, checkpoint, checkpoint_path)
    predictor = nnUNetPredictor(tile_step_size=config.tile_step_size, use_gaussian=True,
                                use_mirroring=config.mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager,
                                    [checkpoint["network_weights"]], dataset_json, checkpoint["trainer_name"],
                                    checkpoint.get("inference_allowed_mirroring_axes"))
    return predictor


def predict_volume(predictor: Any, image: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Label ``[z, y, x]`` (uint8) and softmax ``[classes, z, y, x]`` (float32) on ``image``'s grid.

    nnU-Net crops, transposes, resamples to the plans' spacing and normalises the image, runs
    the sliding window, then resamples the class probabilities back to the input grid and
    takes their argmax (``predict_single_npy_array`` with probabilities). ``spacing`` goes in
    as ``[z, y, x]``, matching the array, as nnU-Net's SimpleITK reader would give it.
    """
    data = np.ascontiguousarray(image.array, dtype=np.float32)[None]
    properties = {"spacing": [float(s) for s in image.spacing[::-1]]}
    label, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    label = np.asarray(label).astype(np.uint8)
    if label.shape != image.shape or probabilities.shape[1:] != image.shape:
        raise RuntimeError(f"nnU-Net returned shapes {label.shape} / {probabilities.shape} for an image of "
                           f"shape {image.shape}")
    return label, probabilities
