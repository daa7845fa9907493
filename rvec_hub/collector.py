"""How rvec uses Python's cyclic garbage collector.

A command imports torch and often transformers: millions of objects that live until the process
ends. The collector's full passes walk all of them again and again while they load, and once more at exit;
on 2 cores that cost `rvec apply` about 0.5 s at start and 0.5 s at exit, more than its arithmetic on a
0.5B model (bench/README.md). So `rvec` holds the collector off: a command's buffers are freed by reference
counting as they go out of use, and the collector only ever reclaims reference cycles, which the streaming
loops do not make. Commands that run for long (servers, training, evaluation) turn it back on once their
modules are loaded, with what was loaded frozen out of its passes.

Inside a vLLM engine, whose heap is larger still, the loader pauses the collector while it opens and
checks the vectors (`paused`): one full pass there cost 0.36–0.48 s of a 0.77–1.10 s step. The merged
weight iterators (`rvec_serving.merge`, `rvec_serving.sharded`) pause it while the weights stream in, so
that no such pass falls inside the load either.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No collector passes inside the block; the collector is on again after it if it was before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def hold_off() -> None:
    """At start-up: no collector passes from here on, until `resume` (see above)."""
    gc.disable()


def resume() -> None:
    """For a long-running command, after its imports: collect again, skipping everything made so far.

    A no-op where the collector is on already (the CLI run inside another program, as tests do)."""
    if not gc.isenabled():
        _freeze()
        gc.enable()


def before_exit() -> None:
    """Freeze what exists, so the interpreter's passes at exit have nothing to walk."""
    _freeze()


def _freeze() -> None:
    # Not once triton is loaded (vLLM and peft import it): its nanobind bindings print every one of their
    # instances still alive at exit as a leak, and frozen objects are never freed.
    if "triton" not in sys.modules:
        gc.freeze()
