"""From llama.cpp's graph nodes to our stops: the mapping table, and the observer that turns
computed nodes into the torch engine's events.

llama.cpp names a graph tensor with `cb(cur, "Qcur", il)`, i.e. `Qcur-<il>`, and names it
again after a reshape or a RoPE, so one name labels several nodes: a node is matched on its
op AND its name together. A few nodes have no name of their own (Gemma 3's attention output
projection is `node_259`); those are matched on their op and on the node they read
(`src1`: the `kqv_out-N` they multiply). The table below is pinned against SmolLM2 and
Gemma 3 graphs of llama-cpp-python 0.3.36 by tests/test_llamacpp_engine.py; names change
between llama.cpp releases (`inp_embd`→`embd`, `kq_soft_max_ext`→`kq_soft_max`), which is
why both spellings are accepted where we know of two.

    stop       part      op        node name (N = layer)            our tensor
    embed      out       GET_ROWS  embd | inp_embd                  [T, d]
               (gemma3)  SCALE     inp_scaled                       [T, d] (× sqrt(d))
    attn_norm  out       MUL       attn_norm-N                      [T, d]
    qkv        q k v     RESHAPE   Qcur-N, Kcur-N, Vcur-N           [T, heads, hd] (before QK-norm, RoPE)
    rope       q k       ROPE      Qcur-N, Kcur-N                   [T, heads, hd]
    kv_write   k, v      SET_ROWS  cache_k_lN (view),               src[1]: the cells (I64) each
                                   cache_v_lN [(reshaped)] (view)   token's K went to
    attn       weights   SOFT_MAX  kq_soft_max-N (flash attn off)   [n_head, T, n_keys]
               (boundary) RESHAPE  kqv_out-N (flash attn on)        no weights: timing only
    attn_out   out       MUL_MAT   any name, src1 = kqv_out-N       [T, d] (attn_out-N in llama)
               post_norm MUL       attn_post_norm-N (gemma3)        [T, d]
    ffn_norm   out       MUL       ffn_norm-N                       [T, d]
    ffn_out    out       MUL_MAT   ffn_out-N                        [T, d]
               post_norm MUL       ffn_post_norm-N (gemma3)         [T, d]
    residual   out       ADD       l_out-N                          [T, d]
    logits     logits    MUL       result_norm, MUL_MAT result_output: not asked for; the logits
                                   are read after llama_decode (llama_get_logits), no split

Mixture-of-experts layers (llama.cpp's build_moe_ffn; `moe_rules`, picked by the routing):

    moe        router_logits MUL_MAT  ffn_moe_logits-N              [T, n_expert]
               probs     SOFT_MAX  ffn_moe_probs-N (UNARY: sigmoid) [T, n_expert]
               experts   VIEW      ffn_moe_topk-N (of the ARGSORT)  [T, k] int32
               weights   GET_ROWS  ffn_moe_weights-N                [T, k, 1] (as [T, k])
                         DIV       ffn_moe_weights_norm-N (norm_w)  [T, k]
                         SCALE     ffn_moe_weights_scaled-N (scale) [T, k, 1]
    ffn_out    out       ADD       ffn_moe_out-N (no shared expert; CONT when k = 1)
                         ADD       ffn_out-N (+ the shared expert: qwen2moe, deepseek2)

Multi-head latent attention (deepseek2; `mla_rules`, in place of the Qcur/Kcur/Vcur rows):

    qkv        q         RESHAPE   q-N                              [T, n_head, qk_nope + rope_dim]
               k         MUL_MAT   kv_cmpr_pe-N                     [T, r + rope_dim] (as [T, 1, r + rope_dim]); no v
    rope       q         VIEW, ROPE q_nope-N ; q_pe-N (absorbed)    side by side: [T, n_head, qk_nope + rope_dim]
                         ROPE      Qcur-N (naive)                   the same, rotated whole
               k         CONCAT    Kcur-N (absorbed)                [T, 1, r + rope_dim]: the cached row
                         MUL, ROPE kv_cmpr-N ; k_pe-N (naive)       side by side: the same row
    mla        latent    MUL       kv_cmpr-N (after attn_kv_a_norm) [T, kv_lora_rank]
               k_pe      ROPE      k_pe-N                           [T, 1, rope_dim] (as [T, rope_dim])
               q_absorbed CONCAT   Qcur-N (absorbed form only)      [T, n_head, kv_lora_rank + rope_dim]
    kv_write   k_cells   SET_ROWS  cache_k_lN (view)                the absorbed form's cache is K-only:
                                                                    [c_kv ; k_pe] rows, no V store at all

Every node asked for splits llama.cpp's graph (the scheduler computes up to it, syncs, calls
back), so `StopCapture.ask` says yes only to nodes of stops the hook bus wants (`bus.wants`),
and reads a node's data only when its tensors are kept or a scalar needs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from engine import rope_yarn
from engine.config import ModelArgs
from engine.hooks import HookBus
from engine.llamacpp_graph import node_name, node_op, node_shape, node_src, read_node, view_node
from engine.models.moe import Routing


@dataclass(frozen=True)
class NodeRule:
    stop: str
    part: str  # the tensor this node gives the event ("q", "out"), or a role ("k_cells"); "" = a boundary
    op: str  # ggml_op_name the node must have
    name: str  # regex the whole node name must match; (\d+) is the layer. "" = any name (see src1)
    src1: str = ""  # regex the name of the node's second input must match (for nodes with no name of their own)
    flash_attn: bool | None = None  # only in graphs with flash attention on (True) / off (False)
    read: str = "tensor"  # "tensor": the node's data; "src1": its second input's (SET_ROWS cells); "none"
    ndim: int = 2  # dimensions of our tensor ([T, d]: 2)


RULES: tuple[NodeRule, ...] = (
    NodeRule("embed", "out", "GET_ROWS", r"(?:inp_)?embd"),
    NodeRule("attn_norm", "out", "MUL", r"attn_norm-(\d+)"),
    NodeRule("qkv", "q", "RESHAPE", r"Qcur-(\d+)", ndim=3),
    NodeRule("qkv", "k", "RESHAPE", r"Kcur-(\d+)", ndim=3),
    NodeRule("qkv", "v", "RESHAPE", r"Vcur-(\d+)", ndim=3),
    NodeRule("rope", "q", "ROPE", r"Qcur-(\d+)", ndim=3),
    NodeRule("rope", "k", "ROPE", r"Kcur-(\d+)", ndim=3),
    NodeRule("kv_write", "k_cells", "SET_ROWS", r"cache_k_l(\d+) \(view\)", read="src1"),
    NodeRule("kv_write", "v_cells", "SET_ROWS", r"cache_v_l(\d+)(?: \(reshaped\))? \(view\)", read="none"),
    NodeRule("attn", "weights", "SOFT_MAX", r"kq_soft_max(?:_ext)?-(\d+)", flash_attn=False, ndim=3),
    NodeRule("attn", "", "RESHAPE", r"kqv_out-(\d+)", flash_attn=True, read="none"),
    NodeRule("attn_out", "out", "MUL_MAT", "", src1=r"kqv_out-(\d+)"),
    NodeRule("ffn_norm", "out", "MUL", r"ffn_norm-(\d+)"),
    NodeRule("ffn_out", "out", "MUL_MAT", r"ffn_out-(\d+)"),
    NodeRule("residual", "out", "ADD", r"l_out-(\d+)"),
)

# What an architecture's graph does differently: rows replaced (same stop and part) or added.
ARCH_RULES: dict[str, tuple[NodeRule, ...]] = {
    "gemma3": (
        NodeRule("embed", "out", "SCALE", r"inp_scaled"),  # the rows × sqrt(n_embd), what our embed carries
        NodeRule("attn_out", "post_norm", "MUL", r"attn_post_norm-(\d+)"),
        NodeRule("ffn_out", "post_norm", "MUL", r"ffn_post_norm-(\d+)"),
    ),
}

# The logits stop's nodes: in the table for the record, never asked for (llama_get_logits has them).
HEAD_NODES: tuple[tuple[str, str], ...] = (("result_norm", "MUL"), ("result_output", "MUL_MAT"))

# llama.cpp's KV cache holds f16 (the mla event's bytes per token are counted in it).
KV_ELEMENT_BYTES = 2

# Stops whose scalars need the node's data even when its tensors are not kept (moe: the load).
_SCALAR_DATA = {"embed", "attn", "residual", "moe"}


def rules_for(arch: str, flash_attn: bool) -> tuple[NodeRule, ...]:
    """The table for one architecture's graph, with or without flash attention."""
    extra = ARCH_RULES.get(arch, ())
    own = {(r.stop, r.part) for r in extra}
    rows = [r for r in RULES if (r.stop, r.part) not in own] + list(extra)
    return tuple(r for r in rows if r.flash_attn is None or r.flash_attn == flash_attn)


