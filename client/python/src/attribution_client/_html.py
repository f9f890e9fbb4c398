# SPDX-License-Identifier: Apache-2.0
"""The Jupyter heatmap of an Attribution: prompt tokens coloured by attribution (blue positive, red
negative, as Captum's plots; NaN and infinite values grey), fixed tokens grey, and the token matrix as a
table when present."""
from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, List

import numpy as np

if TYPE_CHECKING:
    from .results import Attribution


def _finite_scale(values: np.ndarray) -> float:
    """The largest finite |value|: one NaN or inf must not wash out (or blank) every other cell."""
    finite = np.abs(values[np.isfinite(values)]) if values.size else values
    return float(np.max(finite)) if finite.size else 0.0


def _colour(value: float, scale: float) -> str:
    if not math.isfinite(value):  # grey, as the CLI's heatmap and HTML report show it
        return "rgba(128,128,128,0.35)"
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    rgb = (71, 114, 179) if value >= 0 else (208, 54, 91)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.85 * strength:.3f})"


def _cell(text: str, value: float, scale: float) -> str:
    shown = html.escape(text).replace(" ", "&nbsp;") or "&nbsp;"
    value = value + 0.0  # an exact zero unsigned: LIME answers -0 for the features it drops, as the CLI shows it
    return (f'<td style="background:{_colour(value, scale)};padding:2px 4px;font-family:monospace" '
            f'title="{value:.6g}">{shown}<br><small>{value:.3f}</small></td>')


def _fixed_cell(text: str) -> str:
    shown = html.escape(text).replace(" ", "&nbsp;") or "&nbsp;"
    return (f'<td style="background:#eee;color:#999;padding:2px 4px;font-family:monospace" '
            f'title="fixed: not a feature">{shown}<br><small>fixed</small></td>')


def _prompt_cells(a: "Attribution", scale: float) -> List[str]:
    """The prompt in order, as the CLI's report shows it (client/heatmap.cc PromptPieces): each feature with
    its value and, between them, the fixed tokens, which a feature_range leaves out of the features."""
    fixed = set(a.fixed_tokens)
    cells: List[str] = []
    next_feature = 0  # features are disjoint and in order
    position = 0
    while position < len(a.prompt_tokens):
        if next_feature < len(a.features) and a.features[next_feature].token_begin == position:
            feature = a.features[next_feature]
            cells.append(_cell(feature.text, float(a.sequence[next_feature]), scale))
            position = max(position + 1, feature.token_end)
            next_feature += 1
            continue
        if position in fixed:
            cells.append(_fixed_cell(a.prompt_tokens[position].text))
        position += 1
    cells += [_cell(f.text, float(v), scale) for f, v in zip(a.features[next_feature:], a.sequence[next_feature:])]
    return cells


def attribution_html(a: "Attribution") -> str:
    """A self-contained HTML fragment (no scripts) for Jupyter's rich display."""
    scale = _finite_scale(a.sequence)
    target = html.escape(a.target_text)
    foil = "".join(t.text for t in a.foil_tokens)
    parts: List[str] = [
        f'<div><b>{html.escape(a.method)}</b> on <b>{html.escape(a.model)}</b>, target '
        f'<code>{target}</code>' + (f' minus foil <code>{html.escape(foil)}</code>' if foil else "")
        + f', objective {a.objective:.4f}'
        + (f", convergence delta {a.convergence_delta:.3g}" if a.convergence_delta is not None else "")
        + "</div>",
        "<table style='border-collapse:collapse'><tr>",
    ]
    parts += _prompt_cells(a, scale)
    parts.append("</tr></table>")
    if a.token_matrix is not None:
        parts += _matrix_cells(a)
    return "".join(parts)


# Cells of the token matrix a notebook shows: the limits admit 1,000 features × 2,000 target tokens, whose
# every cell (273 MB of HTML, 5 s) went into the .ipynb.
_MOST_MATRIX_CELLS = 20_000


def _matrix_cells(a: "Attribution") -> List[str]:
    rows, columns = a.token_matrix.shape
    shown_columns = min(columns, _MOST_MATRIX_CELLS)
    shown_rows = min(rows, max(1, _MOST_MATRIX_CELLS // max(shown_columns, 1)))
    matrix = a.token_matrix[:shown_rows, :shown_columns]
    mscale = _finite_scale(a.token_matrix)
    parts = []
    if (shown_rows, shown_columns) != (rows, columns):
        parts.append(f"<div>token matrix: the first {shown_rows} of {rows} target tokens × {shown_columns} of "
                     f"{columns} features (to_dataframe() and to_numpy() hold it all)</div>")
    parts.append("<table style='border-collapse:collapse'><tr><th></th>")
    parts += [f"<th style='font-family:monospace'>{html.escape(f.text)}</th>" for f in a.features[:shown_columns]]
    parts.append("</tr>")
    for token, row in zip(a.target_tokens, matrix):
        parts.append(f"<tr><th style='font-family:monospace'>{html.escape(token.text)}</th>")
        parts += [_cell("", float(v), mscale) for v in row]
        parts.append("</tr>")
    parts.append("</table>")
    return parts
