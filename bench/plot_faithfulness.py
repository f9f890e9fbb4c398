#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Draws the deletion and insertion curves that faithfulness_bench --json wrote.

Usage: plot_faithfulness.py RESULTS_JSON OUT_PNG
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POINTS = [0, 1, 5, 10, 20, 50]


def main():
    with open(sys.argv[1]) as f:
        report = json.load(f)
    rows = [m for m in report["methods"] if m["task"] == "all"]
    fig, (deletion, insertion) = plt.subplots(1, 2, figsize=(12, 4.8))
    for row in rows:
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if row["method"] == "Random" else {"marker": "o"}
        deletion.plot(POINTS, row["deletion"], label=f"{row['method']} (AOPC {row['comprehensiveness_aopc']:.3f})", **style)
        insertion.plot(POINTS, row["insertion"], label=f"{row['method']} (suff. {row['sufficiency_aopc']:.3f})", **style)
    deletion.set_title("Deletion: top-k% features replaced by <unk>")
    insertion.set_title("Insertion: only the top-k% features kept")
    for axis in (deletion, insertion):
        axis.set_xscale("symlog", linthresh=1)
        axis.set_xticks(POINTS)
        axis.set_xticklabels([str(p) for p in POINTS])
        axis.set_xlabel("% of prompt tokens (ranked by attribution)")
        axis.set_ylabel("mean p(answer)")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(f"{report['model'].rstrip('/').split('/')[-1]}: {report['questions']} held-out questions")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
