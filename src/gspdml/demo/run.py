"""The demo: GAP vs GSP (+L_ZS) on data shipped with the install, with a report (``gspdml demo``).

Runs, with no download:

1. the token study (paper Sec. 5.1, Fig. 3a): GAP vs GSP on bags of trainable tokens, retrieval
   on unseen classes, embedding-geometry plot with class hulls;
2. the Digits Collage study: GAP, GSP and GSP+L_ZS with a small CNN trained on the seen classes,
   retrieval on unseen classes over several seeds, pooling-weight maps (scored against the known
   target cells) and prototype histograms;
3. with ``full``: 5 seeds, a learned-attention pooling baseline and a clutter sweep (2x2 / 3x3 /
   4x4 grids).

:func:`run_demo` writes ``report.md``, ``metrics.json`` and PNG figures to the run folder and
prints the tables. ``quick`` runs every step on a tiny budget (about a minute; for tests and CI).
"""
from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from gspdml.errors import InputError

__all__ = ["run_demo"]


def _budget(quick: bool, full: bool):
    from gspdml.demo.studies import BUDGETS

    if quick:
        return BUDGETS["quick-full" if full else "quick"]
    return BUDGETS["full" if full else "default"]


def fresh_out_dir(out, kind: str = "demo") -> Path:
    """The run folder ``out`` (default ``gspdml_runs/<kind>-<UTC time>``), created; an existing
    non-empty folder or a file there is an InputError (results are never overwritten)."""
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = Path("gspdml_runs") / f"{kind}-{stamp}"
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"--out {str(path)!r} is not empty; choose a new folder (results are never overwritten)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_demo(out=None, *, quick: bool = False, full: bool = False, seeds: int | None = None,
             device: str = "cpu", threads: int = 1, progress: bool = True) -> dict:
    """Run the demo and write the run folder; returns the results dict (also in ``metrics.json``).

    Args:
        out: the run folder, new or empty (default ``gspdml_runs/demo-<UTC timestamp>``).
        quick: every step on a tiny budget (the numbers are meaningless).
        full: 5 seeds, the learned-attention baseline and the 2x2/3x3/4x4 clutter sweep.
        seeds: number of seeds ``0..N-1`` (default 3, ``full`` 5, ``quick`` 1).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: torch CPU threads while the demo runs (the small models gain little from more,
            and slow down badly when the cores are shared).
        progress: show progress bars.
    """
    from gspdml.engine.distributed import resolve_device

    from gspdml.demo.studies import torch_threads

    with torch_threads(threads):
        resolve_device(device)
        return _run_studies(out, quick, full, seeds, device, progress)


