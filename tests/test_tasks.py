"""Task generators follow their rules, hide them from the demo text, and load from released folder formats."""

from collections import Counter

import numpy as np
import pytest

from micl_probe.tasks import TASKS, make_episode, sample_episodes, task_names
from micl_probe.tasks.synthetic import BINDING_SCALE, COLOURS, DIGITS, SHAPES

CELL = 8


def cells(image):
    """The image as a 4x4 grid of (colour name or None, bitmap) read back from pixels."""
    px = np.asarray(image).astype(int)
    out = []
    for r in range(4):
        for c in range(4):
            patch = px[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
            on = patch.sum(-1) > 60
            if not on.any():
                out.append(None)
                continue
            rgb = patch[on].mean(0)
            colour = min(COLOURS, key=lambda k: np.abs(np.array(COLOURS[k]) - rgb).sum())
            ys, xs = on.nonzero()
            bitmap = tuple("".join("1" if on[y, x] else "0" for x in range(xs.min(), xs.max() + 1))
                           for y in range(ys.min(), ys.max() + 1))
            out.append((colour, bitmap, rgb))
    return out


def big_glyph(image, scale=BINDING_SCALE):
    """(colour, shape) of novel_binding's one glyph, drawn `scale` times larger and centred."""
    px = np.asarray(image).astype(int)
    on = px.sum(-1) > 60
    ys, xs = on.nonzero()
    small = on[ys.min():ys.max() + 1:scale, xs.min():xs.max() + 1:scale]
    rgb = px[on].mean(0)
    colour = min(COLOURS, key=lambda k: np.abs(np.array(COLOURS[k]) - rgb).sum())
    return colour, glyph(tuple("".join("1" if v else "0" for v in row) for row in small))


def glyph(bitmap):
    for name, b in {**SHAPES, **DIGITS}.items():
        if tuple(b) == bitmap:
            return name
    return None


@pytest.mark.parametrize("name", task_names() + task_names(shortcut=True))
def test_generators_are_seeded_and_well_formed(name):
    a = sample_episodes(name, 4, 5, seed=3)
    b = sample_episodes(name, 4, 5, seed=3)
    assert [e.query.answer for e in a] == [e.query.answer for e in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for e, f in zip(a, b) for x, y in zip(e.images, f.images))
    other = sample_episodes(name, 4, 5, seed=3, split="support")
    assert [e.query.answer for e in a] != [e.query.answer for e in other] or name.startswith("novel_binding_s")
    for e in a:
        assert e.shots == 4 and all(len(d.images) == 1 for d in e.demos) and e.images[0].size == (32, 32)


def test_answers_follow_the_rule_read_back_from_pixels():
    rng = np.random.default_rng(0)
    for _ in range(30):
        e = make_episode("operator_induction", 3, rng)
        for d in list(e.demos) + [e.query]:
            digits = [glyph(c[1]) for c in cells(d.images[0]) if c and glyph(c[1]) not in (None, "?")]
            a, b = int(digits[0]), int(digits[1])
            want = (a + b) % 5 if e.meta["rule"] == "plus" else (a - b) % 5
            assert d.answer == str(want)
        e = make_episode("outlier", 3, rng)
        for d in list(e.demos) + [e.query]:
            seen = Counter(c[0] for c in cells(d.images[0]) if c)
            odd, base = min(seen, key=seen.get), max(seen, key=seen.get)
            assert d.answer == (odd if e.meta["rule"] == "colour_outlier" else base)
        e = make_episode("shape_count_shortcut", 3, rng)
        for d in list(e.demos) + [e.query]:
            assert d.answer == str(sum(glyph(c[1]) == "circle" for c in cells(d.images[0]) if c))
        for name in ("novel_binding", "novel_binding_shortcut"):
            e = make_episode(name, 4, rng)
            names = {}
            for d in list(e.demos) + [e.query]:
                colour, shape = big_glyph(d.images[0])
                names.setdefault((colour, shape), set()).add(d.answer)
                if name.endswith("shortcut"):
                    assert d.answer == f"{colour} {shape}"
            assert len(names) == 2 and all(len(v) == 1 for v in names.values())  # one name per class, two classes


@pytest.mark.parametrize("name", task_names())
def test_rule_not_recoverable_from_demo_text(name):
    """Every rule yields the same distribution of answers, so demo answers alone do not reveal the rule: the
    total-variation distance between rule-conditional answer distributions is small."""
    task = TASKS[name]
    if name == "novel_binding":  # names are drawn afresh per episode: the text carries no class information
        eps = sample_episodes(name, 4, 300, seed=0)
        assert len(Counter(d.answer for e in eps for d in e.demos)) >= 12
        return
    rng = np.random.default_rng(0)
    dists = []
    for rule in task.rules:
        c = Counter(d.answer for _ in range(600) for d in make_episode(name, 2, rng, rule=rule).demos)
        dists.append(c)
    keys = set().union(*dists)
    p = [np.array([d[k] / sum(d.values()) for k in sorted(keys)]) for d in dists]
    tv = max(0.5 * np.abs(a - b).sum() for a in p for b in p)
    assert tv < 0.1, f"{name}: answers differ across rules (TV {tv:.2f})"


def test_shortcut_rule_is_fixed():
    for name in task_names(shortcut=True):
        rules = {e.meta["rule"] for e in sample_episodes(name, 2, 20)}
        assert len(rules) == 1


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        sample_episodes("sudoku", 1, 1)


def test_shortcut_questions_state_the_rule():
    for name, task in TASKS.items():
        true = sample_episodes(name, 1, 1)[0]
        short = sample_episodes(name + "_shortcut", 1, 1)[0]
        assert true.query.question == task.question != short.query.question == task.shortcut_question


def test_a_task_under_one_fixed_rule_is_the_rule_stream():
    """'clock_math@blue' draws the same queries as `rule_episodes` (what the MTV experiment evaluates on) and trains
    on `rule_stream`; a rule the task lacks is one line naming its rules."""
    import itertools

    from micl_probe.tasks import check_task, query_episodes, rule_episodes, rule_stream, task_stream

    mine = query_episodes("clock_math@blue", 4, 5, seed=3)
    theirs = rule_episodes("clock_math", "blue", 4, 5, "query", 3)
    assert [e.query.answer for e in mine] == [e.query.answer for e in theirs]
    assert {e.meta["rule"] for e in mine} == {"blue"}
    trained = [e.query.answer for e in itertools.islice(task_stream("palindrome@mirror", 2, "support", 1), 4)]
    assert trained == [e.query.answer for e in itertools.islice(rule_stream("palindrome", "mirror", 2, "support", 1),
                                                                 4)]
    for bad, said in (("clock_math@green", "its rules: red, blue"), ("novel_binding@bound", "bound anew")):
        with pytest.raises(ValueError, match=said):
            check_task(bad)


@pytest.mark.parametrize("task", ["novel_binding", "novel_binding_shortcut"])
def test_every_binding_prefix_shows_both_classes(task):
    """A k-shot condition keeps the first k demos of a longer draw (the card's 8, the harness's pool): every prefix
    of two or more demos must show both of the episode's classes (as its answers tell), or the query's class may be
    unshown and the query unanswerable; the draw's demos are all kept, each class half of them."""
    for shots in (2, 3, 4, 8):
        for e in sample_episodes(task, shots, 60, seed=3):
            answers = [d.answer for d in e.demos]
            counts = sorted(Counter(answers).values())
            assert len(counts) == 2 and counts[1] - counts[0] == shots % 2
            for k in range(2, shots + 1):
                assert len(set(answers[:k])) == 2, (shots, k, answers)
