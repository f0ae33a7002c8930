"""`llm-inspect profile [MODEL] [PROMPT]`: find the slow layer.

Runs the model with timing only (every stop is emitted, no tensor is copied), prints the
slowest stops and layers with the outliers marked, then opens the timing view (or not, with
--headless; --json prints the profile for scripts). Each row also says what its stop moved
and computed and how near the device's limits it ran (traces/roofline.py): the limits are
measured before the run (~1 s; --no-roofline skips it), each figure the best seen on this
machine so far (--remeasure forgets them), and kept in the trace's info.

`--record` keeps the trace; `llm-inspect profile --compare A.trace B.trace` then says which
stops got faster or slower between two recorded profiles (traces/timing.py `compare`).
"""

from __future__ import annotations

import json
import sys

from inspector.commands.run import add_engine_flags, open_engine
from inspector.common import DEFAULT_PROMPT, CliError, Parser, terminal_safe
from traces.roofline import Attainment, Cost, attainment, limits_text, roof_text
from traces.timing import MIN_CHANGE, Comparison, Profile, Row, compare, profile
from views.format import duration
from views.hook_cost import hooks_text

TOP = 15
BY_STOP = 8


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
    p.add_argument("--no-roofline", action="store_true",
                   help="do not measure the device's bandwidth and matmul rate before the run")
    p.add_argument("--remeasure", action="store_true",
                   help="forget the device limits kept from earlier profiles (each figure is the best seen)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two recorded profiles (--record): per stop and layer, B's median over A's")
    add_engine_flags(p)
    return p


def table(prof: Profile, top: int = TOP) -> str:
    """The ranked table a person reads first: time, then what the time bought (GB/s, GFLOP/s)
    and, against the device's measured limits, the bound and how near its roof."""
    tok_s = 1e9 / prof.decode_ns if prof.decode_ns else 0.0
    lines = [f"prefill {duration(prof.prefill_ns)}"
             + (f" · decode {prof.n_decode} steps, median {duration(prof.decode_ns)}/token ({tok_s:.1f} tok/s)"
                if prof.n_decode else "")]
    if prof.limits:
        lines.append(f"device {limits_text(prof.limits)}")
    if prof.weights_as:
        lines.append(f"weights counted as the engine reads them: {prof.weights_as}")
    lines.append(hooks_text(prof.hooks, "a decode step" if prof.n_decode else "the prefill"))
    rates_header = f"  {'GB/s':>6}  {'GFLOP/s':>7}  {'roof':>8}"
    lines += ["", f"by stop, all layers{'':4}{'median':>9}  {'share':>6}{rates_header}"]
    for row in prof.by_stop()[:BY_STOP]:
        att = attainment_of(row, prof)
        rates = f"  {att.gbps:6.1f}  {att.gflops:7.1f}  {roof_text(att):>8}" if att else ""
        lines.append(f"  {row.stop:<21}{duration(row.median_ns):>9}  {row.share:6.1%}{rates}")
    lines += ["", f"{'#':>3}  {'stop':<12}{'layer':>6}  {'median':>9}  {'share':>6}  {'× peers':>7}{rates_header}"]
    for rank, row in enumerate(prof.rows[:top], 1):
        layer = "-" if row.layer is None else str(row.layer)
        peers = f"{row.vs_peers:6.1f}×" if row.layer is not None else ""
        att = attainment_of(row, prof)
        rates = f"  {att.gbps:6.1f}  {att.gflops:7.1f}  {roof_text(att):>8}" if att else f"  {'':6}  {'':7}  {'':8}"
        mark = "  ⚠ outlier" if row.outlier else ""
        lines.append(f"{rank:>3}  {row.stop:<12}{layer:>6}  {duration(row.median_ns):>9}  {row.share:6.1%}  "
                     f"{peers:>7}{rates}{mark}")
    outliers = prof.outliers
    lines.append("")
    if outliers:
        named = ", ".join(f"{r.stop}@{r.layer} {r.vs_peers:.1f}×" for r in outliers[:8])
        lines.append(f"outliers (over {prof.factor:g}× the median of the same stop in the other layers): {named}")
    else:
        lines.append(f"no outliers: no layer's stop is over {prof.factor:g}× the median of its peers")
    return "\n".join(lines)


