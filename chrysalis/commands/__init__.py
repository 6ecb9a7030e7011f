"""Subcommands that plug into `chrysalis` (see chrysalis.cli.PLUGIN_COMMANDS): each module defines `register(app)`."""
