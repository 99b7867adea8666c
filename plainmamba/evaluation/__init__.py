"""Evaluators for Detectron2's ``inference_on_dataset``."""

from .classification import ClassificationEvaluator

__all__ = ["ClassificationEvaluator"]
