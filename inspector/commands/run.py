"""`llm-inspect [MODEL] [PROMPT]`: run a GGUF model live under the inspector, or headless.

The engine runs in a worker thread; the hook bus feeds the in-memory trace the UI reads,
the recorder (--record) and the run controller that pauses at breakpoints.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

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
    p.add_argument("--lens", action="store_true", help="the logit lens: every layer's residual through the final "
                   "norm and LM head, shown in the logits view (one vocabulary-sized matmul per layer)")
    add_engine_flags(p)
    p.add_argument("--chat", action="store_true", help="send the prompt as a user turn through the model's chat template")
    p.add_argument("--chat-template", metavar="NAME|FILE", help="with --chat: a built-in template (chatml, gemma) or a "
                   ".jinja file instead of the model's own (implies --chat)")
    p.add_argument("--check-tokenizer", action="store_true", help="also tokenize the prompt with llama.cpp "
                   "(≈1 s to load its vocabulary); if the two disagree, run llama.cpp's ids and show where")
    add_sampling_flags(p)
    add_grammar_flags(p)
    add_capture_flags(p)
    return p


def add_grammar_flags(p: Parser) -> None:
    group = p.add_argument_group(
        "grammar", "Constrain every draw to what a grammar allows (llama.cpp's grammar, engine/grammar.py); "
                   "the grammar view (m) shows the allowed tokens per step. Checked before the model loads.")
    one = group.add_mutually_exclusive_group()
    one.add_argument("--grammar", metavar="FILE", help="a GBNF grammar file (llama.cpp's format; the rule 'root' starts)")
    one.add_argument("--json-schema", metavar="FILE", help="a JSON schema file: the output is JSON matching it "
                                                          "(converted to GBNF as llama.cpp does)")


def grammar_source(args):
    """The run's grammar (engine/grammar.py GrammarSource), parsed and checked now, or None."""
    if not (getattr(args, "grammar", None) or getattr(args, "json_schema", None)):
        return None
    from engine.grammar import GrammarError, load_gbnf, load_schema

    try:
        return load_gbnf(args.grammar) if args.grammar else load_schema(args.json_schema)
    except GrammarError as e:
        raise CliError(str(e)) from None


