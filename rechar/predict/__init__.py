"""Predicting latency where rechar cannot measure: another scale, thread count or machine.

``rechar probe`` (rechar.predict.probe) measures a machine in about a minute and writes its
card; ``rechar predict`` (rechar.predict.predict) re-costs a profiled run's operators for a
target, with the id stream's reuse profile (rechar.predict.reuse) deciding where embedding
lookups hit. Every figure it makes is labelled as a prediction. The method and its validation
are in docs/prediction.md.
"""

from rechar.predict.machine import Card
from rechar.predict.predict import Target, error_summary, format_predictions, predict, validate, write_predictions
from rechar.predict.probe import ProbeOptions, probe
from rechar.predict.reuse import TableStream, hit_ratios

__all__ = ["Card", "ProbeOptions", "TableStream", "Target", "error_summary", "format_predictions", "hit_ratios",
           "predict", "probe", "validate", "write_predictions"]
