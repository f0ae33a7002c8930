"""A hard tokenizer corpus: strings where byte-level BPE and SentencePiece tokenizers
tend to part from llama.cpp's. Data only; tests/test_tokenizer_corpus.py runs it.

Each entry is (name, text). The names say what the string exercises. Python strings
cannot hold lone surrogates as UTF-8, so "invalid-looking" input is spelled with what a
str can hold: U+FFFD, noncharacters, private use, C0/C1 controls, a BOM.
"""

from __future__ import annotations

# --- ASCII and whitespace -----------------------------------------------------------------
ASCII = [
    ("ascii-sentence", "The quick brown fox jumps over the lazy dog."),
    ("ascii-all-printable", "".join(chr(c) for c in range(0x20, 0x7F))),
    ("ascii-caps", "HELLO WORLD, THIS IS LOUD. iPhone eBay McDonald's"),
    ("ascii-punct-runs", "wait... what?!?! --- *** ### ~~~ ___ ... ,,, ;;;"),
    ("url-email", "https://example.com/a/b?q=1&r=%20#frag user.name+tag@example.co.uk"),
    ("path", "C:\\Users\\me\\file.txt /usr/local/bin/python3.11 ~/.cache/x"),
    ("markdown", "# Title\n\n- item *one*\n- item **two**\n\n> quote `code`\n\n| a | b |\n|---|---|"),
]

WHITESPACE = [
    ("spaces-1-to-8", " a  b   c    d     e      f       g        h"),
    ("tabs", "\ta\t\tb\t\t\tc"),
    ("newlines", "a\nb\n\nc\n\n\nd"),
    ("crlf", "line1\r\nline2\r\n\r\nline3\r"),
    ("mixed-runs", " \t \n \t\n\n \r\n\t  x  \t\n y"),
    ("trailing-mixed", "end \t\n "),
    ("only-spaces", "        "),
    ("only-newlines", "\n\n\n\n"),
    ("only-tabs", "\t\t\t"),
    ("leading-newline", "\nhello"),
    ("space-before-punct", "a , b . c ! d ?"),
    ("vertical-tab-formfeed", "a\x0bb\x0cc\x0b\x0c d"),
]

# --- code ---------------------------------------------------------------------------------
CODE = [
    ("python", 'import os\n\n\nclass A(object):\n    """Doc."""\n\n    def __init__(self, x: int = 0) -> None:\n'
               '        self.x = x  # comment\n        if x >= 10 and not x % 3:\n            print(f"{x!r:>8}")\n'
               '        return None\n\n\nif __name__ == "__main__":\n    A(42)\n'),
    ("c", '#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; ++i) {\n'
          '\t\tprintf("%s\\n", argv[i]);\n\t}\n\treturn 0; /* done */\n}\n'),
    ("json", '{"name": "llm-inspect", "version": "0.1.0", "ids": [1, 22, 333, 4444], '
             '"nested": {"ok": true, "none": null, "pi": 3.14159e+00, "s": "a\\"b\\u00e9"}}'),
    ("json-pretty", '{\n  "a": [\n    1,\n    2\n  ],\n  "b": {}\n}\n'),
    ("shell", "for f in *.gguf; do echo \"$f\" | sed -e 's/x/y/g' >> out.txt 2>&1; done && ls -la | grep -v '^d'"),
    ("html", '<div class="x"><p>Hello&nbsp;<b>world</b></p><br/><!-- c --></div>'),
    ("regex", r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:\w+\.)+[a-z]{2,}$"),
    ("indent-4-8-12", "a\n    b\n        c\n            d\n"),
]

