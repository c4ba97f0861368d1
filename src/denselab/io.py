"""Atomic writes and provenance: results on disk are either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def display_path(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it (data/owt2-gpt2), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def relative_to_root(value: Any, root: str | Path) -> Any:
    """`value` (a path, or a JSON-like tree) with every string that is a path below the repository
    `root` made relative to it ("." for the root itself), so a committed file names no folder of the
    machine that wrote it; other paths are returned as strings, unchanged."""
    root = Path(root)
    prefixes = sorted({str(root).rstrip("/") + "/", str(root.resolve()) + "/"}, key=len, reverse=True)

    def relative(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: relative(x) for k, x in v.items()}
        if isinstance(v, list):
            return [relative(x) for x in v]
        if isinstance(v, (str, Path)):
            text = str(v)
            for prefix in prefixes:
                if text.startswith(prefix):
                    return text[len(prefix):]
                if text == prefix.rstrip("/"):
                    return "."
            return text
        return v

    return relative(value)


def hash_file(path: str | Path, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    """Feed a file's bytes into `h` (a new sha256 when None), 4 MiB at a time; returns `h`."""
    h = h if h is not None else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h


def sha256_file(path: str | Path) -> str:
    return hash_file(path).hexdigest()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> dict | None:
    """The JSON object at `path`, or None when it does not exist or cannot be parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    """The commit the code runs from and whether its code or configuration had uncommitted changes
    (results and docs being rewritten, as a report does, leave what ran unchanged)."""
    cwd = cwd or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                 ":(top,exclude)experiments", ":(top,exclude)docs", ":(top,exclude)*.md")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def machine_info() -> dict[str, Any]:
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info
