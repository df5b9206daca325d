"""GSP solver speed vs GAP, the cost floor and the paper's fixed point; see benchmarks/README.md.

Thin wrapper around ``gspdml bench gsp``; same arguments, e.g.::

    python benchmarks/bench_gsp.py --quick
    python benchmarks/bench_gsp.py --threads 1 --repeats 15 --out bench_results/gsp.json
"""
import sys

from gspdml.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "gsp", *sys.argv[1:]]))
