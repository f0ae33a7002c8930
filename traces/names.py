"""TransformerLens hook names, resolved to the events and tensors a trace holds.

`trace[step, "blocks.3.attn.hook_pattern"]` is `trace[step, "attn", 3, "weights"]`. The
tensors are ours, so the shapes are too: no batch axis, the tokens of this step only (the
last rows of them, if the capture policy cut the prefill), k and v with the model's KV heads
(TransformerLens's GQA layout, `ungroup_gqa` off), and logits of the last token only.
README.md ("Python API") has the table.
"""

from __future__ import annotations

import re

from traces.base import NotInTrace

# Per block: hook name after "blocks.L." -> (stop, tensor).
BLOCK_HOOKS: dict[str, tuple[str, str]] = {
    "ln1.hook_normalized": ("attn_norm", "out"),  # ours includes the norm's weight (TL folds it into W_Q)
    "attn.hook_q": ("qkv", "q"),
    "attn.hook_k": ("qkv", "k"),
    "attn.hook_v": ("qkv", "v"),
    "attn.hook_rot_q": ("rope", "q"),
    "attn.hook_rot_k": ("rope", "k"),
    "attn.hook_pattern": ("attn", "weights"),
    "hook_attn_out": ("attn_out", "out"),
    "ln2.hook_normalized": ("ffn_norm", "out"),
    "hook_mlp_out": ("ffn_out", "out"),
    "hook_resid_post": ("residual", "out"),
}
# Outside the blocks: name -> (stop, tensor).
GLOBAL_HOOKS: dict[str, tuple[str, str]] = {
    "hook_embed": ("embed", "out"),
    "unembed.hook_out": ("logits", "logits"),  # TransformerBridge's name; classic TL has no hook there
    "logits": ("logits", "logits"),
}
# Names a user will reach for that no stop records, and why.
NOT_RECORDED = {
    "ln_final.hook_normalized": "the engine records the logits, not the final norm's output; use unembed.hook_out",
    "attn.hook_attn_scores": "the engine records the softmax weights (hook_pattern), not the scores before it",
    "attn.hook_z": "the engine records the attention output after W_O (hook_attn_out), not z",
    "hook_resid_mid": "not recorded; it is hook_resid_pre + hook_attn_out",
    "mlp.hook_pre": "the FFN's inner activations are not recorded; hook_mlp_out is",
    "mlp.hook_post": "the FFN's inner activations are not recorded; hook_mlp_out is",
}

BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def resolve(name: str) -> tuple[str, int | None, str]:
    """(stop, layer, tensor) for a TransformerLens hook name; NotInTrace, a KeyError (one line), for anything else."""
    if name in GLOBAL_HOOKS:
        stop, tensor = GLOBAL_HOOKS[name]
        return stop, None, tensor
    m = BLOCK.fullmatch(name)
    if m:
        layer, hook = int(m[1]), m[2]
        if hook == "hook_resid_pre":  # what block L reads: block L-1's output, or the embeddings
            return ("embed", None, "out") if layer == 0 else ("residual", layer - 1, "out")
        if hook in BLOCK_HOOKS:
            stop, tensor = BLOCK_HOOKS[hook]
            return stop, layer, tensor
    hook = m[2] if m else name
    if hook in NOT_RECORDED:
        raise NotInTrace(f"{name}: {NOT_RECORDED[hook]}")
    raise NotInTrace(f"{name!r} is neither a stop nor a TransformerLens hook name this trace maps "
                   f"(blocks.L.{{{', '.join(['hook_resid_pre', *BLOCK_HOOKS])}}}, {', '.join(GLOBAL_HOOKS)})")
