"""Study: does the zero-shot regulariser L_ZS make GSP's prototypes better attributes? (issue 6, item 5)

The paper (Sec. 5.1, Fig. 5) trains with and without L_ZS and evaluates the zero-shot prediction of
class embeddings from per-class prototype histograms (random class halves, ridge predictor, MAP
with L2 distance and cosine similarity, 1000 repeats), claiming that L_ZS makes it substantially
better. This script repeats that comparison on the shipped data, with the engine
(``gspdml.engine.train``), over several seeds:

* ``digits_collage``: ``smallcnn`` backbone, classes are pairs of digits 4-9 among
  background digits 0-3, so digits are natural shared "attributes". Zero-shot MAP is measured on
  the 8 training classes (fit on 4, predict 4), on the 7 unseen test classes (fit on 4, predict
  3) and on all 15 classes together ("all": fit on 8, predict 7).
* ``tokens`` (default): the synthetic token study (``token_embedding`` backbone, 16 classes in
  both splits; zero-shot MAP on the 16 test classes: fit on 8, predict 8).

Arms: ``gsp`` (GSP, L_ZS off) and ``gsp+zs`` (GSP, L_ZS on, lambda = 0.1); ``--arms`` can add
``gap+zs`` (GSP with mu = 1, i.e. global average pooling with attribute vectors). Each arm is
trained for every seed with identical data, batches and initialisation seeds; the result (mean ±
std over seeds of the per-seed mean MAP, plus retrieval MAP@R on the test split) is printed and
written as JSON. Keep it short on CPU: the defaults take a few minutes on 2 cores.

    python benchmarks/zeroshot_study.py                   # token study, 3 arms x 5 seeds, ~2 min
    python benchmarks/zeroshot_study.py --dataset digits_collage --arms gsp gsp+zs --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ARMS = {
    "gsp": {"pooling_kwargs": {}, "zero_shot": False},
    "gsp+zs": {"pooling_kwargs": {}, "zero_shot": True},
    "gap+zs": {"pooling_kwargs": {"mu": 1.0}, "zero_shot": True},
}

# base config (shipped with gspdml, by name) and the splits on which the zero-shot MAP is measured
DATASETS = {
    "digits_collage": {"config": "digits_collage_gsp", "eval_splits": ("train", "test")},
    "tokens": {"config": "tokens_gsp", "eval_splits": ("test",)},
}


def make_config(args, arm: str, seed: int):
    """The shipped GSP config of the dataset with the study's settings for one arm and seed."""
    from gspdml.config import load_config

    spec, arm_spec = DATASETS[args.dataset], ARMS[arm]
    cfg = load_config(spec["config"])
    pooling_kwargs = dict(cfg.model.pooling_kwargs)
    pooling_kwargs["num_prototypes"] = args.prototypes
    if args.eps is not None:
        pooling_kwargs["eps"] = args.eps
    pooling_kwargs.update(arm_spec["pooling_kwargs"])
    cfg.name = f"zeroshot_{args.dataset}_{arm}_s{seed}"
    cfg.output_dir = None
    cfg.data.options = dict(cfg.data.options, seed=args.data_seed)
    cfg.model.pooling = "gsp"
    cfg.model.pooling_kwargs = pooling_kwargs
    cfg.loss.name = args.loss
    cfg.loss.zero_shot.enabled = arm_spec["zero_shot"]
    cfg.loss.zero_shot.weight = args.zs_weight
    if args.lr is not None:
        cfg.optim.lr = args.lr
    cfg.train.max_steps = args.steps
    cfg.train.eval_every_steps = 0
    cfg.train.save_checkpoints = False
    cfg.train.plot = False
    cfg.train.seed = seed
    cfg.train.device = "cpu"
    cfg.eval.test_at_end = True
    return cfg


def record(row: dict, split: str, zs, suffix: str = "") -> None:
    s = zs.summary()
    row[f"{split}_zs_map_l2{suffix}"] = s["map_l2_mean"]
    row[f"{split}_zs_map_cosine{suffix}"] = s["map_cosine_mean"]
    row[f"{split}_zs_chance"] = s["chance_map"]


