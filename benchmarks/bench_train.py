"""Training-step throughput, GAP vs GSP (BN-Inception and ResNet-50, 227 px, batch 32), in one run.

Thin wrapper around ``gspdml bench train``; same arguments, e.g.::

    python benchmarks/bench_train.py --threads 1 --steps 3 --warmup 1
    python benchmarks/bench_train.py --quick
"""
import sys

from gspdml.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
