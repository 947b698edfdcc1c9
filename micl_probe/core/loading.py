"""Loading a VLM with its processor and adapter: hub ids, local paths, or the shipped organisms.

    loaded = micl_probe.load("llava-hf/llava-1.5-7b-hf", dtype=torch.float16, device_map="auto")
    loaded = micl_probe.load("/models/qwen2-vl-2b")       # local folder, works offline
    loaded = micl_probe.load("organism:true-micl")        # shipped with the package
    prepared = loaded.prepare(episode)                    # one episode;  loaded.prepare_batch(episodes): several
    logits = loaded.model(**prepared.inputs).logits

`Loaded` is the one way into every measurement, intervention and evaluation: it holds the model, its processor and
the family's adapter, and (lazily) the nnsight wrapper of the model. Build one by hand for a model you already
have: `Loaded(model, processor, adapter_for(model), name="mine")` (an organism's folder: adapter_for reads its
micl_probe.json, so its prompts are the ones `load` writes).

Offline use: set HF_HUB_OFFLINE=1 (honoured by transformers) and pass a local folder or a hub id already in the
local cache. A folder may carry a `micl_probe.json` (the organisms do): its "family" wins over the config's
model_type, and the whole file is kept as `loaded.settings` (an organism's recipe, training log and card).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .adapters import ADAPTERS, MISFITS, Adapter, adapter_for, checkpoint_settings, get_adapter, supported_families
from .episode import Episode
from .processors import load_processor
from .prompt import Prepared, PreparedBatch, prepare_batch

ORGANISM_PREFIX = "organism:"
ORGANISMS_DIR = Path(__file__).parent.parent / "organisms" / "shipped"
# retired organisms -> what replaced them
RETIRED_ORGANISMS = {"binding-clock-palindrome": "true-micl (the same weights, renamed)",
                     "novel-binding": "true-micl (binds novel names, and reads clock math and palindrome too)"}


def organism_problem(name: str) -> str | None:
    """None when `name` is a shipped organism; otherwise why not, in one line (a retired one names its
    replacement)."""
    if (ORGANISMS_DIR / name / "config.json").is_file():
        return None
    if name in RETIRED_ORGANISMS:
        return f"organism:{name} was retired; use organism:{RETIRED_ORGANISMS[name]}"
    have = sorted(p.parent.name for p in ORGANISMS_DIR.glob("*/config.json"))
    return f"no shipped organism {name!r}; shipped: {', '.join('organism:' + h for h in have) or 'none'}"


@dataclass
class Loaded:
    """A model with everything needed to prompt and measure it: the model, its processor, the family's adapter
    (token layout, decoder path, declared chat format), its name and its checkpoint's micl_probe.json settings.
    Prompts go through the processor's chat template when it has one (`use_template`). Make it with
    `micl_probe.load(name_or_folder)`; for a model you already hold, `Loaded(model, processor, adapter_for(model))`
    (which reads the family a saved folder's micl_probe.json names)."""

    model: nn.Module
    processor: object
    adapter: Adapter
    name: str = ""
    settings: dict = field(default_factory=dict)  # the checkpoint's micl_probe.json, if it has one
    use_template: bool = True  # prompts through the processor's chat template where it has one (else ChatFormat)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # key -> (model, object built for it)

    def prepare_batch(self, episodes: list[Episode], with_answer: bool = False, padding_side: str | None = None
                      ) -> PreparedBatch:
        """Episodes -> one padded batch of processor tensors on the model's device + a layout per row
        (`padding_side="left"` for generation)."""
        batch = prepare_batch(episodes, self.processor, self.adapter, model=self.model, with_answer=with_answer,
                              use_template=self.use_template, padding_side=padding_side)
        return batch.to(self.device)

    @property
    def prompt_format(self) -> str:
        """Which writer makes this model's prompts, with a digest of it: "template:<digest>" (the processor's chat
        template) or "declared:<digest>" (the adapter's ChatFormat). Part of every record's provenance."""
        from dataclasses import asdict

        from .provenance import digest

        template = getattr(self.processor, "chat_template", None) if self.use_template else None
        if template:
            return f"template:{digest(template)}"
        return f"declared:{digest(asdict(self.adapter.chat))}"

    def prepare(self, episode: Episode, with_answer: bool = False) -> Prepared:
        return self.prepare_batch([episode], with_answer=with_answer)[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def cached(self, key: str, build):
        """`build()` once per model: wrappers such as nnsight's envoy or a TransformerLens bridge (rebuilt if
        `model` is replaced, e.g. by a peft model's `unload()`)."""
        if key not in self._cache or self._cache[key][0] is not self.model:
            self._cache[key] = (self.model, build())
        return self._cache[key][1]

    @property
    def envoy(self):
        """The model wrapped by nnsight."""
        from nnsight import NNsight

        return self.cached("nnsight", lambda: NNsight(self.model))

    def decoder_envoy(self):
        """The decoder inside `envoy`'s module tree (named like the model's own: `.layers[i].self_attn`)."""
        decoder = self.envoy
        for part in self.adapter.decoder_path.split("."):
            decoder = getattr(decoder, part)
        return decoder


def resolve(name_or_path: str) -> tuple[str, dict]:
    """(path or hub id, the micl_probe.json beside the weights or {})."""
    if name_or_path.startswith(ORGANISM_PREFIX):
        name = name_or_path[len(ORGANISM_PREFIX):]
        problem = organism_problem(name)
        if problem:
            raise FileNotFoundError(problem)
        name_or_path = str(ORGANISMS_DIR / name)
    return name_or_path, checkpoint_settings(name_or_path)


def load(name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         device_map: str | dict | None = None, family: str | None = None, **model_kwargs) -> Loaded:
    """Model + processor + adapter from a hub id, a local folder, or "organism:NAME".

    device: where to put the model (ignored when `device_map` is given; "auto" shards with accelerate).
    dtype: e.g. torch.bfloat16; default float32 on CPU, the checkpoint's dtype otherwise.
    family: force an adapter (see `supported_families()`); default: from micl_probe.json or config.model_type.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    path, settings = resolve(name_or_path)
    family = family or settings.get("family")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    wants_cuda = any(str(d).startswith("cuda") for d in ([device] if not isinstance(device_map, dict)
                                                         else list(device_map.values())) + [device_map] if d)
    if wants_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device or device_map!r}: torch here has no CUDA device (torch {torch.__version__}); "
                         "use device='cpu' or install a CUDA build of torch")
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise OSError(f"{name_or_path!r} is a folder without config.json, not a saved model (save one with "
                      "model.save_pretrained(folder) and processor.save_pretrained(folder))")
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        hint = " (HF_HUB_OFFLINE=1: pass a local folder or a hub id already in the cache)" if offline else ""
        raise OSError(f"cannot load {name_or_path!r}{hint}: {e}") from e
    if family is None and config.model_type in MISFITS:
        raise ValueError(f"{name_or_path!r}: {MISFITS[config.model_type]}")
    if family is None and not any(config.model_type in a.model_types for a in ADAPTERS.values()):
        raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model, not a supported VLM family; supported "
                         f"families: {', '.join(f for f in supported_families() if f != 'organism')} "
                         "(family=... forces an adapter)")
    adapter = get_adapter(family) if family else adapter_for(_ConfigOnly(config))
    if dtype is None and device_map is None and (device is None or str(device) == "cpu"):
        dtype = torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, device_map=device_map, **model_kwargs)
    if device_map is None and device is not None:
        model = model.to(device)
    return Loaded(model.eval(), load_processor(path), adapter, name=name_or_path, settings=settings)


def placement(device: str | None) -> dict:
    """A command line's --device as `load` arguments: "auto" -> device_map="auto" (accelerate spreads the model over
    the GPUs and the CPU), anything else -> device."""
    return {"device_map": "auto"} if device == "auto" else {"device": device}


@dataclass
class _ConfigOnly:
    config: object
