"""`llm-inspect replay TRACE`: open a saved trace in the inspector, with no model and no GPU."""

from __future__ import annotations

import os

from inspector.common import CliError, Parser


def parser() -> Parser:
    p = Parser(prog="llm-inspect replay", description="Open a saved trace; no model file needed.")
    p.add_argument("trace", help="a trace written with --record")
    return p


def open_trace_or_fail(path: str):
    from traces.reader import TraceError, open_trace

    if not os.path.isfile(path):
        raise CliError(f"no such trace file: {path}")
    try:
        return open_trace(path)
    except TraceError as e:
        raise CliError(f"{path}: {e}") from None


def main(args) -> int:
    trace = open_trace_or_fail(args.trace)
    from inspector.app import make_app

    make_app(trace).run()
    return 0
