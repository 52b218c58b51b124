"""Cumulative error distribution (CED) plots, drawn with matplotlib (the optional `plot` extra)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..about import install_hint
from ..errors import InputError, SpigaError
from ..io import write_output
from .metrics import auc, ced


def _figure_class():
    try:
        # The object-oriented API draws without pyplot: no GUI backend, no global state.
        from matplotlib.figure import Figure
    except ImportError:
        raise SpigaError(f"CED plots need matplotlib: {install_hint('plot')}") from None
    return Figure


def plot_ced(curves: Mapping[str, np.ndarray], threshold: float, path: str | os.PathLike,
             title: str | None = None, x_max: float | None = None) -> None:
    """Draw one CED curve per entry of `curves` (label -> image NMEs (N,)) and save it.

    The threshold is marked with a dashed line and each legend entry carries its AUC at
    that threshold. The file format follows the extension of `path` (png, pdf, svg, ...);
    the file is written atomically.

    Args:
        curves: label (a model, a subset) -> image NMEs in percent.
        threshold: the AUC/FR threshold, in percent.
        path: the output image.
        title: optional title.
        x_max: right end of the error axis; 1.25 x the threshold by default.
    """
    if not curves:
        raise InputError("no curves to plot")
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    figure = _figure_class()(figsize=(6.4, 4.8), layout="constrained")
    supported = figure.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InputError(f"{path}: cannot draw a plot as {fmt or 'a file without extension'!r}; "
                         f"use one of: {', '.join(sorted(supported))}")
    x_max = float(x_max if x_max is not None else threshold * 1.25)
    axes = figure.subplots()
    for label, nme in curves.items():
        errors, fractions = ced(nme)
        # Carry the last step on to the right edge so every curve spans the axis.
        errors = np.append(errors, max(x_max, errors[-1]))
        fractions = np.append(fractions, fractions[-1])
        axes.plot(errors, fractions * 100.0, drawstyle="steps-post",
                  label=f"{label} (AUC@{threshold:g} = {auc(nme, threshold):.2f})")
    axes.axvline(threshold, color="0.4", linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
    axes.set_xlim(0.0, x_max)
    axes.set_ylim(0.0, 100.0)
    axes.set_xlabel("NME (%)")
    axes.set_ylabel("faces with NME at most x (%)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    if title:
        axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    write_output(path, buffer.getvalue())
