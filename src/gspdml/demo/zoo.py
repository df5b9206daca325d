"""The pooling zoo (``gspdml study poolings``): every registered pooling on the Digits Collage.

The analogue of the GSP supplement's pooling comparison on data shipped with the install: each
pooling of :data:`gspdml.pooling.POOLINGS` is trained with the demo's digits recipe
(:func:`gspdml.demo.studies.digits_config`: small CNN, contrastive loss C1, Adam with cosine decay,
8 classes x 4 per batch, the same budget for every pooling) for every seed ``0..N-1`` and scored
on the 7 unseen classes (MAP@R, R-Precision, P@1, mean ± sample std over seeds) by
:func:`gspdml.demo.studies.run_method`, the demo's one train-and-score function.

Pooling settings: every pooling with its defaults, except the GSP family (:data:`GSP_FAMILY`),
which gets the demo's GSP settings (``mu = 0.3, eps = 20``, random prototype initialisation, the
budget's number of prototypes). The embedding head is the model config's default
(``model.projection``, not set here).

A run that raises (or gives non-finite metrics) is recorded as failed with its error and shown in
the table; the ranking uses the seeds that finished. The verdict applies the demo's rule
(:func:`gspdml.demo.report.compare`): a gap between two poolings counts only when it is larger
than their combined seed spread ``sqrt(std_a^2 + std_b^2)``.

The run folder holds ``metrics.json`` (settings, per-run results, summary, ranking, verdict),
``runs.csv`` (one row per run), ``summary.csv`` (one row per pooling), ``table.md`` (the ranked
table and the verdict), ``poolings.png`` (bars with the seed spread) and ``settings.json`` (the
resolved settings: budget, seeds, and the full training config of every pooling).
"""
from __future__ import annotations

import csv
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gspdml.errors import InputError, unknown_choice

__all__ = ["GSP_FAMILY", "zoo_poolings", "pooling_spec", "rank_poolings", "zoo_verdict", "zoo_table",
           "plot_zoo", "run_zoo"]

#: poolings that get the demo's GSP settings (mu, eps, init, prototypes); every other one its defaults
GSP_FAMILY = ("gsp", "gmp+gsp", "gem+gsp")

#: metrics of the table, in column order (the ranking uses the first)
ZOO_METRICS = ("map_at_r", "r_precision", "precision_at_1")


def zoo_poolings(names=None) -> list[str]:
    """The poolings to run: ``names`` (checked, duplicates dropped, registry spelling) or every
    registered pooling. An unknown name is a ConfigError listing the choices."""
    from gspdml.pooling import POOLINGS

    if names is None:
        return list(POOLINGS.names())
    out: list[str] = []
    for name in names:
        if name not in POOLINGS:
            raise unknown_choice("pooling", name, POOLINGS.names())
        canonical = POOLINGS.display_name(name)
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise InputError("--poolings needs at least one pooling name")
    return out


def pooling_spec(pooling: str, budget) -> dict:
    """The method spec (as the entries of :data:`gspdml.demo.studies.METHODS`) of ``pooling``."""
    from gspdml.demo.studies import METHODS

    kwargs: dict = {}
    if pooling.lower() in GSP_FAMILY:
        kwargs = {**METHODS["GSP"]["pooling_kwargs"], "num_prototypes": budget.num_prototypes}
    return {"pooling": pooling, "pooling_kwargs": kwargs, "zs": False}


def rank_poolings(summary: dict[str, dict], key: str = "map_at_r") -> list[str]:
    """Pooling names by decreasing mean ``key`` (ties by name)."""
    return sorted(summary, key=lambda name: (-summary[name]["mean"][key], name))


