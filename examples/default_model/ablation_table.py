"""Print `loom eval` JSON reports side by side as a Markdown table (one row per report, named after its file).

python examples/default_model/ablation_table.py runs/ablations/full.json runs/ablations/no_history.json
"""

import argparse
import json
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="JSON files written by `loom eval --report`")
    args = parser.parse_args()
    reports = {Path(path).stem: json.loads(Path(path).read_text()) for path in args.reports}
    samples = {report["num_samples"] for report in reports.values()}
    print(table(reports))
    print(f"\n{', '.join(map(str, sorted(samples)))} held-out tutorials per run.")


if __name__ == "__main__":
    main()
