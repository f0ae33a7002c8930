"""`llm-inspect info TRACE`: what a trace holds, without opening the inspector.

    llm-inspect info run.trace            model, engine, steps, stops, size, capture, integrity
    llm-inspect info run.trace --json     the same, for scripts
    llm-inspect info run.trace --verify   also check every tensor's crc32 (reads every byte)

Imports neither torch nor textual: it answers in the time it takes to read the tables.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

from inspector.common import CliError, Parser, terminal_safe


def parser() -> Parser:
    p = Parser(prog="llm-inspect info", description="Summarize a trace: model, steps, stops, capture, integrity.")
    p.add_argument("trace", help="a trace written with --record")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--verify", action="store_true", help="also check every tensor's crc32 (reads the whole file)")
    return p


def summarize(trace, path: str, verify: bool = False) -> dict:
    """Everything `info` prints, as plain JSON values."""
    from traces.reader import TraceError

    info = trace.info
    counts: Counter[str] = Counter()
    refused = []  # steps whose table failed its checks
    for step in trace.steps:
        try:
            index = trace.index(step)
        except TraceError as e:
            refused.append({"step": step, "error": str(e)})
            continue
        counts.update({stop: len(events) for stop, events in index.by_stop.items()})
    problems = trace.verify_all() if verify else []
    cut = trace.truncated_at
    steps = trace.steps
    model, engine = _dict(info.get("model")), _dict(info.get("engine"))  # the file's word: any JSON at all
    return {
        "path": path,
        "size": os.path.getsize(path),
        "model": {k: model.get(k) for k in ("name", "architecture", "n_layer", "n_head", "n_head_kv", "n_embd",
                                            "n_vocab", "file") if k in model} | {"quant": quant_mix(model)},
        "engine": {k: v for k, v in engine.items() if isinstance(v, (str, int, float, bool))},
        "prompt": info.get("prompt") if isinstance(info.get("prompt"), str) else None,
        "prompt_tokens": len(trace.prompt_ids()) if 0 in steps and not any(r["step"] == 0 for r in refused) else None,
        "steps": len(steps),
        "first_step": steps[0] if steps else None,
        "last_step": steps[-1] if steps else None,
        "stops": {stop: counts[stop] for stop in sorted(counts, key=_stop_order)},
        "capture": info.get("capture"),
        "truncated_at": cut._asdict() if cut else None,
        "integrity": {
            "complete": trace.complete,
            "footer": trace.footer,
            "steps_refused": refused,
            "verify_problems": problems if verify else None,
            "warnings": list(dict.fromkeys(trace.warnings)),
        },
    }


def quant_mix(model: dict) -> dict:
    """How many weight tensors have each quant type, most first: {"Q4_K": 150, "F32": 61}."""
    types = Counter(str(w.get("type", "?")) for w in _dict(model.get("weights")).values() if isinstance(w, dict))
    return dict(types.most_common())


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _stop_order(stop: str) -> int:
    from traces.schema import STOP_ORDER

    return STOP_ORDER.get(stop, len(STOP_ORDER))


def text(s: dict) -> str:
    from traces.policy import format_size, summary

    m, e = s["model"], s["engine"]
    lines = []

    def row(label: str, value: str) -> None:
        lines.append(f"{label:<10} {value}")

    row("trace", f"{s['path']} · {format_size(s['size'])}")
    shape = " · ".join(x for x in (
        m.get("architecture"), m.get("n_layer") and f"{m['n_layer']} layers",
        m.get("n_head") and f"{m['n_head']}/{m.get('n_head_kv', m['n_head'])} heads",
        m.get("n_embd") and f"d {m['n_embd']}", m.get("n_vocab") and f"vocab {m['n_vocab']}") if x)
    quant = ", ".join(f"{t} ×{n}" for t, n in list(m["quant"].items())[:3])
    row("model", " · ".join(x for x in (m.get("name") or m.get("file") or "?", shape, quant) if x))
    row("engine", " · ".join(str(e[k]) if k in ("name", "device", "dtype") else f"{k} {e[k]}"
                             for k in ("name", "device", "dtype", "numerics", "threads") if k in e) or "?")
    if s["prompt"] is not None:
        prompt = s["prompt"] if len(s["prompt"]) <= 60 else s["prompt"][:57] + "..."
        tokens = f" ({s['prompt_tokens']} tokens)" if s["prompt_tokens"] is not None else ""
        row("prompt", f"{prompt!r}{tokens}")
    span = "" if not s["steps"] else f" ({s['first_step']}..{s['last_step']}: the prefill, then one per token)"
    row("steps", f"{s['steps']}{span}")
    row("stops", " · ".join(f"{stop} {n}" for stop, n in s["stops"].items()) or "none")
    row("capture", capture_line(s["capture"]))
    cut = s["truncated_at"]
    row("tensors", "all kept" if cut is None
        else f"stopped at step {cut['step']} (event {cut['seq']}): {cut['reason']}")
    lines.append(integrity_line(s))
    for w in s["integrity"]["warnings"]:
        row("warning", w)
    return "\n".join(lines)


def capture_line(capture) -> str:
    from traces.policy import summary

    if capture is None:
        return "not recorded (a trace from an older writer)"
    try:
        return summary(capture)
    except (TypeError, ValueError, AttributeError, KeyError):  # not a section our writer made: show it as it is
        text = json.dumps(capture)
        return text if len(text) <= 200 else text[:197] + "..."


def integrity_line(s: dict) -> str:
    i = s["integrity"]
    if i["complete"]:
        state = "complete · footer ok"
    else:
        last = f"after step {s['last_step']}" if s["steps"] else "before its first step"
        state = f"cut short {last} · footer {i['footer']}"
    if i["steps_refused"]:
        refused = ", ".join(str(r["step"]) for r in i["steps_refused"])
        state += f" · {len(i['steps_refused'])} steps refused ({refused})"
    if i["verify_problems"] is not None:
        problems = i["verify_problems"]
        state += f" · verify: {len(problems)} problems" if problems else " · verify: every table and tensor checks out"
    return f"{'integrity':<10} {state}"


def main(args) -> int:
    from inspector.commands.replay import open_trace_or_fail

    with open_trace_or_fail(args.trace) as trace:
        s = summarize(trace, args.trace, verify=args.verify)
    if args.json:
        print(json.dumps(s))
    else:
        out = text(s)
        print(terminal_safe(out) if sys.stdout.isatty() else out)
    return 0
