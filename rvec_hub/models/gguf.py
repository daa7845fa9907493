"""A llama GGUF file as a Hugging Face checkpoint: dequantized bf16 safetensors, config, tokenizer.

transformers' own GGUF reader does the parts that are easy to get wrong: it maps llama.cpp's tensor names
(`blk.3.attn_q.weight`) to Hugging Face's and undoes the row permutation llama.cpp's converter applies to
the query and key projections for its rotary layout. rvec adds the output: deterministic bytes, an atomic
directory, and one-line errors for a file that is missing, truncated or not a GGUF.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

# Architectures whose tensor layout (names, q/k un-permutation) this converter has been verified on.
SUPPORTED_ARCHITECTURES = ("llama",)
WEIGHTS_NAME = "model.safetensors"


def read_gguf(path: Path, *, quiet: bool = True) -> dict[str, Any]:
    """Parse a GGUF file's metadata and dequantize its tensors to bfloat16 with Hugging Face names.

    Args:
        path: the `.gguf` file.
        quiet: hide transformers' per-tensor progress bar.

    Returns:
        `{"config": dict, "tokenizer_config": dict, "tensors": {hf_name: bf16 tensor}}`.

    Raises:
        CheckpointError: when the file is missing, truncated, not a GGUF, or not a supported architecture.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    with _reading(path):
        meta = load_gguf_checkpoint(str(path), return_tensors=False)
    config = dict(meta["config"])
    arch = config.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{path} holds a {arch} model; rvec converts {', '.join(SUPPORTED_ARCHITECTURES)} GGUF files")
    config.pop("_model_name_or_path", None)
    hf_config = AutoConfig.for_model(arch, **{k: v for k, v in config.items() if k != "model_type"})
    # Only the parameter names matter for the name map, so the model is built without memory.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    with _reading(path), _tqdm_disabled(quiet):
        loaded = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton, torch_dtype=torch.bfloat16)
    tensors = loaded["tensors"]
    expected = set(skeleton.state_dict())
    if config.get("tie_word_embeddings"):
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(tensors))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensors the {arch} model needs, e.g. {missing[0]}; the file is incomplete")
    return {"config": config, "tokenizer_config": dict(meta.get("tokenizer_config") or {}), "tensors": tensors}


def write_checkpoint(
    path: Path, out: Path, *, config_overrides: dict[str, Any] | None = None, quiet: bool = True
) -> list[str]:
    """Write the Hugging Face checkpoint of a GGUF file into an existing, empty directory `out`.

    Every file is a pure function of the GGUF's bytes (and the installed transformers): tensors are written
    in sorted order, JSON with sorted keys, and nothing records a time, a path or a library version.

    Args:
        path: the `.gguf` file.
        out: the directory to fill (the caller makes it atomic).
        config_overrides: config values to set after reading the GGUF (e.g. a float it stores as float32).

    Returns:
        The names of the files written.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    parsed = read_gguf(path, quiet=quiet)
    config = {**parsed["config"], **(config_overrides or {})}
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    hf_config.architectures = [f"{type(hf_config).__name__.removesuffix('Config')}ForCausalLM"]
    hf_config.dtype = torch.bfloat16
    tensors = {name: parsed["tensors"][name].contiguous() for name in sorted(parsed["tensors"])}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / WEIGHTS_NAME).chmod(0o644)  # safetensors creates it owner-only; the rest of the model is world-readable
    del tensors, parsed
    _write_json(out / "config.json", _stable(hf_config.to_diff_dict()))
    generation = GenerationConfig(
        bos_token_id=hf_config.bos_token_id, eos_token_id=hf_config.eos_token_id, pad_token_id=hf_config.pad_token_id
    )
    _write_json(out / "generation_config.json", _stable(generation.to_diff_dict()))
    with _reading(path):
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.model_max_length = hf_config.max_position_embeddings
    tokenizer.save_pretrained(str(out))
    tokenizer_config = out / "tokenizer_config.json"
    _write_json(tokenizer_config, _stable(json.loads(tokenizer_config.read_text())))
    return sorted(p.name for p in out.iterdir())


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    """Drop what would differ between machines or library versions (paths, versions, local-only flags)."""
    drop = {"transformers_version", "_name_or_path", "name_or_path", "is_local", "local_files_only", "_commit_hash"}
    return {k: v for k, v in data.items() if k not in drop}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def _reading(path: Path):
    """Turn a parse failure inside the GGUF reader into one line naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, AssertionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable GGUF file; it may be truncated or corrupt ({detail[:160]})") from exc


@contextmanager
def _tqdm_disabled(disabled: bool):
    """Silence the tqdm bar transformers draws while dequantizing (it takes no option for that)."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as reader

    original = reader.tqdm
    if disabled:
        reader.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original