def moe_rules(args: ModelArgs, shared_expert: bool) -> tuple[NodeRule, ...]:
    """The moe stop's nodes, and the MoE layers' FFN output, for this file's routing (none for a
    dense model). The weights' last node depends on the routing: llama.cpp names each step it
    takes (GET_ROWS, then the norm_w division, then the scale), and the event carries the last.
    The dense rows stay too: deepseek2's leading dense layers still end in `ffn_out-N` MUL_MAT."""
    if not args.n_expert:
        return ()
    r = Routing.from_args(args)
    if r.scale not in (0.0, 1.0):
        weights = NodeRule("moe", "weights", "SCALE", r"ffn_moe_weights_scaled-(\d+)", ndim=3)
    elif r.norm_w:
        weights = NodeRule("moe", "weights", "DIV", r"ffn_moe_weights_norm-(\d+)")
    else:
        weights = NodeRule("moe", "weights", "GET_ROWS", r"ffn_moe_weights-(\d+)", ndim=3)
    # The routed experts' sum: an ADD of the k slots (a CONT of the one slot when k = 1); with a
    # shared expert llama.cpp adds it in a node of its own, `ffn_out-N`.
    out = (NodeRule("ffn_out", "out", "ADD", r"ffn_out-(\d+)") if shared_expert else
           NodeRule("ffn_out", "out", "ADD" if r.n_expert_used > 1 else "CONT", r"ffn_moe_out-(\d+)"))
    return (
        NodeRule("moe", "router_logits", "MUL_MAT", r"ffn_moe_logits-(\d+)"),
        NodeRule("moe", "probs", "SOFT_MAX" if r.gating == "softmax" else "UNARY", r"ffn_moe_probs-(\d+)"),
        NodeRule("moe", "experts", "VIEW", r"ffn_moe_topk-(\d+)"),
        weights,
        out,
    )


