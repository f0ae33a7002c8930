"""`llm-inspect profile [MODEL] [PROMPT]`: find the slow layer.

Runs the model with timing only (every stop is emitted, no tensor is copied), prints the
slowest stops and layers with the outliers marked, then opens the timing view (or not, with
--headless; --json prints the profile for scripts). `--record` keeps the trace, so two
profiles can be compared with `llm-inspect diff`.
"""

from __future__ import annotations

import json
import sys

from inspector.commands.run import add_engine_flags, open_engine
from inspector.common import DEFAULT_PROMPT, CliError, Parser, terminal_safe
from traces.timing import Profile, profile
from views.format import duration

TOP = 15


def parser() -> Parser:
    p = Parser(prog="llm-inspect profile", description="Time every stop of a run and rank the slowest.")
    p.add_argument("model", nargs="?", help="a .gguf file (default: the SmolLM2-135M demo model)")
    p.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("-n", "--n-predict", type=int, default=16, help="tokens to generate (default 16)")
    p.add_argument("--factor", type=float, default=2.0,
                   help="a layer slower than this many times the median of its peers is an outlier (default 2)")
    p.add_argument("--top", type=int, default=TOP, help=f"rows to print (default {TOP})")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--headless", action="store_true", help="print the table only; do not open the timing view")
    p.add_argument("--record", metavar="PATH", help="write the run's trace (timings only) to PATH")
    add_engine_flags(p)
    return p


def table(prof: Profile, top: int = TOP) -> str:
    """The ranked table a person reads first."""
    tok_s = 1e9 / prof.decode_ns if prof.decode_ns else 0.0
    lines = [f"prefill {duration(prof.prefill_ns)}"
             + (f" · decode {prof.n_decode} steps, median {duration(prof.decode_ns)}/token ({tok_s:.1f} tok/s)"
                if prof.n_decode else ""),
             "",
             f"{'#':>3}  {'stop':<12}{'layer':>6}  {'median':>9}  {'share':>6}  {'× peers':>7}"]
    for rank, row in enumerate(prof.rows[:top], 1):
        layer = "-" if row.layer is None else str(row.layer)
        peers = f"{row.vs_peers:6.1f}×" if row.layer is not None else ""
        mark = "  ⚠ outlier" if row.outlier else ""
        lines.append(f"{rank:>3}  {row.stop:<12}{layer:>6}  {duration(row.median_ns):>9}  {row.share:6.1%}  {peers:>7}{mark}")
    outliers = prof.outliers
    lines.append("")
    if outliers:
        named = ", ".join(f"{r.stop}@{r.layer} {r.vs_peers:.1f}×" for r in outliers[:8])
        lines.append(f"outliers (over {prof.factor:g}× the median of the same stop in the other layers): {named}")
    else:
        lines.append(f"no outliers: no layer's stop is over {prof.factor:g}× the median of its peers")
    return "\n".join(lines)


def main(args) -> int:
    from engine.hooks import HookBus
    from traces.live import MemoryTrace

    if args.factor <= 1.0:
        raise CliError("--factor must be above 1")
    bus = HookBus()
    bus.tensor_filter = lambda stop, layer: False  # timing only: nothing is copied off the engine's buffers
    engine = open_engine(args, bus)
    info = engine.info(args.prompt, args.n_predict)
    info["capture"] = {"preset": "timing"}
    trace = MemoryTrace(info)
    bus.add(trace)
    writer = None
    if args.record:
        from traces.writer import TraceWriter

        try:
            writer = TraceWriter(args.record, info)
        except OSError as e:
            raise CliError(f"cannot write {args.record}: {e.strerror or e}") from None
        bus.add(writer)
    done = False
    try:
        for _ in engine.generate(args.prompt, args.n_predict):
            pass
        done = True
    except ValueError as e:  # the prompt does not fit, encodes to nothing, ...
        raise CliError(str(e)) from None
    finally:
        if writer:
            writer.close(complete=done)
    trace.finish()
    prof = profile(trace, args.factor)
    if args.json:
        print(json.dumps(prof.to_json()))
        return 0
    text = table(prof, args.top)
    print(terminal_safe(text) if sys.stdout.isatty() else text)
    if not args.headless:
        from inspector.app import make_app

        make_app(trace, title="llm-inspect profile", view="timing").run()
    return 0
