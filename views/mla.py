"""The MLA view: what multi-head latent attention (deepseek2) keeps in its cache, and how much
that saves, for the selected layer and step.

    MLA · step 2 (decode) · layer 1/2 · absorbed form
    cache per token and layer
      MLA   256 B  latent 48 + k_pe 16 values × 4 B
      MHA   768 B  4 heads × (k 32 + v 16) values × 4 B · MLA caches 3.0× less
      at step 2    20 tokens × 2 layers   MLA 10.0 KiB   MHA 30.0 KiB   saved 20.0 KiB
      whole run    21 tokens × 2 layers   ...
    RoPE  YaRN ×40 over 20 positions · pairs 0 kept · 1 ramp · 2-7 ÷40
          q_pe/k_pe length ×1.000 · softmax scale 0.281 (YaRN's mscale² / √k_head)
    ‖latent‖ per cached token     (a column per token; this step's rows in orange)
    k_pe per cached token         (a row per RoPE pair: its first value, blue < 0 < red,
                                   and the angle it turns per position, ÷40 where YaRN slows it)

Reads the layer's `mla` events from step 0 to the selected step (engine/models/deepseek2.py
writes them): each holds the rows that step added to the cache, `latent` [T, kv_lora_rank] and
the rotated `k_pe` [T, rope_dim], so stacking them gives the whole cache of that layer as it
stood after the step. The sizes, the form and the RoPE scaling are the event's scalars; each
pair's angle per position comes from the model's `rope_theta` (the trace's info) and `yarn_ramp`.
Tokens beyond the width are cut from the left (the newest stay).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual.widget import Widget

from traces.base import Trace
from views import colors
from views.charts import column_chart
from views.format import step_kind
from views.geometry import NoScrollLayout
from views.qkv import diverging
from views.safe import NL, assemble, fit
from views.selection import Selection

LABEL_WIDTH = 8
CHART_ROWS = 4
MAX_PAIR_ROWS = 8
TAIL_WIDTH = 12  # ` 0.000316 rad` after each k_pe row
FORMS = {
    "absorbed": "W_uk folded into the query: attention runs over the cached rows, W_uv once after",
    "naive": "every cached latent decompressed into per-head K and V: ordinary attention",
}


@dataclass(frozen=True)
class LatentCache:
    """One layer's MLA cache after one step, as its events recorded it."""

    step: int
    layer: int
    scalars: dict  # the selected step's mla event scalars
    latent: np.ndarray | None  # [n_cached, kv_lora_rank], None when the tensors were not captured
    k_pe: np.ndarray | None  # [n_cached, rope_dim]
    new_rows: int  # how many of the last rows this step wrote
    positions: list[int]
    n_run_tokens: int  # tokens cached by the end of the run (prompt + steps fed back)


def read_cache(trace: Trace, step: int, layer: int) -> LatentCache | None:
    event = trace.get(step, "mla", layer) if step in trace.steps else None
    if event is None:
        return None
    latents, k_pes, n_rows = [], [], 0
    for s in trace.steps:
        if s > step:
            break
        e = trace.get(s, "mla", layer)
        lat, kpe = (e.tensors.get("latent"), e.tensors.get("k_pe")) if e is not None else (None, None)
        if lat is None or kpe is None:  # a step missing: the stacked rows would not be the cache
            latents = k_pes = None
            break
        latents.append(np.asarray(lat, dtype=np.float32))
        k_pes.append(np.asarray(kpe, dtype=np.float32))
        n_rows = len(lat)
    latent = np.concatenate(latents) if latents else None
    k_pe = np.concatenate(k_pes) if k_pes else None
    n_cached = len(latent) if latent is not None else len(trace.context_ids(step))
    n_prompt = len(trace.prompt_ids())
    last = max(trace.steps) if trace.steps else 0
    return LatentCache(step, layer, dict(event.scalars), latent, k_pe, n_rows, list(range(n_cached)),
                       n_prompt + last if n_prompt else n_cached)


