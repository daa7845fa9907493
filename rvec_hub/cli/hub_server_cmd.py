"""`rvec hub serve`: run a Hub-protocol server that `huggingface_hub` can push to and pull from."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("hub")
def hub_group() -> None:
    """Host vectors yourself: a server speaking the Hugging Face Hub protocol."""


@hub_group.command("serve")
@click.option("--root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Storage directory (created if missing); restarts serve the same data.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File of 'username token' lines; RVEC_HUB_TOKEN (user RVEC_HUB_USER, default admin) adds one.")
def serve_cmd(root: Path, host: str, port: int, token_file: Path | None) -> None:
    """Serve model repos under ROOT to the unmodified huggingface_hub client.

    Writes need a token; private repos are visible only to their owner. Without any
    token the server is read-only.

    \b
    Example:
      printf 'alice %s\\n' "$(openssl rand -hex 16)" > tokens.txt
      rvec hub serve --root ./hub-data --port 8080 --token-file tokens.txt
      HF_HUB_DISABLE_XET=1 HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=... \\
        hf upload alice/my-vector ./my-vector
    """
    from rvec_hub.hub.server import load_tokens, serve

    tokens = load_tokens(token_file)
    click.echo(f"rvec hub: serving {root} on http://{host}:{port} ({len(tokens)} user(s) with write tokens)",
               err=True)
    serve(root, host=host, port=port, tokens=tokens)
