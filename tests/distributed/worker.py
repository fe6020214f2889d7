"""One rank of a multi-process test run: ``RANK``/``WORLD_SIZE``/``MASTER_*`` come from the test.

    python tests/distributed/worker.py JOBS.json

Each job is ``{"overrides": [...], "resume": bool}``, run in order in one process group (so the
group and the imports are paid once). ``RLVR_KILL_AT``/``RLVR_KILL_STEP`` (tests/victim.py) make this
rank SIGKILL itself at that point. The test tasks of tests/conftest.py are registered.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest  # noqa: E402,F401 - registers the test tasks
import victim  # noqa: E402

from rlvr.cli import main  # noqa: E402
from rlvr.train.distributed import init_distributed  # noqa: E402


if __name__ == "__main__":
    init_distributed("cpu", timeout_s=float(os.environ.get("RLVR_TEST_COLLECTIVE_TIMEOUT", "60")))
    if os.environ.get("RLVR_KILL_AT"):
        victim.arm(os.environ["RLVR_KILL_AT"], int(os.environ["RLVR_KILL_STEP"]))
    for job in json.loads(Path(sys.argv[1]).read_text()):
        code = main(["train", "--quiet", *(["--resume"] if job.get("resume") else []), *job["overrides"]])
        if code:
            sys.exit(code)