def attainment_of(row: Row, prof: Profile) -> Attainment | None:
    return attainment(Cost(0, row.bytes, row.flops), row.median_ns, prof.limits)


def comparison_table(cmp: Comparison, a: str, b: str, top: int = TOP) -> str:
    """Two profiles side by side, biggest change in time first, the changes beyond noise marked."""
    def step(ns: int, prefill: int) -> str:
        return f"decode {duration(ns)}/token ({1e9 / ns:.1f} tok/s), prefill {duration(prefill)}" if ns else \
            f"prefill {duration(prefill)}"

    ratio = cmp.b_step_ns / cmp.a_step_ns if cmp.a_step_ns else float("nan")
    lines = [f"A {a}: {step(cmp.a_step_ns, cmp.a_prefill_ns)}",
             f"B {b}: {step(cmp.b_step_ns, cmp.b_prefill_ns)} · B/A {ratio:.2f}×", "",
             f"{'#':>3}  {'stop':<12}{'layer':>6}  {'A':>9}  {'B':>9}  {'B/A':>6}  {'noise':>6}"]
    for rank, c in enumerate(cmp.changes[:top], 1):
        layer = "-" if c.layer is None else str(c.layer)
        mark = {"slower": "  ▲ slower", "faster": "  ▼ faster"}.get(c.verdict, "")
        lines.append(f"{rank:>3}  {c.stop:<12}{layer:>6}  {duration(c.a_ns):>9}  {duration(c.b_ns):>9}  "
                     f"{times(c.ratio):>6}  {c.noise:6.0%}{mark}")
    slower = [c for c in cmp.changes if c.verdict == "slower"]
    faster = [c for c in cmp.changes if c.verdict == "faster"]
    lines.append("")
    lines.append(f"{len(slower)} slower, {len(faster)} faster beyond noise (a change over {MIN_CHANGE:.0%} and twice the "
                 f"runs' spread, worth at least 1% of A's step); {len(cmp.changes) - len(slower) - len(faster)} "
                 "within it")
    for what, keys in (("only in A", cmp.only_a), ("only in B", cmp.only_b)):
        if keys:
            named = ", ".join(k[0] if k[1] is None else f"{k[0]}@{k[1]}" for k in keys[:8])
            lines.append(f"{what}: {named}" + (f" (+{len(keys) - 8})" if len(keys) > 8 else ""))
    return "\n".join(lines)


def times(ratio: float) -> str:
    """`0.46×`, `12.3×`, `244×`: three significant figures at most."""
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×" if ratio < 100 else f"{ratio:.0f}×"


def main_compare(args) -> int:
    from inspector.commands.replay import open_trace_or_fail

    if args.model is not None:
        raise CliError("--compare takes two recorded traces and no model")
    opened = [open_trace_or_fail(path) for path in args.compare]
    cmp = compare(*opened)
    if args.json:
        print(json.dumps(cmp.to_json()))
        return 0
    text = comparison_table(cmp, *args.compare, top=args.top)
    print(terminal_safe(text) if sys.stdout.isatty() else text)
    return 0


def main(args) -> int:
    from engine.hooks import HookBus
    from traces.live import MemoryTrace

    if args.factor <= 1.0:
        raise CliError("--factor must be above 1")
    if args.compare:
        return main_compare(args)
    bus = HookBus()
    bus.tensor_filter = lambda stop, layer: False  # timing only: nothing is copied off the engine's buffers
    bus.defer = True  # nobody steps through a profile: on a GPU, read the step's CUDA events once, at its end
    engine = open_engine(args, bus)
    info = engine.info(args.prompt, args.n_predict)
    info["capture"] = {"preset": "timing"}
    if not args.no_roofline:
        from traces.roofline import device_limits

        wait_all = getattr(getattr(engine, "weights", None), "wait_all", None)  # the torch engine's loader
        if wait_all:
            wait_all()  # the dequantizing thread would share the cores with the measurement
        threads = (info.get("engine") or {}).get("threads")  # llama.cpp runs its own pool
        info["device_limits"] = device_limits(args.device, args.dtype, threads, args.remeasure).to_info()
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
