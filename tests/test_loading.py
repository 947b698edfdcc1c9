import pytest
import torch

from micl_probe import load
from micl_probe.testing import noise_episode, tiny_loaded


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "llava_onevision", "smolvlm", "gemma3",
                                    "internvl"])
def test_load_from_local_folder_offline(tmp_path, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = tiny_loaded(family)
    model, processor = loaded.model, loaded.processor
    if family == "smolvlm":  # saved with its published chat template: loads and prompts without torchvision
        from micl_probe.testing.templates import with_template
        processor = with_template(processor, "smolvlm2")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = load(str(tmp_path))
    assert loaded.adapter.family == family
    ep = noise_episode(2)
    p = loaded.prepare(ep)
    with torch.no_grad():
        a = loaded.model(**p.inputs).logits
        b = model(**p.inputs).logits
    torch.testing.assert_close(a, b)


def test_missing_organism_and_path_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no shipped organism 'nope'"):
        load("organism:nope")
    with pytest.raises(OSError, match="cannot load"):
        load(str(tmp_path / "missing"))


def test_bad_models_and_inputs_are_one_line_naming_the_fix(tmp_path, monkeypatch):
    from micl_probe import capture_attention
    from micl_probe.core import prepare_batch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="cannot load 'Qwen/Qwen2-VL-2B-Instruct' .HF_HUB_OFFLINE=1: pass a local folder"):
        load("Qwen/Qwen2-VL-2B-Instruct")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="is a .bert. model, not a supported VLM family; supported families: gemma3"
                       ) as e:
        load(str(tmp_path / "bert"))
    assert "_ConfigOnly" not in str(e.value) and "organism" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="folder without config.json, not a saved model"):
        load(str(tmp_path / "empty"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch here has no CUDA device"):
            load("organism:text-shortcut", device="cuda")
    loaded = tiny_loaded("llava")
    with pytest.raises(ValueError, match="no episodes given"):
        capture_attention(loaded, [])
    with pytest.raises(ValueError, match="no episodes given"):
        prepare_batch([], loaded.processor, loaded.adapter)


def test_a_model_built_by_hand_from_an_organism_folder_prompts_as_load_does():
    """`Loaded(model, processor, adapter_for(model))` on an organism's own folder takes the organism's adapter from
    its micl_probe.json (not the LLaVA format of its architecture): the same prompt ids as `load`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from micl_probe import Loaded, adapter_for, load, sample_episodes

    loaded = load("organism:true-micl")
    folder = loaded.model.config._name_or_path
    model = AutoModelForImageTextToText.from_pretrained(folder)
    mine = Loaded(model, AutoProcessor.from_pretrained(folder), adapter_for(model), name="mine")
    assert mine.adapter.family == loaded.adapter.family == "organism"
    episode = sample_episodes("clock_math", shots=4, n=1)[0]
    assert torch.equal(mine.prepare(episode).inputs["input_ids"], loaded.prepare(episode).inputs["input_ids"])
