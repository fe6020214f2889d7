"""``rlvr`` in a child process that kills itself with SIGKILL at a chosen point (fault-injection tests).

    RLVR_KILL_AT=<point> RLVR_KILL_STEP=<n> python tests/victim.py train ...

Points: ``step`` (entering RL step n+1, after step n's checkpoint), ``checkpoint_write`` (half of
step n's ``state.pt`` is on disk), ``warm_start`` (after warm-start step n), ``eval`` (entering the
evaluation after RL step n). The test tasks of tests/conftest.py are registered first.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401 - registers the test tasks

import rlvr.train.checkpoint as ckpt  # noqa: E402
from rlvr.cli import main  # noqa: E402
from rlvr.train.trainer import Trainer  # noqa: E402
from rlvr.train.warmstart import WarmStart  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    if point == "step":
        train_step = Trainer.train_step

        def step_or_die(self):
            if self.step == n:
                die()
            return train_step(self)

        Trainer.train_step = step_or_die
    elif point == "checkpoint_write":
        write = ckpt._write_state

        def half_then_die(path, state):
            write(path, state)
            if state.get("step") == n and "warmstart" not in state:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                die()

        ckpt._write_state = half_then_die
    elif point == "warm_start":
        ws_step = WarmStart.train_step

        def ws_step_then_die(self):
            loss = ws_step(self)
            if self.step == n:
                die()
            return loss

        WarmStart.train_step = ws_step_then_die
    elif point == "eval":
        evaluate = Trainer.evaluate

        def die_in_eval(self):
            if self.step == n:
                die()
            return evaluate(self)

        Trainer.evaluate = die_in_eval
    else:
        raise SystemExit(f"unknown RLVR_KILL_AT point {point!r}")


if __name__ == "__main__":
    arm(os.environ["RLVR_KILL_AT"], int(os.environ["RLVR_KILL_STEP"]))
    sys.exit(main(sys.argv[1:]))
