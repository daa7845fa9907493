"""The vLLM model loader behind `--load-format rvec`: the base checkpoint's tensors, vectors added on the fly.

vLLM's own `model.load_weights` receives the merged tensors, so fusing (qkv, gate/up), sharding for tensor
parallelism and quantization work exactly as for a plain checkpoint. Nothing merged is written to disk.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from rvec_hub import collector, fused
from rvec_hub.arith import Survival
from rvec_hub.check import dtype_name
from rvec_hub.errors import CompatibilityError, RvecError
from rvec_hub.io.checkpoint import open_checkpoint

from .merge import merged_weights, untouched
from .sharded import lazily_merged_weights
from .spec import OpenedVector, check_all, describe, open_specs, split_extra_config

# A child of vLLM's logger, so its handlers and format (and VLLM_LOGGING_LEVEL) apply.
logger = init_logger("vllm.rvec")
LOAD_FORMAT = "rvec"


class RvecModelLoader(DefaultModelLoader):
    """Loads a base checkpoint and adds reasoning vectors to its tensors as they stream in.

    Configured through `model_loader_extra_config`:
    `{"vectors": [{"ref": "DIR_OR_REPO@VERSION", "alpha": 1.0}, ...], "endpoint": "http://hub"}`;
    other keys (e.g. `enable_multithread_load`) go to vLLM's default loader, which reads the base as safetensors.
    """

    def __init__(self, load_config: LoadConfig) -> None:
        self.specs, self.endpoint, rest = split_extra_config(load_config.model_loader_extra_config or {})
        # The parent only knows safetensors and refuses unknown keys: hand it exactly that.
        super().__init__(dataclasses.replace(load_config, load_format="safetensors", model_loader_extra_config=rest))
        self.vectors: list[OpenedVector] = []
        self.survival: list[Survival] = []
        self.merge_device: torch.device | None = None
        self.into_parameters = False  # vLLM's own first load is reading: a parameter may get its vector added in place

    def _base_folder(self, model_config: ModelConfig) -> str:
        folder, _, _, _ = self._prepare_weights(model_config.model, None, model_config.revision, False, None)
        return folder

    def prepare(self, model_config: ModelConfig) -> None:
        """Open every vector and check it against the base before any weight is read.

        Raises:
            CompatibilityError: with every mismatch of every vector.
        """
        if self.vectors:
            return
        started = time.perf_counter()
        # Its allocations would set off full collector passes over the engine's whole heap (rvec_hub.collector).
        with collector.paused():
            fused.load_kernels()  # on this thread, before any reader thread starts (see fused.load_kernels)
            base = open_checkpoint(self._base_folder(model_config))
            # Payloads are hashed on a thread while the weights merge; get_all_weights waits before it returns.
            vectors = open_specs(self.specs, endpoint=self.endpoint, verify="background")
            check_all(vectors, base)
            base.close()
        self.vectors = vectors
        self.survival = [Survival() for _ in vectors]
        logger.info("rvec: %s fit %s (checked, kernels loaded, in %.2f s)", describe(vectors), model_config.model, time.perf_counter() - started)

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> nn.Module:
        device = torch.device(self.load_config.device or vllm_config.device_config.device)
        # On an accelerator the float32 arithmetic runs there; on CPU tensors stay where vLLM reads them.
        self.merge_device = device if device.type != "cpu" else None
        try:
            self.prepare(model_config)
        except CompatibilityError as exc:
            for problem in exc.problems:
                logger.error("rvec: %s", problem)
            raise
        return super().load_model(vllm_config, model_config, prefix)

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        self.prepare(model_config)
        self.into_parameters = True
        try:
            super().load_weights(model, model_config)
        finally:
            self.into_parameters = False
        self._report(model_config.dtype)

    def get_all_weights(self, model_config: ModelConfig, model: nn.Module) -> Generator[tuple[str, torch.Tensor], None, None]:
        # vLLM's in-place reload (a live swap) builds a fresh loader and calls only this.
        self.prepare(model_config)
        seen: set[str] = set()

        reading = [0.0]

        def base_weights() -> Generator[tuple[str, torch.Tensor], None, None]:
            for name, tensor in _timed(super(RvecModelLoader, self).get_all_weights(model_config, model), reading):
                seen.add(name)
                yield name, tensor

        ranks = _tensor_parallel()
        merging = [0.0]
        try:
            yield from self._merged(base_weights(), model_config, reading, merging)
        except RvecError:
            # Flipped bytes are the likeliest cause of a bad value; their fix (fetch again) differs from a bad vector's.
            for item in self.vectors:
                item.vector.wait_verified()
            raise
        logger.info("rvec: tensor-parallel rank %d of %d spent %.2f s adding vectors", ranks[0], ranks[1], merging[0])
        for item in self.vectors:
            item.vector.wait_verified()  # a payload that fails its sha256 fails the load before anything is served
        missing = untouched(self.vectors, seen)
        if missing:
            raise CompatibilityError(
                f"{len(missing)} tensors the vectors change never came from the base checkpoint, e.g. {missing[0]}",
                problems=missing,
            )

    def _merged(self, weights: Generator, model_config: ModelConfig, reading: list[float], merging: list[float]) -> Generator:
        """The base weights with every vector added, timing the adding into `merging`."""
        if self.merge_device is None and self.into_parameters:
            # On the CPU each tensor is added where the weight loaders put it: into the parameter itself, or
            # under tensor parallelism into the slice this rank keeps (`rvec_serving.sharded`). A live swap's
            # in-place reload loads layer by layer, through parameters on the meta device that count the
            # elements copied into them: it gets whole merged tensors, as an accelerator does.
            yield from lazily_merged_weights(weights, self.vectors, model_config.dtype, self.survival, merging)
        else:
            # An accelerator merges whole tensors faster than its host could slice them; a reload gets them too (above).
            yield from _timed(merged_weights(weights, self.vectors, model_config.dtype, self.survival, self.merge_device), merging)
            merging[0] -= reading[0]  # the time above includes reading the base tensors

    def _report(self, dtype: torch.dtype) -> None:
        for item, kept in zip(self.vectors, self.survival):
            hint = " (serve with --dtype float32 to keep all of it)" if kept.retained < 0.99 and dtype != torch.float32 else ""
            logger.info(
                "rvec: %s at alpha %g: %.1f%% of the vector's norm survives in %s%s",
                item.ref, item.alpha, 100 * kept.retained, dtype_name(dtype), hint,
            )


def _tensor_parallel() -> tuple[int, int]:
    """(this worker's tensor-parallel rank, the tensor-parallel size)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    try:
        return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
    except AssertionError:  # no parallel groups: a plain single-process load
        return 0, 1


def _timed(items: Generator, seconds: list[float]) -> Generator:
    """Pass `items` through, adding the time spent producing each to `seconds[0]`."""
    while True:
        began = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        seconds[0] += time.perf_counter() - began
        yield item


def register() -> None:
    """Make `--load-format rvec` known to vLLM (safe to call more than once)."""
    from vllm.model_executor.model_loader import _LOAD_FORMAT_TO_MODEL_LOADER, register_model_loader

    if _LOAD_FORMAT_TO_MODEL_LOADER.get(LOAD_FORMAT) is not RvecModelLoader:
        register_model_loader(LOAD_FORMAT)(RvecModelLoader)
