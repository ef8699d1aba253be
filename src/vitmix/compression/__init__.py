"""SCHEME as compression: a trained dense model becomes a cheaper SCHEME model.

:func:`compress` (also ``vitmix.compress``) copies each dense MLP into a block-diagonal
SchemeMlp through the grouping that keeps the most of its weights (:mod:`vitmix.grouping`);
:mod:`.distill` fine-tunes it with the dense model as teacher (`vitmix compress` does both, in a
run folder like `vitmix train`'s).
"""

from ..grouping import assign_units, block_scores, kept_fractions
from .surgery import GROUPINGS, CompressReport, LayerGrouping, compress

__all__ = ["GROUPINGS", "CompressReport", "LayerGrouping", "assign_units", "block_scores",
           "compress", "kept_fractions"]
