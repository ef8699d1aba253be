"""The model names the authors' training scripts store in their checkpoints, and what vitmix
makes of them.

timm's train script, and its forks (the SCHEME release's train.py among them), save their
command-line arguments beside the weights as ``args`` (an argparse.Namespace, or a dict once
converted); ``args.model`` names the model trained. The SCHEME release registers its models in
schemeformer.py; the name says what its shapes cannot: whether the block-diagonal MLPs shuffled
their hidden channels. The GroupMixFormer release trains with its own script, which stores no
model name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ReleaseModel", "find_release_model", "release_model_name", "stored_entry"]


@dataclass(frozen=True)
class ReleaseModel:
    """A model of an authors' release, as vitmix converts it."""

    name: str  # the release's registered name
    arch: str  # vitmix import-weights --arch
    channel_shuffle: bool | None  # whether its MLPs shuffle; None where they are dense
    vitmix_model: str  # what the release's sizes convert to
    mlp: str  # the release's MLP class, for messages


# The SCHEME release's registered classification models (scheme_vit, schemeformer.py).
_SCHEME_RELEASE = (
    ReleaseModel("shufflegrouporgattnmlpformer_ppaa_s12_224", "schemeformer", True,
                 "schemeformer_ppaa_s12_e8_g4_shuffle", "ShuffleGroupLiteAttMlp"),
    # Despite their names, dense MLPs with E=8.
    ReleaseModel("schemeformer_ppaa_s12_224", "schemeformer", None,
                 "metaformer_ppaa_s12 with mlp_ratios 8", "Mlp"),
    ReleaseModel("schemeformer_ppaa_s36_224", "schemeformer", None,
                 "metaformer_ppaa_s36 with mlp_ratios 8", "Mlp"),
    # The release builds GroupLiteAttMlp (block diagonal, no shuffle) under this name as a
    # detection backbone (with "_feat"); forks that register it for classification get these.
    ReleaseModel("grouporgattnmlpformer_ppaa_s12_224", "schemeformer", False,
                 "schemeformer_ppaa_s12_e8_g4", "GroupLiteAttMlp"),
)
RELEASE_MODELS = {m.name: m for m in _SCHEME_RELEASE}
# Registered by the release with MLPs vitmix has no counterpart of.
UNSUPPORTED = {
    "grouporgsemlpformer_ppaa_s12_224": "GroupLiteSEMlp",
    "groupliteconvmlpformer_ppaa_s12_224": "GroupLiteConvMlp",
    "groupliteattnmlpformer_ppaa_s12_224": "GroupLiteGCTAttMlp",
}


def release_model_name(checkpoint: object) -> str | None:
    """``args.model`` of a checkpoint written by timm's train script or a fork; None when the
    checkpoint stores no model name."""
    if not isinstance(checkpoint, Mapping):
        return None
    args = checkpoint.get("args")
    name = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    return name if isinstance(name, str) and name else None


def find_release_model(name: str | None) -> ReleaseModel | None:
    """The release model ``name`` stands for; None for a name vitmix does not know. ValueError
    for a release model whose MLP vitmix cannot build."""
    if name in UNSUPPORTED:
        raise ValueError(f"the checkpoint's args.model is {name!r}, a SCHEME release model with "
                         f"{UNSUPPORTED[name]} MLPs, which vitmix does not implement; vitmix "
                         f"converts {', '.join(RELEASE_MODELS)}")
    return RELEASE_MODELS.get(name) if name else None


def stored_entry(checkpoint: object) -> tuple[str | None, str]:
    """(the entry of ``checkpoint`` that holds the converted weights, None for a bare state
    dict; a sentence saying which and why), following vitmix.checkpoints.unwrap_state_dict."""
    if not isinstance(checkpoint, Mapping):
        return None, "a bare state dict"
    for entry in ("model", "state_dict"):
        if isinstance(checkpoint.get(entry), Mapping):
            break
    else:
        return None, "a bare state dict"
    why = f"entry '{entry}'"
    if entry == "state_dict" and isinstance(checkpoint.get("state_dict_ema"), Mapping):
        why += (" (the trained weights; the checkpoint also holds 'state_dict_ema', the EMA "
                "weights, which are converted when saved alone as a file of their own)")
    return entry, why
