"""The results as a table on the terminal, a JSON file and a bar chart.

Ratios are of median wall times (or, for memory, of peak RSS) and are printed beside their targets
with MET or MISSED, whatever they come out as. The in-process column (the case's own clock, without
start-up and imports; ``pipeline run`` prints it to 0.1 s) shows how much of a wall time is start-up.

The large cases (large.py) are rows named ``huge:pipeline``, ``volume:floor`` ...; their pipeline rows
carry the same floor ratios, dask-image's ratio without a target, and a peak-RSS target: below the
whole image in float32.
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
# The photographs' naive floor decodes RGB then mixes gray; the pipeline reads the JPEG's luma plane.
NAIVE_FLOOR_TARGET = 0.85
LIBVIPS_TARGET = 1.0  # the huge image: faster than libvips
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

    def add_info(what: str, kernel: str, value: float | None) -> None:
        out.append({"what": what, "kernel": kernel, "value": value, "target": None, "kind": "info", "verdict": "info"})

    for kernel in SPEEDUP_TARGETS:
        pipe = find(results, "pipeline", kernel)
        if pipe is None:
            continue
        for floor in ("floor", "floor-cli"):
            base = find(results, floor, None)
            value = pipe["summary"]["median_s"] / base["summary"]["median_s"] if base else None
            add(f"pipeline / {floor}", kernel, value, NAIVE_FLOOR_TARGET if floor == "floor" else FLOOR_TARGET, "max")
        other = find(results, "dask-image", kernel)
        value = other["summary"]["median_s"] / pipe["summary"]["median_s"] if other else None
        add("dask-image / pipeline", kernel, value, SPEEDUP_TARGETS[kernel], "min")
    if memory and memory.get("ratio") is not None:
        add(f"RSS({memory['images_10n']}) / RSS({memory['images_n']})", "3x3", memory["ratio"], MEMORY_TARGET, "max")
    for pipe in results:  # the large cases: huge:pipeline, volume:pipeline
        if not pipe.get("workload") or pipe["case"] != f"{pipe['workload']}:pipeline" or not pipe.get("summary"):
            continue
        name, kernel = pipe["workload"], pipe["kernel"]
        for floor in ("floor", "floor-cli"):
            base = find(results, f"{name}:{floor}", None)
            value = pipe["summary"]["median_s"] / base["summary"]["median_s"] if base else None
            add(f"{name}:pipeline / {name}:{floor}", kernel, value, FLOOR_TARGET, "max")
        other = find(results, f"{name}:dask-image", kernel)
        add_info(f"{name}:dask-image / {name}:pipeline", kernel,
                 other["summary"]["median_s"] / pipe["summary"]["median_s"] if other else None)
        vips = find(results, f"{name}:libvips", kernel)
        if vips and vips.get("summary"):
            add(f"{name}:pipeline / {name}:libvips", kernel, pipe["summary"]["median_s"] / vips["summary"]["median_s"],
                LIBVIPS_TARGET, "max")
            raw = find(results, f"{name}:pipeline-raw", kernel)  # both writing uncompressed: the same work
            if raw and raw.get("summary"):
                add(f"{name}:pipeline-raw / {name}:libvips", kernel,
                    raw["summary"]["median_s"] / vips["summary"]["median_s"], LIBVIPS_TARGET, "max")
        add(f"{name}:pipeline peak RSS MiB (< {name} as float32)", kernel, pipe["summary"]["peak_rss_mib"],
            round(pipe["float32_mib"], 1), "max")
    return out


def print_report(console: Console, results: list[dict], checks: list[dict], targets: list[dict],
                 memory: dict | None, images: int, repeats: int) -> None:
    inputs = ([f"{images} images of 2048x2048 RGB JPEG"] if any(not r.get("workload") for r in results) else []) \
        + list(dict.fromkeys(r["input"] for r in results if r.get("workload")))
    table = Table(title=f"{'; '.join(inputs)}. Median of {repeats} run(s), each a fresh process")
    for column in ("case", "kernel", "median s", "min–max s", "in-process s", "peak RSS MiB", "÷ floor", "÷ floor-cli", "dask-image ÷ pipeline", "note"):
        table.add_column(column, justify="left" if column in ("case", "kernel", "note") else "right")
    by_ratio = {(t["what"], t["kernel"]): t for t in targets}
    for row in results:
        summary = row.get("summary")
        if not summary:
            table.add_row(row["case"], row["kernel"], "-", "-", "-", "-", "", "", "", row.get("note", ""))
            continue
        floor = floor_cli = dask = ""
        if row["case"].endswith("pipeline"):  # the ratios belong to the pipeline's rows
            p = row["case"][: -len("pipeline")]  # "" or "huge:" / "volume:"
            floor = _fmt(by_ratio.get((f"{p}pipeline / {p}floor", row["kernel"])))
            floor_cli = _fmt(by_ratio.get((f"{p}pipeline / {p}floor-cli", row["kernel"])))
            dask = _fmt(by_ratio.get((f"{p}dask-image / {p}pipeline", row["kernel"])))
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
        digits = 0 if "MiB" in t["what"] else 2
        value = "-" if t["value"] is None else f"{t['value']:.{digits}f}"
        sign = "≤" if t["kind"] == "max" else "≥"
        target = "-" if t["target"] is None else f"{sign} {t['target']:g}"
        colour = {"MET": "green", "MISSED": "red", "info": "default"}.get(t["verdict"], "yellow")
        verdicts.add_row(t["what"], t["kernel"], value, target, f"[{colour}]{t['verdict']}")
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
            f"[{colour}]{'OK  ' if check['ok'] else 'FAIL'}[/{colour}] correctness {check['case']:<17} "
            f"{check['kernel']:<9} {check['images']}: {detail}",
            highlight=False,
        )


def _fmt(ratio: dict | None) -> str:
    if ratio is None or ratio["value"] is None:
        return "-"
    if ratio["verdict"] not in ("MET", "MISSED"):  # a ratio without a target
        return f"{ratio['value']:.2f}"
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
    """Grouped bars of median seconds, log scale, one colour per case: the collection per kernel
    (floors under 'no conv.'), and beside it, when measured, the large cases per workload."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    class PlainMinor(matplotlib.ticker.LogFormatter):
        """Minor log ticks labelled where matplotlib would (short ranges), as 0.6 or 3, not 6e-01."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    rows = [row for row in results if row.get("summary")]
    collection = [row for row in rows if not row.get("workload")]
    big = [row for row in rows if row.get("workload")]
    panels = [part for part in (collection, big) if part] or [[]]
    variants = list(dict.fromkeys([*(r["case"] for r in collection), *(r["case"].split(":", 1)[1] for r in big)]))
    colours = {name: f"C{i}" for i, name in enumerate(variants)}  # the same case, the same colour
    fig, axes = plt.subplots(1, len(panels), figsize=(9 + 4 * (len(panels) - 1), 5), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": [2 if part is collection else 1 for part in panels]})
    for ax, part in zip(axes[0], panels):
        if part is big:
            groups = list(dict.fromkeys(r["workload"] for r in big))
            cases = list(dict.fromkeys(r["case"].split(":", 1)[1] for r in big))
            first = {g: next(r for r in big if r["workload"] == g) for g in groups}
            labels = [f"{g} {'×'.join(map(str, first[g]['shape']))}\n"
                      f"{next((r['kernel'] for r in big if r['workload'] == g and r['kernel'] != 'none'), '')} kernel"
                      for g in groups]

            def lookup(case: str, group: str) -> dict | None:
                return next((r for r in big if r["case"] == f"{group}:{case}"), None)
        else:
            groups = ["none", *SPEEDUP_TARGETS]
            cases = list(dict.fromkeys(row["case"] for row in part))
            labels = ["no conv. (floors)", *(f"{k} kernel" for k in SPEEDUP_TARGETS)]

            def lookup(case: str, group: str) -> dict | None:
                return find(part, case, None if group == "none" else group)
        width = 0.8 / max(len(cases), 1)
        for i, case in enumerate(cases):
            xs, ys = [], []
            for g, group in enumerate(groups):
                row = lookup(case, group)
                if row:
                    xs.append(g - 0.4 + width * (i + 0.5))
                    ys.append(row["summary"]["median_s"])
            bars = ax.bar(xs, ys, width, label=case, color=colours.get(case))
            ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 2, 5, 10 s, not 10^0.3
        ax.yaxis.set_minor_formatter(PlainMinor(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        lowest = min((row["summary"]["median_s"] for row in part), default=1.0)
        ax.set_ylim(bottom=lowest / 2)  # bars of a log axis need a floor well below the smallest
        ax.set_xticks(range(len(groups)), labels)
        ax.set_ylabel("median wall seconds (log scale)")
        ax.legend(fontsize=8, ncols=2 if part is big else 3)
        ax.grid(axis="y", which="both", alpha=0.3)
        if part is big:
            ax.set_title("one large image each (floors, pipeline, dask-image)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)

