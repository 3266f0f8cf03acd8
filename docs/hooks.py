"""MkDocs hooks (mkdocs.yml `hooks:`): pages that show what the code holds, so they cannot drift from it.

- guide/output-folders.md: the table of a run's files, from the one registry that `train --overwrite`, `plot` and
  the trackers use (`vitdetect.config.run_files`);
- reference/cli.md: every command and flag, from the Typer app itself, through Typer's own Markdown generator
  (what `typer vitdetect.cli.app utils docs` prints), so it renders with the site's code blocks and table of
  contents and fails the build loudly if the app cannot be read.
"""

from __future__ import annotations

from mkdocs.exceptions import PluginError

from vitdetect.config.run_files import markdown_table

RUN_FILES_MARKER = "<!-- run-files-table -->"
CLI_MARKER = "<!-- cli-reference -->"
MARKERS = {"guide/output-folders.md": RUN_FILES_MARKER, "reference/cli.md": CLI_MARKER}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Put the generated tables in place of their marker lines; fail the build if a page lost its marker."""
    marker = MARKERS.get(page.file.src_uri)
    if marker is None:
        return markdown
    if marker not in markdown:
        raise PluginError(f"docs/{page.file.src_uri} lost its {marker} line")
    return markdown.replace(marker, markdown_table() if marker == RUN_FILES_MARKER else cli_reference())


def cli_reference() -> str:
    """The `vitdetect` app's commands and flags as Markdown: a table of the commands, then one section each."""
    import typer
    from typer.cli import get_docs_for_click

    from vitdetect.cli.app import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="vitdetect")
    generated = get_docs_for_click(obj=command, ctx=ctx, name="vitdetect")
    # Typer's page starts with its own title and cuts each command's summary at 45 characters: keep the sections,
    # and list the commands with the whole first line of their help instead.
    sections = generated[generated.index("\n## "):]
    rows = ["| command | what it does |", "| --- | --- |"]
    for name in command.list_commands(ctx):
        summary = (command.get_command(ctx, name).help or "").strip().splitlines()[0]
        rows.append(f"| [`{name}`](#vitdetect-{name}) | {summary} |")
    usage = "```console\n$ vitdetect [OPTIONS] COMMAND [ARGS]...\n```"
    options = "`--version` shows the version; `-h`, `--help` the help of the app or of a command."
    return "\n".join([usage, "", options, "", *rows, "", sections.strip(), ""])
