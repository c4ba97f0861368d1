"""One process per run folder: a second one (a job submitted twice, a sweep started twice) stops at
once instead of training into the same checkpoints, logs and TensorBoard steps.

The lock is `flock` on `<run dir>/.lock`, which the kernel releases when the holder exits however it
exits (SIGKILL included), so a crashed run never leaves a stale lock. The file holds who has it.
It is never deleted: deleting a lock file while another process waits on it would let a third
process lock a new file of the same name.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another process is running in this folder. Its message is one line naming the holder."""


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the block; RunLocked if another process holds it."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunLocked(f"{run_dir} is in use by {holder}; not starting a second run into it "
                            "(wait for that one, or stop it, and run the command again)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