def zoo_verdict(summary: dict[str, dict], key: str = "map_at_r", baseline: str = "gap") -> list[str]:
    """Honest sentences on the ranking: which gaps are larger than the combined seed spread.

    1. the leader against every other pooling: ahead by more than the spread, or within it;
    2. every pooling against ``baseline`` (if it ran): above / below by more than the spread;
    3. the neighbours in the ranking whose gap exceeds the spread (the breaks of the ranking).
    With a single seed no spread is measured and the verdict says so; poolings with only one
    finished seed (the others failed) are left out of the comparisons and named.
    """
    from gspdml.demo.report import METRIC_NAMES, compare

    name = METRIC_NAMES.get(key, key)
    if not summary:
        return ["No pooling finished a run: nothing to rank."]
    single = [p for p in rank_poolings(summary, key) if len(summary[p]["seeds"]) < 2]
    summary = {p: e for p, e in summary.items() if p not in single}
    ranked = rank_poolings(summary, key)
    if not ranked:
        return [f"Single seed: no seed-to-seed spread was measured, so the order by {name} says nothing about "
                "which differences are reliable."]
    tail = ([f"Not compared (one finished seed, no spread): {', '.join(single)}."] if single else [])
    if len(ranked) == 1:
        return [f"Only {ranked[0]} has two or more finished seeds: nothing to compare."] + tail
    seeds = min(len(summary[p]["seeds"]) for p in ranked)
    lead = ranked[0]
    ahead, close = [], []
    for other in ranked[1:]:
        diff, noise, _ = compare(summary[lead], summary[other], key)
        (ahead if diff > noise else close).append(other)
    lines = [f"{lead} ranks first by {name} ({summary[lead]['mean'][key]:.3f}); "
             + (f"its lead over {', '.join(close)} is within the combined seed spread (no reliable order among "
                "them)" if close else "it is ahead of every other pooling by more than the combined seed spread")
             + (f"; it is ahead of {', '.join(ahead)} by more than the spread." if ahead and close else ".")]
    if baseline in summary:
        above, below, level = [], [], []
        for other in ranked:
            if other == baseline:
                continue
            diff, noise, _ = compare(summary[other], summary[baseline], key)
            (above if diff > noise else below if -diff > noise else level).append(other)
        lines.append(f"Against {baseline}: above by more than the spread: {', '.join(above) or 'none'}; "
                     f"below by more than the spread: {', '.join(below) or 'none'}; "
                     f"within the spread: {', '.join(level) or 'none'}.")
    breaks = []
    for upper, lower in zip(ranked, ranked[1:]):
        diff, noise, _ = compare(summary[upper], summary[lower], key)
        if diff > noise:
            breaks.append(f"{upper} > {lower} ({diff:+.3f} vs spread {noise:.3f})")
    lines.append("Neighbours in the ranking separated by more than their spread: "
                 + ("; ".join(breaks) if breaks else "none (the ranking is one continuum within the seed noise)")
                 + f". At least {seeds} seeds each.")
    return lines + tail


def zoo_table(summary: dict[str, dict], failures: dict[str, list[dict]], seeds: int,
              key: str = "map_at_r", markdown: bool = True) -> str:
    """The ranked table: rank, pooling, the metrics (mean ± std), target weight, seeds finished,
    s/run, status; poolings with failed runs say so (all-failed ones at the bottom, unranked)."""
    from gspdml.demo.report import METRIC_NAMES, _pm
    from gspdml.io import format_table

    cols = ["rank", "pooling", *(METRIC_NAMES[k] for k in ZOO_METRICS), "target wt (x unif.)", "seeds", "s/run",
            "status"]
    rows = []
    for rank, pooling in enumerate(rank_poolings(summary, key), 1):
        entry = summary[pooling]
        failed = failures.get(pooling, [])
        status = "ok" if not failed else "; ".join(f"seed {f['seed']} failed: {f['error']}" for f in failed)
        rows.append([str(rank), pooling, *(_pm(entry, k) for k in ZOO_METRICS), _pm(entry, "target_rel", 2),
                     f"{len(entry['seeds'])}/{seeds}", f"{np.mean(entry['seconds']):.1f}", status])
    for pooling, failed in failures.items():
        if pooling in summary:
            continue
        rows.append(["-", pooling, *(["failed"] * len(ZOO_METRICS)), "-", f"0/{seeds}", "-",
                     "failed: " + "; ".join(f"seed {f['seed']}: {f['error']}" for f in failed)])
    return format_table(cols, rows, markdown=markdown)


