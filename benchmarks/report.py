"""The results as a table on the terminal, a JSON file and a bar chart.

Ratios are of median wall times (or, for memory, of peak RSS) and are printed beside their targets
with MET or MISSED, whatever they come out as. The in-process column (the case's own clock, without
start-up and imports; ``pipeline run`` prints it to 0.1 s) shows how much of a wall time is start-up.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

from rich.console import Console
from rich.table import Table

# Targets: dask-image/pipeline at least these; pipeline/floor and RSS(10N)/RSS(N) at most these.
SPEEDUP_TARGETS = {"3x3": 2.3, "15x15": 7.0, "31x31": 25.0}
FLOOR_TARGET = 1.10
MEMORY_TARGET = 1.2
PACKAGES = ("numpy", "dask", "zarr", "numcodecs", "scipy", "opencv-python-headless", "dask-image",
            "pims", "imageio", "psutil", "imageconv-pipeline")


def summarize(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    seconds = [run["seconds"] for run in runs]
    inner = [run["inner_seconds"] for run in runs if run.get("inner_seconds") is not None]
    return {
        "median_inner_s": median(inner) if inner else None,
        "median_s": median(seconds), "min_s": min(seconds), "max_s": max(seconds),
        "peak_rss_mib": median(run["peak_rss_mib"] for run in runs),
        "tree_rss_mib": median(run["tree_rss_mib"] for run in runs),
    }


def find(results: list[dict], case: str, kernel: str | None) -> dict | None:
    for row in results:
        if row["case"] == case and row["kernel"] == (kernel or "none") and row.get("summary"):
            return row
    return None


def ratios(results: list[dict], memory: dict | None) -> list[dict[str, Any]]:
    """Every targeted ratio that the measured cases allow, with its verdict."""
    out = []

    def add(what: str, kernel: str, value: float | None, target: float, kind: str) -> None:
        met = None if value is None else (value <= target if kind == "max" else value >= target)
        out.append({"what": what, "kernel": kernel, "value": value, "target": target, "kind": kind,
                    "verdict": "n/a" if met is None else ("MET" if met else "MISSED")})

    for kernel in SPEEDUP_TARGETS:
        pipe = find(results, "pipeline", kernel)
        if pipe is None:
            continue
        for floor in ("floor", "floor-cli"):
            base = find(results, floor, None)
            value = pipe["summary"]["median_s"] / base["summary"]["median_s"] if base else None
            add(f"pipeline / {floor}", kernel, value, FLOOR_TARGET, "max")
        other = find(results, "dask-image", kernel)
        value = other["summary"]["median_s"] / pipe["summary"]["median_s"] if other else None
        add("dask-image / pipeline", kernel, value, SPEEDUP_TARGETS[kernel], "min")
    if memory and memory.get("ratio") is not None:
        add(f"RSS({memory['images_10n']}) / RSS({memory['images_n']})", "3x3", memory["ratio"], MEMORY_TARGET, "max")
    return out


def print_report(console: Console, results: list[dict], checks: list[dict], targets: list[dict],
                 memory: dict | None, images: int, repeats: int) -> None:
    table = Table(title=f"{images} images of 2048x2048 RGB JPEG, median of {repeats} run(s), each a fresh process")
    for column in ("case", "kernel", "median s", "min–max s", "in-process s", "peak RSS MiB", "÷ floor", "÷ floor-cli", "dask-image ÷ pipeline", "note"):
        table.add_column(column, justify="left" if column in ("case", "kernel", "note") else "right")
    by_ratio = {(t["what"], t["kernel"]): t for t in targets}
    for row in results:
        summary = row.get("summary")
        if not summary:
            table.add_row(row["case"], row["kernel"], "-", "-", "-", "-", "", "", "", row.get("note", ""))
            continue
        floor = floor_cli = dask = ""
        if row["case"] == "pipeline":  # the ratios belong to the pipeline's rows
            floor = _fmt(by_ratio.get(("pipeline / floor", row["kernel"])))
            floor_cli = _fmt(by_ratio.get(("pipeline / floor-cli", row["kernel"])))
            dask = _fmt(by_ratio.get(("dask-image / pipeline", row["kernel"])))
        table.add_row(
            row["case"], row["kernel"], f"{summary['median_s']:.2f}",
            f"{summary['min_s']:.2f}–{summary['max_s']:.2f}",
            "-" if summary["median_inner_s"] is None else f"{summary['median_inner_s']:.2f}",
            f"{summary['peak_rss_mib']:.0f}",
            floor, floor_cli, dask, row.get("note", ""),
        )
    console.print(table)

    verdicts = Table(title="targets")
    for column in ("ratio", "kernel", "value", "target", "verdict"):
        verdicts.add_column(column)
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        sign = "≤" if t["kind"] == "max" else "≥"
        colour = {"MET": "green", "MISSED": "red"}.get(t["verdict"], "yellow")
        verdicts.add_row(t["what"], t["kernel"], value, f"{sign} {t['target']:g}", f"[{colour}]{t['verdict']}")
    if targets:
        console.print(verdicts)

    if memory:
        if memory.get("ratio") is None:
            console.print(f"memory: {memory.get('note', 'not measured')}")
        else:
            console.print(
                f"memory (pipeline, 3x3 edge): peak RSS {memory['rss_n_mib']:.0f} MiB at {memory['images_n']} images, "
                f"{memory['rss_10n_mib']:.0f} MiB at {memory['images_10n']} images "
                f"({memory['seconds_10n']:.1f} s, one run); ratio {memory['ratio']:.2f} (target ≤ {MEMORY_TARGET})",
                highlight=False,
            )
    for check in checks:
        colour = "green" if check["ok"] else "red"
        detail = check["problem"] or f"max rel error {check['max_rel_error']:.1e} ≤ 1e-4, {check['codec']}"
        console.print(
            f"[{colour}]{'OK  ' if check['ok'] else 'FAIL'}[/{colour}] correctness {check['case']:<12} "
            f"{check['kernel']:<9} {check['images']}: {detail}",
            highlight=False,
        )


def _fmt(ratio: dict | None) -> str:
    if ratio is None or ratio["value"] is None:
        return "-"
    return f"{ratio['value']:.2f} {ratio['verdict']}"


def pipeline_source() -> dict[str, str]:
    """Which pipeline code was measured: where it was imported from, and the repository's state."""
    import subprocess

    import pipeline

    folder = Path(pipeline.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    changed = git("status", "--porcelain", "--", ".")
    return {"path": str(folder), "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": "unknown" if changed == "unknown" else str(bool(changed)).lower()}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    import cv2

    found["cv2"] = cv2.__version__
    return found


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def write_chart(path: Path, results: list[dict], title: str) -> None:
    """Grouped bars: median seconds per kernel (floors under 'no conv.'), one colour per case, log scale."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results if row.get("summary")]
    groups = ["none", *SPEEDUP_TARGETS]
    cases = list(dict.fromkeys(row["case"] for row in rows))
    width = 0.8 / max(len(cases), 1)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for i, case in enumerate(cases):
        xs, ys = [], []
        for g, kernel in enumerate(groups):
            row = find(rows, case, None if kernel == "none" else kernel)
            if row:
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(row["summary"]["median_s"])
        bars = ax.bar(xs, ys, width, label=case)
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 2, 5, 10 s, not 10^0.3
    lowest = min((row["summary"]["median_s"] for row in rows), default=1.0)
    ax.set_ylim(bottom=lowest / 2)  # bars of a log axis need a floor well below the smallest
    ax.set_xticks(range(len(groups)), ["no conv. (floors)", *(f"{k} kernel" for k in SPEEDUP_TARGETS)])
    ax.set_ylabel("median wall seconds (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=3)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
