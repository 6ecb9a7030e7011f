"""CLI subcommands that plug into `chrysalis.cli`: each module defines `register(app: typer.Typer)`."""
