"""`llm-inspect [MODEL] [PROMPT]`: run a GGUF model live under the inspector, or headless.

The engine runs in a worker thread; the hook bus feeds the in-memory trace the UI reads,
the recorder (--record) and the run controller that pauses at breakpoints.
"""

from __future__ import annotations

import os
import sys

from inspector.common import DEFAULT_PROMPT, CliError, Parser, demo_model, terminal_safe


def parser() -> Parser:
    p = Parser(prog="llm-inspect", description="Step through a GGUF model's inference, stop by stop.",
               epilog="llm-inspect replay TRACE opens a saved trace with no model.")
    p.add_argument("model", nargs="?", help="a .gguf file (default: the SmolLM2-135M demo model)")
    p.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("-n", "--n-predict", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--record", metavar="PATH", help="write the run's trace to PATH")
    p.add_argument("--headless", action="store_true", help="no UI: stream the text to stdout")
    p.add_argument("--break", dest="breaks", action="append", default=[], metavar="SPEC",
                   help="pause the live run there (repeatable): STOP[@LAYER][:STEP] such as attn@3 or logits:5, "
                        "or a condition: entropy>4, top1<0.2, slow>2ms, token=42; terms combine: 'attn@3 slow>1ms'")
    p.add_argument("--break-slow", metavar="FACTOR", help="pause at the first layer's stop FACTOR times slower "
                   "than the same stop in the other layers, e.g. 3x (same as --break 'slow>3x')")
    p.add_argument("--paused", action="store_true", help="start paused at the first stop")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--numerics", default="llamacpp", choices=["llamacpp", "llamacpp-fast", "exact"],
                   help="llamacpp: ggml's CPU roundings and summation order, to agree with llama.cpp; "
                        "llamacpp-fast: its roundings only (faster); exact: plain float math "
                        "on the dequantized weights (default llamacpp)")
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context size (default: the model's, at most 4096)")
    return p


def open_engine(args, bus):
    from engine.config import UnsupportedModel
    from engine.gguf_file import GGUFError
    from engine.quants import UnsupportedQuant
    from engine.torch_engine import TorchEngine

    path = args.model or demo_model()
    if not os.path.exists(path):
        raise CliError(f"no such model file: {path}")
    if not os.path.isfile(path):
        raise CliError(f"not a file: {path}")
    if args.n_predict < 1:
        raise CliError("-n must be at least 1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CliError("--device cuda asked for, but torch sees no CUDA device")
    elif args.device != "cpu":
        raise CliError(f"unknown device {args.device!r} (cpu or cuda)")
    try:
        return TorchEngine(path, device=args.device, dtype=args.dtype, n_ctx=args.ctx_size, numerics=args.numerics, bus=bus)
    except (GGUFError, UnsupportedModel, UnsupportedQuant) as e:
        raise CliError(f"{path}: {e}") from None


def main(args) -> int:
    from engine.controller import Breakpoint, RunController
    from engine.hooks import HookBus

    try:
        breakpoints = [Breakpoint.parse(b) for b in args.breaks]
        if args.break_slow:
            factor = args.break_slow.rstrip("x")
            breakpoints.append(Breakpoint.parse(f"slow>{factor}x"))
    except ValueError as e:
        raise CliError(str(e)) from None
    bus = HookBus()
    engine = open_engine(args, bus)
    n_tokens = len(engine.tokenizer.encode(args.prompt).ids)
    if n_tokens + args.n_predict > engine.n_ctx:
        raise CliError(f"the prompt ({n_tokens} tokens) plus -n {args.n_predict} do not fit the context of {engine.n_ctx}")
    info = engine.info(args.prompt, args.n_predict)

    writer = None
    if args.record:
        from traces.writer import TraceWriter

        try:
            writer = TraceWriter(args.record, info)
        except OSError as e:
            raise CliError(f"cannot write {args.record}: {e.strerror or e}") from None
        bus.add(writer)

    if args.headless:
        done = False
        show = terminal_safe if sys.stdout.isatty() else str
        try:
            for result in engine.generate(args.prompt, args.n_predict):
                sys.stdout.write(show(result.text))
                sys.stdout.flush()
            sys.stdout.write("\n")
            done = True
        finally:
            if writer:
                writer.close(complete=done)  # an interrupted run's trace says it was cut short
        return 0

    from inspector.app import make_app
    from traces.live import MemoryTrace

    trace = MemoryTrace(info)
    controller = RunController(breakpoints, start_paused=args.paused)
    bus.add(trace)
    bus.add(controller)

    def run_engine() -> None:
        done = False
        try:
            for _ in engine.generate(args.prompt, args.n_predict):
                pass
            done = True
        finally:
            if done:
                trace.finish()
            if writer:
                writer.close(complete=done)

    make_app(trace, controller=controller, run=run_engine).run()
    return 0
