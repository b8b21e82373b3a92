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


def tables(output: str) -> list[tuple[list[str], dict[str, list[float | None]]]]:
    """Every Markdown table in ``output`` (a block of ``|``-lines: header, ``|---|``, rows): its header cells and
    its data rows by first cell; a cell holding several numbers (``183 / 292``) is as many columns, named
    from the header's ``/``-separated parts when they match."""
    blocks: list[list[list[str]]] = []
    in_table = False
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            if not in_table:
                blocks.append([])
            blocks[-1].append([cell.strip() for cell in line.strip("|").split("|")])
            in_table = True
        else:
            in_table = False
    found = []
    for block in blocks:
        if len(block) < 2 or not all(set(cell) <= set("-: ") for cell in block[1]):
            continue  # not a table: no separator under its first line
        header: list[str] = [block[0][0]]
        widths = [max(len(_NUMBER.findall(cells[i])) if i < len(cells) else 0 for cells in block[2:]) or 1
                  for i in range(1, len(block[0]))]
        for name, width in zip(block[0][1:], widths):
            parts = [part.strip() for part in name.split("/")]
            header += parts if len(parts) == width else [f"{name} [{k + 1}]" if width > 1 else name for k in range(width)]
        rows = {}
        for cells in block[2:]:
            values: list[float | None] = []
            for i, width in enumerate(widths, start=1):
                numbers = [float(n) for n in _NUMBER.findall(cells[i])] if i < len(cells) else []
                values += (numbers + [None] * width)[:width]
            rows[cells[0]] = values
        found.append((header, rows))
    return found


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
    runs: dict[str, list[list[tuple[list[str], dict[str, list[float | None]]]]]] = {"before": [], "after": []}
    for round_no in range(args.rounds):
        for name, checkout in (("before", args.before), ("after", args.after)):
            print(f"round {round_no + 1}/{args.rounds}: {name} ({checkout})", file=sys.stderr, flush=True)
            runs[name].append(tables(run_once(checkout.resolve(), script)))
    print(f"medians of {args.rounds} alternating rounds (before, after, before, ...): {' '.join(script)}")
    for number, (header, last_rows) in enumerate(runs["after"][-1]):
        print(f"\n| {header[0]} | column | before | after | after/before |")
        print("|---|---|---|---|---|")
        for row in last_rows:
            for i, column in enumerate(header[1:]):
                b_values = _values(runs["before"], number, row, i)
                a_values = _values(runs["after"], number, row, i)
                if not b_values or not a_values:
                    continue
                b, a = statistics.median(b_values), statistics.median(a_values)
                ratio = f"{a / b:.3f}" if b else "n/a"
                print(f"| {row} | {column} | {b:g} | {a:g} | {ratio} |")


def _values(rounds: list[list[tuple[list[str], dict[str, list[float | None]]]]], table: int, row: str,
            column: int) -> list[float]:
    """One cell's numbers over the rounds (rounds whose output lacks it are left out)."""
    out = []
    for found in rounds:
        if table < len(found):
            cells = found[table][1].get(row)
            if cells is not None and column < len(cells) and cells[column] is not None:
                out.append(cells[column])
    return out

if __name__ == "__main__":
    main()