def plot_zoo(summary: dict[str, dict], failures: dict[str, list[dict]], path: str | os.PathLike,
             key: str = "map_at_r") -> Path:
    """Horizontal bars (mean, error bar = sample std over seeds, dots = the seeds) of every metric,
    poolings in the ranking order of ``key``; poolings whose runs all failed are marked."""
    from matplotlib.figure import Figure

    from gspdml.demo.report import METRIC_NAMES
    from gspdml.viz.figure import save_figure

    ranked = rank_poolings(summary, key)
    dead = [p for p in failures if p not in summary]
    names = ranked + dead
    if not names:
        raise InputError("plot_zoo: no pooling to plot")
    y = np.arange(len(names))
    fig = Figure(figsize=(10.5, 1.2 + 0.32 * len(names)), layout="constrained")
    axes = fig.subplots(1, len(ZOO_METRICS), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, ZOO_METRICS):
        mean = np.array([summary[p]["mean"][metric] for p in ranked])
        std = np.array([summary[p]["std"][metric] for p in ranked])
        ax.barh(y[: len(ranked)], mean, xerr=std, capsize=2.5, color="C0", alpha=0.75, error_kw={"linewidth": 1})
        for i, p in enumerate(ranked):
            vals = summary[p]["values"][metric]
            ax.plot(vals, [i] * len(vals), "k.", markersize=3)
        for i in range(len(ranked), len(names)):
            ax.text(0.01, i, "failed", va="center", fontsize=7, color="C3")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"unseen-class {METRIC_NAMES[metric]}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    seeds = max((len(summary[p]["seeds"]) for p in ranked), default=0)
    fig.suptitle(f"Pooling zoo on the Digits Collage: mean ± std over {seeds} seed(s), ranked by "
                 f"{METRIC_NAMES.get(key, key)}", fontsize=10)
    return save_figure(fig, path, dpi=110)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def run_zoo(out=None, *, poolings=None, seeds: int = 3, quick: bool = False, device: str = "cpu",
            threads: int = 1, progress: bool = True) -> dict:
    """Run the pooling zoo and write the run folder; returns the results (also in ``metrics.json``).

    Args:
        out: the run folder, new or empty (default ``gspdml_runs/zoo-<UTC timestamp>``).
        poolings: pooling names (default: every registered pooling).
        seeds: number of seeds ``0..N-1`` per pooling.
        quick: the demo's tiny ``quick`` budget (the numbers are meaningless; for tests).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: torch CPU threads while the study runs.
        progress: a progress bar over the runs.

    ``result["all_failed"]`` is True when no run finished.
    """
    from gspdml.demo.run import fresh_out_dir
    from gspdml.demo.studies import torch_threads
    from gspdml.engine.distributed import resolve_device

    names = zoo_poolings(poolings)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds must be a positive integer, got {seeds!r}")
    with torch_threads(threads):
        resolve_device(device)
        folder = fresh_out_dir(out, "zoo")
        return _run(folder, names, seeds, quick, device, progress)


