"""Chat templates: turn a prompt into the text a chat model was trained on (stop C01).

A GGUF carries its chat template as Jinja source (`tokenizer.chat_template`), written by
whoever converted the model: untrusted code. It is rendered the way llama-cpp-python and
Hugging Face render it (trim_blocks, lstrip_blocks, the same globals), inside
jinja2's ImmutableSandboxedEnvironment, which stops attribute walks to Python internals
(`''.__class__.__mro__`, `cycler.__init__.__globals__`), calls to unsafe methods, mutation
of lists and dicts, and caps `range()` at 100 000 items. It does not stop a template from
running long or building huge values, so this module adds:

- an output cap: rendering streams, and stops past MAX_OUTPUT characters;
- size checks on what builds big values in one C call (`*`, `**`, `+`, `%`, `~`, string
  methods such as ljust/center/format, filters such as indent/center), which a step
  counter could not interrupt;
- a step budget: a trace hook counts the lines the compiled template executes, so nested
  loops that print nothing, or deep recursion, end in an error instead of a hang.

Every failure is a ChatTemplateError (a ValueError) with one line saying what went wrong.

    text = render(template, [{"role": "user", "content": "hi"}], bos_token="<s>", eos_token="</s>")
"""

from __future__ import annotations

import functools
import re
import sys
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_OUTPUT = 1 << 20  # characters a template may produce, or any one value it builds
MAX_STEPS = 2_000_000  # lines of compiled template code one render may execute
_TEMPLATE_FILE = "<chat template>"

# llama.cpp's built-in templates of these names (llama_chat_apply_template), as Jinja, for
# a model whose GGUF has no template. tests/test_chat.py renders both ways and compares.
BUILTIN = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Gemma has no system role: a system message is prefixed to the next turn; "assistant"
    # is "model"; contents are trimmed.
    "gemma": (
        "{% set ns = namespace(prefix='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.prefix = ns.prefix + (m['content'] | trim) + '\n\n' %}"
        "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n'"
        " + ns.prefix + (m['content'] | trim) + '<end_of_turn>\n' }}{% set ns.prefix = '' %}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}


class ChatTemplateError(ValueError):
    """The chat template is missing, broken, hostile, or raised an error itself."""


def _too_big(n: int, what: str) -> None:
    if n > MAX_OUTPUT:
        raise ChatTemplateError(f"template builds a {what} of {n:,} items (limit {MAX_OUTPUT:,})")


def _size(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple, dict)) else 0


_BIG_WIDTH = re.compile(r"\d{7,}|%[-#0 +]*\*")  # a width/precision of a million or more, or `*`


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _BIG_WIDTH.search(fmt):
        raise ChatTemplateError("template formats with a huge width")


def _check_args(value: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a call that would build something huge before it runs: a huge number
    (a width, a count), or a value times a long argument (replace, join, indent)."""
    widest = 1
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_OUTPUT:
            raise ChatTemplateError(f"template passes {a:,} to a function (limit {MAX_OUTPUT:,})")
        widest = max(widest, _size(a))
    if isinstance(value, str) and args and isinstance(args[0], int):  # indent(width): width per line
        widest = max(widest, args[0])
    if _size(value) * widest > 16 * MAX_OUTPUT:
        raise ChatTemplateError(f"template call would build about {_size(value) * widest:,} items")


def _bounded_filter(f):
    first = 2 if getattr(f, "jinja_pass_arg", None) else 1  # (context,) value, then the arguments

    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment mark
    def run(*args, **kwargs):
        _check_args(args[first - 1], args[first:], kwargs)
        if f.__name__ == "do_format":
            _check_format(args[first - 1])
        out = f(*args, **kwargs)
        _too_big(_size(out), "value")
        return out
    return run


class _BoundedCodeGenerator(CodeGenerator):
    """`a ~ b` compiles to a join jinja does not let a sandbox intercept: route it
    through the environment so its size is checked."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class ChatSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%", "//"})

    def __init__(self) -> None:
        # As llama-cpp-python's Jinja2ChatFormatter and transformers render templates.
        super().__init__(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                         extensions=[jinja2.ext.loopcontrols])
        self.filters = {name: _bounded_filter(f) for name, f in self.filters.items()}
        self.filters["tojson"] = _tojson
        del self.globals["lipsum"]  # generates text on request; no template needs it

    def bounded_concat(self, parts: tuple) -> str:
        out = "".join(str(p) for p in parts)
        _too_big(len(out), "string")
        return out

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 8 * MAX_OUTPUT:
                raise ChatTemplateError(f"template computes {left} ** {right}, too big")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int):
                    _too_big(_size(seq) * n, "value")
        elif operator == "+":
            _too_big(_size(left) + _size(right), "value")
        elif operator == "%":
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        # str.format reaches here wrapped by the sandbox; the string is the method's __self__
        bound = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        _check_args(bound, args, kwargs)
        if getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_format(bound)
        out = super().call(__context, __obj, *args, **kwargs)
        _too_big(_size(out), "value")
        return out


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators=None, sort_keys: bool = False) -> str:
    """As transformers' tojson (non-ASCII kept, no HTML escaping)."""
    import json

    _check_args(None, (indent or 0,), {})
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str):
    raise ChatTemplateError(f"the template raised: {message}")


