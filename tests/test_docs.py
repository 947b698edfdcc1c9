"""The documentation runs as written: every Python and bash block of README.md and the guide in docs/ (a block right
after a `<!-- not run: why -->` comment is skipped: GPUs, hub checkpoints, long trainings), each file's blocks in
order in one fresh folder (Python blocks share one namespace, as in a notebook; a bash block's `python -m
micl_probe.…` commands run their module as __main__ in this process, any other command in a shell); and the guide
builds with `mkdocs build --strict` (API pages from the docstrings, no broken link)."""

import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>python|bash)\n(?P<body>.*?)^(?P=indent)```$", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, why it is not run or None) of every python/bash block of `page`, in order."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        skip = re.fullmatch(r"<!-- not run: (.+) -->", before)
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] for line in m.group("body").splitlines())
        out.append((m.group("lang"), code, skip.group(1) if skip else None))
    return out


def test_the_block_finder_sees_every_fence():
    """A page's python/bash fences are all found (the finder cannot silently skip a block)."""
    for page in PAGES:
        text = page.read_text()
        fences = len(re.findall(r"^ *```(?:python|bash)$", text, re.M))
        assert len(blocks(page)) == fences, page
    readme = blocks(ROOT / "README.md")
    assert [lang for lang, _, why in readme if why is None] == ["python", "bash"]


@pytest.mark.parametrize("page", [p for p in PAGES if any(why is None for _, _, why in blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    namespace = {"__name__": "__doc_block__"}
    for number, (lang, code, why) in enumerate(blocks(page), 1):
        if why is not None:
            continue
        if lang == "python":
            try:
                exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{page.name} block {number} ({lang}) failed: {type(e).__name__}: {e}\n{code}")
        else:
            for line, words in commands(code):
                ours = words[:2] == ["python", "-m"] and words[2].startswith("micl_probe.") and \
                    not any(w in ("&&", "||", "|", ";") or "$" in w or ">" in w for w in words)
                ran = _in_process(words, monkeypatch) if ours else _shell(line, tmp_path, env)
                assert ran == 0, f"{page.name} block {number} (bash) failed at: {line}\n{code}"


def commands(code: str) -> list[tuple[str, list[str]]]:
    """A bash block's commands, one per logical line (continuations joined): (the line, its words without the
    comment)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [(line, words) for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def _in_process(command: list[str], monkeypatch) -> int:
    """`python -m micl_probe.X args` run in this process, as bench/bad_inputs.py runs the entry points: the same
    code as the command line, without paying the imports for every command."""
    monkeypatch.setattr(sys, "argv", [command[2], *command[3:]])
    try:
        runpy.run_module(command[2], run_name="__main__", alter_sys=False)
    except SystemExit as e:
        return 0 if e.code in (0, None) else int(e.code) if isinstance(e.code, int) else 1
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    return 0


def _shell(line: str, cwd: Path, env: dict) -> int:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        print(done.stderr[-2000:])
    return done.returncode


def test_the_guide_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "capture_attention" in api and "heads_frame" in api  # the API pages come from the docstrings
