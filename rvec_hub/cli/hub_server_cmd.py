"""`rvec hub serve` and `rvec hub fsck`: run and check a Hub-protocol server's storage."""

from __future__ import annotations

from pathlib import Path

import click

from .. import collector
from ._options import json_option

# What the `server` extra installs; `pip install rvec` alone leaves them out.
SERVER_MODULES = {"fastapi", "uvicorn", "starlette", "yaml"}

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class _ByteSize(click.ParamType):
    """A byte count: `1048576`, `512K`, `64M`, `20G` (binary units, optional trailing `B`/`iB`)."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS and not text[-1:].isdigit() else ""
        number = text[: len(text) - len(unit)]
        if not number.isdigit() or int(number) < 1:
            self.fail(f"{value!r} is not a size such as 1048576, 512K, 64M or 20G", param, ctx)
        return int(number) * _SIZE_UNITS[unit]


@click.group("hub")
def hub_group() -> None:
    """Host vectors yourself: a server speaking the Hugging Face Hub protocol."""


@hub_group.command("serve")
@click.option("--root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Storage directory (created if missing); restarts serve the same data.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File of 'username token' lines; RVEC_HUB_TOKEN (user RVEC_HUB_USER, default admin) adds one. "
                   "Tokens need at least 16 characters.")
@click.option("--max-inline-bytes", type=_ByteSize(), default="64M", show_default=True,
              help="Largest commit body (small files travel inside it, base64).")
@click.option("--max-lfs-bytes", type=_ByteSize(), default="64G", show_default=True,
              help="Largest file uploaded through LFS (weights, archives).")
@click.option("--allow-version-tag-rewrite", is_flag=True,
              help="Let owners delete version tags (v1.2.3) and repos that have them; published versions are "
                   "immutable without it.")
def serve_cmd(root: Path, host: str, port: int, token_file: Path | None, max_inline_bytes: int, max_lfs_bytes: int,
              allow_version_tag_rewrite: bool) -> None:
    """Serve model repos under ROOT to the unmodified huggingface_hub client.

    Writes need a token; private repos are visible only to their owner. Without any
    token the server is read-only. Repeated failed logins lock the client out for a
    while; version tags (v1.2.3) cannot be deleted or moved once published.

    \b
    Example:
      printf 'alice %s\\n' "$(openssl rand -hex 16)" > tokens.txt
      rvec hub serve --root ./hub-data --port 8080 --token-file tokens.txt
      HF_HUB_DISABLE_XET=1 HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=... \\
        hf upload alice/my-vector ./my-vector
    """
    try:
        from rvec_hub.hub.server import load_tokens, serve
        from rvec_hub.hub.server.guard import BodyLimits
    except ModuleNotFoundError as exc:
        if exc.name not in SERVER_MODULES:
            raise
        from ..errors import UsageError

        raise UsageError(f"`rvec hub serve` needs {exc.name}: pip install 'rvec[server]' (from a checkout: pip install '.[server]')") from None

    collector.resume()
    tokens = load_tokens(token_file)
    limits = BodyLimits(max_inline_bytes=max_inline_bytes, max_lfs_bytes=max_lfs_bytes)
    click.echo(f"rvec hub: serving {root} on http://{host}:{port} ({len(tokens)} user(s) with write tokens)",
               err=True)
    serve(root, host=host, port=port, tokens=tokens, limits=limits,
          allow_version_tag_rewrite=allow_version_tag_rewrite)


@hub_group.command("fsck")
@click.option("--root", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Storage directory of `rvec hub serve`.")
@json_option
def fsck_cmd(root: Path, as_json: bool) -> None:
    """Rehash every stored file and commit; quarantine what is corrupted.

    Objects whose bytes no longer match their hash move to ROOT/quarantine/ and are
    listed; files that lost their content must be pushed again. Leftovers of
    interrupted work are removed. Exits 1 when anything was corrupted or missing.

    \b
    Example:
      rvec hub fsck --root ./hub-data
      rvec hub fsck --root ./hub-data --json
    """
    try:
        from rvec_hub.hub.server.integrity import fsck
    except ModuleNotFoundError as exc:
        if exc.name not in SERVER_MODULES:
            raise
        from ..errors import UsageError

        raise UsageError(f"`rvec hub fsck` needs {exc.name}: pip install 'rvec[server]' (from a checkout: pip install '.[server]')") from None

    from ._errors import echo_json, exit_with

    report = fsck(root)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"checked {report.repos} repo(s), {report.blobs} blob(s), {report.commits} commit(s)")
        for line in report.quarantined:
            click.echo(f"quarantined: {line}")
        for line in report.problems:
            click.echo(f"problem: {line}")
        if report.removed_leftovers:
            click.echo(f"removed {len(report.removed_leftovers)} leftover(s) of interrupted work")
        click.echo("clean" if report.clean else f"NOT clean: corrupted objects are in {root / 'quarantine'}")
    if not report.clean:
        exit_with(1)