def add_engine_flags(p: Parser) -> None:
    """Which engine runs and how: the flags every command that runs a model shares (run, profile)."""
    p.add_argument("--engine", default="torch", choices=list(ENGINES),
                   help="torch: our engine, every stop computed in torch; llama.cpp: the model runs in llama.cpp "
                        "(llama-cpp-python), its graph's nodes captured as the same stops (default torch)")
    p.add_argument("--threads", type=int, metavar="N", help="llama.cpp's threads (default: every core)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--numerics", default="llamacpp", choices=["llamacpp", "llamacpp-fast", "exact"],
                   help="llamacpp: ggml's CPU roundings and summation order, to agree with llama.cpp; "
                        "llamacpp-fast: its roundings only (faster); exact: plain float math "
                        "on the dequantized weights (default llamacpp)")
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context size (default: the model's, at most 4096)")


def add_capture_flags(p: Parser) -> None:
    group = p.add_argument_group(
        "capture", "What a run records (traces/policy.py; docs/TRACE_FORMAT.md has the grammar and the sizes). "
                   "Spine stops (text, tokens, sampling, grammar, stream) are always recorded.")
    group.add_argument("--capture", default="default", metavar="SPEC",
                       help="minimal (logits, tokens, timings), default (every stop; at prefill the last rows that "
                            "fit a quarter of the budget), full, or terms joined by ';' such as "
                            "'attn,logits@0-3;heads=0-1;dtype=f16' (default: default)")
    group.add_argument("--max-trace-size", default="1G", metavar="SIZE",
                       help="stop recording tensors (never the run, tokens or scalars) once the trace reaches SIZE: "
                            "2G, 500M, or none (default 1G)")


def capture_policy(args):
    """The --capture policy and the --max-trace-size budget in bytes (None: no budget)."""
    from traces.policy import CaptureError, parse, parse_size

    try:
        return parse(args.capture), parse_size(args.max_trace_size)
    except CaptureError as e:
        raise CliError(str(e)) from None


# Sampling: llama.cpp's flag names. With none of them the run is greedy; with any of them the
# rest take llama.cpp's defaults (temp 0.8, top-k 40, top-p 0.95, min-p 0.05), as llama-cli would.
SAMPLING_FLAGS = {  # flag: (SamplerParams field, type, help)
    "--temp": ("temp", float, "temperature; 0 = greedy (default 0.8 once sampling)"),
    "--top-k": ("top_k", int, "keep the N most likely tokens; 0 = all (default 40)"),
    "--top-p": ("top_p", float, "keep the fewest most likely tokens whose probability reaches X; 1 = off "
                                "(default 0.95)"),
    "--min-p": ("min_p", float, "drop tokens less than X times as likely as the top one; 0 = off (default 0.05)"),
    "--typical": ("typical_p", float, "locally typical sampling with mass X; 1 = off (default 1)"),
    "--repeat-penalty": ("repeat_penalty", float, "divide a repeated token's logit by X (multiply, if negative); "
                                                  "1 = off (default 1)"),
    "--repeat-last-n": ("repeat_last_n", int, "how far back the penalties look; 0 = off, -1 = all (default 64)"),
    "--presence-penalty": ("presence_penalty", float, "subtract this from a repeated token's logit (default 0)"),
    "--frequency-penalty": ("frequency_penalty", float, "subtract this times the repeat count (default 0)"),
    "--seed": ("seed", int, "random seed; -1 = pick one and record it in the trace (default -1)"),
}


def add_sampling_flags(p: Parser) -> None:
    group = p.add_argument_group(
        "sampling", "llama.cpp's sampler chain and names. Without these flags the run is greedy (the argmax, "
                    "what parity with llama.cpp is measured on); any of them turns sampling on, the others at "
                    "llama.cpp's defaults. A seed reproduces the draws, and llama.cpp draws the same tokens from "
                    "the same logits and seed.")
    for flag, (field, kind, text) in SAMPLING_FLAGS.items():
        group.add_argument(flag, dest=field, type=kind, default=None, metavar="N" if kind is int else "X", help=text)
    group.add_argument("--stop", action="append", default=[], metavar="STR",
                       help="end the generation where the text contains STR, which is not shown (repeatable)")


def sampling(args):
    """The run's sampler settings (with a concrete seed, so the trace records it) and stop strings."""
    from engine.sampler import SamplerParams
    from engine.stop import StopMatcher

    given = {field: getattr(args, field) for field, _, _ in SAMPLING_FLAGS.values() if getattr(args, field) is not None}
    try:
        params = SamplerParams(**given) if given else SamplerParams.greedy()
        StopMatcher(args.stop)
    except ValueError as e:
        raise CliError(str(e)) from None
    return params.with_seed(), list(args.stop)


def prompt_only(args) -> None:
    """`llm-inspect "some question"`: one positional that is no file and no .gguf is the prompt
    for the demo model, not a model path with a typo."""
    model = args.model
    if model and args.prompt == DEFAULT_PROMPT and not os.path.exists(model) and not model.lower().endswith(".gguf"):
        args.model, args.prompt = None, model


ENGINES = ("torch", "llama.cpp")
# Flags only the torch engine reads: (default, why llama.cpp refuses anything else).
TORCH_ONLY = {
    "dtype": ("float32", "llama.cpp computes in float32 on the file's quantized weights"),
    "numerics": ("llamacpp", "llama.cpp's numerics are llama.cpp's own"),
    "lens": (False, "the logit lens needs the LM head at every layer, which llama.cpp's graph does not have"),
}


def open_llamacpp(args, bus, path: str):
    """The llama.cpp engine (engine/llamacpp_engine.py); torch-only flags are refused, by name."""
    for flag, (default, why) in TORCH_ONLY.items():
        if getattr(args, flag, default) != default:
            raise CliError(f"--{flag} is for --engine torch: {why}")
    from engine.config import UnsupportedModel
    from engine.gguf_file import GGUFError
    from engine.llamacpp_engine import LlamaCppEngine, LlamaCppError

    attn_weights = getattr(args, "attn_weights", None)
    if attn_weights is None:
        # Flash attention (llama.cpp's default) goes off only when the capture keeps attention weights:
        # only then does the graph have kq_soft_max.
        attn_weights = getattr(args, "capture", None) is not None and "attn" in capture_policy(args)[0].stops
    try:
        return LlamaCppEngine(path, n_ctx=args.ctx_size, bus=bus, threads=args.threads, device=args.device,
                              attn_weights=attn_weights)
    except LlamaCppError as e:
        raise CliError(str(e)) from None
    except (GGUFError, UnsupportedModel) as e:
        raise CliError(f"{path}: {e}") from None


def open_engine(args, bus, defer_torch: bool = False):
    """The engine for args.model: torch's (its weights dequantize in the background, engine/weights.py,
    so this returns in a fraction of a second once torch is imported) or llama.cpp's (--engine).

    `defer_torch`: where nothing that needs torch can fail (--device cpu, an architecture and
    weight types the torch engine runs), return the `ModelFile` read without torch (~2 s to
    import here) instead; `load_torch_engine` finishes it, in the app's engine thread while
    the tokens view is already on screen."""
    prompt_only(args)
    path = args.model or demo_model()
    if not os.path.exists(path):  # checked before torch is imported: a typo fails at once
        raise CliError(f"no such model file: {path}")
    if not os.path.isfile(path):
        raise CliError(f"not a file: {path}")
    if args.n_predict < 1:
        raise CliError("-n must be at least 1")
    if not getattr(args, "headless", False):
        # The app's imports (Textual, ~0.4 s) go on in a thread while torch's (~1.3 s) and the
        # model's opening take this one: the app shows sooner (bench/startup.py).
        threading.Thread(target=importlib.import_module, args=("inspector.app",), daemon=True).start()

    if getattr(args, "engine", "torch") == "llama.cpp":
        return open_llamacpp(args, bus, path)
    if getattr(args, "threads", None) is not None:
        raise CliError("--threads is for --engine llama.cpp (torch uses its own thread pool)")

    if defer_torch and args.device == "cpu":  # the one device whose check needs no torch
        model = open_model_file(args, path, bus)
        return model if model.torch_can_run() else load_torch_engine(args, model)

    from engine.config import UnsupportedModel
    from engine.gguf_file import GGUFError
    from engine.quants import UnsupportedQuant
    from engine.torch_engine import TorchEngine
    from engine.weights import DeviceError, device_and_dtype

    try:
        device_and_dtype(args.device, args.dtype)
    except DeviceError as e:
        raise CliError(str(e)) from None
    try:
        return TorchEngine(path, device=args.device, dtype=args.dtype, n_ctx=args.ctx_size, numerics=args.numerics, bus=bus)
    except (GGUFError, UnsupportedModel, UnsupportedQuant) as e:
        raise CliError(f"{path}: {e}") from None


def open_model_file(args, path: str, bus):
    """The GGUF's header and tokenizer, no torch (engine/model_file.py). An architecture it does
    not know to be the torch engine's is checked by the engine's own registry, which needs torch."""
    from engine.config import UnsupportedModel
    from engine.gguf_file import GGUFError
    from engine.model_file import TORCH_ARCHITECTURES, ModelFile

    def check_arch(arch: str) -> None:
        if arch not in TORCH_ARCHITECTURES:
            from engine.models import model_class

            model_class(arch)  # UnsupportedModel, naming the ones that are

    try:
        return ModelFile(path, n_ctx=args.ctx_size, bus=bus, check_arch=check_arch)
    except (GGUFError, UnsupportedModel) as e:
        raise CliError(f"{path}: {e}") from None


def load_torch_engine(args, model):
    """The torch engine on a ModelFile read by `open_engine(..., defer_torch=True)`; imports torch."""
    from engine.config import UnsupportedModel
    from engine.quants import UnsupportedQuant
    from engine.torch_engine import TorchEngine

    try:
        engine = TorchEngine(model, device=args.device, dtype=args.dtype, numerics=args.numerics)
    except (UnsupportedModel, UnsupportedQuant) as e:
        raise CliError(f"{model.path}: {e}") from None
    if args.lens:
        engine.model.lens = True
    return engine


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
    params, stops = sampling(args)  # a bad flag fails here, before the model loads
    grammar = grammar_source(args)  # and a bad grammar or schema
    policy, max_bytes = capture_policy(args)
    bus = HookBus()
    # Headless, nobody steps through the run: on a GPU, a step's events (CUDA-event times, tensors copied
    # asynchronously into pinned memory) reach the recorder from a background thread (engine/hooks.py).
    bus.defer = args.headless
    # The app's first paint needs no torch: a live run without --record gets the model file now and
    # the torch engine in the engine's thread, while the tokens view is on screen (bench/startup.py).
    engine = open_engine(args, bus, defer_torch=not args.headless and not args.record)
    deferred = not hasattr(engine, "generate")  # a ModelFile: load_torch_engine comes in run_engine
    if args.chat or args.chat_template:
        engine.chat = args.chat_template or ""
    engine.check_tokenizer = args.check_tokenizer
    if grammar is not None:  # its vocabulary loads (vocab-only, in llama.cpp) on the first step
        from engine.grammar import Grammar

        engine.grammar = Grammar(grammar, model_path=engine.path)
    if args.lens and not deferred:  # open_engine refused --lens for an engine without it
        engine.model.lens = True
    try:
        n_tokens = len(engine.encode(args.prompt))  # renders the chat template: a broken one fails here
    except ValueError as e:
        raise CliError(str(e)) from None
    if n_tokens + args.n_predict > engine.n_ctx:
        raise CliError(f"the prompt ({n_tokens} tokens) plus -n {args.n_predict} do not fit the context of {engine.n_ctx}")
    info = engine.info(args.prompt, args.n_predict, sampler=params, stop=stops)
    if grammar is not None:
        info["grammar"] = engine.grammar.describe()
    if deferred:  # what is known before torch loads; run_engine adds the rest (threads, numerics that ran)
        info["engine"].update(name="torch", device=args.device, dtype=args.dtype, numerics_requested=args.numerics)
    try:
        policy = policy.bind(info["model"], n_tokens, max_bytes, itemsize=2 if args.dtype == "float16" else 4)
    except ValueError as e:
        raise CliError(str(e)) from None
    bus.set_filter(policy.wants)
    bus.tensor_filter = policy.keeps_tensors  # a stop emitted for its timing alone copies nothing

    writer = None
    if args.record:
        from traces.writer import TraceWriter

        try:
            writer = TraceWriter(args.record, info, max_bytes=max_bytes, capture=policy)
        except OSError as e:
            raise CliError(f"cannot write {args.record}: {e.strerror or e}") from None
        bus.add(writer)

    if args.headless:
        done = False
        show = terminal_safe if sys.stdout.isatty() else str
        try:
            for result in engine.generate(args.prompt, args.n_predict, sampler=params, stop=stops):
                sys.stdout.write(show(result.text))
                sys.stdout.flush()
            sys.stdout.write("\n")
            done = True
        except ValueError as e:  # NumericalError, a context that fills up: one line, not a traceback
            raise CliError(str(e)) from None
        finally:
            if writer:
                writer.close(complete=done)  # an interrupted run's trace says it was cut short
        return 0

    from inspector.app import make_app
    from traces.live import MemoryTrace

    trace = MemoryTrace(info, capture=policy, max_bytes=max_bytes)
    controller = RunController(breakpoints, start_paused=args.paused)
    # A breakpoint (set now or later, in the editor) needs its stop emitted even where the
    # capture policy records nothing of it; one with no stop (entropy>4, slow>2ms) needs them all.
    bus.set_filter(lambda stop, layer: policy.wants(stop, layer)
                   or any(b.stop is None or b.stop == stop for b in controller.breakpoints))
    bus.add(trace)
    bus.add(controller)

    def run_engine() -> None:
        nonlocal engine
        done = False
        try:
            kwargs = {}
            if deferred:
                # torch's import (~2 s) mostly holds the GIL, which slows the UI thread to a crawl:
                # it starts once the tokens are on screen, or after a second (paused at a breakpoint
                # in text or tokenize, the import goes on while the person reads).
                shown = threading.Event()

                def import_torch() -> None:
                    shown.wait(timeout=1.0)
                    importlib.import_module("engine.torch_engine")

                threading.Thread(target=import_torch, daemon=True).start()
                bus.start_step()
                kwargs["ids"] = engine.encode(args.prompt)
                try:
                    app.call_from_thread(app.show_now, shown.set)
                except RuntimeError:  # the app has stopped
                    shown.set()
                shown.wait(timeout=1.0)
                engine = load_torch_engine(args, engine)
                info["engine"].update(engine.describe_engine())
            for _ in engine.generate(args.prompt, args.n_predict, sampler=params, stop=stops, **kwargs):
                pass
            done = True
        finally:
            if done:
                trace.finish()
            if writer:
                writer.close(complete=done)

    app = make_app(trace, controller=controller, run=run_engine)
    app.run()
    return 0
