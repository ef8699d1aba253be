"""Model families; each module registers its names with timm when imported.

The modules carry a ``vitmix_`` prefix because timm files each model under the last part of its
module's name: ``timm.list_models(module="vitmix_metaformer")`` lists vitmix's MetaFormers and
SCHEMEformers only, where a module called ``metaformer`` would mix them with timm's own.
"""

from . import vitmix_groupmixformer, vitmix_metaformer  # noqa: F401
