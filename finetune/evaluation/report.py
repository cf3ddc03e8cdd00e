"""The self-contained `report.html` of `mgft eval`: metrics table, loss curves, catalog, pictures and audio players.

Everything (PNG pictures, WAV audio) is embedded as data URIs, so the file can be mailed or attached to a ticket and
opens anywhere. A small inline script counts the pictures that decoded and the audio players that loaded their
metadata into `#render-check`, which the tests read back from a headless Chromium.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

HISTORY_FILE = "metrics.jsonl"


def loss_history(run_dir: Path) -> list[dict[str, float]]:
    """Rows `{"step": n, "<metric>": value, ...}` from a run's `metrics.jsonl` (written by `MetricsHistory`)."""
    path = run_dir / HISTORY_FILE  # written by finetune.training.callbacks.MetricsHistory
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curves_png(history: list[dict[str, float]], path: Path) -> Path | None:
    """train/loss and val/ce against the step; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for key in ("train/loss", "val/ce"):
        points = [(row["step"], row[key]) for row in history if key in row]
        if points:
            series[key] = points
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3))
    for key, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
    ax.set(xlabel="step", ylabel="cross-entropy (nats)", title="training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _data_uri(path: str | Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _metrics_table(metrics: dict[str, Any]) -> str:
    models = [name for name in ("model", "baseline") if name in metrics]
    keys = sorted({k for name in models for k, v in metrics[name].items() if isinstance(v, int | float)},
                  key=lambda k: (not k.startswith(("fad", "chroma", "melody")), k.count("_q"), k))
    head = "".join(f"<th>{html.escape(name)}<br><small>{html.escape(str(metrics[name]['model']))}</small></th>"
                   for name in models)
    rows = []
    for key in keys:
        cells = "".join(f"<td>{metrics[name][key]:.4f}</td>" if key in metrics[name] else "<td>-</td>"
                        for name in models)
        rows.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _sample_cells(row: dict[str, str]) -> str:
    parts = [f'<img src="{_data_uri(row["spectrogram"], "image/png")}" alt="spectrogram">']
    if "chroma" in row:
        parts.append(f'<img src="{_data_uri(row["chroma"], "image/png")}" alt="chroma">')
    parts.append(f'<audio controls preload="metadata" src="{_data_uri(row["wav"], "audio/wav")}"></audio>')
    return "<td>" + "".join(parts) + "</td>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
td img { display: block; max-width: 360px; }
img.catalog { display: block; max-width: 100%; }
audio { width: 360px; }
td:first-child { max-width: 220px; }
small { color: #666; font-weight: normal; }
"""

_CHECK = """
<div id="render-check">pending</div>
<script>
function check() {
  const images = [...document.images];
  const audio = [...document.querySelectorAll('audio')];
  const decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const loaded = audio.filter(a => a.readyState >= 1 && a.duration > 0).length;
  document.getElementById('render-check').textContent =
    `images ${decoded}/${images.length} audio ${loaded}/${audio.length}`;
}
window.addEventListener('load', () => { check(); setTimeout(check, 1000); });
document.querySelectorAll('audio').forEach(a => a.addEventListener('loadedmetadata', check));
</script>
"""


def _catalog_section(catalogs: list[dict[str, str | None]]) -> str:
    parts = ["<p>Genres, moods, keys and tempi of the tracks, from the <code>manifest.jsonl</code> that "
             "<code>mgft prep</code> wrote beside the shards; hatched: estimated from the audio (--auto-tags).</p>"]
    for row in catalogs:
        label, shards = html.escape(str(row["label"])), html.escape(str(row["shards"]))
        parts.append(f"<h3>{label}: <code>{shards}</code></h3>")
        parts.append(f'<img class="catalog" src="{_data_uri(row["png"], "image/png")}" alt="{label} catalog">'
                     if row["png"] else "<p>No manifest.jsonl was found beside these shards.</p>")
    return "\n".join(parts)


def write_report(path: Path, metrics: dict[str, Any], samples: dict[str, list[dict[str, str]]],
                 reference: list[dict[str, str]], history: list[dict[str, float]],
                 catalogs: list[dict[str, str | None]] | None = None) -> Path:
    """Write the report.

    Args:
        path: The HTML file to write; the loss curve PNG goes beside it.
        metrics: What metrics.json holds (per model, and `settings`).
        samples: "model"/"baseline" -> their clip rows (`wav`, `spectrogram`, optional `chroma`, `caption`).
        reference: The held-out clip rows, in the same order.
        history: The training run's metric rows (`loss_history`).
        catalogs: Catalog pictures (`label`, `shards`, `png` or None), as `eval.catalog_pictures` makes them.

    Returns:
        `path`.
    """
    settings = metrics.get("settings", {})
    curve = loss_curves_png(history, path.parent / "loss_curves.png")
    curve_html = (f'<img src="{_data_uri(curve, "image/png")}" alt="loss curves">' if curve
                  else "<p>No training history was found (a run folder with metrics.jsonl).</p>")
    columns = ["reference", *samples]
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ["caption", *columns])
    rows = []
    for i, ref in enumerate(reference):
        cells = [_sample_cells(ref)] + [_sample_cells(samples[name][i]) for name in samples]
        rows.append(f"<tr><td>{html.escape(ref['caption'] or '(no caption)')}</td>{''.join(cells)}</tr>")
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mgft eval report</title><style>{_STYLE}</style></head>
<body>
<h1>mgft evaluation</h1>
<p>{settings.get('num_samples', '?')} held-out segments of {settings.get('seconds', 0):.1f} s from
<code>{html.escape(str(settings.get('shards', '')))}</code>; decoder {html.escape(str(settings.get('decoder', '')))},
FAD on {html.escape(str(settings.get('embedder', '')))} embeddings (lower is closer to the held-out audio);
top-k {settings.get('top_k', '')}, CFG {settings.get('cfg', '')}, seed {settings.get('seed', '')}.</p>
<h2>Metrics</h2>
{_metrics_table(metrics)}
<h2>Loss curves</h2>
{curve_html}
<h2>Catalog</h2>
{_catalog_section(catalogs) if catalogs else "<p>No shard set to describe.</p>"}
<h2>Samples</h2>
<table><tr>{header}</tr>{''.join(rows)}</table>
{_CHECK}
</body></html>
"""
    path.write_text(body, encoding="utf-8")
    return path
