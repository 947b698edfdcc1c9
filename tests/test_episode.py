import dataclasses

import numpy as np
import pytest

from micl_probe import Demo, Episode, Query
from micl_probe.testing import noise_episode, noise_image


def test_roundtrip_preserves_text_images_and_meta(tmp_path):
    ep = noise_episode(3, images_per_demo=2)
    path = tmp_path / "ep.json"
    ep.save(path)
    back = Episode.load(path)
    assert back.task == ep.task and dict(back.meta) == dict(ep.meta)
    assert [(d.question, d.answer) for d in back.demos] == [(d.question, d.answer) for d in ep.demos]
    assert back.query.answer == ep.query.answer
    assert len(back.images) == len(ep.images) == 7
    for a, b in zip(back.images, ep.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_episode_is_immutable():
    ep = noise_episode(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep.task = "other"
    with pytest.raises(TypeError):
        ep.meta["x"] = 1


def test_controls():
    ep = noise_episode(4)
    z = ep.zero_shot()
    assert z.shots == 0 and z.query == ep.query and z.condition == "zero-shot"
    ni = ep.without_demo_images()
    assert all(d.images == () for d in ni.demos) and ni.query.images == ep.query.images
    assert [d.answer for d in ni.demos] == [d.answer for d in ep.demos] and ni.condition == "no-image"
    sh = ep.with_shuffled_answers(seed=1)
    assert sorted(d.answer for d in sh.demos) == sorted(d.answer for d in ep.demos)
    assert all(a.answer != b.answer for a, b in zip(sh.demos, ep.demos))  # a derangement: answers all differ
    assert [d.images for d in sh.demos] == [d.images for d in ep.demos]
    assert ep.with_shots(2).shots == 2 and ep.shots == 4  # the original is untouched


def test_bad_demos_and_queries():
    with pytest.raises(ValueError, match="non-empty question"):
        Demo([noise_image(8, 8)], "  ", "a")
    with pytest.raises(ValueError, match="non-empty answer"):
        Demo([noise_image(8, 8)], "q?", "")
    with pytest.raises(ValueError, match="non-empty question"):
        Query([noise_image(8, 8)], "")
    with pytest.raises(TypeError, match="PIL.Image"):
        Demo([None], "q?", "a")
    with pytest.raises(ValueError):
        noise_episode(2).with_shots(3)
