"""One device with the whole batch against R processes with a slice each: the per-step training losses
and final validation loss side by side, and their largest differences.

    .venv/bin/python benchmarks/ddp_equivalence.py                      # 2 CPU processes (gloo), 30 steps
    .venv/bin/python benchmarks/ddp_equivalence.py --devices 4 --accelerator gpu --precision bf16-mixed

Both runs go through run.py as a user starts them, into a temporary folder (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
TOY = ["depth=2", "width=64", "heads=2", "seq_len=64", "trainer.val_check_interval=10", "trainer.log_every_n_steps=1",
       "data.val_windows=16", "data.final_val_windows=64", "trainer.enable_progress_bar=false", "speed.enabled=false"]


def train(out: Path, args: list[str]) -> Path:
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.log_dir={out}"], check=True, cwd=ROOT,
                   env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
                   stdout=subprocess.DEVNULL)
    (metrics,) = out.rglob("metrics.json")
    return metrics.parent


def losses(run_dir: Path) -> dict[int, float]:
    values = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--batch-size", type=int, default=16, help="global sequences per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="ddp-equivalence-"))
    common = [*TOY, f"batch_size={a.batch_size}", f"steps={a.steps}", f"trainer.accelerator={a.accelerator}",
              f"trainer.precision={a.precision}"]
    one = train(out / "one", common)
    many = train(out / "many", [*common, "trainer=ddp", f"trainer.devices={a.devices}",
                                f"trainer.accelerator={a.accelerator}", f"trainer.precision={a.precision}"])
    l1, lr = losses(one), losses(many)
    print(f"{'step':>5} {'1 device':>12} {f'{a.devices} devices':>12} {'difference':>12}")
    for step in sorted(l1):
        print(f"{step:>5} {l1[step]:>12.6f} {lr[step]:>12.6f} {lr[step] - l1[step]:>12.2e}")
    f1, fr = (json.loads((d / "metrics.json").read_text())["final_val_loss"] for d in (one, many))
    print(f"final validation loss: 1 device {f1:.7f}, {a.devices} devices {fr:.7f}, difference {fr - f1:.2e}")
    print(f"largest per-step |difference|: {max(abs(lr[s] - l1[s]) for s in l1):.2e} over {len(l1)} steps "
          f"(batch {a.batch_size}, {a.accelerator}, {a.precision}); runs in {out}")


if __name__ == "__main__":
    main()
