"""Traces: the event schema, the in-memory trace of a live run, the trace file and its reader.

    import traces
    with traces.open("run.trace") as t:
        t.steps, t.get(0, "attn", 3).tensors["weights"]
"""

from traces.reader import TraceError, TraceReader, open_trace

open = open_trace  # noqa: A001 - `traces.open(path)` is the public entry point

__all__ = ["open", "open_trace", "TraceReader", "TraceError"]
