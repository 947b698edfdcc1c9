import pytest
import torch
from conftest import cached_tiny, make_episode

from micl_probe import load


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "llava_onevision"])
def test_load_from_local_folder_offline(tmp_path, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = cached_tiny(family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = load(str(tmp_path))
    assert loaded.adapter.family == family
    ep = make_episode(2)
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
