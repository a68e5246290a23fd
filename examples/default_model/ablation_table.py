"""Print `loom eval` JSON reports side by side as a Markdown table (one row per report, named after its file).

python examples/default_model/ablation_table.py runs/ablations/full.json runs/ablations/no_history.json

With `--group-seeds`, reports named `<run>_seed<N>.json` are one row per run: the mean over its seeds, with the
lowest and highest seed in brackets.
"""

import argparse
import json
import re
import statistics
from pathlib import Path

SEED_SUFFIX = re.compile(r"^(?P<run>.+)_seed(?P<seed>\d+)$")

COLUMNS = (
    ("plan exact-match", ("own_plan", "plan_exact_match"), "{:.0%}"),
    ("SSIM (GT plan)", ("gt_plan", "ssim"), "{:.3f}"),
    ("PSNR (GT plan)", ("gt_plan", "psnr"), "{:.2f}"),
    ("step fidelity ↓", ("gt_plan", "step_fidelity"), "{:.3f}"),
    ("temporal coherence", ("gt_plan", "temporal_coherence"), "{:.3f}"),
    ("SSIM (own plan)", ("own_plan", "ssim"), "{:.3f}"),
)


def table(reports: dict[str, dict]) -> str:
    """A Markdown table with one row per named report."""
    lines = [
        "| run | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for run, report in reports.items():
        cells = []
        for _, (section, key), fmt in COLUMNS:
            value = report[section][key]
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float | None], fmt: str) -> str:
    """One cell over seeds: the mean and, for several seeds, [lowest, highest]."""
    if any(value is None for value in values):
        return "n/a"
    mean = fmt.format(statistics.mean(values))
    if len(values) == 1:
        return mean
    return f"{mean} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def seed_table(reports: dict[str, dict]) -> str:
    """A Markdown table with one row per run over its `_seed<N>` reports (mean [min, max])."""
    runs: dict[str, list[dict]] = {}
    for name, report in reports.items():
        match = SEED_SUFFIX.match(name)
        if match is None:
            raise SystemExit(f"error: {name!r} is not named <run>_seed<N>; --group-seeds needs that name")
        runs.setdefault(match["run"], []).append(report)
    lines = [
        "| run | seeds | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for run, seeds in runs.items():
        cells = [_cell([report[section][key] for report in seeds], fmt) for _, (section, key), fmt in COLUMNS]
        lines.append(f"| {run} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="JSON files written by `loom eval --report`")
    parser.add_argument("--group-seeds", action="store_true", help="one row per <run> over its <run>_seed<N> files")
    args = parser.parse_args()
    reports = {Path(path).stem: json.loads(Path(path).read_text()) for path in args.reports}
    samples = {report["num_samples"] for report in reports.values()}
    print(seed_table(reports) if args.group_seeds else table(reports))
    print(f"\n{', '.join(map(str, sorted(samples)))} held-out tutorials per run.")


if __name__ == "__main__":
    main()
