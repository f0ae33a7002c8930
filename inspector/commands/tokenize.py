"""`llm-inspect tokenize MODEL TEXT`: the token ids and pieces a model's tokenizer gives a text.

Loads the tokenizer alone from the GGUF's metadata (no weights, no torch), so it answers
in well under a second. A readable table by default; --json for scripts; --merges adds
each split's BPE merges in the order they were applied.

    llm-inspect tokenize model.gguf "hello, llama"
    llm-inspect tokenize model.gguf "hi" --chat --json
"""

from __future__ import annotations

import json
import os
import sys

from inspector.common import CliError, Parser, demo_model, terminal_safe


def parser() -> Parser:
    p = Parser(prog="llm-inspect tokenize", description="Tokenize a text with a GGUF model's tokenizer (no weights loaded).")
    p.add_argument("model", help="a .gguf file ('' for the SmolLM2-135M demo model)")
    p.add_argument("text", help="the text to tokenize")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--merges", action="store_true", help="also list the BPE merges, in the order applied")
    p.add_argument("--chat", action="store_true", help="tokenize the text as a user turn rendered by the model's chat template")
    p.add_argument("--chat-template", metavar="NAME|FILE", help="a built-in template (chatml, gemma) or a .jinja file (implies --chat)")
    p.add_argument("--no-bos", action="store_true", help="do not add the BOS/EOS tokens the vocabulary asks for")
    p.add_argument("--no-special", action="store_true",
                   help="read special-token text such as <|im_start|> as plain text (llama.cpp's parse_special=false)")
    p.add_argument("--check-tokenizer", action="store_true", help="compare with llama.cpp's tokenizer (loads its vocabulary)")
    return p


def load_tokenizer(path: str):
    from engine.gguf_file import GGUFError, GGUFFile
    from engine.tokenizer import Tokenizer

    if not os.path.exists(path):
        raise CliError(f"no such model file: {path}")
    if not os.path.isfile(path):
        raise CliError(f"not a file: {path}")
    try:
        gguf = GGUFFile(path)
        return gguf.metadata, Tokenizer.from_metadata(gguf.metadata)
    except (GGUFError, ValueError, KeyError) as e:
        raise CliError(f"{path}: {e}") from None


def main(args) -> int:
    from engine.chat import chat_prompt
    from engine.tokenizer import ReferenceTokenizer, cross_check

    path = args.model or demo_model()
    metadata, tok = load_tokenizer(path)
    chat = args.chat or args.chat_template is not None
    parse_special = not args.no_special
    text = args.text
    try:
        if chat:
            text = chat_prompt(metadata, tok, args.text, args.chat_template)
        if chat and not args.no_bos and parse_special:
            enc = tok.encode_chat(text)
        else:
            enc = tok.encode(text, add_special=not args.no_bos, parse_special=parse_special)
        check = cross_check(enc, ReferenceTokenizer(path), parse_special) if args.check_tokenizer else None
    except ValueError as e:
        raise CliError(str(e)) from None

    if args.json:
        out = {"model": os.path.basename(path), "tokenizer": tok.model, "pre": tok.pre.name if tok.pre else None,
               "text": args.text, "ids": enc.ids, "pieces": enc.pieces,
               "bytes": [tok.piece_bytes(i).hex() for i in enc.ids],
               "special": [tok.is_special(i) for i in enc.ids], "splits": enc.splits}
        if chat:
            out["template_output"] = text
        if args.merges:
            out["symbols"] = enc.symbols
            out["merges"] = [m._asdict() for m in enc.merges]
        if check:
            out.update(reference_ids=check.reference_ids, agrees=check.agrees)
        json.dump(out, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0

    show = terminal_safe if sys.stdout.isatty() else str
    lines = [f"{os.path.basename(path)} · {tok.model}" + (f" ({tok.pre.name})" if tok.pre else "") + f" · {tok.n_vocab} pieces"]
    if chat:
        lines.append(f"chat template output ({len(text.encode())} bytes):")
        lines.extend("  " + show(line) for line in text.split("\n"))
    lines.append(f"{len(enc.ids)} tokens from {len(text.encode())} bytes")
    lines.append(f"{'#':>5}  {'id':>7}  piece")
    for k, (tid, piece) in enumerate(zip(enc.ids, enc.pieces)):
        mark = "  special" if tok.is_special(tid) else ""
        lines.append(f"{k:>5}  {tid:>7}  {_readable(tok, tid)}{mark}")
    if args.merges:
        lines.append("merges (in the order applied):")
        for split, symbols in enumerate(enc.symbols):
            steps = [m for m in enc.merges if m.split == split]
            if enc.split_special[split] or not symbols:
                continue
            lines.append(f"  split {split} {enc.splits[split]!r}: {' '.join(symbols)}")
            lines.extend(f"    rank {m.rank:>6}  → {m.piece}" for m in steps)
    if check:
        lines.append("llama.cpp agrees" if check.agrees else
                     f"llama.cpp DISAGREES: its ids {check.reference_ids}")
    sys.stdout.write(show("\n".join(lines)) + "\n")
    return 0


def _readable(tok, tid: int) -> str:
    """The piece as text, whitespace drawn (␣ ⏎ ⇥) so a reader sees where it is."""
    from views.pieces import readable

    if tok.is_special(tid):
        return readable(tok.tokens[tid], False, special=True)
    return readable(tok.token_text(tid), False)