def _run_studies(out, quick: bool, full: bool, seeds: int | None, device: str, progress: bool) -> dict:
    import torch
    from tqdm.auto import tqdm

    import gspdml
    from gspdml.data import build_dataset
    from gspdml.demo import report as rep
    from gspdml.io import write_json
    from gspdml.demo.studies import (
        check_finite, digits_config, digits_datasets, digits_target_mask, run_method, summarize_runs, token_target_mask,
        tokens_config,
    )

    budget = _budget(quick, full)
    if seeds is None:
        seeds = budget.seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds must be a positive integer, got {seeds!r}")
    seed_list = list(range(seeds))
    folder = fresh_out_dir(out)
    start = time.perf_counter()

    token_methods = ("GAP", "GSP")
    digit_methods = budget.digits_methods
    sweep_grids = [g for g in budget.sweep_grids if g != 3]
    sweep_seed_list = seed_list[: budget.sweep_seeds]
    total = (len(seed_list) * (len(token_methods) + len(digit_methods))
             + len(sweep_seed_list) * len(sweep_grids) * len(budget.sweep_methods))
    bar = tqdm(total=total, desc="gspdml demo", unit="run", disable=not progress)

    def note(text: str) -> None:
        if progress:
            bar.write(text)
        else:
            print(text, flush=True)

    results: dict = {}
    figures: dict[str, str] = {}

    # ---- 1. token study --------------------------------------------------------------------
    t_opts = tokens_config("GAP", budget, 0, device)["data"]["options"]
    tok_train = build_dataset("tokens", None, "train", **t_opts)
    tok_test = build_dataset("tokens", None, "test", classes="disjoint",
                             samples_per_class=budget.tokens_test_per_class, seed=0)
    tok_runs = []
    for method in token_methods:
        for seed in seed_list:
            bar.set_postfix_str(f"tokens {method} seed {seed}")
            r = run_method("tokens", method, tokens_config(method, budget, seed, device), tok_train, tok_test,
                           token_target_mask, progress=progress)
            check_finite(r.metrics, f"token study {method} seed {seed}")
            tok_runs.append(r)
            bar.update()
            note(f"tokens  {method:<9} seed {seed}: MAP@R {r.metrics['map_at_r']:.3f}  P@1 "
                 f"{r.metrics['precision_at_1']:.3f}  ({r.seconds:.0f} s)")
    results["tokens"] = {"summary": summarize_runs(tok_runs), "train_size": len(tok_train),
                         "test_size": len(tok_test)}
    from gspdml.viz.geometry import hull_overlap, plot_embedding_geometry, project_2d

    first = {r.method: r for r in tok_runs if r.seed == seed_list[0]}
    class_names = [f"class {c}" for c in tok_test.class_ids]
    geometry_path = plot_embedding_geometry(
        {f"{m} (MAP@R {first[m].metrics['map_at_r']:.2f})": (first[m].embeddings, first[m].labels) for m in token_methods},
        folder / "tokens_geometry.png", title="Token study: unseen classes 8-15, embeddings (PCA to 2-D)",
        class_names=class_names)
    figures["tokens_geometry"] = geometry_path.name
    results["tokens"]["hull_overlap"] = {m: hull_overlap(project_2d(first[m].embeddings), first[m].labels.numpy())
                                         for m in token_methods}

    # ---- 2. digits collage -----------------------------------------------------------------
    def run_digits(methods, grid: int, train_ds, test_ds, seeds) -> list:
        runs = []
        for method in methods:
            for seed in seeds:
                bar.set_postfix_str(f"digits {grid}x{grid} {method} seed {seed}")
                r = run_method("digits", method, digits_config(method, budget, seed, device, grid), train_ds,
                               test_ds, digits_target_mask, progress=progress, grid=grid)
                check_finite(r.metrics, f"digits {grid}x{grid} {method} seed {seed}")
                runs.append(r)
                bar.update()
                w = f"  target wt {r.weights['target_rel']:.2f}x" if r.weights else ""
                note(f"digits {grid}x{grid} {method:<9} seed {seed}: MAP@R {r.metrics['map_at_r']:.3f}  "
                     f"R-Prec {r.metrics['r_precision']:.3f}  P@1 {r.metrics['precision_at_1']:.3f}{w}  "
                     f"({r.seconds:.0f} s)")
        return runs

    dig_train, dig_test = digits_datasets(budget, 3)
    dig_runs = run_digits(digit_methods, 3, dig_train, dig_test, seed_list)
    dig_summary = summarize_runs(dig_runs)
    results["digits"] = {
        "summary": dig_summary, "train_size": len(dig_train), "test_size": len(dig_test),
        "train_classes": dig_train.num_classes, "test_classes": dig_test.num_classes,
        "train_pairs": [list(p) for p in dig_train.pairs], "test_pairs": [list(p) for p in dig_test.pairs],
        "epochs": budget.digits_epochs,
    }
    pair_names = [f"{a}+{b}" for a, b in dig_test.pairs]
    figures.update(rep.digits_weight_figures(dig_runs, seed_list[0], dig_test, pair_names, folder))

    # ---- 3. clutter sweep (full) ----------------------------------------------------------
    if budget.sweep_grids:
        # the 3x3 point reuses the main study's runs of the same seeds
        summaries = {3: summarize_runs([r for r in dig_runs if r.method in budget.sweep_methods
                                        and r.seed in sweep_seed_list])}
        for grid in sweep_grids:
            train_ds, test_ds = digits_datasets(budget, grid)
            summaries[grid] = summarize_runs(run_digits(budget.sweep_methods, grid, train_ds, test_ds,
                                                        sweep_seed_list))
        results["sweep"] = {"summaries": {str(g): s for g, s in sorted(summaries.items())},
                            "seeds": sweep_seed_list}
        figures["clutter_sweep"] = rep.plot_clutter_sweep(summaries, folder / "clutter_sweep.png").name
    bar.close()

    wall = time.perf_counter() - start
    settings = {
        "budget": budget.name, "seeds": len(seed_list), "seed_list": seed_list, "device": device,
        "wall_seconds": wall, "version": gspdml.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
    }
    metrics = {"settings": settings, **results, "figures": figures}
    write_json(folder / "metrics.json", metrics)
    rep.write_report(folder / "report.md", results, figures, settings)

    print()
    print("Token study (unseen classes 8-15)")
    print(rep.summary_table(results["tokens"]["summary"], markdown=False))
    print()
    print("Digits Collage 3x3 (unseen classes)")
    print(rep.summary_table(dig_summary, markdown=False))
    for m in dig_summary:
        if m != "GAP":
            print("  " + rep.verdict(dig_summary, m))
    if "sweep" in results:
        print()
        print("Clutter sweep (MAP@R, GSP - GAP):")
        for g, s in results["sweep"]["summaries"].items():
            print(f"  {g}x{g}: {s['GSP']['mean']['map_at_r'] - s['GAP']['mean']['map_at_r']:+.3f}")
    print(f"\nWall time {wall / 60:.1f} min. Report: {folder / 'report.md'}")
    return metrics