def mla_rules(args: ModelArgs, absorbed: bool) -> tuple[NodeRule, ...]:
    """deepseek2's attention nodes (none without a latent): its qkv and rope stops, which replace
    the table's Qcur/Kcur/Vcur rows, and the mla stop. `absorbed`: the file splits W_uk / W_uv
    (attn_k_b, attn_v_b), so llama.cpp folds W_uk into the query, whose concatenation with q_pe
    is `Qcur-N`; the older attn_kv_b files run decompressed and have no absorbed query.

    The torch engine's rope event carries q as [q_nope ; rotated q_pe] per head and k as the
    cached row [c_kv ; rotated k_pe]. The absorbed graph never joins q's halves (its Qcur joins
    the *absorbed* q_nope), the naive one never joins c_kv and k_pe (its Kcur is the per-head
    decompressed key): there the event's tensor is two of llama.cpp's nodes side by side
    (`StopCapture.mla_rope`), their numbers untouched. The rope rows come before the mla rows:
    a node both stops read (naive: k_pe-N) emits rope first, as the torch engine does."""
    if not args.kv_lora_rank:
        return ()
    rules = (NodeRule("qkv", "q", "RESHAPE", r"q-(\d+)", ndim=3),  # [T, nh, nope + n_rot]
             NodeRule("qkv", "k", "MUL_MAT", r"kv_cmpr_pe-(\d+)"))  # [T, r + n_rot], before the norm and RoPE
    if absorbed:
        rules += (NodeRule("rope", "q_nope", "VIEW", r"q_nope-(\d+)", ndim=3),
                  NodeRule("rope", "q_pe", "ROPE", r"q_pe-(\d+)", ndim=3),
                  NodeRule("rope", "k", "CONCAT", r"Kcur-(\d+)", ndim=3))  # [T, 1, r + n_rot]: the cached row
    else:
        rules += (NodeRule("rope", "q", "ROPE", r"Qcur-(\d+)", ndim=3),  # the whole head, its nope part unturned
                  NodeRule("rope", "latent", "MUL", r"kv_cmpr-(\d+)"),
                  NodeRule("rope", "k_pe", "ROPE", r"k_pe-(\d+)", ndim=3))
    rules += (NodeRule("mla", "latent", "MUL", r"kv_cmpr-(\d+)"),
              NodeRule("mla", "k_pe", "ROPE", r"k_pe-(\d+)", ndim=3))
    if absorbed:
        rules += (NodeRule("mla", "q_absorbed", "CONCAT", r"Qcur-(\d+)", ndim=3),)
    return rules


