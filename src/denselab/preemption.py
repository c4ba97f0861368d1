"""Stopping a run cleanly when the cluster says so: SIGUSR1 and SIGTERM.

SLURM sends SIGTERM when a job is preempted or reaches its time limit (and SIGKILL some seconds
later), and `sbatch --signal=USR1@<seconds>` sends SIGUSR1 ahead of the limit. Either way the run
must stop at the next batch boundary, save `checkpoints/interrupted.ckpt`, be marked `interrupted`
and exit non-zero, so that the scheduler (and a sweep) can tell it from a finished run; running the
same command again resumes it.

SIGTERM: Lightning's own handler notes it and raises `SIGTERMException` at the next batch boundary,
and `OnExceptionCheckpoint` saves the checkpoint; train.py turns that into the exit status.
SIGUSR1: outside SLURM nothing handles it (its default action kills the process with no checkpoint),
so `StopOnSignal` does the same as Lightning does for SIGTERM, and for SIGUSR2, which submitit
(hydra/launcher=slurm) asks SLURM to send and handles by requeueing the job. On SLURM, Lightning's
`SLURMEnvironment(auto_requeue=True)` (the environment it picks by itself there) installs a SIGUSR1
handler that saves `hpc_ckpt_<n>.ckpt` and requeues the job with `scontrol requeue` — but only when no
other handler is there yet. So `StopOnSignal` installs its handler once training has started, after
Lightning's, and calls the handler it replaced: the job is requeued and also stops cleanly.

The replaced handler is called at the batch boundary, not in the signal handler. Lightning's saves a
checkpoint and flushes the loggers; run inside the signal handler, that can interrupt the main thread
while it holds a lock the flush needs (TensorBoard's event queue, written every logging step) and
hang the job until SLURM kills it. A signal handler here only notes the signal.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised at a batch boundary after a stop signal; train.py records the run as interrupted."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopOnSignal(L.Callback):
    """Raise `Preempted` at the next training batch boundary after one of `signals` (a validation in
    progress finishes first, so the checkpoint holds its result)."""

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR1",)) -> None:
        self.signals = [signal.Signals[name] for name in signals]
        self.received: int | None = None
        self._batches = 0  # training batches seen, for the multi-device decision's cadence
        self._replaced: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in self.signals:
            previous = signal.getsignal(signum)
            self._replaced[signum] = previous
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # nothing else here: see the module docstring

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.world_size > 1:
            # Stop together (a rank that stopped alone would hang the others), deciding every
            # log_every_n_steps batches rather than every batch: the decision is a collective and a
            # host sync, and the signals come a minute or more ahead of the kill.
            self._batches += 1
            if self._batches % max(1, trainer.log_every_n_steps):
                return
            if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
                return
            self.received = self.received or self.signals[0]
        elif self.received is None:
            return
        log.info("Received %s: stopping at this batch boundary", signal.Signals(self.received).name)
        previous = self._replaced.get(self.received)
        if callable(previous):  # Lightning's SLURM requeue handler (hpc checkpoint, scontrol requeue), submitit's
            try:
                previous(self.received, None)
            except SystemExit:  # submitit's exits once it has requeued the job; the run stops here instead
                pass
        raise Preempted(self.received)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, previous in self._replaced.items():
            if signal.getsignal(signum) == self._handler:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._replaced = {}
