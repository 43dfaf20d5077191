"""The multi-stage cascade: retrieval -> ranking -> re-ranking, fitted without leakage.

  config         `CascadeConfig` (stage sizes, stage configs, diversity, rules)
  candidates     lists passed between stages, with their scores
  ranking_lists  the ranking stage's training lists (hard negatives from a candidate source)
  stages         `Cascade` (the fitted stages; `run` gives every stage's list) and stage inputs
  fit            `fit_cascade` (who learns from which lists) and the re-ranking stage
  evaluate       P1 metrics per stage and the accuracy-diversity curves

Example:
  >>> from recommenders_tf.cascade import CascadeConfig, fit_cascade
  >>> cascade = fit_cascade(split.train, CascadeConfig(), "runs/cascade", items=data.items)
  >>> stages = cascade.run(["42"])
"""
from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.cascade.fit import fit_cascade
from recommenders_tf.cascade.stages import Cascade, StageLists

__all__ = ["CascadeConfig", "Cascade", "StageLists", "fit_cascade"]
