"""Prediction with nnU-Net's ``nnUNetPredictor``, in-process, from a weights-only checkpoint.

Imports torch and nnunetv2: call only inside :func:`vstk_nnunet.environment.nnunet_environment`.
The predictor is built with ``manual_initialization`` from the model folder's plans.json and
dataset.json and a state dict loaded with ``weights_only=True`` (nnU-Net's own
``initialize_from_trained_model_folder`` unpickles the checkpoint without restrictions).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vstk.volume import Volume

from .config import NnUNetConfig
from .layout import FINAL_CHECKPOINT, read_json
from .trainer import load_checkpoint_file, load_network_weights, nnUNetTrainerVstk

log = logging.getLogger(__name__)


def load_predictor(model_dir: Path, folds: Sequence[int | str], config: NnUNetConfig, device: Any) -> Any:
    """An ``nnUNetPredictor`` holding the final weights of ``folds`` of the model in ``model_dir``
    (nnU-Net's ``{trainer}__{plans}__{configuration}`` folder); it averages their logits.

    Sliding windows overlap by ``1 - config.tile_step_size`` and are Gaussian-weighted;
    test-time mirroring follows ``config.mirroring``. On CPU everything stays on the CPU
    (``perform_everything_on_device`` is a CUDA feature).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(read_json(model_dir / "plans.json"))
    dataset_json = read_json(model_dir / "dataset.json")
    paths = [model_dir / f"fold_{fold}" / FINAL_CHECKPOINT for fold in folds]
    checkpoints = [load_checkpoint_file(path, "cpu") for path in paths]
    configuration_manager = plans_manager.get_configuration(checkpoints[0]["init_args"]["configuration"])
    network = nnUNetTrainerVstk.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    for checkpoint, path in zip(checkpoints, paths):  # each must fit: the predictor swaps them in
        load_network_weights(network, checkpoint, path)
    weights = [{k.removeprefix("module."): v for k, v in c["network_weights"].items()} for c in checkpoints]
    predictor = nnUNetPredictor(tile_step_size=config.tile_step_size, use_gaussian=True,
                                use_mirroring=config.mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, weights, dataset_json,
                                    checkpoints[0]["trainer_name"],
                                    checkpoints[0].get("inference_allowed_mirroring_axes"))
    return predictor


def predict_model(predictors: Mapping[str, Any], name: str, image: Volume,
                  done: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label and softmax of configuration ``name`` on ``image`` (see :func:`predict_volume`).

    A cascade's full-resolution stage first needs its low-resolution stage's label on the
    image (``predictors`` must hold both); ``done`` caches each configuration's result for
    this image, so an ensemble with the low-resolution stage predicts it once.
    """
    done = {} if done is None else done
    if name not in done:
        predictor = predictors[name]
        previous = predictor.configuration_manager.previous_stage_name
        previous_label = None if previous is None else predict_model(predictors, previous, image, done)[0]
        done[name] = predict_volume(predictor, image, previous_label)
    return done[name]


def ensemble(results: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One model's (label, softmax) as is; several models' softmax averaged and its argmax, as
    ``nnUNetv2_ensemble`` merges configurations."""
    if len(results) == 1:
        return results[0]
    probabilities = np.mean([p for _, p in results], axis=0, dtype=np.float32)
    return np.argmax(probabilities, axis=0).astype(np.uint8), probabilities


def predict_volume(predictor: Any, image: Volume,
                   previous_stage: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label ``[z, y, x]`` (uint8) and softmax ``[classes, z, y, x]`` (float32) on ``image``'s grid.

    nnU-Net crops, transposes, resamples to the plans' spacing and normalises the image, runs
    the sliding window, then resamples the class probabilities back to the input grid and
    takes their argmax (``predict_single_npy_array`` with probabilities). ``spacing`` goes in
    as ``[z, y, x]``, matching the array, as nnU-Net's SimpleITK reader would give it.
    ``previous_stage``: a cascade's low-resolution label on the same grid.
    """
    data = np.ascontiguousarray(image.array, dtype=np.float32)[None]
    properties = {"spacing": [float(s) for s in image.spacing[::-1]]}
    # signed, as nnU-Net reads label files: its cropping marks outside-of-image voxels with -1
    previous = None if previous_stage is None else np.asarray(previous_stage, dtype=np.int16)[None]
    label, probabilities = predictor.predict_single_npy_array(data, properties, previous, None, True)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    label = np.asarray(label).astype(np.uint8)
    if label.shape != image.shape or probabilities.shape[1:] != image.shape:
        raise RuntimeError(f"nnU-Net returned shapes {label.shape} / {probabilities.shape} for an image of "
                           f"shape {image.shape}")
    return label, probabilities
