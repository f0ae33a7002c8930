"""`llm-inspect diff A.trace B.trace`: where two runs part, on the diff screen or as a table or JSON.

    llm-inspect diff a.trace b.trace                 the diff screen (heatmap, token streams)
    llm-inspect diff a.trace b.trace --headless      per-stop table and the first divergence
    llm-inspect diff a.trace b.trace --json          everything, for scripts and CI
    llm-inspect diff --engines torch,llama.cpp MODEL "prompt" [-n 32] [--headless | --json]
                                                     run both engines greedy, same capture, and diff them

With --engines the two runs are made here, one after the other, into in-memory traces
(traces/live.py): the same prompt, greedy, the same --capture, so every stop both engines
emit lines up; nothing is written unless --record-a/--record-b say where.

Exit codes, with --headless or --json: 0 the runs agree (every aligned event within the
tolerance, and nothing left unaligned but tensors one side did not capture), 1 they
differ, 2 an error (a missing or corrupt trace, a bad flag). The diff screen exits 0.
"""

from __future__ import annotations

import json
import sys

from inspector.common import CliError, Parser

EXIT_SAME, EXIT_DIFFER = 0, 1


def parser() -> Parser:
    p = Parser(prog="llm-inspect diff", description="Compare two traces stop by stop; find where they part.",
               epilog="exit status (--headless, --json): 0 same, 1 differ, 2 error")
    p.add_argument("a", metavar="A.trace|MODEL", help="a trace, or with --engines the model (.gguf)")
    p.add_argument("b", nargs="?", metavar="B.trace|PROMPT", help="a trace, or with --engines the prompt")
    runs = p.add_argument_group("--engines", "run one model in two engines and diff the runs")
    runs.add_argument("--engines", metavar="E1,E2", help="two of: torch, llama.cpp (e.g. torch,llama.cpp)")
    runs.add_argument("-n", "--n-predict", type=int, default=32, help="tokens to generate (default 32)")
    runs.add_argument("--capture", default="default", metavar="SPEC", help="what both runs capture "
                      "(llm-inspect --help: capture; default: default)")
    runs.add_argument("--threads", type=int, metavar="N", help="llama.cpp's threads (default: every core)")
    runs.add_argument("--flash-attn", action="store_true",
                      help="run llama.cpp with flash attention, its CPU default (f16 K·Q and ·V: Gemma 3's logits "
                           "move by ~1e-2 in cosine); without it, llama.cpp runs the graph the torch engine follows")
    runs.add_argument("-c", "--ctx-size", type=int, default=0, help="context size (default: the model's, at most 4096)")
    p.add_argument("--headless", action="store_true", help="no UI: print the per-stop table and the first divergence")
    p.add_argument("--json", action="store_true", help="no UI: print the whole result as JSON")
    p.add_argument("--tol-cos", type=float, default=0.999, metavar="C",
                   help="part where a tensor's cosine falls below C (default 0.999)")
    p.add_argument("--tol-rel", type=float, metavar="R", help="... or its relative L2 error exceeds R")
    p.add_argument("--tol-abs", type=float, metavar="X", help="... or its max |A-B| exceeds X")
    p.add_argument("--tol-kl", type=float, metavar="K", help="... or the logits' KL(A||B) exceeds K nats")
    p.add_argument("--ignore-top1", action="store_true", help="a different argmax of the logits is no divergence")
    p.add_argument("--ignore-tokens", action="store_true", help="a different sampled token is no divergence")
    return p


def tolerance(args):
    from traces.diff import Tolerance

    if not -1.0 <= args.tol_cos <= 1.0:
        raise CliError(f"--tol-cos {args.tol_cos} is not a cosine (between -1 and 1)")
    for flag, value in (("--tol-rel", args.tol_rel), ("--tol-abs", args.tol_abs), ("--tol-kl", args.tol_kl)):
        if value is not None and not value >= 0:
            raise CliError(f"{flag} {value} must be 0 or more")
    return Tolerance(cos=args.tol_cos, rel_l2=args.tol_rel, max_abs=args.tol_abs, kl=args.tol_kl,
                     top1=not args.ignore_top1, tokens=not args.ignore_tokens)


