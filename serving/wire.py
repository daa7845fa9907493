"""What a server and its clients share: how a vector is named to the server, and the admin endpoint.

Kept free of torch and vLLM, so that `rvec swap` starts in a fraction of a second even beside a busy server.
"""

from __future__ import annotations

from dataclasses import dataclass

from rvec_hub.alpha import split_alpha

ADMIN_PATH = "/rvec/vectors"
ADMIN_TOKEN_ENV = "RVEC_ADMIN_TOKEN"


@dataclass(frozen=True)
class VectorSpec:
    """One vector as the server applies it.

    Attributes:
        ref: a vector directory or `REPO_ID@VERSION`.
        alpha: its scale; None means the manifest's `default_alpha`.
    """

    ref: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> VectorSpec:
        """`REF[:ALPHA]` as the command line writes it."""
        ref, alpha = split_alpha(text)
        return cls(ref, alpha)

    def to_json(self) -> dict:
        """The entry written into `model_loader_extra_config`."""
        return {"ref": self.ref} if self.alpha is None else {"ref": self.ref, "alpha": self.alpha}
