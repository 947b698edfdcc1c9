import pytest
import torch

from micl_probe import load
from micl_probe.testing import noise_episode, tiny_loaded


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "llava_onevision"])
def test_load_from_local_folder_offline(tmp_path, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = tiny_loaded(family)
    model, processor = loaded.model, loaded.processor
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
