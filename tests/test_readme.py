"""README.md's examples run as written, on a copy of the repository (as a fresh clone has it).

Every ```python and ```bash block is run; only lines marked ``# needs: download`` (files a user
downloads by hand), ``# needs: long`` (installs, the demo, the test suite, training runs) or
``# needs: gpu`` are left out. A bash command that fails or a Python block that raises fails the test.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"#\s*needs:\s*(\w+)")
KINDS = {"download", "long", "gpu"}
# outside a git checkout: what a fresh clone does not have (runs, results, downloads and caches)
NOT_IN_A_CLONE = shutil.ignore_patterns("experiments", "results", "tb_logger", "restored", "__pycache__",
                                        ".pytest_cache", "*.egg-info", "datasets")


def copy_checkout(root):
    """The files a clone of this checkout has (tracked or new, not ignored), with their local changes."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=False)
    if listed.returncode != 0:  # not a git checkout (an unpacked archive)
        shutil.copytree(REPO, root, ignore=NOT_IN_A_CLONE)
        return
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():  # deleted but not yet committed files are listed too
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)


def blocks(language):
    return [body for lang, body in FENCE.findall(README) if lang == language]


def runnable(body):
    """The block without its marked lines (a backslash-continued command is one line)."""
    lines = body.replace("\\\n", " ").splitlines()
    for line in lines:
        for kind in MARKER.findall(line):
            assert kind in KINDS, f"unknown marker 'needs: {kind}' in README line: {line}"
    return "\n".join(line for line in lines if not MARKER.search(line))


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the checkout, and an environment whose python / python3 are this interpreter."""
    root = tmp_path_factory.mktemp("readme") / "diffir"
    copy_checkout(root)
    bin_dir = root.parent / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the clone's own diffir, found from its root
    return root, env


def run(command, root, env):
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command[-1]}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def test_readme_has_runnable_examples():
    # only python, bash and text/yaml (not run) fences, and the examples that must run are there
    assert {lang for lang, _ in FENCE.findall(README)} <= {"python", "bash", "text", "yaml"}
    executed_bash = "\n".join(runnable(b) for b in blocks("bash"))
    assert "inference.py -i demo_data" in executed_bash
    assert any("Restorer" in runnable(b) and "restore(" in runnable(b) for b in blocks("python"))
    # the two opening commands: the demo, then the test suite
    first, second = blocks("bash")[:2]
    assert "bash scripts/demo.sh" in first and second.startswith("bash .ci/run")


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, clone, monkeypatch):
    # in this process (diffir is imported already), in the copy's folder: an exception fails the test
    root, _ = clone
    monkeypatch.chdir(root)
    exec(compile(runnable(blocks("python")[index]), f"README.md python block {index}", "exec"), {})


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_bash_block_runs(index, clone):
    root, env = clone
    run(["bash", "-euo", "pipefail", "-c", runnable(blocks("bash")[index])], root, env)
