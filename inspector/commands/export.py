"""`llm-inspect export TRACE`: a trace's timing for Perfetto, its tensors for numpy.

    llm-inspect export run.trace --perfetto run.json       open in ui.perfetto.dev or chrome://tracing
    llm-inspect export run.trace --npz t.npz --select "attn@0-3:5"
    llm-inspect export run.trace --npy tensors/ --select logits

Each output is written whole or not at all (a `.part` file renamed at the end).
"""

from __future__ import annotations

from inspector.common import CliError, Parser


def parser() -> Parser:
    p = Parser(prog="llm-inspect export", description="Export a trace's timing (Perfetto) or tensors (numpy).")
    p.add_argument("trace", help="a trace written with --record")
    p.add_argument("--perfetto", metavar="OUT.json", help="Chrome trace-event JSON: one slice per stop, a track per layer")
    p.add_argument("--npz", metavar="OUT.npz", help="the selected tensors in one .npz, keyed like step5.attn.L3.weights")
    p.add_argument("--npy", metavar="DIR", help="the selected tensors, one .npy file each, in DIR")
    p.add_argument("--select", action="append", default=[], metavar="STOP[.TENSOR][@LAYERS][:STEPS]",
                   help="which tensors go to --npz/--npy (repeatable; default all), e.g. attn@0-3:5, qkv.k@2, '*:0'")
    return p


def main(args) -> int:
    from inspector.commands.replay import open_trace_or_fail
    from traces.export import ExportError, parse_select, write_npy, write_npz, write_perfetto
    from traces.reader import TraceError

    if not (args.perfetto or args.npz or args.npy):
        raise CliError("nothing to export: give --perfetto OUT.json, --npz OUT.npz or --npy DIR")
    if args.select and not (args.npz or args.npy):
        raise CliError("--select chooses tensors for --npz or --npy")
    try:
        selects = [parse_select(s) for s in args.select]
    except ExportError as e:
        raise CliError(str(e)) from None
    trace = open_trace_or_fail(args.trace)
    try:
        if args.perfetto:
            n = write_perfetto(trace, args.perfetto)
            print(f"{args.perfetto}: {n} trace events (open in ui.perfetto.dev or chrome://tracing)")
        for path, write in ((args.npz, write_npz), (args.npy, write_npy)):
            if path:
                count, nbytes = write(trace, path, selects)
                print(f"{path}: {count} tensors, {nbytes / 1e6:.1f} MB")
    except (ExportError, TraceError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot write {e.filename or 'the export'}: {e.strerror or e}") from None
    return 0
