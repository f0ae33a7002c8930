"""Op by op against llama.cpp's graph: which of our ops are bit-exact, which round differently, which are wrong.

    PYTHONPATH=. .venv/bin/python bench/node_parity.py [--model smollm2|gemma3|PATH]
                                                       [--numerics llamacpp ...] [--prompt TEXT] [--layers 0 17]

llama.cpp decodes the prompt as one batch with every node captured (engine/llamacpp_graph.py).
Each op of ours is then fed llama.cpp's own input to that op, not ours, and its result is
compared with llama.cpp's output node, so no error carries from one op to the next: a row
is BIT-EXACT or says how many elements differ and by how much (relative to the node's
largest value). Rounding (another summation order, activations quantized another way) shows
as ~1e-7 to ~1e-2; a wrong op (a missing bias, the wrong RoPE layout or mask) as order one.
Runs the llama, qwen2, qwen3 and gemma3 graphs.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.parity import model_path  # noqa: E402
from engine.llamacpp_graph import LlamaGraph  # noqa: E402
from engine.models.layers import attention_mask, rope  # noqa: E402
from engine.numerics import NUMERICS  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402


class Nodes:
    """llama.cpp's captured nodes, looked up by name (and op), or a matmul by its weight."""

    def __init__(self, captures):
        self.captures = captures

    def __call__(self, name: str, op: str | None = None) -> torch.Tensor:
        for c in self.captures:
            if c.name == name and (op is None or c.op == op):
                return torch.from_numpy(np.ascontiguousarray(c.array)).float()
        raise KeyError(f"llama.cpp has no node {name} ({op or 'any op'})")

    def matmul(self, weight: str) -> torch.Tensor:
        for c in self.captures:
            if c.op == "MUL_MAT" and c.srcs and c.srcs[0] == weight:
                return torch.from_numpy(np.ascontiguousarray(c.array)).float()
        raise KeyError(f"llama.cpp has no matmul with {weight}")


