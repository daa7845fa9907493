"""`rvec push`, `pull`, `versions`, `search`: the Hub client on the command line."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import echo_json
from ._options import endpoint_option, json_option, quiet_option


@click.command("push")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("repo_id")
@click.option("--version", "version", required=True, help="Semantic version X.Y.Z; tagged vX.Y.Z, never reused.")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("-m", "--message", help="Commit message (default: rvec NAME X.Y.Z).")
@endpoint_option
@quiet_option
@json_option
def push_cmd(directory, repo_id, version, private, message, endpoint, quiet, as_json):
    """Publish a vector directory to the Hub as a new version.

    The vector is verified first; all files go up in one commit (large files through LFS), tagged vX.Y.Z.
    The token comes from HF_TOKEN or `hf auth login`.

    \b
    Examples:
      rvec push vec acme/qwen2.5-reasoning --version 1.0.0
      rvec push vec acme/qwen2.5-reasoning --version 1.1.0 --private -m "retrained on more math"
      rvec push vec alice/demo --version 0.1.0 --endpoint http://127.0.0.1:8080
    """
    from ..card import card_warnings
    from ..hub.client import push
    from ..manifest import MANIFEST_NAME, load_manifest

    if (Path(directory) / MANIFEST_NAME).is_file():  # anything else push refuses with its own message
        for warning in card_warnings(load_manifest(directory)):
            click.echo(f"warning: {warning}", err=True)
    result = push(directory, repo_id, version, private=private, message=message, endpoint=endpoint, quiet=quiet or as_json)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"pushed {result.repo_id}@{result.version} ({len(result.files)} files, {result.payload_bytes / 1e6:.2f} MB payload)")
    click.echo(f"commit {result.commit}  tag {result.version.tag}")


@click.command("pull")
@click.argument("ref")
@click.option("-o", "--output", type=click.Path(), help="Also copy the vector into this plain directory (it always lands in the Hub cache).")
@click.option("--force", is_flag=True, help="Replace the output directory once the new copy is complete.")
@endpoint_option
@quiet_option
@json_option
def pull_cmd(ref, output, force, endpoint, quiet, as_json):
    """Download a vector version and verify every file against its manifest.

    REF is REPO_ID[@VERSION]: @1.0.0, @latest (highest release), @<commit sha>; without @ the latest
    version. Files land in the standard Hugging Face cache (`hf cache ls` lists them); one whose sha256
    differs from the manifest is removed again. With HF_HUB_OFFLINE=1 the reference resolves from the cache.

    \b
    Examples:
      rvec pull acme/qwen2.5-reasoning@1.0.0
      rvec pull acme/qwen2.5-reasoning@latest -o vec
      rvec pull acme/qwen2.5-reasoning@3f2a9c1 -o vec --force
    """
    from ..hub.client import pull

    result = pull(ref, output=output, force=force, endpoint=endpoint, quiet=quiet or as_json)
    if as_json:
        echo_json(result.to_dict())
        return
    label = f"{result.repo_id}@{result.version}" if result.version else result.repo_id
    click.echo(f"pulled {label} into {result.path} (verified)")
    click.echo(f"commit {result.commit}")


@click.command("versions")
@click.argument("repo_id")
@endpoint_option
@json_option
def versions_cmd(repo_id, endpoint, as_json):
    """List the published versions of a vector, newest first, with dates and commits.

    \b
    Examples:
      rvec versions acme/qwen2.5-reasoning
      rvec versions acme/qwen2.5-reasoning --json
    """
    from ..hub.client import versions

    found = versions(repo_id, endpoint=endpoint)
    if as_json:
        echo_json([v.to_dict() for v in found])
        return
    if not found:
        click.echo(f"{repo_id} has no versions yet; publish one with `rvec push DIR {repo_id} --version 1.0.0`")
        return
    for v in found:
        date = v.date.strftime("%Y-%m-%d %H:%M") if v.date else "-"
        click.echo(f"{str(v.version):<16} {date:<16}  {v.commit}")


@click.command("search")
@click.argument("query", required=False)
@click.option("--base", help="Only vectors whose card names this base model (Hub id).")
@click.option("--author", help="Only repositories under this namespace.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many results.")
@endpoint_option
@json_option
def search_cmd(query, base, author, limit, endpoint, as_json):
    """Find vectors on the Hub (repositories tagged rvec), with their base and latest version.

    \b
    Examples:
      rvec search reasoning
      rvec search --base Qwen/Qwen2.5-1.5B-Instruct
      rvec search --author acme --json
    """
    from ..hub.client import search

    found = search(query, base, author=author, limit=limit, endpoint=endpoint)
    if as_json:
        echo_json([v.to_dict() for v in found])
        return
    if not found:
        click.echo("no vectors found" + (f" for base {base}" if base else ""))
        return
    width = max(len(v.repo_id) for v in found)
    for v in found:
        click.echo(f"{v.repo_id:<{width}}  {v.latest_version or '-':<12} base {v.base_model or '-'}")