def _run(folder: Path, names: list[str], seeds: int, quick: bool, device: str, progress: bool) -> dict:
    import torch
    from tqdm.auto import tqdm

    import gspdml
    from gspdml.demo.studies import (
        BUDGETS, check_finite, digits_config, digits_datasets, digits_target_mask, run_method, summarize_runs,
    )
    from gspdml.io import write_json

    budget = BUDGETS["quick" if quick else "default"]
    seed_list = list(range(seeds))
    train_ds, test_ds = digits_datasets(budget)
    specs = {p: pooling_spec(p, budget) for p in names}
    configs = {p: digits_config(p, budget, 0, device, spec=specs[p]) for p in names}
    start = time.perf_counter()
    done, records = [], []
    failures: dict[str, list[dict]] = {}
    bar = tqdm(total=len(names) * seeds, desc="gspdml study poolings", unit="run", disable=not progress)

    def note(text: str) -> None:
        (bar.write if progress else print)(text)

    for pooling in names:
        for seed in seed_list:
            bar.set_postfix_str(f"{pooling} seed {seed}")
            t0 = time.perf_counter()
            try:
                r = run_method("digits", pooling, digits_config(pooling, budget, seed, device, spec=specs[pooling]),
                               train_ds, test_ds, digits_target_mask, progress=False)
                check_finite(r.metrics, f"pooling {pooling} seed {seed}")
            except Exception as exc:  # noqa: BLE001 - a failed pooling is a result of the study
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300].replace("|", "/")
                failures.setdefault(pooling, []).append({"seed": seed, "error": error})
                records.append({"pooling": pooling, "seed": seed, "status": "failed", "error": error,
                                "seconds": time.perf_counter() - t0})
                note(f"{pooling:<12} seed {seed}: FAILED  {error}")
            else:
                done.append(r)
                records.append({"pooling": pooling, "seed": seed, "status": "ok", "error": "",
                                "seconds": r.seconds, **r.metrics,
                                "target_rel": r.weights.get("target_rel")})
                note(f"{pooling:<12} seed {seed}: MAP@R {r.metrics['map_at_r']:.3f}  R-Prec "
                     f"{r.metrics['r_precision']:.3f}  P@1 {r.metrics['precision_at_1']:.3f}  ({r.seconds:.0f} s)")
            bar.update()
    bar.close()
    wall = time.perf_counter() - start

    summary = summarize_runs(done)
    ranking = rank_poolings(summary)
    verdict = zoo_verdict(summary)
    table = zoo_table(summary, failures, seeds)
    settings = {
        "study": "poolings", "budget": asdict(budget), "seeds": seeds, "seed_list": seed_list, "poolings": names,
        "device": device, "threads": torch.get_num_threads(), "wall_seconds": wall,
        "version": gspdml.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "train_size": len(train_ds), "test_size": len(test_ds), "test_classes": test_ds.num_classes,
        "pooling_kwargs": {p: specs[p]["pooling_kwargs"] for p in names},
        "configs": configs,
    }
    write_json(folder / "settings.json", settings)
    figure = plot_zoo(summary, failures, folder / "poolings.png")
    header = ["pooling", "seed", "status", *ZOO_METRICS, "target_rel", "seconds", "error"]
    _write_csv(folder / "runs.csv", header, [[r["pooling"], r["seed"], r["status"],
                                              *(r.get(k, "") for k in ZOO_METRICS), "" if r.get("target_rel") is None else r["target_rel"],
                                              round(r["seconds"], 2), r["error"]] for r in records])
    s_header = ["rank", "pooling", "seeds_ok", "seeds_failed",
                *(f"{k}_{s}" for k in ZOO_METRICS for s in ("mean", "std")), "seconds_per_run"]
    s_rows = [[i, p, len(summary[p]["seeds"]), len(failures.get(p, [])),
               *(summary[p][s][k] for k in ZOO_METRICS for s in ("mean", "std")),
               round(float(np.mean(summary[p]["seconds"])), 2)] for i, p in enumerate(ranking, 1)]
    s_rows += [["", p, 0, len(f), *([""] * 2 * len(ZOO_METRICS)), ""] for p, f in failures.items() if p not in summary]
    _write_csv(folder / "summary.csv", s_header, s_rows)
    (folder / "table.md").write_text(
        f"# Pooling zoo: Digits Collage, unseen classes\n\n"
        f"Budget `{budget.name}` ({budget.digits_epochs} epochs, {len(train_ds)} training images of "
        f"{train_ds.num_classes} classes; {len(test_ds)} test images of {test_ds.num_classes} unseen classes), "
        f"seeds {', '.join(map(str, seed_list))}, device {device}; wall time {wall / 60:.1f} min. "
        f"Mean ± sample std over seeds; ranked by MAP@R.\n\n{table}\n\n"
        + "\n".join(f"- {line}" for line in verdict) + "\n\n![pooling zoo](poolings.png)\n")
    metrics = {"settings": {k: v for k, v in settings.items() if k != "configs"}, "runs": records,
               "summary": summary, "ranking": ranking, "failures": failures, "verdict": verdict,
               "all_failed": not done, "files": ["metrics.json", "settings.json", "runs.csv", "summary.csv",
                                                 "table.md", figure.name]}
    write_json(folder / "metrics.json", metrics)

    print()
    print("Pooling zoo, Digits Collage 3x3 (unseen classes), ranked by MAP@R")
    print(zoo_table(summary, failures, seeds, markdown=False))
    for line in verdict:
        print("  " + line)
    print(f"\nWall time {wall / 60:.1f} min. Table: {folder / 'table.md'}")
    return metrics