def _strftime_now(fmt: str) -> str:
    _check_format(fmt)
    return datetime.now().strftime(fmt)


class _StepBudget:
    """A trace hook that counts the lines the compiled template runs and stops it when
    the budget is spent. It looks only at frames of template code, and restores
    whatever trace function was there before (a debugger's, coverage's)."""

    def __init__(self, steps: int):
        self.left = steps

    def _local(self, frame, event, arg):
        if event == "line":
            self.left -= 1
            if self.left < 0:
                raise ChatTemplateError(f"template ran more than {MAX_STEPS:,} steps (a runaway loop?)")
        return self._local

    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename == _TEMPLATE_FILE else None

    def __enter__(self):
        self._saved = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._saved)


def compile_template(source: str) -> jinja2.Template:
    env = ChatSandbox()
    try:
        code = env.compile(source, filename=_TEMPLATE_FILE)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not parse (line {e.lineno}): {e.message}") from None
    return env.template_class.from_code(env, code, env.make_globals(None))


def render(source: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """Render a chat template as llama-cpp-python's Jinja2ChatFormatter does, within the
    limits above."""
    template = compile_template(source)
    out: list[str] = []
    size = 0
    try:
        with _StepBudget(MAX_STEPS):
            for chunk in template.generate(
                    messages=messages, bos_token=bos_token, eos_token=eos_token,
                    add_generation_prompt=add_generation_prompt,
                    raise_exception=_raise_exception, strftime_now=_strftime_now, **extra):
                size += len(chunk)
                _too_big(size, "text")
                out.append(chunk)
    except ChatTemplateError:
        raise
    except SecurityError as e:
        raise ChatTemplateError(f"template tried something the sandbox forbids: {e}") from None
    except RecursionError:
        raise ChatTemplateError("template recursion too deep") from None
    except MemoryError:
        raise ChatTemplateError("template ran out of memory") from None
    except Exception as e:  # a template error of any kind: undefined names, type errors, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {first}") from None
    return "".join(out)


def template_source(metadata: dict, name: str | None = None) -> str:
    """The template to use: `name` is a built-in (chatml, gemma) or a path to a Jinja
    file; None means the GGUF's own tokenizer.chat_template."""
    if name is None:
        source = metadata.get("tokenizer.chat_template")
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("this model has no chat template (tokenizer.chat_template); "
                                    f"pass --chat-template with one of {', '.join(BUILTIN)} or a .jinja file")
        return source
    if name in BUILTIN:
        return BUILTIN[name]
    try:
        with open(name, encoding="utf-8") as f:
            return f.read(MAX_OUTPUT + 1)[:MAX_OUTPUT]
    except FileNotFoundError:
        raise ChatTemplateError(f"no built-in chat template {name!r} and no such file "
                                f"(built-ins: {', '.join(BUILTIN)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"cannot read chat template {name}: {e}") from None


def chat_prompt(metadata: dict, tokenizer, prompt: str, template: str | None = None) -> str:
    """The prompt as one user turn, rendered with the model's template (or `template`),
    ending with the assistant's turn opened."""
    source = template_source(metadata, template)
    bos = tokenizer.tokens[tokenizer.bos_id] if tokenizer.bos_id is not None else ""
    eos = tokenizer.tokens[tokenizer.eos_id] if tokenizer.eos_id is not None else ""
    return render(source, [{"role": "user", "content": prompt}], bos_token=bos, eos_token=eos)
