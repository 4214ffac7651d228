"""Tables and plots of a lottery-ticket experiment: accuracy against weights remaining.

``report.md`` holds one row per IMP level (mean and standard deviation over replicates, for the
tickets and each control); ``report.png`` draws test accuracy against the percentage of weights
remaining on a log axis running from dense to sparse, with error bars over replicates, one line
per control, as in Frankle & Carbin 2019 (Figs. 3-5).
"""

from __future__ import annotations

import io
import os

import matplotlib
import matplotlib.ticker
import numpy as np

from experiments import workdir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

STATS = ("test_accuracy", "best_test_accuracy", "early_stop_step")


def _stats(values: list[float]) -> dict:
  a = np.asarray([v for v in values if v is not None], float)
  if a.size == 0:
    return {"mean": None, "std": None}
  return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None}


def aggregate(replicates: list[list[dict]]) -> list[dict]:
  """One row per level from the per-replicate rows: means (and stds) over replicates."""
  rows = []
  for level_rows in zip(*replicates):
    row = {"level": level_rows[0]["level"], "density": level_rows[0]["density"]}
    for key in STATS:
      s = _stats([r.get(key) for r in level_rows])
      row[key], row[f"{key}_std"] = s["mean"], s["std"]
    row["replicate_test_accuracy"] = [r["test_accuracy"] for r in level_rows]
    controls = {}
    for name in level_rows[0].get("controls", {}):
      c = {"density": level_rows[0]["controls"][name]["density"]}
      for key in STATS:
        s = _stats([r["controls"][name].get(key) for r in level_rows])
        c[key], c[f"{key}_std"] = s["mean"], s["std"]
      controls[name] = c
    row["controls"] = controls
    if "instability" in level_rows[0]:
      barriers = [r["instability"]["barrier"] for r in level_rows]
      row["instability"] = {"barrier": float(np.mean(barriers)),
                            "barrier_std": _stats(barriers)["std"],
                            "stable": all(r["instability"]["stable"] for r in level_rows)}
    rows.append(row)
  return rows


def _fmt(mean, std, scale=100.0, digits=2) -> str:
  if mean is None:
    return "-"
  if std is None:  # a single replicate has no spread
    return f"{mean * scale:.{digits}f}"
  return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown(summary: dict) -> str:
  rows = summary["levels"]
  controls = list(rows[0]["controls"]) if rows else []
  for row in rows[1:]:
    controls += [c for c in row["controls"] if c not in controls]
  header = ["level", "weights remaining", "ticket test acc (%)", "best (%)", "early stop"]
  header += [f"{c} test acc (%)" for c in controls]
  if any("instability" in r for r in rows):
    header.append("instability barrier (%)")
  lines = [f"# Lottery tickets: {summary['model']} on {summary['dataset']}", "",
           f"IMP with rewinding to step {summary['rewind_step']}; {summary['replicates']} "
           "replicate(s)" + ("; mean ± standard deviation over replicates." if
                             summary["replicates"] > 1 else "."), "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [str(r["level"]), f"{100 * r['density']:.1f}%",
             _fmt(r["test_accuracy"], r["test_accuracy_std"]),
             _fmt(r["best_test_accuracy"], r["best_test_accuracy_std"]),
             "-" if r["early_stop_step"] is None else f"{r['early_stop_step']:.0f}"]
    for c in controls:
      ctl = r["controls"].get(c)
      cells.append(_fmt(ctl["test_accuracy"], ctl["test_accuracy_std"]) if ctl else "-")
    if "instability" in r:
      cells.append(_fmt(r["instability"]["barrier"], r["instability"]["barrier_std"]))
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "![test accuracy against weights remaining](report.png)", ""]
  return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
  rows = summary["levels"]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  x = [100 * r["density"] for r in rows]
  ax.errorbar(x, [100 * r["test_accuracy"] for r in rows],
              yerr=[100 * (r["test_accuracy_std"] or 0.0) for r in rows], marker="o", capsize=3,
              label=f"IMP ticket (rewind to step {summary['rewind_step']})")
  names = sorted({c for r in rows for c in r["controls"]})
  for name in names:
    pts = [(100 * r["density"], r["controls"][name]) for r in rows if name in r["controls"]]
    ax.errorbar([p[0] for p in pts], [100 * p[1]["test_accuracy"] for p in pts],
                yerr=[100 * (p[1]["test_accuracy_std"] or 0.0) for p in pts], marker="s", capsize=3,
                linestyle="--", label=f"control: {name}")
  if rows:
    ax.axhline(100 * rows[0]["test_accuracy"], color="gray", linewidth=0.8, linestyle=":",
               label="dense")
  ax.set_xscale("log")
  ax.set_xticks(x[::max(1, len(x) // 8)])
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.invert_xaxis()
  ax.set_xlabel("weights remaining (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{summary['model']} on {summary['dataset']} ({summary['replicates']} replicates)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  save_png(fig, path)


def save_png(fig, path: str) -> None:
  """Writes a matplotlib figure as a PNG, atomically (:mod:`experiments.workdir`), and closes it."""
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  workdir.write_bytes(path, buffer.getvalue())


def write(directory: str, summary: dict) -> None:
  """Writes ``report.md`` and ``report.png`` into ``directory``."""
  workdir.write_text(os.path.join(directory, "report.md"), markdown(summary))
  plot(summary, os.path.join(directory, "report.png"))


def printed(summary: dict, directory: str) -> str:
  """What the command line prints at the end of a lottery-ticket run: the table and the figure."""
  return f"{markdown(summary)}\nfigure: {os.path.join(directory, 'report.png')}"
