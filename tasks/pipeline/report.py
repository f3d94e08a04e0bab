"""The run report: one self-contained HTML page per pipeline run, logged to MLflow as ``report/index.html``.

It shows the loss curve (train and validation, inline SVG: no script, no network), base against candidate on
every measured metric, each step's duration, training throughput, CPU- and GPU-seconds, peak memory, a few
validation examples with both models' answers side by side, and the gate decision. Its key figures are logged
as ``report_*`` metrics too. Everything comes from what the run recorded.
"""

from __future__ import annotations

import html
import resource
from dataclasses import dataclass, field

from tasks.evaluate import EvalReport, metrics_of
from tasks.services import tracking

STEPS = ("download", "prepare", "finetune", "merge", "evaluate", "deploy")  # each logs duration_<step>_s
SERIES = {"train_loss": ("train", "#1f77b4"), "eval_loss": ("validation", "#d62728")}


@dataclass
class Usage:
    """CPU-seconds of this process and its finished children since ``start``, and the peak resident memory."""
    cpu_start: float = field(default_factory=lambda: Usage.cpu_now())

    @staticmethod
    def cpu_now() -> float:
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))

    def cpu_seconds(self) -> float:
        return self.cpu_now() - self.cpu_start

    @staticmethod
    def peak_memory_mb() -> float:  # ru_maxrss is in KiB on Linux: the largest of this process and any child
        return max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


def _svg(history: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 300) -> str:
    pad = 48
    points = [p for series in history.values() for p in series]
    if not points:
        return '<p id="loss-curve">no loss was logged by this run</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)

    def xy(x: float, y: float) -> tuple[float, float]:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad), height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    def at(x: float, y: float) -> str:
        return "{:.1f},{:.1f}".format(*xy(x, y))

    parts = [f'<svg id="loss-curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="loss by step">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>',
             f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">step ({x0} to {x1})</text>',
             f'<text x="{pad - 6}" y="{pad}" text-anchor="end" font-size="11">{y1:.3g}</text>',
             f'<text x="{pad - 6}" y="{height - pad}" text-anchor="end" font-size="11">{y0:.3g}</text>']
    for i, (key, series) in enumerate(history.items()):
        label, colour = SERIES[key]
        if series:
            parts.append(f'<polyline class="{label}" data-points="{len(series)}" fill="none" stroke="{colour}" '
                         f'stroke-width="3" points="{" ".join(at(x, y) for x, y in series)}"/>')
            if key == "eval_loss":  # evaluated seldom (often once): each point marked
                circle = '<circle class="{}" cx="{:.1f}" cy="{:.1f}" r="6" fill="{}"/>'
                parts += [circle.format(label, *xy(x, y), colour) for x, y in series]
            parts.append(f'<text x="{width - pad}" y="{pad + 16 * i}" text-anchor="end" fill="{colour}">{label} loss'
                         f' ({series[-1][1]:.4f} at step {series[-1][0]})</text>')
    return "".join(parts) + "</svg>"


def _table(table_id: str, head: list[str], rows: list[list[object]], digits: int = 4) -> str:
    cell = lambda v: html.escape(f"{v:.{digits}f}" if isinstance(v, float) else str(v))  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return (f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def build(run_id: str, report: EvalReport | None, figures: dict[str, float], title: str, decision: str,
          trained_by: str | None = None) -> str:
    """The page's HTML. ``trained_by``: the run whose training this run reused (its loss curve is shown)."""
    c = tracking.client()
    source = trained_by or run_id
    history = {k: [(m.step, m.value) for m in sorted(c.get_metric_history(source, k), key=lambda m: m.step)]
               for k in SERIES}
    metrics = c.get_run(run_id).data.metrics
    durations = [[s, round(metrics[f"duration_{s}_s"], 2) if f"duration_{s}_s" in metrics else "reused / not run"]
                 for s in STEPS]
    sections = [f"<h1>{html.escape(title)}</h1>",
                f'<p id="gate" class="{"passed" if report and report.passed else "failed"}"><b>Decision:</b> '
                f"{html.escape(decision)}</p>",
                "<h2>Loss</h2>" + (f"<p>training reused from run {html.escape(trained_by)}</p>" if trained_by else "")
                + _svg(history)]
    if report is not None:
        base, cand = metrics_of(report.base), metrics_of(report.candidate)
        rows = [[k, base[k], cand[k], cand[k] - base[k]] for k in cand if k in base]
        sections.append("<h2>Base and candidate</h2>" + _table("metrics", ["metric", "base", "candidate", "change"],
                                                                rows))
        examples = [[b.get("instruction", b.get("query", "")) + (" " + b["input"] if b.get("input") else ""),
                     b.get("expected", ""), b.get("got", b.get("top", "")), k.get("got", k.get("top", ""))]
                    for b, k in zip(report.base.samples, report.candidate.samples)]
        sections.append("<h2>Validation examples</h2>" + _table(
            "examples", ["prompt", "expected", "base answered", "candidate answered"], examples))
    sections.append("<h2>Steps</h2>" + _table("durations", ["step", "seconds"], durations, 2))
    sections.append("<h2>Resources</h2>" + _table("resources", ["figure", "value"],
                                                  [[k, v] for k, v in figures.items()], 1))
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.passed{color:#060}.failed{color:#a00}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")


def gpus_used(nproc: int) -> int:
    """GPUs a training of ``nproc`` processes held here (one each), 0 on a machine without CUDA."""
    import torch

    return min(nproc, torch.cuda.device_count()) if torch.cuda.is_available() else 0


def log_report(run_id: str, report: EvalReport | None, usage: Usage, decision: str, title: str,
               tokens_per_second: float | None = None, gpus: int = 0, trained_by: str | None = None) -> dict:
    """Build the page, log it as ``report/index.html`` and its figures as ``report_*`` metrics; returns them."""
    metrics = tracking.client().get_run(run_id).data.metrics
    figures = {"cpu_seconds": round(usage.cpu_seconds(), 1), "peak_memory_mb": round(usage.peak_memory_mb(), 1),
               "gpu_seconds": round(metrics.get("duration_finetune_s", 0.0) * gpus, 1),
               "train_tokens_per_second": round(tokens_per_second or 0.0, 1),
               "wall_seconds": round(sum(metrics.get(f"duration_{s}_s", 0.0) for s in STEPS), 1)}
    tracking.log_text(run_id, build(run_id, report, figures, title, decision, trained_by), "report/index.html")
    tracking.log_metrics(run_id, {f"report_{k}": v for k, v in figures.items()})
    return figures