# --- numbers ------------------------------------------------------------------------------
NUMBERS = [
    ("digits-1-to-12", "1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890 12345678901 123456789012"),
    ("long-digit-run", "3141592653589793238462643383279502884197169399375105820974944592"),
    ("numbers-in-words", "abc123def 4u2 x86_64 v1.2.3-rc4 2024-01-31T12:34:56Z"),
    ("decimals-signs", "-0.5 +1e-10 1,234,567.89 0x1F 0b1010 1_000_000 ½ 3¼"),
    ("other-digit-scripts", "٠١٢٣٤٥٦٧٨٩ ०१२३४ 〇一二三 ⅠⅡⅢⅣ ①②③ 𝟙𝟚𝟛 ¹²³"),
    ("phone-money", "+1 (555) 010-9999 $1,000.00 €5 ¥300 £2.50 ₹10"),
]

# --- CJK ----------------------------------------------------------------------------------
CJK = [
    ("chinese", "我们今天去公园散步，天气非常好。人工智能正在改变世界！"),
    ("chinese-traditional", "這是一個繁體中文的句子，包含「引號」與《書名號》。"),
    ("japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字を使います。ｶﾀｶﾅ"),
    ("korean", "안녕하세요, 세계! 한국어 문장은 띄어쓰기를 합니다."),
    ("korean-jamo-decomposed", "\u1100\u1161\u11a8 \u1112\u1161\u11ab"),
    ("cjk-fullwidth", "ＡＢＣ１２３！？　（全角）"),
    ("cjk-mixed-ascii", "Python是一种编程语言，version 3.11版本。"),
]

# --- emoji --------------------------------------------------------------------------------
EMOJI = [
    ("emoji-simple", "😀😃😄 ❤️ ✨ 🚀"),
    ("emoji-zwj-family", "👨‍👩‍👧‍👦 👩‍❤️‍💋‍👨 🧑‍💻"),
    ("emoji-skin-tones", "👋🏻 👋🏼 👋🏽 👋🏾 👋🏿"),
    ("emoji-flags", "🇺🇸🇯🇵🇫🇷 🏴󠁧󠁢󠁳󠁣󠁴󠁿 🏳️‍⚧️"),
    ("emoji-keycaps-variation", "1️⃣ #️⃣ ©︎ ™️ ☺︎ ☺️"),
    ("emoji-in-text", "I love 🍕 and 🍣!! Me too 😂😂😂"),
]

