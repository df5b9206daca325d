"""MAP@R evaluation time on 60,000 x 128 synthetic embeddings (~11,000 classes): ours vs plain torch.

Thin wrapper around ``gspdml bench eval``; same arguments, e.g.::

    python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --quick
"""
import sys

from gspdml.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "eval", *sys.argv[1:]]))
