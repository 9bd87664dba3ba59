"""The user documentation: every Python snippet in README.md and docs/ runs, the README's command
lines run and give visible images, links resolve, and the pages stand alone."""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import nmr_jax as nr
from nmr_jax import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


# The second CI leg (the newest jax) runs the pages whose snippets call every public function;
# the other pages call the same functions at greater length.
ON_EVERY_VERSION = ("README.md", "api.md")


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=[pytest.mark.versions] if p.name in ON_EVERY_VERSION else [])
        for p in PAGES
        if blocks(p, "python")
    ],
    ids=lambda p: p.name,
)
def test_python_snippets_run(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A page's snippets run in order in one module, as a reader would type them (a module in
    # sys.modules, which dataclasses look their class's module up in).
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for i, code in enumerate(blocks(page, "python")):
        exec(compile(code, f"{page.name}, python block {i + 1}", "exec"), module.__dict__)


def readme_commands(prefix: str) -> list[str]:
    return [
        line.split("  #")[0].strip()
        for body in blocks(ROOT / "README.md", "")
        for line in body.splitlines()
        if line.startswith(prefix)
    ]


def test_readme_quick_start_test_command_is_the_one_ci_runs() -> None:
    quick_start = readme_commands("python3 -m venv .venv && .venv/bin/pip install -q -e")
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest -q" in line]
    assert len(quick_start) == 1 and quick_start == ci[:1]


@pytest.mark.parametrize("command", readme_commands("nmr-jax render"))
def test_readme_command_lines_give_visible_images(command: str, tmp_path: Path) -> None:
    # The README's lighting example once washed the white mesh out to white on white.
    args = shlex.split(command)[1:]
    args[1] = str(nr.data.teapot_path())
    out = tmp_path / Path(args[args.index("-o") + 1]).name
    args[args.index("-o") + 1] = str(out)
    assert cli.main([*args, "--image-size", "24", "32", "--quiet"]) == 0
    image = iio.imread(out).astype(np.float32) / 255
    image = image[0] if image.ndim == 4 else image  # a GIF's first frame
    background = [0.0, 0.0, 0.0]
    if "--background" in args:
        i = args.index("--background")
        background = [float(c) for c in args[i + 1 : i + 4]]
    distinct = np.abs(image[..., :3] - background).max(-1) > 0.1
    assert distinct.mean() > 0.05, f"the mesh is hardly visible in {command!r}"


def test_readme_is_short_and_links_resolve() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_docs_stand_alone_without_project_history() -> None:
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text and "/work/" not in text, page.name
        assert not re.search(r"\bissues? #?\d+|#\d{1,4}\b", text, re.IGNORECASE), page.name
