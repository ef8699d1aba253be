"""Model families; each module registers its names with timm when imported."""

from . import metaformer  # noqa: F401
