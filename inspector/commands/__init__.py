"""Subcommands of `llm-inspect`: one module each, with `parser()` and `main(args) -> int`.

A module is imported only when its command runs, so `llm-inspect info` never loads torch.
"""

# name -> module; the run command (no name) is `run`.
COMMANDS = {
    "replay": "inspector.commands.replay",
    "diff": "inspector.commands.diff",
    "export": "inspector.commands.export",
    "profile": "inspector.commands.profile",
    "info": "inspector.commands.info",
    "tokenize": "inspector.commands.tokenize",
}
