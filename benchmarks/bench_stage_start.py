"""What a stage pays before its own work: a no-op stage, and a stage with a mistake, alone and busy.

    python benchmarks/bench_stage_start.py [--repeats 3] [--hogs 2] [--skip-baseline]

Rows, each a fresh Python process (the way DVC starts a stage), best and worst of ``--repeats``:

* ``python``: ``python -c pass``, the floor;
* ``no-op stage, project server up``: a stage whose flow does nothing, through the same entry as every
  stage (``flows.common.run_stage``: params, input check, the project's Prefect server found,
  Prefect loaded, a flow run created and finished) with the project's server already running: the
  orchestration overhead of a stage (goal <= 2 s);
* ``no-op flow, temporary server`` (the baseline, what every stage did before): the same flow with
  no ``PREFECT_API_URL``, so Prefect starts its own temporary server in the process;
* ``a mistake (no manifest)``: ``python -m flows weightmaps`` with nothing prepared: the seconds to
  its ``error:`` line (goal < 3 s), alone, then three at once beside ``--hogs`` busy processes
  (goal: each within 10 s, none dies of a start-up timeout).

The project server used here lives in a temporary PREFECT_HOME and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NOOP = """
import sys
from flows.common import run_stage, stage_flow

@stage_flow("noop")
def noop(config):
    return None

sys.exit(run_stage("noop", lambda: noop, "a stage that does nothing", ["--params", sys.argv[1]]))
"""
BARE = """
import sys, flows
from prefect import flow

@flow(name="noop")
def noop():
    return None

noop()
"""
HOG = "while True: pass"


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - started, result


def row(name: str, seconds: list[float], note: str = "") -> None:
    print(f"| {name} | {min(seconds):.2f} | {max(seconds):.2f} | {note} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=2, help="busy processes for the busy rows")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out the temporary-server rows")
    args = parser.parse_args()

    from tasks import project_server

    work = Path(tempfile.mkdtemp(prefix="stage-start-"))
    home = work / "prefect-home"
    params = work / "params.yaml"
    params.write_text(f"prepare:\n  out_dir: {work / 'nothing'}\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO), PREFECT_LOGGING_LEVEL="WARNING")
    py = sys.executable
    print(f"{os.cpu_count()} cores; best and worst of {args.repeats}\n")
    print("| what | best, s | worst, s | note |\n| --- | ---: | ---: | --- |")
    row("python -c pass", [timed([py, "-c", "pass"], env, work)[0] for _ in range(args.repeats)])
    try:
        server = project_server.ensure(home, code_dir=REPO, client=False, say=lambda _: None)
        noop = [timed([py, "-c", NOOP, str(params)], env, work) for _ in range(args.repeats)]
        assert all(r.returncode == 0 for _, r in noop), noop[0][1].stderr[-2000:]
        row("no-op stage, project server up", [s for s, _ in noop], f"server {server.url}")
        if not args.skip_baseline:
            bare = [timed([py, "-c", BARE], {**env, "PREFECT_HOME": str(work / "ephemeral")}, work)
                    for _ in range(args.repeats)]
            row("no-op flow, temporary server (before)", [s for s, _ in bare],
                "failed: " + bare[0][1].stderr[-300:] if any(r.returncode for _, r in bare) else "")
        mistake = [py, "-m", "flows", "weightmaps", "--params", str(params)]
        alone = [timed(mistake, {**env, "PREFECT_HOME": str(work / "fresh")}, work) for _ in range(args.repeats)]
        assert all(r.returncode == 1 and "error: " in r.stderr for _, r in alone)
        row("a mistake (no manifest), alone", [s for s, _ in alone], alone[0][1].stderr.strip()[:80])
        hogs = [subprocess.Popen([py, "-c", HOG]) for _ in range(args.hogs)]
        try:
            started = time.perf_counter()
            runs = [subprocess.Popen(mistake, env={**env, "PREFECT_HOME": str(work / "fresh")}, cwd=work,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
            ends = []
            for run in runs:
                _, err = run.communicate(timeout=900)
                ends.append(time.perf_counter() - started)
                assert run.returncode == 1 and err.count("error: ") == 1, err[-500:]
            row(f"three mistakes at once beside {args.hogs} busy processes", ends, "each said its error: line")
            busy = [timed([py, "-c", NOOP, str(params)], env, work)[0] for _ in range(args.repeats)]
            row(f"no-op stage beside {args.hogs} busy processes", busy)
        finally:
            for hog in hogs:
                hog.kill()
    finally:
        project_server.stop(home, say=lambda _: None)


if __name__ == "__main__":
    main()
