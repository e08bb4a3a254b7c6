"""``vlmq``: the command-line client (typer + rich) over the public API."""
