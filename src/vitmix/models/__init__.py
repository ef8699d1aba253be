"""Model families; each module registers its names with timm when imported."""

from . import groupmixformer, metaformer  # noqa: F401
