"""Evaluation as a library: protocols (`evaluators`) and the sharded, resumable run (`run`).

`python -m wadi.evaluate` (the command) and the training callback (wadi.callbacks.eval) both use it.
"""

from wadi.evaluation.evaluators import CocoEvaluator, ToyPromptEvaluator
from wadi.evaluation.run import Generate, default_out, evaluate, evaluate_prompts, measure

__all__ = [
    "CocoEvaluator",
    "Generate",
    "ToyPromptEvaluator",
    "default_out",
    "evaluate",
    "evaluate_prompts",
    "measure",
]
