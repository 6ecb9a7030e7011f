"""Run the full chrysalis benchmark: `python benchmarks/run.py [--quick] [--threads N] [--out F]`.

Same as `chrysalis bench`; writes benchmarks/results-<threads>t.json by default.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from chrysalis.bench import cli_entry  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"results-{a.threads or 'default'}t.json")
    cli_entry(quick=a.quick, out=out, threads=a.threads)
