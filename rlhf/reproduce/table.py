"""The README's claims table, written from the claims' reports:
`python -m rlhf.reproduce.table [--repro repro/] [--readme README.md] [--check]`.

Each row comes from `<repro>/<claim>/results.json` (a full run, never `--quick`): the claim as
tested, runs and wall time, and the verdict with the measured effects. A claim without a full
report here keeps its current row (the command says which). The table sits between two marker
comments in the README; `--check` exits 1 when the README differs from what it would write.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf.reproduce import all_claims

BEGIN, END = "<!-- claims table: python -m rlhf.reproduce.table -->", "<!-- end of claims table -->"
HEADER = ["| claim | paper's claim tested | runs, wall time (2 cores) | latest verdict |", "|---|---|---|---|"]


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def row(result: dict) -> str:
    verdict = f"**{result['outcome']}**: {cell(result['measured'])}"
    if result.get("history"):
        verdict += f" (criterion revised {len(result['history'])}x; the earlier verdicts are in the report)"
    if result.get("doc"):
        verdict += f" ([{result['doc']}]({result['doc']}))"
    return (f"| `{result['claim']}` | {cell(result.get('statement', ''))} | {len(result['runs'])} runs, "
            f"{result.get('minutes', '?')} min | {verdict} |")


def current_rows(readme: str) -> dict[str, str]:
    rows = {}
    for line in readme.splitlines():
        if line.startswith("| `") and "`" in line[3:]:
            rows[line[3:line.index("`", 3)]] = line
    return rows


def build(readme: str, repro: Path, log=print) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README has no claims table markers ({BEGIN} ... {END})")
    head, rest = readme.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    kept = current_rows(old)
    lines = [*HEADER]
    for name in all_claims():
        path = repro / name / "results.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        if result and not result.get("quick") and "measured" in result:
            lines.append(row(result))
        elif name in kept:
            log(f"[table] {name}: no full report under {repro}; kept its current row")
            lines.append(kept[name])
        else:
            log(f"[table] {name}: no full report and no current row; run python -m rlhf.reproduce {name}")
    return head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.reproduce.table", description=__doc__)
    parser.add_argument("--repro", type=Path, default=Path("repro"), help="directory of the claims' reports")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    new = build(readme, args.repro)
    if args.check:
        return int(new != readme)
    args.readme.write_text(new)
    print(f"[table] wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
