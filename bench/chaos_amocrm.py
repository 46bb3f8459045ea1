"""The fake amoCRM of bench/chaos.py, as a process of its own.

`tests/fake_amocrm.py` on a given loopback port, appending every salesbot call to a
journal file (the chaos run's record of what reached "amoCRM"), and now and then
queueing a fault for the next call: a 400 naming no item (the dispatcher bisects), a
503, or no answer before or after launching the tasks. SIGUSR1 ends the faults, SIGTERM
the process. Only the standard library and the fake are imported: this process starts
beside the server's on a loaded machine.

    python bench/chaos_amocrm.py JOURNAL --port PORT [--fault-every S] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fake_amocrm import FakeAmoCRM  # noqa: E402


def serve(journal: Path, port: int, fault_every: float, seed: int) -> None:
    """Serve until SIGTERM; a fault waits for the next salesbot call, and a new one is
    queued only once a call has taken the last."""
    fake = FakeAmoCRM(journal=journal, port=port).start()
    stopping, faults = threading.Event(), threading.Event()
    faults.set()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGUSR1, lambda *_: faults.clear())
    print(f"fake amoCRM serving on {fake.url}", flush=True)
    rng, seen = random.Random(seed), -1
    while not stopping.wait(rng.uniform(0.5, 1.5) * fault_every):
        calls = len(fake.salesbot_calls())
        if faults.is_set() and calls > seen:
            seen = calls
            inject_fault(fake, rng)
    fake.stop()


def inject_fault(fake: FakeAmoCRM, rng: random.Random) -> None:
    draw = rng.random()
    if draw < 0.55:
        fake.fail_next(1, status=400)  # names no item: the dispatcher bisects
    elif draw < 0.70:
        fake.fail_next(1, status=503)  # retried after a shared hold
    elif draw < 0.85:
        fake.drop_next(1, after_processing=True)  # launched, answer lost: uncertain
    else:
        fake.drop_next(1)  # not launched, no answer: uncertain too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("journal", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault-every", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    serve(args.journal, args.port, args.fault_every, args.seed)


if __name__ == "__main__":
    main()
