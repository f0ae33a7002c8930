"""Decode speed against the device's limit: tokens/s of the torch engine with tracing off, with
timing only (what `llm-inspect profile` records) and with the default capture recording, and of
llama.cpp on the same file; the weight bytes a token reads and the bandwidth that makes, over
the device's measured bandwidth.

    python bench/decode.py                                   # the demo model and a 1B-shaped synthetic one
    python bench/decode.py --models 1b,8b --device cuda --dtype bfloat16 --max-gib 6
    python bench/decode.py --models 1b --layers 4 --vocab 32000 --tokens 16

`1b` / `8b` / `135m` are llama-shaped synthetic GGUFs built here from a seed (tests/synthetic.py),
so a GPU machine needs no model file; `demo` is SmolLM2-135M; anything else is a .gguf path.

On CUDA, capture off replays the decode step as a CUDA graph (engine/cuda_graph.py; with
`--numerics exact`, the default here), and `eager` is the same run launching every kernel from
Python (TorchEngine.decode_graph = "off"); timing and default capture always run eagerly.

Runs alternate (llama.cpp, off, eager, timing, recording) round by round, so a busy moment on a shared
machine hits all of them; each figure is the median, each ratio is taken within a round.
Weights per token: what a decode step reads, the embedding table aside (one row of it) --
the torch engine reads its dequantized weights (`--dtype`), llama.cpp the GGUF's blocks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402

from bench.engine import PROMPT, LlamaCpp, recording, torch_decode  # noqa: E402
from engine.hooks import HookBus  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402
from traces.live import MemoryTrace  # noqa: E402
from traces.roofline import DTYPE_BYTES, device_limits  # noqa: E402
from tests.synthetic import SHAPES, shape_of, synthetic_bytes, write_synthetic  # noqa: E402


def weights_per_token(engine: TorchEngine) -> tuple[int, int]:
    """(bytes as the GGUF stores them, bytes as the engine holds them) that one decode step reads."""
    stored = held = 0
    per = DTYPE_BYTES[engine.dtype_name]
    tied = "output.weight" not in engine.gguf.tensors
    for name, t in engine.gguf.tensors.items():
        # The embedding table gives one row, unless it is also the LM head.
        share = 1 / engine.args.n_vocab if name == "token_embd.weight" and not tied else 1.0
        stored += int(t.nbytes * share)
        held += int(t.n_elements * per * share)
    return stored, held


def timing_only(engine: TorchEngine):
    """Listen the way `llm-inspect profile` does: every stop timed, nothing copied; returns a stop()."""
    trace = MemoryTrace({})
    engine.bus.tensor_filter = lambda stop, layer: False
    engine.bus.add(trace)

    def stop() -> None:
        engine.bus.remove(trace)
        engine.bus.tensor_filter = None

    return stop


def model_path(name: str, a, tmp: str) -> tuple[str, str]:
    """(label, .gguf path): a synthetic shape is written into `tmp` first."""
    if name == "demo":
        from inspector.common import demo_model

        return "SmolLM2-135M (demo)", demo_model()
    if name in SHAPES:
        qtype = GGMLQuantizationType[a.qtype]
        s = shape_of(name, a.layers, a.vocab)
        path = os.path.join(tmp, f"synthetic-{name}.gguf")
        t = time.perf_counter()
        write_synthetic(path, s, a.seed, qtype, max_bytes=int(a.max_gib * 2**30))
        label = f"synthetic {name} ({s.n_layer} layers, vocab {s.n_vocab}, {a.qtype})"
        print(f"  wrote {label}: {synthetic_bytes(s, qtype) / 2**30:.2f} GiB in {time.perf_counter() - t:.1f} s",
              flush=True)
        return label, path
    return os.path.basename(name), name


def bench(label: str, path: str, a, limits) -> None:
    bus = HookBus()
    bus.defer = True  # as `llm-inspect profile` and `--record` without a UI: a GPU's stop times read once a step
    engine = TorchEngine(path, device=a.device, dtype=a.dtype, numerics=a.numerics, bus=bus)
    engine.weights.wait_all()
    stored, held = weights_per_token(engine)
    ids = engine.tokenizer.encode(PROMPT).ids
    try:
        ref = LlamaCpp(path, ids, a.threads) if a.llamacpp else None
    except Exception as e:  # noqa: BLE001 -- a file llama.cpp cannot load still gets the torch figures
        print(f"  llama.cpp could not load it: {e}")
        ref = None
    torch_decode(engine, 4)  # warm-up (on CUDA it captures the decode graph)
    graphed = engine.decode_path(1) == "graph"  # capture off on CUDA: the decode step replays a CUDA graph
    runs: dict[str, list[float]] = {"off": [], "timing": [], "default": [], "llama.cpp": []}
    if graphed:
        runs["eager"] = []
    for _ in range(a.rounds):
        if ref is not None:
            runs["llama.cpp"].append(ref.decode(a.tokens))
        runs["off"].append(torch_decode(engine, a.tokens))
        if graphed:  # the same, every kernel launched from Python
            engine.decode_graph = "off"
            runs["eager"].append(torch_decode(engine, a.tokens))
            engine.decode_graph = "auto"
        stop = timing_only(engine)
        runs["timing"].append(torch_decode(engine, a.tokens))
        stop()
        stop = recording(engine, a.tokens)
        runs["default"].append(torch_decode(engine, a.tokens))
        stop()
    med = {k: statistics.median(v) for k, v in runs.items() if v}

    def within(k: str, base: str) -> float:
        return statistics.median([x / y for x, y in zip(runs[k], runs[base])])

    bw = limits.mem_gbps * 1e9
    print(f"\n{label}: weights per token {stored / 2**20:.0f} MiB as stored, {held / 2**20:.0f} MiB as the torch "
          f"engine reads them ({a.dtype}); {a.tokens} tokens, median of {a.rounds}")
    if graphed or engine.graph_status:
        also = ", and eager for comparison" if graphed else ""
        print(f"  capture off: decode {engine.graph_status or 'eager'}{also}")
    for k in [k for k in ("off", "eager", "timing", "default") if k in med]:
        gbps = held * med[k] / 1e9
        slower = f"   off/{k} {1 / within(k, 'off'):4.2f}x" if k != "off" else ""
        vs_cpp = f"   {within(k, 'llama.cpp'):4.2f}x llama.cpp" if "llama.cpp" in med else ""
        print(f"  torch {k:8} {med[k]:8.2f} tok/s  {gbps:7.1f} GB/s = {gbps * 1e9 / bw:5.1%} of the device"
              f"{slower}{vs_cpp}", flush=True)
    if "llama.cpp" in med:
        gbps = stored * med["llama.cpp"] / 1e9
        print(f"  llama.cpp      {med['llama.cpp']:8.2f} tok/s  {gbps:7.1f} GB/s = {gbps * 1e9 / bw:5.1%} of the device"
              f" (its {a.threads} threads, CPU)")
    if ref is not None:
        ref.close()
    del engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo,1b", help="demo, 135m, 1b, 8b or .gguf paths, comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPE_BYTES))
    ap.add_argument("--numerics", default="exact", choices=["exact", "llamacpp-fast", "llamacpp"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--qtype", default="Q4_0", choices=["Q4_0", "Q8_0"], help="synthetic models' matrices")
    ap.add_argument("--layers", type=int, help="trim a synthetic model to this many layers")
    ap.add_argument("--vocab", type=int, help="trim a synthetic model's vocabulary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-gib", type=float, default=8.0, help="refuse to write a bigger synthetic file")
    ap.add_argument("--no-llamacpp", dest="llamacpp", action="store_false", help="torch figures only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    limits = device_limits(a.device, a.dtype)  # the best seen on this machine (llm-inspect profile's too)
    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"{os.cpu_count()} cores"
    print(f"decode, torch {torch.__version__} {a.dtype} on {a.device} ({dev}), numerics {a.numerics}; measured: memory "
          f"{limits.mem_gbps:.1f} GB/s, matmul {limits.matmul_gflops:.0f} GFLOP/s; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        for name in [m for m in a.models.split(",") if m]:
            try:
                label, path = model_path(name, a, tmp)
            except ValueError as e:
                print(f"\n{name}: skipped: {e}")
                continue
            bench(label, path, a, limits)
            if path.startswith(tmp):
                os.unlink(path)


if __name__ == "__main__":
    main()
