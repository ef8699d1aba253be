"""Building blocks; they know nothing of models or training."""

from .scheme import BlockDiagonalLinear, ChannelCovarianceAttention, SchemeMlp, cosine_cca_weight

__all__ = ["BlockDiagonalLinear", "ChannelCovarianceAttention", "SchemeMlp", "cosine_cca_weight"]
