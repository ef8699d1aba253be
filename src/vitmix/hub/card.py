"""The model card (README.md) of a Hub-ready folder: what the model is, how to load it, what it
scored on which data, the settings it was trained with, and the papers to cite.

The card states only what the source recorded; a number nobody measured is left out rather than
guessed. The BibTeX entries are the ones README.md and CITATION.cff give (a test keeps them
equal).
"""

from __future__ import annotations

import json

import yaml
from torch import nn

from ..complexity import count_params
from ..layers.scheme import SchemeMlp
from ..models.vitmix_groupmixformer import GroupMixFormer
from ..models.vitmix_metaformer import MetaFormer
from .source import ExportSource, Result

__all__ = ["CITATIONS", "model_card"]

CITATIONS = {
    "scheme": """@misc{sridhar2023scheme,
  title         = {{SCHEME}: Scalable Channel Mixer for Vision Transformers},
  author        = {Sridhar, Deepak and Li, Yunsheng and Vasconcelos, Nuno},
  year          = {2023},
  eprint        = {2312.00412},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2312.00412}
}""",
    "groupmixformer": """@misc{ge2023groupmix,
  title         = {Advancing Vision Transformers with Group-Mix Attention},
  author        = {Ge, Chongjian and Ding, Xiaohan and Tong, Zhan and Yuan, Li and
                   Wang, Jiangliu and Song, Yibing and Luo, Ping},
  year          = {2023},
  eprint        = {2311.15157},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2311.15157}
}""",
}


def papers(model: nn.Module) -> list[str]:
    """The keys of CITATIONS a model's design comes from: GroupMixFormer for its attention,
    SCHEME for a block-diagonal MLP and for the PPAA MetaFormer, whose SCHEMEformer and dense
    baselines are the SCHEME paper's models. None for a timm model vitmix did not change."""
    found = []
    if isinstance(model, GroupMixFormer):
        found.append("groupmixformer")
    if isinstance(model, MetaFormer) or any(isinstance(m, SchemeMlp) for m in model.modules()):
        found.append("scheme")
    return found


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _results_table(results: list[Result]) -> list[str]:
    if not results:
        return ["No evaluation of these weights was recorded with them."]
    lines = ["| evaluated on | weights | images | top-1 | top-5 |", "|---|---|---|---|---|"]
    for r in results:
        images = "-" if r.images is None else str(r.images)
        lines.append(f"| {r.split} | {r.weights} | {images} | {_percent(r.top1)} | "
                     f"{_percent(r.top5)} |")
    return lines


def _registered_by(model: nn.Module) -> str:
    if type(model).__module__.startswith("vitmix."):
        return " (a model vitmix registers with timm)"
    return ""


def _scheme_note(model: nn.Module) -> str | None:
    mixers = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    if not mixers:
        return None
    with_cca = sum(1 for m in mixers if m.has_cca)
    if not with_cca:
        return (f"{len(mixers)} SCHEME channel mixers (block-diagonal MLPs) without the CCA "
                f"branch.")
    return (f"{len(mixers)} SCHEME channel mixers, {with_cca} with their CCA branch and mixing "
            f"logits: the weights are the trainable (not deployed) form, so fine-tuning "
            f"continues from them. `vitmix.deploy(model)` gives the inference form (CCA removed, "
            f"the mixing weight folded into fc2; the same eval-mode output).")


def model_card(source: ExportSource, model: nn.Module, config: dict) -> str:
    """README.md text for the folder whose config.json is ``config``."""
    name = config["architecture"]
    pretrained = config["pretrained_cfg"]
    input_size = pretrained["input_size"]
    label_names = config.get("label_names")
    front = {"library_name": "timm", "license": pretrained.get("license", "apache-2.0"),
             "tags": ["image-classification", "timm", "vitmix"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {name}", "",
             f"A `{name}` image classifier{_registered_by(model)}, {source.origin}.", "",
             "## Model details", "",
             f"- Model: `{name}`, built with `{json.dumps(config.get('model_args', {}))}`",
             f"- Parameters: {count_params(model) / 1e6:.3f}M",
             f"- Input: {input_size[0]} x {input_size[1]} x {input_size[2]} (channels x height "
             f"x width)",
             f"- Evaluation transform: shorter side resized to {input_size[1]} / "
             f"{pretrained.get('crop_pct')} ({pretrained.get('interpolation')}), centre crop, "
             f"normalised with mean {list(pretrained.get('mean', []))} and std "
             f"{list(pretrained.get('std', []))}",
             f"- Classes: {config['num_classes']}"
             + (f" ({', '.join(map(str, label_names))})" if label_names else "")]
    scheme = _scheme_note(model)
    if scheme:
        lines.append(f"- {scheme}")
    lines += [f"- {note}" for note in source.notes]
    lines += ["", "## Use", "",
              "vitmix must be imported first: it registers the model with timm.", "",
              "```python", "import timm", "import vitmix  # registers vitmix's models with timm",
              "",
              "model = timm.create_model(\"hf-hub:OWNER/REPO\", pretrained=True).eval()",
              "# or, from this folder on disk: timm.create_model(\"local-dir:PATH\", "
              "pretrained=True)",
              "data_config = timm.data.resolve_data_config(model=model)",
              "transform = timm.data.create_transform(**data_config)",
              "```", "",
              "## Results", ""]
    lines += _results_table(source.results)
    lines += ["", "## Training", ""]
    if source.data:
        lines.append(f"Data: `{source.data}`.")
    if source.config:
        recipe = source.config.get("recipe")
        if recipe:
            lines.append(f"Recipe: `{recipe}` (`vitmix recipes {recipe}`).")
        lines += ["", "The run's settings (its config.yaml; `vitmix train --config` takes them "
                  "back):", "", "```yaml", yaml.safe_dump(source.config, sort_keys=False).strip(),
                  "```"]
    else:
        lines.append("The weights were not trained by vitmix: no training settings were "
                     "recorded with them.")
    cited = papers(model)
    if cited:
        lines += ["", "## Citation", "",
                  "Please cite the papers of the methods this model uses:", "", "```bibtex",
                  "\n\n".join(CITATIONS[key] for key in cited), "```"]
    return "\n".join(lines) + "\n"
