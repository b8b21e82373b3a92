"""Run one benchmark script in two checkouts of vidrec, alternating, and put their tables side by side.

A change that must not slow anything down (a restructuring, say) is measured against the commit before it on
the same machine in the same minutes: A, B, A, B, ... so that the machine's noise falls on both alike.

    git worktree add /tmp/vidrec-before <commit>
    .venv/bin/python bench/ab_checkouts.py --before /tmp/vidrec-before --after . --rounds 3 -- \
        bench/offline_fps.py samples/bikes.mp4 --index-dir out/sample_index --repeat 1

Each run is ``python <script> <args>`` with the checkout as working directory and first on ``PYTHONPATH``, so the
script and everything it imports (and the services it starts with ``python -m workers.cli``) are that
checkout's. Every Markdown table row the script prints (``| name | number | ... |``) is collected; for each row
name and numeric column, the median over the rounds is printed for before and after, with after/before.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def table_rows(output: str) -> tuple[list[str], dict[str, list[float | None]]]:
    """The last Markdown table header seen and every data row, by its first cell: the first number in each cell
    (None where a cell has none)."""
    header: list[str] = []
    rows: dict[str, list[float | None]] = {}
    for line in output.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")) or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        values = [_first_number(cell) for cell in cells[1:]]
        if all(v is None for v in values):
            header = cells
            continue
        rows[cells[0]] = values
    return header, rows


def _first_number(cell: str) -> float | None:
    match = _NUMBER.search(cell)
    return None if match is None else float(match.group())


def run_once(checkout: Path, script_args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, *script_args], cwd=checkout, env=env, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-2000:])
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(script_args)} exited with {proc.returncode}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the reference commit")
    parser.add_argument("--after", type=Path, required=True, help="checkout of the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- then the script (path relative to a checkout) and its arguments")
    args = parser.parse_args()
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("give the benchmark script after --")
    results: dict[str, list[dict[str, list[float | None]]]] = {"before": [], "after": []}
    header: list[str] = []
    for round_no in range(args.rounds):
        for name, checkout in (("before", args.before), ("after", args.after)):
            print(f"round {round_no + 1}/{args.rounds}: {name} ({checkout})", file=sys.stderr, flush=True)
            header, rows = table_rows(run_once(checkout.resolve(), script))
            results[name].append(rows)
    names = list(results["after"][-1])
    columns = header[1:] if header else [f"column {i + 1}" for i in range(len(results["after"][-1][names[0]]))]
    print(f"medians of {args.rounds} alternating rounds: {' '.join(script)}\n")
    print("| row | column | before | after | after/before |")
    print("|---|---|---|---|---|")
    for row in names:
        for i, column in enumerate(columns):
            before = [r[row][i] for r in results["before"] if row in r and i < len(r[row]) and r[row][i] is not None]
            after = [r[row][i] for r in results["after"] if row in r and i < len(r[row]) and r[row][i] is not None]
            if not before or not after:
                continue
            b, a = statistics.median(before), statistics.median(after)
            ratio = f"{a / b:.3f}" if b else "n/a"
            print(f"| {row} | {column} | {b:g} | {a:g} | {ratio} |")


if __name__ == "__main__":
    main()
