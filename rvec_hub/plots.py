"""The compression plot a vector's card embeds: per-layer delta norm and captured energy."""

from __future__ import annotations

import math
import re
from pathlib import Path

from .manifest import TensorEntry

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def per_layer(entries: list[TensorEntry]) -> list[tuple[str, float, float]]:
    """(label, delta norm, captured energy) per decoder layer, then one row for the other tensors.

    Captured energy is 1 − ‖Δ − Δ̂‖² / ‖Δ‖² over the layer's tensors.
    """
    groups: dict[str, list[float]] = {}
    order: list[str] = []
    for e in entries:
        match = _LAYER.search(e.name)
        label = match.group(1) if match else "other"
        if label not in groups:
            groups[label] = [0.0, 0.0]
            order.append(label)
        norm = e.stats.get("norm", 0.0)
        groups[label][0] += norm**2
        groups[label][1] += (e.stats.get("rel_error", 0.0) * norm) ** 2
    order.sort(key=lambda k: (k == "other", int(k) if k.isdigit() else 0))
    return [(k, math.sqrt(groups[k][0]), 1.0 - groups[k][1] / groups[k][0] if groups[k][0] else 1.0) for k in order]


def write_compression_plot(entries: list[TensorEntry], path: Path) -> Path:
    """Write the per-layer PNG (bars: ‖Δ‖, line: captured energy) and return its path.

    Args:
        entries: the compressed vector's tensor entries (with `norm` and `rel_error` stats).
        path: the PNG to write, normally `assets/compression.png` inside the vector directory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = per_layer(entries)
    labels = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 3.2), dpi=110)
    ax.bar(range(len(rows)), [r[1] for r in rows], color="#9db4d6", label="‖Δ‖ per layer")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("delta norm ‖Δ‖")
    twin = ax.twinx()
    twin.plot(range(len(rows)), [r[2] for r in rows], color="#c0392b", marker="o", ms=3, label="captured energy")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("captured energy")
    ax.set_title("Per-layer delta norm and energy the compressed vector keeps", fontsize=9)
    fig.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
