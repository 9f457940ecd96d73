"""Segmentation models. Importing this package does not import torch; building a model does."""

from edgeseg.models.registry import MODELS, ModelConfig, build_model, count_parameters

__all__ = ["MODELS", "ModelConfig", "build_model", "count_parameters"]
