"""Hub-ready weights: a vitmix run, or weights `vitmix import-weights` converted, written as the
folder timm reads from the Hugging Face Hub (config.json, model.safetensors, README.md).

:mod:`.source` reads what is exported, :mod:`.card` writes the model card, :mod:`.write` the
folder. Load one with ``import vitmix; timm.create_model("local-dir:FOLDER", pretrained=True)``.
"""

from .source import ExportSource, Result, read_source
from .write import HUB_FILES, HubExport, check_hub_output, load_hub_folder, save_for_hub

__all__ = ["HUB_FILES", "ExportSource", "HubExport", "Result", "check_hub_output",
           "load_hub_folder", "read_source", "save_for_hub"]
