"""Processors: loading a checkpoint's processor (image-only where the video half cannot be built) and building a
byte-level BPE tokenizer in code (for the organisms and the tiny test models; nothing is downloaded).

    processor = load_processor("/models/qwen2-vl-2b")
    tok = bpe_tokenizer(["<s>", "</s>", "<image>"], bos="<s>", eos="</s>", corpus=lines)
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path


def bpe_tokenizer(specials: list[str], bos: str | None, eos: str, corpus: list[str], pad: str | None = None,
                  vocab_size: int = 512, named: dict[str, str] | None = None):
    """A byte-level BPE tokenizer (never produces <unk>) trained on `corpus`, with `specials` as special tokens;
    `named`: {attribute: token} a family's processor reads (Gemma 3's `boi_token` …), kept by `save_pretrained` as
    the published tokenizers keep them (each also gets `<attribute>_id`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    extra = [s for s in specials if s not in (bos, eos, pad)]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad or eos,
                                   extra_special_tokens=extra, model_max_length=4096,
                                   **({"model_specific_special_tokens": named} if named else {}))


class NoVideo:
    """The video sub-processor of an image-only processor: it has the defaults a chat template reads (SmolVLM's
    `num_frames`, `fps`: none) and takes no videos."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise ValueError("this processor was built without its video part (torchvision is missing): images only")


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

    members = {"get_attributes": get_attributes, "__module__": __name__}
    video = inspect.signature(processor_cls.__init__).parameters.get("video_processor")
    if video is not None and video.default is inspect.Parameter.empty:  # a parent that requires one (SmolVLM)
        members["__init__"] = _without_video_argument(processor_cls)
    return type(processor_cls.__name__, (processor_cls,), members)


def _without_video_argument(processor_cls: type):
    """An `__init__` for the image-only subclass of a processor whose `__init__` requires `video_processor`: the
    parent's own keyword arguments but that one (HF's from_dict and to_dict read them from the code object and the
    signature), the parent called with video_processor=None, then a `NoVideo` stand-in (SmolVLM's
    apply_chat_template reads its frame defaults)."""
    params = [p for p in list(inspect.signature(processor_cls.__init__).parameters.values())[1:]
              if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "video_processor"]
    defaults = {p.name: None if p.default is p.empty else p.default for p in params}

    def finish(self, named: dict, kwargs: dict):
        kwargs.setdefault("video_processor", None)
        processor_cls.__init__(self, **named, **kwargs)
        if getattr(self, "video_processor", None) is None:
            self.video_processor = NoVideo()

    names = [p.name for p in params]
    source = (f"def __init__(self, {''.join(f'{n}=_defaults[{n!r}], ' for n in names)}**kwargs):\n"
              f"    _finish(self, {{{', '.join(f'{n!r}: {n}' for n in names)}}}, kwargs)\n")
    namespace = {"_defaults": defaults, "_finish": finish}
    exec(source, namespace)  # a real parameter list: what from_dict reads from __code__
    return namespace["__init__"]


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