def nbytes(n: float) -> str:
    """`256 B`, `10.5 KiB`, `3.2 MiB`, `1.1 GiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def describe_ramp(ramp: list[float], factor: float) -> str:
    """`pair 0 kept · 1 ramp · 2-7 ÷40`: which RoPE pairs YaRN keeps, mixes and slows down."""
    groups: list[tuple[str, int, int]] = []
    for i, r in enumerate(ramp):
        kind = "kept" if r >= 1 else f"÷{factor:g}" if r <= 0 else "ramp"
        if groups and groups[-1][0] == kind:
            groups[-1] = (kind, groups[-1][1], i)
        else:
            groups.append((kind, i, i))
    parts = [(f"{a}" if a == b else f"{a}-{b}") + f" {kind}" for kind, a, b in groups]
    return ("pairs " if len(ramp) > 1 else "pair ") + " · ".join(parts)


class MLAView(NoScrollLayout, Widget):
    """One layer's latent cache at one step; redrawn to the widget's size."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._cache: LatentCache | None = None
        self._shown: tuple | None = None

    def show(self, trace: Trace, selection: Selection) -> None:
        ready = selection.step in trace.steps
        event = trace.get(selection.step, "mla", selection.layer) if ready else None
        key = (id(trace), selection.step, selection.layer, id(event), len(trace.steps))
        if key == self._shown:
            return
        self._shown = key
        self._trace = trace
        self._cache = read_cache(trace, selection.step, selection.layer) if ready else None
        self.refresh()

    def render(self) -> Text:
        c, trace = self._cache, self._trace
        title = assemble(("MLA", colors.ACCENT))
        if c is None or trace is None:
            return assemble(title, NL, NL, ("no mla event for this step and layer", colors.WARN),
                            (" (MLA is deepseek2's; not captured, or the run has not got there yet)", colors.DIM))
        s = c.scalars
        form = str(s.get("form", "?"))
        title.append_text(assemble(f" · step {c.step} ({step_kind(c.step)}) · layer {c.layer}/{trace.n_layer} · ",
                                   (f"{form} form", "bold")))
        width = max(40, self.size.width)
        lines = [title, assemble((FORMS.get(form, ""), colors.DIM)), Text("")]
        lines += self._sizes(c, s)
        lines.append(Text(""))
        lines += self._rope(s)
        if c.latent is None:
            lines += [Text(""), assemble(("the latent rows were not captured (capture policy): sizes only",
                                          colors.DIM))]
            return Text("\n", end="").join(lines)
        lines.append(Text(""))
        lines += self._charts(c, width)
        return Text("\n", end="").join(lines)

    def _sizes(self, c: LatentCache, s: dict) -> list[Text]:
        mla, mha = float(s.get("mla_bytes_per_token", 0)), float(s.get("mha_bytes_per_token", 0))
        size = int(s.get("element_bytes", 0) or 0)
        r, n_rot = int(s.get("kv_lora_rank", 0)), int(s.get("rope_dim", 0))
        nope, vd, nh = int(s.get("qk_nope_dim", 0)), int(s.get("v_head_dim", 0)), int(s.get("n_head", 0))
        ratio = mha / mla if mla else 0.0
        n_layer = max(1, self._trace.n_layer)
        lines = [
            assemble(("cache per token and layer", "bold")),
            assemble(("  MLA ", colors.ACCENT), (f"{nbytes(mla):>9}", "bold"),
                     (f"  latent {r} + k_pe {n_rot} values × {size} B", colors.DIM)),
            assemble(("  MHA ", colors.WARN), (f"{nbytes(mha):>9}", "bold"),
                     (f"  {nh} heads × (k {nope + n_rot} + v {vd}) values × {size} B", colors.DIM),
                     "  · MLA caches ", (f"{ratio:.1f}× less", colors.CHOSEN)),
        ]
        n_step = len(c.positions)
        for label, n in ((f"at step {c.step}", n_step), ("whole run", c.n_run_tokens)):
            lines.append(assemble(
                (fit(f"  {label}", 12), ""), (f"{n:>5} tokens × {n_layer} layers   ", colors.DIM),
                ("MLA ", colors.ACCENT), (f"{nbytes(mla * n * n_layer):>10}", "bold"),
                ("   MHA ", colors.WARN), (f"{nbytes(mha * n * n_layer):>10}", "bold"),
                ("   saved ", colors.DIM), nbytes((mha - mla) * n * n_layer)))
        return lines

    def _rope(self, s: dict) -> list[Text]:
        line = assemble(("RoPE  ", "bold"))
        detail = assemble("      ")
        if s.get("rope_scaling") != "yarn":
            line.append_text(assemble(("plain (no scaling)", colors.DIM)))
        else:
            factor = float(s.get("yarn_factor", 1.0))
            line.append_text(assemble((f"YaRN ×{factor:g}", colors.ACCENT),
                                      f" over {s.get('yarn_n_ctx_orig', '?')} positions · ",
                                      describe_ramp(list(s.get("yarn_ramp", [])), factor)))
            detail.append_text(assemble((f"q_pe/k_pe length ×{float(s.get('yarn_rope_magnitude', 1.0)):.3f} · ",
                                         colors.DIM)))
        if "kq_scale" in s:
            detail.append_text(assemble((f"softmax scale {float(s['kq_scale']):.4g}", colors.DIM)))
            if s.get("rope_scaling") == "yarn":
                detail.append_text(assemble((" (YaRN's mscale² / √k_head)", colors.DIM)))
        return [line, detail] if detail.plain.strip() else [line]

    def _turns(self, s: dict, n_pairs: int) -> list[tuple[str, float | None]]:
        """Per pair: its YaRN role and the angle it turns per position (rad), from the model's
        rope base and the event's ramp: theta_i * (ramp + (1 - ramp) / factor)."""
        base = float(self._trace.info.get("model", {}).get("rope_theta") or 0.0)
        yarn = s.get("rope_scaling") == "yarn"
        ramp = list(s.get("yarn_ramp", [])) if yarn else [1.0] * n_pairs
        factor = float(s.get("yarn_factor", 1.0) or 1.0)
        out = []
        for i in range(n_pairs):
            r = ramp[i] if i < len(ramp) else 1.0
            role = "" if not yarn else "kept" if r >= 1 else f"÷{factor:g}" if r <= 0 else "ramp"
            step = base ** (-2.0 * i / (2 * n_pairs)) * (r + (1 - r) / factor) if base else None
            out.append((role, step))
        return out

    def _charts(self, c: LatentCache, width: int) -> list[Text]:
        n_cols = max(1, width - LABEL_WIDTH - TAIL_WIDTH)
        shown = min(len(c.latent), n_cols)  # the newest tokens that fit, one cell each at least
        latent, k_pe, positions = c.latent[-shown:], c.k_pe[-shown:], c.positions[-shown:]
        norms = [float(v) for v in np.linalg.norm(latent.astype(np.float64), axis=-1)]
        hot = set(range(shown - min(c.new_rows, shown), shown))
        cut = f" · the last {shown} of {len(c.latent)}" if shown < len(c.latent) else ""
        lines = [assemble(("‖latent‖ per cached token", "bold"),
                          (f" ({min(norms):.2f} to {max(norms):.2f}; this step's rows in orange{cut})", colors.DIM))]
        chart = column_chart(norms, n_cols, CHART_ROWS, hot)
        for row in chart[:-1]:  # column_chart's own labels count layers; ours are positions
            lines.append(Text(" " * LABEL_WIDTH, end="") + row)
        col = 2 if shown * 3 <= n_cols else 1
        gap = 1 if shown * (col + 1) <= n_cols else 0
        lines.append(Text(fit("pos", LABEL_WIDTH), style=colors.DIM, end="") + self._axis(positions, col + gap))

        n_pairs = k_pe.shape[-1] // 2
        stride = max(1, -(-n_pairs // MAX_PAIR_ROWS))
        lines.append(Text(""))
        every = f", every {stride}th pair" if stride > 1 else ""
        lines.append(assemble(("k_pe per cached token", "bold"),
                              (f" (rotated; pair i's first value, blue < 0 < red{every}; its turn per position)",
                               colors.DIM)))
        turns = self._turns(c.scalars, n_pairs)
        for i in range(0, n_pairs, stride):
            values = k_pe[:, 2 * i]
            scale = float(np.abs(values).max()) or 1.0
            role, turn = turns[i]
            row = Text(fit(f"{i} {role}", LABEL_WIDTH), style=colors.DIM, end="")
            for v in values:
                row.append("█" * col, diverging(float(v) / scale))
                row.append(" " * gap)
            if turn is not None:
                row.append(f" {turn:.3g} rad", colors.DIM)
            lines.append(row)
        return lines

    @staticmethod
    def _axis(positions: list[int], cell: int) -> Text:
        labels = [" "] * (len(positions) * cell)
        for k, pos in enumerate(positions):
            if pos % 5 == 0:
                for j, ch in enumerate(str(pos)):
                    if k * cell + j < len(labels):
                        labels[k * cell + j] = ch
        return Text("".join(labels), style=colors.DIM, end="")
