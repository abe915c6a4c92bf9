"""Test set-up for system programs from Debian's packages (PostgreSQL, Chromium).

``ensure_program(binary, package)`` returns the program's path, installing ``package`` with
apt-get when it is missing (the README's test command then sets up everything on a fresh
machine). Installs are serialised across pytest-xdist workers with a file lock. It returns
``None`` (the caller skips with a clear message) only where no install is possible: not root,
or no apt-get.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
from pathlib import Path

_LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "lrkit-tests-apt.lock"


def _find(binary: str, extra_globs: tuple[str, ...] = ()) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for pattern in extra_globs:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def ensure_program(binary: str, package: str, *, extra_globs: tuple[str, ...] = ()
                   ) -> str | None:
    """Path of ``binary`` (also looked for under ``extra_globs``), installing Debian's
    ``package`` if needed; ``None`` when it cannot be had here."""
    found = _find(binary, extra_globs)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _find(binary, extra_globs)  # another worker may have installed it meanwhile
        if found:
            return found
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                       env=env, check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=1200)
    return _find(binary, extra_globs)