def mla_scalars(args: ModelArgs, form: str, element_bytes: int) -> dict:
    """The mla event's scalars, as engine/models/deepseek2.py names them, from the file's args:
    the cache's bytes per token and layer (a latent row against multi-head K and V), the
    softmax scale, and YaRN's settings."""
    a, y = args, args.yarn
    mla = (a.kv_lora_rank + a.rope_dim) * element_bytes
    mha = a.n_head * (a.qk_nope_dim + a.rope_dim + a.v_head_dim) * element_bytes
    out = {"form": form, "kv_lora_rank": a.kv_lora_rank, "rope_dim": a.rope_dim, "qk_nope_dim": a.qk_nope_dim,
           "v_head_dim": a.v_head_dim, "n_head": a.n_head, "kq_scale": a.attn_scale,
           "mla_bytes_per_token": mla, "mha_bytes_per_token": mha, "saving": mha / mla,
           "saved_bytes_per_token": (mha - mla) * a.n_layer, "element_bytes": element_bytes}
    if not y:
        return {**out, "rope_scaling": "none"}
    low, high = rope_yarn.corr_dims(a.rope_dim, y.n_ctx_orig, a.rope_theta, y.beta_fast, y.beta_slow)
    return {**out, "rope_scaling": "yarn", "yarn_factor": y.factor, "yarn_n_ctx_orig": y.n_ctx_orig,
            "yarn_log_mul": y.log_mul, "yarn_rope_magnitude": float(y.magnitude()),
            "yarn_ramp": [float(v) for v in rope_yarn.ramp(a.rope_dim, low, high)]}


class NodeMap:
    """Which rules a node name can be, cached per name: the ask phase sees ~1 000 nodes a step,
    so a name is matched against the regexes once, then looked up."""

    def __init__(self, rules: tuple[NodeRule, ...]):
        self.rules = rules
        self._named = [(re.compile(r.name), r) for r in rules if r.name]
        self._by_src = [(re.compile(r.src1), r) for r in rules if r.src1]
        self._names: dict[bytes, tuple[tuple[NodeRule, int | None], ...]] = {}
        self._sources: dict[bytes, tuple[tuple[NodeRule, int | None], ...]] = {}

    @staticmethod
    def _match(table, text: str) -> tuple[tuple[NodeRule, int | None], ...]:
        out = []
        for rx, rule in table:
            m = rx.fullmatch(text)
            if m:
                out.append((rule, int(m.group(1)) if m.groups() and m.group(1) is not None else None))
        return tuple(out)

    def named(self, name: bytes) -> tuple[tuple[NodeRule, int | None], ...]:
        """(rule, layer) for every rule whose name pattern this is (its op still to be checked)."""
        hit = self._names.get(name)
        if hit is None:
            hit = self._names[name] = self._match(self._named, name.decode("utf-8", "replace"))
        return hit

    def source_of(self, name: bytes) -> tuple[tuple[NodeRule, int | None], ...]:
        """(rule, layer) for every rule whose node reads a node of this name as src1."""
        hit = self._sources.get(name)
        if hit is None:
            hit = self._sources[name] = self._match(self._by_src, name.decode("utf-8", "replace"))
        return hit


