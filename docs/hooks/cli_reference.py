"""MkDocs hook: the CLI reference page, written from spiga's own argument parsers.

A page that holds the line `<!-- cli-reference -->` gets, in its place, one section per
`spiga` command with the command's description and its `--help` text, rendered from
`spiga.cli.build_parser()` at build time: the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    from spiga.cli import build_parser

    # help text wrapped at a fixed width, whatever the terminal that builds the docs
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    parts = ["## spiga", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser).items():
        parts += [f"## spiga {name}", ""]
        if sub.description:
            parts += [sub.description, ""]
        parts += ["```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
