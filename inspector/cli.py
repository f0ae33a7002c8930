"""`llm-inspect`: run a GGUF model under the inspector, headless, or replay a saved trace.

    llm-inspect [MODEL.gguf] [PROMPT] [-n 32] [--record run.trace] [--headless] [--break attn@3]
    llm-inspect replay run.trace
    llm-inspect COMMAND ...      (inspector/commands/: one module per subcommand)

Every error a user can cause (a missing or broken file, an architecture we cannot run,
a prompt that does not fit, a bad flag) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from inspector.common import EXIT_USAGE, CliError


def main(argv: list[str] | None = None) -> int:
    import importlib

    from inspector.commands import COMMANDS

    argv = sys.argv[1:] if argv is None else argv
    try:
        name = argv[0] if argv and argv[0] in COMMANDS else None
        module = importlib.import_module(COMMANDS[name] if name else "inspector.commands.run")
        args = module.parser().parse_args(argv[1:] if name else argv)
        return module.main(args)
    except CliError as e:
        print(f"llm-inspect: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
