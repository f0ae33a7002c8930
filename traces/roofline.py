"""What each stop moved and computed, and how near the device's limits it ran: a roofline per stop.

A stop's time (`Event.dur_ns`) is the work done since the previous stop; this module says what
that work was, from the trace's info alone (the model's shapes and its weight table), so a
replayed trace has it with no model file:

* weight bytes: the weights the stop's matmuls and norms read, in the form the engine reads
  them. The torch engine dequantizes once and reads its `dtype` (4 bytes a weight in float32,
  2 in bf16/fp16); an engine that runs on the GGUF's blocks (llama.cpp) reads the quantized
  bytes (`bits_per_weight` in the weight table).
* other bytes: the stop's activations in and out, and the KV cache it reads or writes. Only
  what the math needs: an engine's temporary copies (repeat_interleave of K/V for GQA, the
  gate and up products of the FFN) are not counted, so a stop that makes them looks slower.
* FLOPs: 2 per multiply-add of every matmul (2·params·T), the attention's K·Q and weights·V
  (2·T·n_keys·n_head·head_dim each), and a few per element for norms, RoPE, softmax and GLUs.
  n_keys is every cell the step attends over (the engine masks; it does not skip).

Each stop's cost lands on the event that timed it: when a stop was not emitted (a capture
policy filtered it, or a model has no such stop), its work is timed by the next stop that was,
so its cost goes there too.

Against the device (`measure_limits`: a big read, copy and matrix-vector product, and a matmul):
a stop whose FLOPs per byte are under the device's balance point (matmul FLOP/s over memory
bytes/s) can at best reach intensity × bandwidth, so it is memory-bound; above it, compute-bound.
`fraction` is the achieved rate over that best (1.0 = on the roof).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

from traces.schema import Event

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Per-layer weights (GGUF base names) and the stop whose work reads them; ".weight" and ".bias"
# are both looked up. MLA's (deepseek2) and the experts' names are llama.cpp's.
STOP_WEIGHTS: dict[str, tuple[str, ...]] = {
    "attn_norm": ("attn_norm",),
    "qkv": ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_q_a", "attn_q_a_norm", "attn_q_b",
            "attn_kv_a_mqa", "attn_kv_a_norm", "attn_kv_b", "attn_k_b"),
    "rope": ("attn_q_norm", "attn_k_norm"),
    "attn_out": ("attn_v_b", "attn_output", "post_attention_norm"),
    "ffn_norm": ("ffn_norm",),
    "moe": ("ffn_gate_inp", "exp_probs_b"),
    "ffn_out": ("ffn_gate", "ffn_up", "ffn_down", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
                "ffn_gate_inp_shexp", "post_ffw_norm"),
}
EXPERT_WEIGHTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")  # only the experts a step routes to are read

# Execution order of one step's work (schema order within a layer).
LAYER_STOPS = ("attn_norm", "qkv", "rope", "kv_write", "gqa", "mla", "attn", "attn_out",
               "ffn_norm", "moe", "ffn_out", "residual")

# FLOPs per element of the elementwise work (the counts a roofline needs, not a kernel's).
RMS_NORM = 4  # square, sum, scale, times the weight
ROPE = 3  # x0*cos - x1*sin per output
SOFTMAX = 5  # scale/mask, max, exp, sum, divide
GLU = 5  # silu or gelu (≈4) times up


class Cost(NamedTuple):  # a tuple: a step makes hundreds of them, on every keypress of the timing view
    weight_bytes: int = 0
    other_bytes: int = 0  # activations in/out, KV cache read/written
    flops: int = 0

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.other_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else 0.0

    def __add__(self, other: Cost) -> Cost:  # not tuple concatenation
        return Cost(self.weight_bytes + other.weight_bytes, self.other_bytes + other.other_bytes,
                    self.flops + other.flops)

    def __bool__(self) -> bool:
        return bool(self.bytes or self.flops)


@dataclass(frozen=True)
class Limits:
    """What the device can do, measured (`measure_limits`); kept in a trace's info as `device_limits`."""

    device: str
    dtype: str
    threads: int
    read_gbps: float  # summing a tensor far bigger than the caches
    copy_gbps: float  # copying one, counting the bytes read and written
    matmul_gflops: float  # a square matmul: the faster of `dtype` and float32
    gemv_gbps: float = 0.0  # a float32 matrix far bigger than the caches times one vector: decode's own pattern

    @property
    def mem_gbps(self) -> float:
        """The memory roof: the best of the ways of streaming bytes."""
        return max(self.read_gbps, self.copy_gbps, self.gemv_gbps)

    @property
    def balance(self) -> float:
        """FLOPs per byte where the roofline bends: below it a stop is memory-bound."""
        return self.matmul_gflops / self.mem_gbps

    def to_info(self) -> dict:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict) -> Limits | None:
        d = info.get("device_limits")
        if not isinstance(d, dict):
            return None
        try:
            limits = cls(str(d["device"]), str(d["dtype"]), int(d["threads"]), float(d["read_gbps"]),
                         float(d["copy_gbps"]), float(d["matmul_gflops"]), float(d.get("gemv_gbps", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None  # a trace from elsewhere: no roof, the rates still show
        ok = all(math.isfinite(v) and v > 0 for v in (limits.read_gbps, limits.copy_gbps, limits.matmul_gflops))
        return limits if ok and math.isfinite(limits.gemv_gbps) and limits.gemv_gbps >= 0 else None


@dataclass(frozen=True)
class Attainment:
    gbps: float
    gflops: float
    bound: str  # "memory" or "compute"
    fraction: float  # of the roof at this stop's intensity


def attainment(cost: Cost, dur_ns: int, limits: Limits | None) -> Attainment | None:
    """Achieved rates of `cost` done in `dur_ns`, and (with limits) the bound and how near the roof."""
    if dur_ns <= 0 or not cost:
        return None
    gbps, gflops = cost.bytes / dur_ns, cost.flops / dur_ns  # bytes/ns = GB/s
    if limits is None:
        return Attainment(gbps, gflops, "", math.nan)
    # The roof at this intensity is min(matmul rate, intensity × bandwidth): whichever is lower binds.
    if cost.intensity < limits.balance:
        return Attainment(gbps, gflops, "memory", gbps / limits.mem_gbps)
    return Attainment(gbps, gflops, "compute", gflops / limits.matmul_gflops)


class CostModel:
    """Per-stop costs of a run, from its trace info (`model` with `weights`, and `engine`)."""

    def __init__(self, info: dict) -> None:
        model, engine = info.get("model") or {}, info.get("engine") or {}
        try:
            self.n_layer = int(model["n_layer"])
            self.d = int(model["n_embd"])
            self.n_head, self.n_kv = int(model["n_head"]), int(model["n_head_kv"])
            self.hd = int(model["head_dim"])
            self.n_ff = int(model.get("n_ff") or 0)
            self.n_vocab = int(model["n_vocab"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the trace's model info has no {e} to cost its stops from") from None
        self.n_expert = int(model.get("n_expert") or 0)
        self.n_expert_used = int(model.get("n_expert_used") or 0)
        self.weights: dict[str, dict] = model.get("weights") or {}
        held = DTYPE_BYTES.get(engine.get("dtype", ""))
        # The torch engine reads its dequantized weights; an engine without a dtype reads the GGUF's blocks.
        self.dequantized = engine.get("name") == "torch" and held is not None
        self.act = held or 4  # activation element bytes (llama.cpp computes in float32)
        self.kv = held if self.dequantized else 2  # KV cache element bytes (llama.cpp's cache is f16)
        self.weights_as = engine.get("dtype", "") if self.dequantized else "GGUF blocks"
        self.output = "output.weight" if "output.weight" in self.weights else "token_embd.weight"
        self._memo: dict[tuple, tuple[int, int, int]] = {}  # (layer, weight names) -> bytes, matrix and vector elements

    @classmethod
    def of(cls, info: dict) -> CostModel | None:
        """A cost model, or None for a trace whose info cannot give one (no weight table)."""
        try:
            return cls(info) if (info.get("model") or {}).get("weights") else None
        except ValueError:
            return None

    # -- weights ---------------------------------------------------------------------------

    def weight(self, name: str) -> tuple[int, int]:
        """(bytes read, elements) of one weight in the table; (0, 0) when the file has none."""
        w = self.weights.get(name)
        if w is None:
            return 0, 0
        n = math.prod(int(s) for s in w["shape"])
        per = self.act if self.dequantized else float(w["bits_per_weight"]) / 8
        return int(n * per), n

    def _weights(self, il: int, bases: tuple[str, ...], T: int) -> Cost:
        """Weights of layer `il` read once, and the FLOPs of the matmuls among them on T rows
        (2 per element per row) and of the biases (1); a norm's FLOPs are its stop's."""
        key = (il, bases)
        found = self._memo.get(key)
        if found is None:
            nbytes = matrix = vector = 0
            for base in bases:
                for suffix in (".weight", ".bias"):
                    name = f"blk.{il}.{base}{suffix}"
                    b, n = self.weight(name)
                    nbytes += b
                    if len(self.weights.get(name, {}).get("shape", ())) > 1:
                        matrix += n
                    elif suffix == ".bias":
                        vector += n
            found = self._memo[key] = (nbytes, matrix, vector)
        nbytes, matrix, vector = found
        return Cost(nbytes, 0, (2 * matrix + vector) * T)

    def has(self, il: int, base: str) -> bool:
        return f"blk.{il}.{base}.weight" in self.weights

    def _experts(self, il: int, T: int) -> Cost:
        """Routed experts: a step reads the experts its T tokens chose (expected distinct of
        n_expert when each token picks n_expert_used at random) and each token runs n_expert_used."""
        nbytes = flops = 0
        E, k = self.n_expert, self.n_expert_used
        for base in EXPERT_WEIGHTS:
            b, n = self.weight(f"blk.{il}.{base}.weight")
            if not n:
                continue
            E_ = E or 1
            touched = E_ * (1 - (1 - min(k, E_) / E_) ** T) if E and k else E_
            nbytes += int(b * touched / E_)
            flops += int(2 * n / E_ * (k or E_) * T)
        return Cost(nbytes, 0, flops)

    # -- one stop's own work ---------------------------------------------------------------

    def stop_cost(self, stop: str, layer: int | None, T: int, n_keys: int) -> Cost:
        """The work of `stop` at `layer` for a step of T tokens attending over n_keys cells."""
        a, kv, d = self.act, self.kv, self.d
        q_el, kv_el = self.n_head * self.hd, self.n_kv * self.hd
        if layer is None or stop == "logits":
            if stop == "embed":  # T rows of the embedding table
                b, n = self.weight("token_embd.weight")
                return Cost(int(b / max(1, self.n_vocab) * T), T * d * a, T * d)
            if stop == "logits":  # the last token: final norm, LM head
                b, n = self.weight(self.output)
                nb, nn = self.weight("output_norm.weight")
                return Cost(b + nb, d * a + self.n_vocab * 4, 2 * n + RMS_NORM * d + SOFTMAX * self.n_vocab)
            return Cost()
        il = layer
        w = self._weights(il, STOP_WEIGHTS.get(stop, ()), T)
        rows = T * d * a  # one [T, d] activation
        if stop in ("attn_norm", "ffn_norm"):
            own = Cost(0, 2 * rows, RMS_NORM * T * d)
            if stop == "ffn_norm":  # x + attn_out lands here
                own += Cost(0, 3 * rows, T * d)
            return w + own
        if stop == "qkv":
            return w + Cost(0, rows + T * (q_el + 2 * kv_el) * a, 0)
        if stop == "rope":
            n = T * (q_el + kv_el)
            norm = RMS_NORM * n if self.has(il, "attn_q_norm") else 0  # QK-norm, per head
            return w + Cost(0, 2 * n * a, ROPE * n + norm)
        if stop == "kv_write":
            return Cost(0, 2 * T * kv_el * (a + kv), 0)
        if stop == "attn":  # K·Q and the softmax
            scores = self.n_head * T * n_keys
            return Cost(0, n_keys * kv_el * kv + T * q_el * a + scores * a,
                        2 * T * n_keys * q_el + SOFTMAX * scores)
        if stop == "attn_out":  # weights·V and the output projection
            scores = self.n_head * T * n_keys
            post = RMS_NORM * T * d if self.has(il, "post_attention_norm") else 0  # gemma3
            return w + Cost(0, n_keys * kv_el * kv + scores * a + rows, 2 * T * n_keys * q_el + post)
        if stop == "moe":  # the router, where the layer has one
            return w + Cost(0, rows, 0) if w else w
        if stop == "ffn_out":
            post = RMS_NORM * T * d if self.has(il, "post_ffw_norm") else 0  # gemma3
            return w + self._experts(il, T) + Cost(0, 2 * rows, GLU * T * self.n_ff + post)
        if stop == "residual":
            return Cost(0, 3 * rows, T * d)
        return w

    # -- a step ----------------------------------------------------------------------------

    def step_costs(self, events: list[Event]) -> dict[tuple[str, int | None], Cost]:
        """Each emitted (stop, layer) of one step with the cost of the work its time covers: its
        own, plus that of stops before it that were not emitted."""
        shape = step_shape(events)
        if shape is None:
            return {}
        T, n_keys = shape
        emitted = {(e.stop, e.layer) for e in events}
        order: list[tuple[str, int | None]] = [("embed", None)]
        order += [(stop, il) for il in range(self.n_layer) for stop in LAYER_STOPS]
        order.append(("logits", None))
        out: dict[tuple[str, int | None], Cost] = {}
        pending = Cost()
        for key in order:
            pending += self.stop_cost(key[0], key[1], T, n_keys)
            if key in emitted:
                out[key] = pending
                pending = Cost()
        for e in events:  # the logit lens: one head per layer, where it was asked for
            if e.stop == "logits" and e.layer is not None:
                out[("logits", e.layer)] = self.stop_cost("logits", e.layer, 1, n_keys)
        return out


def step_shape(events: list[Event]) -> tuple[int, int] | None:
    """(T tokens, n_keys cells attended) of a step, from its batch event (or its first kv_write)."""
    for e in events:
        if e.stop in ("batch", "kv_write"):
            positions = e.scalars.get("positions")
            if isinstance(positions, list) and positions:
                return len(positions), int(positions[0]) + len(positions)
    return None


# -- the device --------------------------------------------------------------------------------


def measure_limits(device: str = "cpu", dtype: str = "float32", mib: int = 0, repeats: int = 3,
                   threads: int | None = None) -> Limits:
    """The device's memory bandwidth (a read, a copy and a matrix-vector product over `mib` MiB,
    far past the caches) and its matmul rate; best of `repeats`, so a busy moment on a shared
    machine costs a repeat, not the figure. `mib` 0: 128 on a CPU (4x a 32 MiB L3), 1024 on a GPU.
    About a second on a CPU. `threads`: the engine's (llama.cpp's own pool); default torch's.
    """
    import torch

    if threads and threads != torch.get_num_threads():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure_limits(device, dtype, mib, repeats)
        finally:
            torch.set_num_threads(before)

    dev = torch.device(device)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    cuda = dev.type == "cuda"

    def best(fn, n: int = repeats) -> float:
        fn()  # warm: first touch of the pages, kernel selection
        times = []
        for _ in range(n):
            if cuda:
                torch.cuda.synchronize(dev)
            t = time.perf_counter_ns()
            fn()
            if cuda:
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter_ns() - t)
        return min(times)

    n = (mib or (1024 if cuda else 128)) * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    read = src.nbytes / best(lambda: src.sum())
    copy = 2 * src.nbytes / best(lambda: dst.copy_(src))
    del src, dst
    side = int(math.sqrt(n)) // 64 * 64
    w, v = torch.ones(side, side, device=dev), torch.ones(1, side, device=dev)
    gemv = w.nbytes / best(lambda: v @ w.T)
    del w

    def matmul(dt) -> float:
        # Grown until one takes ~20 ms: a CPU without bf16 units takes seconds at 1024.
        side, top = 256, (8192 if cuda else 1024)
        while True:
            x = torch.randn(side, side, device=dev).to(dt)
            y = torch.randn(side, side, device=dev).to(dt)
            ns = best(lambda: x @ y)
            if ns >= 20e6 or side >= top:
                return 2 * side**3 / ns
            side *= 2

    # The arithmetic roof is the faster of float32 and `dtype`: a CPU runs bf16 through float32
    # units (its bf16 gemm can be 100x slower than the kernels an engine's bf16 matvec gets).
    mm = max(matmul(dt), matmul(torch.float32) if dt != torch.float32 else 0.0)
    return Limits(str(dev), dtype, torch.get_num_threads(), read, copy, mm, gemv)


def cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llm-inspect", "device_limits.json")


def machine(device: str) -> str:
    """What the limits belong to: the GPU's name, or the CPU's model and core count."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or 'cpu'} x{os.cpu_count()}"


def device_limits(device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                  remeasure: bool = False) -> Limits:
    """`measure_limits`, remembered per machine, dtype and thread count (cache_path()): each figure
    is the best seen so far. A limit is the hardware's; a busy moment on a shared machine only
    lowers a measurement (on 2 cores with a neighbour running, a 2-thread matmul measures 1 GFLOP/s
    against 177 quiet), so the best is the truest. `remeasure` forgets what was kept."""
    import torch

    new = measure_limits(device, dtype, threads=threads)
    key = f"{machine(device)} | {dtype} | {new.threads} threads | torch {torch.__version__}"
    path = cache_path()
    try:
        with open(path) as f:
            kept = json.load(f)
        if not isinstance(kept, dict):
            kept = {}
    except (OSError, ValueError):
        kept = {}
    old = None if remeasure else Limits.from_info({"device_limits": kept.get(key)})
    best = new if old is None else replace(
        new, read_gbps=max(new.read_gbps, old.read_gbps), copy_gbps=max(new.copy_gbps, old.copy_gbps),
        matmul_gflops=max(new.matmul_gflops, old.matmul_gflops), gemv_gbps=max(new.gemv_gbps, old.gemv_gbps))
    kept[key] = best.to_info()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(kept, f, indent=1)
        os.replace(tmp, path)  # two profiles at once: the last one's file, whole
    except OSError:
        pass  # a read-only home: the figures still hold for this run
    return best


# -- words for the tables ----------------------------------------------------------------------


def roof_text(att: Attainment | None) -> str:
    """`mem 43%` / `cmp 12%`: the bound and how near its roof; '' without a cost or limits."""
    if att is None or not att.bound:
        return ""
    return f"{'mem' if att.bound == 'memory' else 'cmp'} {att.fraction:4.0%}"


def limits_text(limits: Limits) -> str:
    return (f"{limits.device} ({limits.threads} threads): memory {limits.mem_gbps:.1f} GB/s, "
            f"matmul {limits.matmul_gflops:.0f} GFLOP/s ({limits.dtype}); "
            f"memory-bound under {limits.balance:.1f} FLOP/byte")
