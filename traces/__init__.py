"""Traces: the event schema, the in-memory trace of a live run, the trace file and its reader.

    import traces
    with traces.open("run.trace") as t:
        t.steps, t.stops, t[0, "attn", 3], t[0, "blocks.3.attn.hook_pattern"].to_torch()

README.md ("Reading a trace from Python") has the API and the TransformerLens name table.
"""

from traces.reader import TraceError, TraceReader, open_trace

open = open_trace  # noqa: A001 - `traces.open(path)` is the public entry point

__all__ = ["open", "open_trace", "TraceReader", "TraceError"]