def row(label: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    ours = ours.reshape(ref.shape).float()
    d = (ours - ref).abs()
    n = int((d > 0).sum())
    verdict = "BIT-EXACT" if n == 0 else f"{n}/{ref.numel()} differ"
    print(f"  {label:28s} {verdict:>20s}  max rel {(d.max() / ref.abs().max().clamp_min(1e-30)).item():.1e}", flush=True)


def node_report(engine: TorchEngine, prompt: str, layers: list[int], threads: int = 2) -> None:
    a, w, num = engine.args, engine.model.w, engine.numerics
    types = {name: t.type.name for name, t in engine.gguf.tensors.items()}
    gemma = a.arch == "gemma3"
    with LlamaGraph(engine.path, n_threads=threads) as g:
        ids = g.tokenize(prompt)
        node = Nodes(g.decode(ids, select=lambda name, op: True).captures)
    T = len(ids)
    print(f"{os.path.basename(engine.path)}, numerics {num.mode}, {T}-token prefill of {prompt!r}")

    def linear(x, name):  # <name>.weight (+ <name>.bias) as the model computes it
        y = num.linear(x, w[name + ".weight"], name + ".weight")
        return y + w[name + ".bias"] if name + ".bias" in w else y

    for il in layers:
        p = f"blk.{il}."
        print(f"layer {il}" + (f" (window {a.window(il)}, RoPE base {a.layer_rope_theta(il):g})" if gemma else ""))
        if il == 0:
            x = w["token_embd.weight"][torch.tensor(ids)]
            if gemma:
                row("inp_scaled", x * engine.model.embd_scale, node("inp_scaled"))
                x = node("inp_scaled")
            x = x.reshape(T, a.n_embd)
        else:
            x = node(f"l_out-{il - 1}").reshape(T, a.n_embd)
        row("attn_norm", num.rms_norm(x, w[p + "attn_norm.weight"], a.rms_eps), node(f"attn_norm-{il}"))
        h = node(f"attn_norm-{il}").reshape(T, a.n_embd)
        heads = {"Qcur": (a.n_head, "attn_q"), "Kcur": (a.n_head_kv, "attn_k"), "Vcur": (a.n_head_kv, "attn_v")}
        for cur, (n_heads, weight) in heads.items():
            # With a bias, llama.cpp names the ADD after the matmul `Qcur`; without, the matmul itself.
            ref = node(f"{cur}-{il}", "ADD" if p + weight + ".bias" in w else "MUL_MAT")
            row(f"{cur} ({types[p + weight + '.weight']})", linear(h, p + weight), ref)
        cos, sin = num.rope_cos_sin(torch.arange(T), a.rope_dim, a.layer_rope_theta(il))
        for cur, norm in (("Qcur", "attn_q_norm"), ("Kcur", "attn_k_norm")):
            n_heads = heads[cur][0]
            y = node(f"{cur}-{il}", "RESHAPE").reshape(T, n_heads, a.head_dim)
            if p + norm + ".weight" in w:
                row(f"{cur}_normed", num.rms_norm(y, w[p + norm + ".weight"], a.rms_eps), node(f"{cur}_normed-{il}"))
                y = node(f"{cur}_normed-{il}").reshape(T, n_heads, a.head_dim)
            layout = "neox" if a.rope_neox else "norm"
            row(f"{cur} rope ({layout})", rope(num, y, cos, sin, a.rope_neox), node(f"{cur}-{il}", "ROPE"))
        q = node(f"Qcur-{il}", "ROPE").reshape(T, a.n_head, a.head_dim)
        keys = num.kv(node(f"Kcur-{il}", "ROPE").reshape(T, a.n_head_kv, a.head_dim)).repeat_interleave(a.n_group, 1)
        values = num.kv(node(f"Vcur-{il}", "RESHAPE").reshape(T, a.n_head_kv, a.head_dim)).repeat_interleave(a.n_group, 1)
        mask = attention_mask(0, T, a.window(il))
        if gemma:  # llama.cpp scales Q, then calls the attention with scale 1
            kq = num.attn_scores(q * engine.model.q_scale, keys) + mask
        else:
            kq = num.attn_scores(q, keys) * a.attn_scale + mask
        soft_max = node(f"kq_soft_max-{il}").reshape(a.n_head, T, -1)[:, :, :T].contiguous()  # its KV cells are padded
        row("kq_soft_max" + (f" (window {a.window(il)})" if a.window(il) else ""), num.softmax(kq), soft_max)
        row("kqv_out", num.attn_values(soft_max, values).reshape(T, -1), node(f"kqv_out-{il}"))
        out = node.matmul(p + "attn_output.weight")
        kqv = node(f"kqv_out-{il}").reshape(T, -1)
        row(f"attn_output ({types[p + 'attn_output.weight']})", linear(kqv, p + "attn_output"), out)
        rows = node(f"ffn_norm-{il}").shape[-2]  # the last layer keeps only the output row from here on
        out, x = out.reshape(-1, a.n_embd)[-rows:], x[-rows:]
        if gemma:
            row("attn_post_norm", num.rms_norm(out, w[p + "post_attention_norm.weight"], a.rms_eps), node(f"attn_post_norm-{il}"))
            row("sa_out", node(f"attn_post_norm-{il}").reshape(rows, -1) + x, node(f"sa_out-{il}"))
            resid = node(f"sa_out-{il}").reshape(rows, -1)
        else:
            row("ffn_inp", out + x, node(f"ffn_inp-{il}"))
            resid = node(f"ffn_inp-{il}").reshape(rows, -1)
        row("ffn_norm", num.rms_norm(resid, w[p + "ffn_norm.weight"], a.rms_eps), node(f"ffn_norm-{il}"))
        h = node(f"ffn_norm-{il}").reshape(rows, -1)
        for part in ("ffn_gate", "ffn_up"):
            row(f"{part} ({types[p + part + '.weight']})", linear(h, p + part), node(f"{part}-{il}"))
        gate, up = node(f"ffn_gate-{il}").reshape(rows, -1), node(f"ffn_up-{il}").reshape(rows, -1)
        act = "ffn_geglu" if gemma else "ffn_swiglu"
        row(act, num.geglu(gate, up) if gemma else num.swiglu(gate, up), node(f"{act}-{il}"))
        down = linear(node(f"{act}-{il}").reshape(rows, -1), p + "ffn_down")
        row(f"ffn_down ({types[p + 'ffn_down.weight']})", down, node(f"ffn_out-{il}"))
        ffn = node(f"ffn_out-{il}").reshape(rows, -1)
        if gemma:
            row("ffn_post_norm", num.rms_norm(ffn, w[p + "post_ffw_norm.weight"], a.rms_eps), node(f"ffn_post_norm-{il}"))
            ffn = node(f"ffn_post_norm-{il}").reshape(rows, -1)
        row("l_out", ffn + resid, node(f"l_out-{il}"))
    final = node(f"l_out-{a.n_layer - 1}").reshape(-1, a.n_embd)[-1:]
    print("output")
    row("result_norm", num.rms_norm(final, w["output_norm.weight"], a.rms_eps), node("result_norm"))
    out = "output" if "output.weight" in w else "token_embd"
    row(f"result_output ({types[out + '.weight']})", linear(node("result_norm").reshape(1, -1), out), node("result_output"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="smollm2 (the default), gemma3, or a GGUF path")
    p.add_argument("--numerics", nargs="+", default=["llamacpp"], choices=list(NUMERICS))
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--layers", nargs="+", type=int, help="default: the first and the last")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = model_path(args.model)
    for mode in args.numerics:
        engine = TorchEngine(path, numerics=mode)
        node_report(engine, args.prompt, args.layers or [0, engine.args.n_layer - 1], args.threads)


if __name__ == "__main__":
    main()
