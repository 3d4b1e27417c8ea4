"""Calibration refit: fit each rewritten layer to the activations the model really sees.

Modules: :mod:`.data` (calibration inputs, held-out samples), :mod:`.activations` (running parts of a model),
:mod:`.stage` (a rewritten layer's linear stage, writing weights), :mod:`.patches` (the position sampler and the
receptive-field patches), :mod:`.normal` (normal equations and the ridge choice), :mod:`.depthwise` (refitting
depthwise kernels with the 1x1 stage), :mod:`.settings`, :mod:`.layers` (what is refitted per layer) and
:mod:`.refit` (the refit itself; its docstring gives the math).
"""

from __future__ import annotations

from .activations import activations, truncate_model
from .data import HOLDOUT_FRACTION, CalibrationSet, held_out_feeds, load_calibration, model_inputs
from .normal import RIDGES, NormalEquations, RidgeChoice, best_ridge
from .patches import draw_positions, out_spatial, sample_patches
from .refit import refit, refit_with
from .settings import FitOptions, RefitSettings
from .stage import ConvTerm, LinearStage, find_stage

__all__ = [
    "CalibrationSet", "load_calibration", "held_out_feeds", "model_inputs", "HOLDOUT_FRACTION",
    "truncate_model", "activations",
    "ConvTerm", "LinearStage", "find_stage",
    "draw_positions", "sample_patches", "out_spatial",
    "RIDGES", "NormalEquations", "RidgeChoice", "best_ridge",
    "FitOptions", "RefitSettings", "refit", "refit_with",
]