def ours(arr: np.ndarray, ndim: int) -> np.ndarray:
    """ggml's 4-d tensor in numpy order with its leading 1s dropped: (1, 1, T, d) -> (T, d)."""
    lead = arr.shape[:arr.ndim - ndim]
    if any(n != 1 for n in lead):
        raise ValueError(f"a node of shape {arr.shape} does not fit {ndim} dimensions")
    return arr.reshape(arr.shape[arr.ndim - ndim:])


class StopCapture:
    """The graph observer (engine/llamacpp_graph.py) that emits our stops from llama.cpp's nodes.

    `begin(step, pos, n_tokens)` before each llama_decode; then, inside it, `ask` picks the
    nodes of wanted stops and `computed` collects them. A stop made of several nodes (qkv:
    Q, K, V) is emitted when its last node has been computed, so the events, their timing
    (the bus's clock: the time since the previous event, i.e. the nodes computed in between)
    and a paused controller all happen inside llama.cpp's computation."""

    def __init__(self, bus: HookBus, args: ModelArgs, flash_attn: bool, n_ctx: int, weights=()):
        """`weights`: the file's tensor names (which MoE layers have a shared expert, a selection bias)."""
        self.bus, self.args, self.n_ctx = bus, args, n_ctx
        self.flash_attn = flash_attn
        self.weights = frozenset(weights)
        shared = any(n.endswith(".ffn_gate_shexp.weight") for n in self.weights)
        # deepseek2 files with attn_k_b run MLA absorbed, and their cache is K-only: one row of
        # [c_kv ; k_pe] per token, the values a view of it, so no V store to wait for.
        self.mla_form = ("absorbed" if "blk.0.attn_k_b.weight" in self.weights else "naive") if args.kv_lora_rank else ""
        rules = rules_for(args.arch, flash_attn) + moe_rules(args, shared)
        mla = mla_rules(args, self.mla_form == "absorbed")
        if mla:  # deepseek2's qkv and rope nodes are its own (no Qcur/Kcur/Vcur reshapes, no Kcur RoPE)
            rules = tuple(r for r in rules if r.stop not in ("qkv", "rope")) + mla
        if self.mla_form == "absorbed":
            rules = tuple(r for r in rules if (r.stop, r.part) != ("kv_write", "v_cells"))
        self.map = NodeMap(rules)
        self.routing = Routing.from_args(args) if args.n_expert else None
        self.parts: dict[str, tuple[str, ...]] = {}
        for r in self.map.rules:  # a part two rules give (dense and MoE ffn_out) counts once
            if r.part not in self.parts.get(r.stop, ()):
                self.parts[r.stop] = self.parts.get(r.stop, ()) + (r.part,)
        self.cells: dict[int, dict[int, int]] = {}  # layer -> position -> the KV cell llama.cpp put it in
        self.kv_size = 0  # cells in the layer's K cache (the SET_ROWS destination's rows)
        self.step = self.pos = self.n_tokens = 0
        self._asked: dict[int, list[tuple[NodeRule, int | None]]] = {}  # a node may feed two stops
        self._pending: dict[tuple[str, int | None], dict[str, object]] = {}
        self._watch: list[tuple[NodeRule, int | None, int]] = []  # (rule, layer, address of its src1)

    def reset(self) -> None:
        """A new run on an empty KV cache."""
        self.cells.clear()

    def begin(self, step: int, pos: int, n_tokens: int) -> None:
        self.step, self.pos, self.n_tokens = step, pos, n_tokens
        self._asked.clear()
        self._pending.clear()
        self._watch.clear()

    # -- what to ask for ---------------------------------------------------------------

    def keeps(self, stop: str, layer: int | None) -> bool:
        """Are this stop's tensors copied into its event (the capture policy's keeps_tensors)."""
        f = self.bus.tensor_filter
        return f is None or f(stop, layer)

    def wanted(self, rule: NodeRule, layer: int | None) -> bool:
        if self.bus.wants(rule.stop, layer):
            return True
        # The attention weights' columns are KV cells: their positions come from the K write.
        return rule.part == "k_cells" and not self.flash_attn and self.bus.wants("attn", layer) \
            and self.keeps("attn", layer)

    def needs_all_rows(self) -> bool:
        """At prefill llama.cpp drops every row but the sampled one after the last layer's attention
        (`inp_out_ids`); a kept tensor from there on needs every token's output, hence its logits."""
        last = self.args.n_layer - 1
        return any(self.bus.wants(s, last) and self.keeps(s, last)
                   for s in ("attn_out", "ffn_norm", "moe", "ffn_out", "residual"))

    def ask(self, node: int) -> bool:
        name = node_name(node)
        found = []
        if self._watch:
            src1 = node_src(node, 1)
            for i, (rule, layer, source) in enumerate(self._watch):
                if src1 == source and node_op(node) == rule.op:
                    found.append((rule, layer))
                    del self._watch[i]
                    break
        for rule, layer in self.map.named(name):
            if node_op(node) == rule.op and self.wanted(rule, layer):
                found.append((rule, layer))
        for rule, layer in self.map.source_of(name):
            if self.wanted(rule, layer):
                self._watch.append((rule, layer, node))
        if not found:
            return False
        self._asked[node] = found
        return True

    # -- what came back -----------------------------------------------------------------

    def computed(self, node: int) -> None:
        for rule, layer in self._asked.pop(node):
            self.take(node, rule, layer)

    def take(self, node: int, rule: NodeRule, layer: int | None) -> None:
        """One rule's share of a computed node; the stop's event once all its nodes are in."""
        stop = rule.stop
        got = self._pending.setdefault((stop, layer), {})
        if rule.read == "src1":
            index = node_src(node, 1)
            cells = read_node(index).reshape(-1).tolist()
            self.kv_size = node_shape(node)[-2]  # [kv_size, n_embd_k]: the cache it writes into
            known = self.cells.setdefault(layer, {})
            for i, cell in enumerate(cells):
                known[self.pos + i] = int(cell)
            got[rule.part] = cells
        elif rule.read == "tensor" and (self.keeps(stop, layer) or stop in _SCALAR_DATA):
            # A one-node stop hands the bus a view (it copies what it keeps); a node of a
            # several-node stop is copied now, since ggml may reuse its memory for the next ones.
            arr = ours(view_node(node), rule.ndim)
            got[rule.part] = arr if len(self.parts[stop]) == 1 else arr.copy()
        else:
            got[rule.part] = None
        if len(got) == len(self.parts[stop]) and self.bus.wants(stop, layer):
            del self._pending[(stop, layer)]
            self.emit(stop, layer, got)

    def emit(self, stop: str, layer: int | None, got: dict) -> None:
        """One event, shaped as the torch engine's (engine/models/llama.py, gemma3.py)."""
        bus, step, a = self.bus, self.step, self.args
        tensors = {k: v for k, v in got.items() if isinstance(v, np.ndarray)} if self.keeps(stop, layer) else {}
        scalars: dict = {}
        gemma = a.arch == "gemma3"
        if stop == "embed":
            scalars["norms"] = np.linalg.norm(got["out"], axis=-1).tolist()
        elif stop == "qkv" and self.mla_form:
            if "k" in tensors:  # kv_cmpr_pe is [T, r + n_rot]; the torch engine's k has its one "head"
                tensors["k"] = tensors["k"][:, None]
        elif stop == "rope":
            if self.mla_form:
                tensors = self.mla_rope(tensors)
            scalars["positions"] = list(range(self.pos, self.pos + self.n_tokens))
            if gemma:
                scalars["theta"] = a.layer_rope_theta(layer)
        elif stop == "kv_write":
            scalars = self.kv_event(layer, got["k_cells"])
            if self.mla_form == "absorbed":  # the K-only cache holds latent rows, as LatentCache's
                scalars.update(holds="mla_latent", latent_dim=a.kv_lora_rank, rope_dim=a.rope_dim)
        elif stop == "attn":
            if got.get("weights") is not None:
                weights = self.by_position(layer, got["weights"])
                tensors = {"weights": weights} if tensors else {}
                scalars["sink_mass"] = float(weights[:, :, 0].mean())
            if gemma:
                scalars["window"] = a.window(layer)
        elif stop == "residual":
            scalars["norm"] = float(np.linalg.norm(got["out"][-1]))
        elif stop == "moe":
            tensors, scalars = self.moe_event(layer, got, tensors)
        elif stop == "mla":
            if "k_pe" in tensors:  # one RoPE key shared by every head: [T, 1, rope_dim] -> [T, rope_dim]
                tensors["k_pe"] = tensors["k_pe"][:, 0]
            scalars = mla_scalars(a, self.mla_form, KV_ELEMENT_BYTES)
        bus.emit(stop, step, layer, tensors=tensors or None, **scalars)

    @staticmethod
    def mla_rope(t: dict) -> dict:
        """deepseek2's rope tensors as the torch engine's: q [T, nh, nope + n_rot] (absorbed: the
        q_nope view beside the rotated q_pe), k [T, 1, r + n_rot] (naive: the normed latent beside
        the rotated k_pe). Empty when the tensors are not kept."""
        out = {}
        if "q" in t or "q_nope" in t:
            out["q"] = t["q"] if "q" in t else np.concatenate((t["q_nope"], t["q_pe"]), axis=-1)
        if "k" in t or "latent" in t:
            out["k"] = t["k"] if "k" in t else np.concatenate((t["latent"][:, None], t["k_pe"]), axis=-1)
        return out

    def moe_event(self, layer: int, got: dict, tensors: dict) -> tuple[dict, dict]:
        """The moe event as engine/models/moe.py's moe_ffn emits it: the weights as [T, k] (the
        GET_ROWS and SCALE nodes are [T, k, 1]), the scalars from the file's routing."""
        r = self.routing
        experts = got["experts"]
        if tensors:
            tensors = {**tensors, "weights": tensors["weights"].reshape(experts.shape)}
        return tensors, {
            "n_expert": r.n_expert, "n_expert_used": r.n_expert_used, "gating": r.gating, "norm_w": r.norm_w,
            "scale": r.scale, "n_group": r.n_group, "n_group_used": r.n_group_used,
            "biased": f"blk.{layer}.exp_probs_b.bias" in self.weights,
            "load": np.bincount(experts.reshape(-1), minlength=r.n_expert).tolist(),
        }

    def by_position(self, layer: int, weights: np.ndarray) -> np.ndarray:
        """kq_soft_max's columns are KV cells, padded past the used ones: gather the cells of
        positions 0..n_keys, in position order -> [n_head, T, n_keys]."""
        n_keys = self.pos + self.n_tokens
        known = self.cells.get(layer, {})
        cells = [known.get(p, p) for p in range(n_keys)]  # a position never seen written: its own cell
        return weights[:, :, cells]

    def kv_event(self, layer: int, cells: list[int]) -> dict:
        """kv_write's scalars, as engine/kv_cache.py's event() names them, for llama.cpp's cache:
        a cell is a slot, and a block of one cell (llama.cpp has no pages)."""
        end = self.pos + self.n_tokens
        known = self.cells.get(layer, {})
        window = self.args.window(layer)
        return {
            "positions": list(range(self.pos, end)),
            "slots": cells,
            "blocks": cells,
            "offsets": [0] * len(cells),
            "block_table": [known.get(p, p) for p in range(end)],
            "blocks_used": end,  # one sequence: every position holds a cell
            "blocks_total": self.kv_size,
            "n_cached": end,
            "n_ctx": self.n_ctx,
            "block_size": 1,
            "window": window,
            "masked": [0, max(0, end - window)] if window else [0, 0],
        }