def summarise(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "values": a.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="tokens")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["gsp", "gsp+zs", "gap+zs"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per run")
    parser.add_argument("--loss", default="PNCA", help="DML loss (paper Fig. 5: ProxyNCA++)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the shipped config's)")
    parser.add_argument("--prototypes", type=int, default=8, help="GSP prototypes (paper Fig. 5: 8)")
    parser.add_argument("--eps", type=float, default=None, help="GSP eps (default: the shipped config's)")
    parser.add_argument("--zs-weight", type=float, default=0.1, help="lambda of L_ZS")
    parser.add_argument("--repeats", type=int, default=1000, help="random class splits per evaluation")
    parser.add_argument("--eval-ridges", type=float, nargs="+", default=[0.05],
                        help="ridge weights of the evaluation's predictor; the first (paper: 0.05) is the "
                             "main result, the others a sensitivity check")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/zeroshot_study_{dataset}.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gspdml.analysis.zeroshot import class_means, collect_model_outputs, evaluate_zero_shot
    from gspdml.engine import train
    from gspdml.engine.datasets import make_split
    from gspdml.io import write_json

    spec = DATASETS[args.dataset]
    base = make_config(args, args.arms[0], args.seeds[0])
    eval_sets = {split: make_split(base, split, False) for split in spec["eval_splits"]}
    runs = []
    start_all = time.perf_counter()
    for arm in args.arms:
        for seed in args.seeds:
            cfg = make_config(args, arm, seed)
            t0 = time.perf_counter()
            result = train(cfg, progress=False)
            train_s = time.perf_counter() - t0
            row = {
                "arm": arm,
                "seed": seed,
                "train_seconds": round(train_s, 1),
                "test_map_at_r": float(result.final_metrics.get("map_at_r", float("nan"))),
                "test_precision_at_1": float(result.final_metrics.get("precision_at_1", float("nan"))),
            }
            collected = {
                split: collect_model_outputs(result.model, ds, batch_size=cfg.eval.batch_size, progress=False)
                for split, ds in eval_sets.items()
            }
            if len(collected) > 1:  # all classes of all evaluated splits together (disjoint label ranges)
                offset, parts = 0, []
                for out in collected.values():
                    parts.append({**out, "labels": out["labels"] + offset})
                    offset += int(out["labels"].max()) + 1
                collected["all"] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            for split, out in collected.items():
                for i, ridge in enumerate(args.eval_ridges):
                    zs = evaluate_zero_shot(out["marginals"], out["embeddings"], out["labels"],
                                            repeats=args.repeats, ridge=ridge, seed=0)
                    record(row, split, zs, suffix="" if i == 0 else f"_ridge{ridge:g}")
                row[f"{split}_z_spread"] = float(class_means(out["marginals"], out["labels"])[1].std(0).mean())
            runs.append(row)
            print(json.dumps(row), flush=True)

    metrics = [k for k in runs[0] if "_zs_map_" in k or k.endswith(("_map_at_r", "_precision_at_1", "_z_spread"))]
    table = {arm: {k: summarise([r[k] for r in runs if r["arm"] == arm]) for k in metrics} for arm in args.arms}
    paired = {}  # per-seed differences of each L_ZS arm against the plain GSP arm
    if "gsp" in args.arms:
        base_rows = {r["seed"]: r for r in runs if r["arm"] == "gsp"}
        for arm in args.arms:
            if arm == "gsp":
                continue
            rows = [r for r in runs if r["arm"] == arm]
            paired[f"{arm} - gsp"] = {
                k: dict(summarise([r[k] - base_rows[r["seed"]][k] for r in rows]),
                        better=int(sum(r[k] > base_rows[r["seed"]][k] for r in rows)), seeds=len(rows))
                for k in metrics if "_zs_" in k
            }
    chance = {k[: -len("_zs_chance")]: v for k, v in runs[0].items() if k.endswith("_zs_chance")}
    out = {
        "study": "zero-shot attribute MAP of GSP without vs with L_ZS (issue 6 item 5)",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "base_config": spec["config"],
        "backbone": base.model.backbone,
        "chance_map": chance,
        "summary": table,
        "paired_differences": paired,
        "runs": runs,
        "total_seconds": round(time.perf_counter() - start_all, 1),
        "platform": {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
                     "threads": args.threads},
    }
    path = Path(args.out.format(dataset=args.dataset))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)

    print(f"\nzero-shot attribute MAP on {args.dataset} (mean ± std over seeds {args.seeds}; chance {chance})")
    print(f"{'metric':<30}" + "".join(f"{arm:>20}" for arm in args.arms))
    for m in metrics:
        print(f"{m:<30}" + "".join(f"{table[arm][m]['mean']:>11.4f} ± {table[arm][m]['std']:.4f}" for arm in args.arms))
    for name, diffs in paired.items():
        print(f"\npaired per-seed difference {name} (mean ± std; seeds where the arm is better):")
        for k, d in diffs.items():
            print(f"  {k:<30} {d['mean']:+.4f} ± {d['std']:.4f}   ({d['better']}/{d['seeds']})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
