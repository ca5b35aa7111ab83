"""`python -m rlhf.reproduce <claim> [--quick] [--out DIR]` and `python -m rlhf.reproduce --list`."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from rlhf.reproduce import all_claims, run_claim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.reproduce", description=__doc__)
    parser.add_argument("claim", nargs="?", help="claim to reproduce (see --list)")
    parser.add_argument("--list", action="store_true", help="list the claims and exit")
    parser.add_argument("--quick", action="store_true", help="a reduced sweep (minutes), for tests")
    parser.add_argument("--out", type=Path, help="output directory (default: repro/<claim>[-quick])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list or not args.claim:
        for name, claim in all_claims().items():
            print(f"{name:32s} {claim.paper}\n{'':32s} {claim.statement}\n{'':32s} budget: {claim.budget}")
        return 0
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 2))
    out = args.out or Path("repro") / (args.claim + ("-quick" if args.quick else ""))
    run_claim(args.claim, args.quick, out)
    return 0  # the verdict is data, not an exit status


if __name__ == "__main__":
    raise SystemExit(main())
