"""GSP solver benchmark (same as ``gspdml bench gsp``); see benchmarks/README.md.

    python benchmarks/bench_gsp.py --quick
    python benchmarks/bench_gsp.py --threads 1 --repeats 15 --out bench_results/gsp.json
"""
import sys

from gspdml.bench.gsp import main

if __name__ == "__main__":
    sys.exit(main())
