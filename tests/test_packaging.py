"""The wheel and an editable install both carry patches/, launch/ and the env/ presets.

Both installs go into fresh virtualenvs without dependencies, so only our own files are
under test; the sources are copied first so the repository is never written to.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow

PRESETS = ["sm80.toml", "sm86.toml", "sm89.toml", "sm90.toml", "sm120.toml", "cpu.toml"]
PROBE = r"""
import importlib.metadata as md, importlib.resources as res, json, sys
import sglang_ampere, sglang_ampere.patches, sglang_ampere.launch
eps = [e.value for e in md.entry_points(group="sglang.srt.plugins") if e.name == "sglang_ampere"]
print(json.dumps({
    "patches": sglang_ampere.patches.__file__,
    "launch": sglang_ampere.launch.__file__,
    "presets": sorted(p.name for p in res.files("sglang_ampere.env").iterdir() if p.name.endswith(".toml")),
    "entry_points": eps,
    "cpu_site": (res.files("sglang_ampere.cpu_target") / "site" / "sitecustomize.py").is_file(),
}))
"""


def _copy_sources(dst: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def _probe(python: Path, cwd: Path) -> dict:
    r = subprocess.run([str(python), "-c", PROBE], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return _copy_sources(tmp_path_factory.mktemp("src"))


def test_wheel_contains_layout_and_installs(src, tmp_path):
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
    )
    wheel = next(out.glob("sglang_ampere-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("patches", "launch", "env"):
        assert f"sglang_ampere/{pkg}/__init__.py" in names, pkg
    for py in (REPO / "patches").glob("*.py"):
        assert f"sglang_ampere/patches/{py.name}" in names
    for py in (REPO / "launch").glob("*.py"):
        assert f"sglang_ampere/launch/{py.name}" in names
    for preset in PRESETS:
        assert f"sglang_ampere/env/{preset}" in names, preset
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[sglang.srt.plugins]\nsglang_ampere = sglang_ampere.plugin:register" in text
    assert "sglang-ampere = sglang_ampere.cli:main" in text

    py = _venv(tmp_path / "venv")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    info = _probe(py, tmp_path)
    assert "site-packages/sglang_ampere/patches/" in info["patches"]
    assert info["presets"] == sorted(PRESETS)
    assert info["cpu_site"], "the CPU target's boot file (cpu_target/site/sitecustomize.py) is not installed"
    assert info["entry_points"] == ["sglang_ampere.plugin:register"]


def test_editable_install_maps_top_level_dirs(src, tmp_path):
    py = _venv(tmp_path / "venv")
    # build isolation gives the build a current setuptools (a fresh venv may hold an old one)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)], check=True)
    info = _probe(py, tmp_path)  # run outside the source tree: only the editable finder can help
    assert Path(info["patches"]).resolve() == (src / "patches" / "__init__.py").resolve()
    assert Path(info["launch"]).resolve() == (src / "launch" / "__init__.py").resolve()
    assert info["presets"] == sorted(PRESETS)
    assert info["cpu_site"], "the CPU target's boot file (cpu_target/site/sitecustomize.py) is not installed"
    assert info["entry_points"] == ["sglang_ampere.plugin:register"]