# --- combining marks and complex scripts ----------------------------------------------------
COMBINING = [
    ("decomposed-accents", "e\u0301 re\u0301sume\u0301 n\u0303 o\u0308\u0304 a\u030a"),
    ("precomposed-accents", "é résumé ñ ȫ å Ångström naïve"),
    ("stacked-combining", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA"),
    ("lone-combining", "\u0301\u0302 x\u200d\u200c"),
    ("devanagari", "नमस्ते दुनिया। हिन्दी में क्ष त्र ज्ञ"),
    ("arabic", "السَّلَامُ عَلَيْكُمْ، كيف حالك؟ ١٢٣"),
    ("hebrew", "שָׁלוֹם עוֹלָם, מה שלומך?"),
    ("thai", "สวัสดีครับ ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ"),
    ("bidi-controls", "abc\u202eFED\u202c \u200fRTL\u200e mark \u2066iso\u2069"),
]

# --- contractions --------------------------------------------------------------------------
CONTRACTIONS = [
    ("contractions-lower", "it's we've they're I'm you'll he'd can't"),
    ("contractions-upper", "IT'S WE'VE THEY'RE I'M YOU'LL HE'D CAN'T 'LL 'S 'VE"),
    ("contractions-mixed-case", "It'S We'Ve They'rE I'm You'Ll"),
    ("apostrophe-edge", "' '' ''' 's 'x rock'n'roll o'clock '90s"),
    ("curly-apostrophe", "it’s we’ve ‘quoted’ “double”"),
]

# --- mixed scripts --------------------------------------------------------------------------
MIXED = [
    ("mixed-scripts", "Hello мир 世界 Γειά σου κόσμε 123abc שלום مرحبا नमस्ते"),
    ("cyrillic", "Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("greek-math", "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x|; ∑ᵢ αᵢ ≈ π ≠ ∞"),
    ("latin-extended", "Łódź Đorđe ẞtraße Øresund þorn æsir œuvre"),
    ("homoglyphs", "pаypal (Cyrillic а) vs paypal"),
]

# --- invalid-looking input -------------------------------------------------------------------
ODD = [
    ("replacement-char", "\ufffd\ufffd a\ufffdb"),
    ("noncharacters", "\uffff \ufffe \U0001ffff \U0010ffff x\ufdd0y"),
    ("private-use", "\ue000\uf8ff \U000f0000 \U00100000"),
    ("c0-controls", "".join(chr(c) for c in range(0x00, 0x20)) + "end"),
    ("c1-controls", "\x80\x85\x9f x \x7f"),
    ("bom", "\ufeffhello \ufeff world\ufeff"),
    ("zero-width", "a\u200bb\u200cc\u200dd\u2060e"),
    ("unicode-spaces", "\u00a0a\u2003b\u3000c\u202fd\u205fe\u1680f\u2028g\u2029h"),
    ("unassigned", "\U0001fae8 \U000e0001 \u0378 \U0002fffd"),
    ("tag-chars", "\U000e0068\U000e0069 flag"),
    ("literal-space-marks", "a\u2581b \u2581\u2581c \u0120d \u010a"),
    ("unicode-15-16", "a\U00031350\U00031351b \U00011f04x \U0001e4d0 1\U0001ccf02 \U0001fae8"),
    ("newline-space-runs", "a \n  \n\n   \n\t \r \r\r\n x"),
]

# --- special-token text inside plain text (parsed or not, see parse_special) -------------
SPECIAL_TEXT = [
    ("chatml-turn", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml-inline", "say <|im_start|> and <|im_end|> please<|endoftext|>"),
    ("chatml-adjacent", "<|im_start|><|im_end|><|im_start|>x<|endoftext|> <|im_start|>"),
    ("chatml-broken", "<|im_start| <|im_end <im_start|> <||> <|im_start|"),
    ("gemma-turn", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"),
    ("gemma-inline", "text<start_of_turn>more<end_of_turn>x <bos> <eos> <pad> <unk>"),
    ("special-lookalikes", "<s> </s> <unk> <|system|> [INST] <<SYS>> <mask>"),
    ("special-after-space", "  <|im_start|>  <start_of_turn>  "),
    ("html-like", "<b>bold</b> <i>it</i> <br> <table>"),
    ("smollm-code-specials", "<filename>a.py<gh_stars>10<jupyter_code>x=1<jupyter_output><empty_output><file_sep>"),
    ("gemma-other-specials", "<unused0> <unused99>[multimodal]<mask><start_of_image><end_of_image> <image_soft_token>"),
    ("special-prefix-of-longer", "<|im_start|>x <|im_start|<|im_start|>> <<|im_end|>>"),
    ("bos-text-at-start", "<bos><bos>hi"),
    ("eos-text-at-start", "<|endoftext|>hi"),
]

# --- long words -----------------------------------------------------------------------------
LONG = [
    ("long-letters", "a" * 500),
    ("long-word", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 8),
    ("long-no-merges", "qxzj" * 150),
    ("long-cjk", "中" * 300),
    ("long-emoji", "🤖" * 100),
    ("long-spaces", " " * 300 + "x"),
    ("long-newlines", "\n" * 200 + "x"),
    ("long-punct", "!?" * 200),
    ("long-base64", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk+/w==" * 4),
    ("long-hex", "deadbeef" * 64),
]

CORPUS: list[tuple[str, str]] = (ASCII + WHITESPACE + CODE + NUMBERS + CJK + EMOJI + COMBINING
                                 + CONTRACTIONS + MIXED + ODD + SPECIAL_TEXT + LONG + [("empty", "")])


def long_text(n_bytes: int = 20_000) -> str:
    """A long, varied text (about n_bytes of UTF-8) made from the corpus, for speed tests."""
    parts, size = [], 0
    while size < n_bytes:
        for _, text in CORPUS:
            parts.append(text)
            size += len(text.encode())
            if size >= n_bytes:
                break
    return "\n".join(parts)
