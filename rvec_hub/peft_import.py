"""`rvec import peft`: a PEFT LoRA adapter (or `mergekit-extract-lora` output) read as an rvec vector.

Each LoRA module's factors become a `lowrank` entry with PEFT's scale folded into B: scaling = lora_alpha / r,
or lora_alpha / √r with rslora, r and alpha per module from `rank_pattern` / `alpha_pattern` matched the way
PEFT matches them. An embedding LoRA (`lora_embedding_A` r × vocab, `lora_embedding_B` hidden × r) adds
(B_e·A_e)ᵀ, so it is stored as B = A_eᵀ, A = B_eᵀ. Modules PEFT saves whole (`modules_to_save`) replace the
base's weight; as a vector they are the dense delta saved − base, which is why the base is needed.

Only safetensors adapters are read; a pickled `adapter_model.bin` is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError, FormatError, OutputExistsError, UsageError

PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<role>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module of an adapter: its factors as stored and the scale PEFT applies.

    Attributes:
        module: the module's name in the base model (`model.layers.0.self_attn.q_proj`).
        transposed: True when PEFT adds (B·A)ᵀ: an embedding LoRA, or a linear one with `fan_in_fan_out`
            (GPT-2's Conv1D stores its weight in × out).
        a: lora_A (r × in), or lora_embedding_A (r × vocab).
        b: lora_B (out × r), or lora_embedding_B (hidden × r).
        scaling: alpha / r (alpha / √r with rslora).
    """

    module: str
    transposed: bool
    a: torch.Tensor
    b: torch.Tensor
    scaling: float

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) in the vector's orientation, Δ = B·A with the scale folded into B.

        With a scale of 1 the factors are the adapter's own tensors, bit for bit; any other scale is
        multiplied into B in float32.
        """
        a, b = (self.b.T, self.a.T) if self.transposed else (self.a, self.b)
        if self.scaling != 1.0:
            b = b.float() * self.scaling
        return a.contiguous(), b.contiguous()

    def delta(self) -> torch.Tensor:
        """The weight delta this module adds, in float32."""
        a, b = self.factors()
        return b.float() @ a.float()


@dataclass
class Adapter:
    """A LoRA adapter as read from disk: its config, LoRA modules, and whole saved weights."""

    path: Path
    config: dict
    modules: list[LoraModule] = field(default_factory=list)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)
    bias_deltas: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def base_model(self) -> str | None:
        """`base_model_name_or_path` from the adapter's config."""
        return self.config.get("base_model_name_or_path")


def _weight_files(adapter: Path) -> list[Path]:
    files = sorted(adapter.glob("adapter_model*.safetensors"))
    if files:
        return files
    if any(adapter.glob("adapter_model*.bin")) or any(adapter.glob("adapter_model*.pt")):
        raise CheckpointError(f"{adapter} holds its weights as a pickle (adapter_model.bin); rvec reads safetensors only "
                              "and never unpickles: save the adapter with safe_serialization=True")
    raise FormatError(f"{adapter} has no adapter_model.safetensors; pass a PEFT LoRA adapter directory")


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """A rank_pattern / alpha_pattern value for a module, matched as PEFT matches it."""
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(patterns), module)
    return patterns.get(key, default)


def read_adapter(adapter: str | Path) -> Adapter:
    """Read a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`).

    Raises:
        FormatError: not a LoRA adapter, or a factor without its partner or of the wrong rank.
        CheckpointError: the weights are a pickle.
    """
    import math

    from safetensors import safe_open

    path = Path(adapter)
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise FormatError(f"{path} has no adapter_config.json; pass a PEFT LoRA adapter directory")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise FormatError(f"{config_path} is not valid JSON ({exc})") from exc
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise FormatError(f"{path} is a {config.get('peft_type')} adapter; rvec imports LoRA adapters only")
    if config.get("use_dora"):
        raise FormatError(f"{path} is a DoRA adapter: its magnitude vector rescales weights, which no additive delta expresses")
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise FormatError(f"{config_path} needs a positive integer r and a numeric lora_alpha, got r={r!r} lora_alpha={alpha!r}")
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    factors: dict[tuple[str, str], torch.Tensor] = {}
    result = Adapter(path, config)
    for file in _weight_files(path):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                name = key.removeprefix(PEFT_PREFIX)
                if ".base_layer." in name:
                    raise FormatError(f"{path} replaces the base layer {name} (a resized vocabulary); "
                                      "a vector can only add to weights of the same shape")
                match = _LORA_KEY.match(name)
                if match:
                    factors[(match["module"], match["role"])] = f.get_tensor(key)
                elif name.endswith(".lora_B.bias"):
                    result.bias_deltas[name.removesuffix(".lora_B.bias")] = f.get_tensor(key)
                else:
                    result.saved[name] = f.get_tensor(key)
    modules = sorted({m for m, _ in factors})
    for module in modules:
        embedding = (module, "lora_embedding_A") in factors or (module, "lora_embedding_B") in factors
        roles = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        missing = [role for role in roles if (module, role) not in factors]
        if missing:
            raise FormatError(f"{path}: module {module} has no {missing[0]}; the adapter is incomplete")
        a, b = factors[(module, roles[0])], factors[(module, roles[1])]
        module_r = int(_pattern_value(rank_pattern, module, r))
        module_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != module_r or b.shape[1] != module_r:
            raise FormatError(f"{path}: module {module} has factors {list(a.shape)} and {list(b.shape)}, "
                              f"which do not have rank {module_r} as adapter_config.json says")
        scaling = module_alpha / (math.sqrt(module_r) if rslora else module_r)
        result.modules.append(LoraModule(module, embedding or bool(config.get("fan_in_fan_out")), a, b, scaling))
    if not result.modules and not result.saved:
        raise FormatError(f"{path} holds no LoRA factors and no saved modules")
    return result


