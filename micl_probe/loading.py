"""Loading a VLM with its processor and adapter: hub ids, local paths, or the shipped organisms.

    loaded = micl_probe.load("llava-hf/llava-1.5-7b-hf", dtype=torch.float16, device_map="auto")
    loaded = micl_probe.load("/models/qwen2-vl-2b")       # local folder, works offline
    loaded = micl_probe.load("organism:true-micl")        # shipped with the package
    prepared = loaded.prepare(episode)
    logits = loaded.model(**prepared.inputs).logits

Offline use: set HF_HUB_OFFLINE=1 (honoured by transformers) and pass a local folder or a hub id already in the
local cache. A folder may carry a `micl_probe.json` naming its family (the organisms do), which wins over the
config's model_type.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters import Adapter, adapter_for, get_adapter
from .episode import Episode
from .prompt import Prepared, prepare

ORGANISM_PREFIX = "organism:"
ORGANISMS_DIR = Path(__file__).parent / "organisms" / "shipped"


@dataclass
class Loaded:
    model: nn.Module
    processor: object
    adapter: Adapter
    name: str = ""

    def prepare(self, episode: Episode, with_answer: bool = False) -> Prepared:
        p = prepare(episode, self.processor, self.adapter, model=self.model, with_answer=with_answer)
        return p.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve(name_or_path: str) -> tuple[str, str | None]:
    """(path or hub id, family named by a micl_probe.json beside the weights, if any)."""
    if name_or_path.startswith(ORGANISM_PREFIX):
        name = name_or_path[len(ORGANISM_PREFIX):]
        path = ORGANISMS_DIR / name
        if not path.is_dir():
            have = sorted(p.name for p in ORGANISMS_DIR.glob("*") if p.is_dir()) if ORGANISMS_DIR.is_dir() else []
            raise FileNotFoundError(f"no shipped organism {name!r}; shipped: {have or 'none'}")
        name_or_path = str(path)
    meta = Path(name_or_path) / "micl_probe.json"
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    from . import tasks
    from .organisms import binding_scale_of

    if info.get("family") == "organism" and (scale := binding_scale_of(name_or_path)) != tasks.BINDING_SCALE:
        warnings.warn(f"{name_or_path} was trained on novel_binding glyphs drawn {scale}x; micl_probe.tasks draws "
                      f"them {tasks.BINDING_SCALE}x: wrap its novel_binding episodes in "
                      f"`with micl_probe.tasks.binding_scale({scale}):` (its model card does)", stacklevel=3)
    return name_or_path, info.get("family")


def load(name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         device_map: str | dict | None = None, family: str | None = None, **model_kwargs) -> Loaded:
    """Model + processor + adapter from a hub id, a local folder, or "organism:NAME".

    device: where to put the model (ignored when `device_map` is given; "auto" shards with accelerate).
    dtype: e.g. torch.bfloat16; default float32 on CPU, the checkpoint's dtype otherwise.
    family: force an adapter (see `supported_families()`); default: from micl_probe.json or config.model_type.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    path, shipped_family = resolve(name_or_path)
    family = family or shipped_family
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        hint = " (HF_HUB_OFFLINE=1: pass a local folder or a hub id already in the cache)" if offline else ""
        raise OSError(f"cannot load {name_or_path!r}{hint}: {e}") from e
    adapter = get_adapter(family) if family else adapter_for(_ConfigOnly(config))
    if dtype is None and device_map is None and (device is None or str(device) == "cpu"):
        dtype = torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, device_map=device_map, **model_kwargs)
    if device_map is None and device is not None:
        model = model.to(device)
    return Loaded(model.eval(), load_processor(path), adapter, name=name_or_path)


def image_only(processor_cls: type) -> type:
    """`processor_cls` without its video sub-processor.

    Video processors need torchvision; without it `AutoProcessor` silently returns a bare tokenizer for families
    that have one (Qwen2-VL, LLaVA-OneVision). ProcessorMixin takes a processor's sub-processors from
    `get_attributes()`, so a subclass that leaves `video_processor` out of it is an image-only processor with the
    parent's `__init__`, behaviour and name (what it saves loads anywhere).
    """
    if "video_processor" not in processor_cls.get_attributes():
        return processor_cls

    @classmethod
    def get_attributes(cls):
        return [a for a in processor_cls.get_attributes() if a != "video_processor"]

    return type(processor_cls.__name__, (processor_cls,), {"get_attributes": get_attributes, "__module__": __name__})


def load_processor(path: str):
    """AutoProcessor, falling back to an image-only processor where the video part cannot be built."""
    import transformers
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
        if hasattr(processor, "image_processor"):
            return processor
        what = f"a {type(processor).__name__} with no image processor"
    except OSError as e:  # a folder saved without the video part
        if "video" not in str(e):
            raise
        what = "no processor (its video processor is missing)"
    from transformers.utils import cached_file

    config_file = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    cls_name = json.loads(Path(config_file).read_text()).get("processor_class") if config_file else None
    if not cls_name or not hasattr(transformers, cls_name):
        raise ValueError(f"{path!r}: AutoProcessor gave {what} and no processor class could be found to build "
                         "an image-only one; install torchvision or add processor_config.json")
    return image_only(getattr(transformers, cls_name)).from_pretrained(path)


@dataclass
class _ConfigOnly:
    config: object