def main(args) -> int:
    from inspector.commands.replay import open_trace_or_fail
    from traces.diff import diff_traces
    from traces.reader import TraceError

    tol = tolerance(args)
    if args.engines:
        a, b = engine_traces(args)
    else:
        if args.b is None:
            raise CliError("diff needs two traces (A.trace B.trace), or --engines E1,E2 MODEL [PROMPT]")
        a = open_trace_or_fail(args.a)
        b = open_trace_or_fail(args.b)
    try:
        result = diff_traces(a, b, tol)
    except TraceError as e:
        raise CliError(f"reading the traces: {e}") from None
    if args.json:
        json.dump(result.to_json(), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    elif args.headless:
        sys.stdout.write(table(result))
    else:
        from inspector.screens.diff import make_diff_app

        make_diff_app(a, b, result).run()
        return EXIT_SAME
    return EXIT_SAME if result.same else EXIT_DIFFER


def engine_traces(args):
    """Run args.a (a model) on both --engines, greedy, into two in-memory traces."""
    import argparse

    from inspector.commands.run import ENGINES
    from inspector.common import DEFAULT_PROMPT

    names = [e.strip() for e in args.engines.split(",")]
    if len(names) != 2 or any(e not in ENGINES for e in names):
        raise CliError(f"--engines takes two of {', '.join(ENGINES)} joined by a comma, not {args.engines!r}")
    if args.n_predict < 1:
        raise CliError("-n must be at least 1")
    prompt = DEFAULT_PROMPT if args.b is None else args.b
    traces = []
    for name in names:
        run = argparse.Namespace(model=args.a, prompt=prompt, n_predict=args.n_predict, headless=True, engine=name,
                                 threads=args.threads if name == "llama.cpp" else None, device="cpu",
                                 dtype="float32", numerics="llamacpp", ctx_size=args.ctx_size, lens=False,
                                 capture=args.capture, max_trace_size="none", attn_weights=not args.flash_attn)
        traces.append(engine_trace(run))
    return traces[0], traces[1]


def engine_trace(run):
    """One greedy run of `run.engine` under the capture policy, as a MemoryTrace."""
    from engine.hooks import HookBus
    from inspector.commands.run import capture_policy, open_engine
    from traces.live import MemoryTrace

    policy, max_bytes = capture_policy(run)
    bus = HookBus()
    engine = open_engine(run, bus)
    try:
        n_tokens = len(engine.encode(run.prompt))
        info = engine.info(run.prompt, run.n_predict)
        policy = policy.bind(info["model"], n_tokens, max_bytes)
        trace = MemoryTrace(info, capture=policy, max_bytes=max_bytes)
        bus.set_filter(policy.wants)
        bus.tensor_filter = policy.keeps_tensors
        bus.add(trace)
        for _ in engine.generate(run.prompt, run.n_predict):
            pass
    except ValueError as e:
        raise CliError(f"{run.engine}: {e}") from None
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()
    trace.finish()
    return trace


def table(d) -> str:
    """The headless report: both sides, the tolerance, one row per stop, tokens, first divergence, notes."""
    from inspector.common import terminal_safe
    from traces.diff import describe_side

    show = terminal_safe if sys.stdout.isatty() else str
    lines = [f"A {describe_side(d.a)}", f"B {describe_side(d.b)}", f"tolerance {d.tolerance.describe()}", ""]
    header = f"{'stop':<10} {'events':>6} {'min cos':>10} {'rel L2':>9} {'max |Δ|':>9} {'KL(A‖B)':>9} " \
             f"{'top10':>5} {'top1':>5} {'over':>5}  worst cos at"
    lines += [header, "─" * len(header)]
    for s in d.stop_summaries():
        if s.min_cos is None:  # ids, bytes, the sampled token: compared for equality
            cos = "differ" if s.breaches else "equal"
            lines.append(f"{s.stop:<10} {s.events:>6} {cos:>10} {'':>9} {'':>9} {'':>9} {'':>5} {'':>5} {s.breaches:>5}")
            continue
        kl = f"{s.max_kl:9.2e}" if s.max_kl is not None else " " * 9
        topk = f"{round(s.min_topk * 10)}/10" if s.min_topk is not None else ""
        top1 = f"{s.top1_match}/{s.top1_total}" if s.top1_total else ""
        worst = "" if s.worst is None else f"step {s.worst[0]}" + (f" · layer {s.worst[1]}" if s.worst[1] is not None else "")
        lines.append(f"{s.stop:<10} {s.events:>6} {s.min_cos:10.6f} {s.max_rel_l2:9.2e} {s.max_abs:9.2e} {kl} "
                     f"{topk:>5} {top1:>5} {s.breaches:>5}  {worst}")
    both = [t for t in d.tokens if t.a is not None and t.b is not None]
    lines += ["", f"tokens     {sum(t.match for t in both)}/{len(both)} steps draw the same token"
              + (f" (first differs at step {next(t.step for t in both if not t.match)})"
                 if any(not t.match for t in both) else "")]
    lines.append("first divergence  " + (f"{d.first.where()}: {d.first.detail}" if d.first else
                                         "none beyond the tolerance"))
    if d.reasons:
        lines += ["", "not aligned:"] + [f"  - {r.text}" for r in d.reasons]
    lines.append("same" if d.same else "differ")
    return show("\n".join(lines)) + "\n"