@dataclass(frozen=True)
class ImportResult:
    """What `import_peft` wrote."""

    path: Path
    lowrank: int
    dense: int
    tied_head: bool
    base_model: str | None


def import_peft(
    adapter: str | Path,
    out: str | Path,
    *,
    base: str | Path | None = None,
    name: str | None = None,
    description: str = "",
    license: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    force: bool = False,
    quiet: bool = True,
) -> ImportResult:
    """Write a PEFT LoRA adapter as an rvec vector directory.

    Args:
        adapter: the adapter directory (PEFT `save_pretrained` or `mergekit-extract-lora` output).
        out: the vector directory to create (atomically).
        base: the model the adapter was trained on, a directory or Hub id (default: the adapter's
            `base_model_name_or_path`); its config and tensor names fix the vector's fingerprint.
        name: vector name (default: the output directory's name).
        license: Hub license id (default: the adapter card's, else `other`).
        force: replace `out` if it exists.

    Returns:
        The result, with how many tensors became low-rank and dense entries.

    Example:
        >>> import_peft("my-lora", "my-vector", base="Qwen/Qwen2.5-1.5B-Instruct")
    """
    from ._version import __version__
    from .card import HUB_LICENSES, hub_id_or_none, license_id, split_card
    from .check import dtype_name
    from .io.atomic import atomic_directory
    from .io.checkpoint import open_checkpoint
    from .io.permissions import make_readable
    from .io.safetensors_io import ShardWriter
    from .manifest import BaseSpec, Donors, ModelRef, TensorEntry, config_signature, fingerprint
    from .package import PAYLOAD_METADATA, finalize_vector
    from .progress import progress

    if Path(out).exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another path or pass --force to replace it")
    lora = read_adapter(adapter)
    base_ref = base or lora.base_model
    if not base_ref:
        raise UsageError(f"{adapter} does not name its base model; pass --base DIR_OR_ID")
    ckpt = open_checkpoint(base_ref, endpoint=endpoint, token=token)
    tensors = ckpt.tensors
    problems: list[str] = []
    factor_of: dict[str, LoraModule] = {}
    for module in lora.modules:
        factor_of[f"{module.module}.weight"] = module
    tied_head = None
    if "lm_head.weight" in factor_of and "lm_head.weight" not in tensors:
        # A tied head has no tensor of its own: its LoRA must be the embedding's, which changes both.
        embed = next((n for n in factor_of if n.endswith("embed_tokens.weight")), None)
        head = factor_of.pop("lm_head.weight")
        if embed is None or not torch.allclose(head.delta(), factor_of[embed].delta(), rtol=1e-5, atol=1e-7):
            problems.append(f"the adapter changes lm_head, which {base_ref} ties to its embedding, differently from the embedding")
        tied_head = embed
    dense: dict[str, torch.Tensor] = {}
    for saved_name, weight in lora.saved.items():
        if saved_name.endswith("lm_head.weight") and saved_name not in tensors:
            # mergekit saves a tied head whole beside the embedding; it is the same tensor, and the head follows.
            embed = next((lora.saved[n] for n in lora.saved if n.endswith("embed_tokens.weight")), None)
            if embed is not None and torch.equal(embed, weight):
                tied_head = tied_head or saved_name
                continue
        if saved_name not in tensors:
            problems.append(f"saved module weight {saved_name}: not a tensor of {base_ref}")
        elif tuple(weight.shape) != tensors[saved_name].shape:
            problems.append(f"saved module weight {saved_name}: shape {list(weight.shape)}, base has {list(tensors[saved_name].shape)}")
        else:
            dense[saved_name] = weight.float() - ckpt.read_rows(saved_name).float()
    for bias_module, bias in lora.bias_deltas.items():
        owner = factor_of.get(f"{bias_module}.weight")
        dense[f"{bias_module}.bias"] = bias.float() * (owner.scaling if owner else 1.0)
    for tensor_name, module in factor_of.items():
        if tensor_name not in tensors:
            problems.append(f"LoRA module {module.module}: {base_ref} has no tensor {tensor_name}")
            continue
        a, b = module.factors()
        shape = tensors[tensor_name].shape
        if (b.shape[0], a.shape[1]) != tuple(shape):
            problems.append(f"LoRA module {module.module}: adds a {b.shape[0]}×{a.shape[1]} delta to a tensor of shape {list(shape)}")
    for bias_name in dense:
        if bias_name not in tensors:
            problems.append(f"{bias_name}: {base_ref} has no such tensor")
    if problems:
        raise CheckpointError(f"{adapter} does not fit {base_ref}: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), problems=problems)

    out = Path(out)
    entries: list[TensorEntry] = []
    stored: list[tuple[str, torch.Tensor]] = []
    floats = [n for n, info in tensors.items() if info.dtype.is_floating_point]
    with progress(len(floats), "import peft", quiet=quiet, unit="tensor") as bar:
        for tensor_name in floats:
            info = tensors[tensor_name]
            common = {"name": tensor_name, "shape": tuple(info.shape), "dtype": dtype_name(info.dtype)}
            if tensor_name in factor_of:
                a, b = factor_of[tensor_name].factors()
                norm = torch.linalg.vector_norm(b.float() @ a.float()).item()
                entries.append(TensorEntry(**common, encoding="lowrank", keys={"A": f"{tensor_name}.A", "B": f"{tensor_name}.B"},
                                           params={"rank": a.shape[0]}, stats={"norm": norm, "rel_error": 0.0, "energy": 1.0}))
                stored += [(f"{tensor_name}.A", a), (f"{tensor_name}.B", b)]
            elif tensor_name in dense:
                delta = dense[tensor_name]  # float32: a saved module's delta is a difference of two weights
                entries.append(TensorEntry(**{**common, "dtype": "float32"}, encoding="dense", keys={"delta": tensor_name},
                                           stats={"norm": torch.linalg.vector_norm(dense[tensor_name]).item()}))
                stored.append((tensor_name, delta))
            else:
                entries.append(TensorEntry(**common, encoding="zero"))
            bar.update(1)
    card_meta = split_card((Path(adapter) / "README.md").read_text())[0] if (Path(adapter) / "README.md").is_file() else {}
    if license:
        license = license_id(license)
    else:
        license = card_meta.get("license") if card_meta.get("license") in HUB_LICENSES else "other"
    base_id = hub_id_or_none(str(base_ref)) or hub_id_or_none(lora.base_model)
    sig = config_signature(ckpt.config)
    touched = {e.name: tuple(e.shape) for e in entries if e.encoding != "zero"}
    r = lora.config.get("r")
    with atomic_directory(out, force=force, inputs=[adapter, ckpt.path]) as tmp:
        writer = ShardWriter(tmp, "vector", 2 * 1024**3, PAYLOAD_METADATA, [(k, tuple(t.shape), t.dtype) for k, t in stored])
        for key, tensor in stored:
            writer.add(key, tensor)
        shards = writer.finish()
        fields = dict(
            format_version=1,
            name=name or out.name,
            description=description or f"Imported from a PEFT LoRA adapter (r={r}, lora_alpha={lora.config.get('lora_alpha')}).",
            license=license,
            rvec_version=__version__,
            base=BaseSpec(architecture=(sig["architectures"] or ["unknown"])[0], config=sig, fingerprint=fingerprint(sig, touched), model_id=base_id),
            donors=Donors(reference=ModelRef(id=base_id, revision=ckpt.revision), tuned=ModelRef(id=Path(adapter).name)),
            recipe="base + LoRA adapter − base (scaling folded into B)",
            tensors=entries,
            extract={
                "source": "peft",
                "r": r,
                "lora_alpha": lora.config.get("lora_alpha"),
                "use_rslora": bool(lora.config.get("use_rslora")),
                "tied_head": tied_head is not None,
            },
        )
        finalize_vector(tmp, fields, [p for p, _ in shards])
        make_readable(tmp)
    ckpt.close()
    return ImportResult(out, sum(e.encoding == "lowrank" for e in entries), sum(e.encoding == "dense" for e in entries), tied_head is not None, base_id)
