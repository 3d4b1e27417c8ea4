"""Execution providers and intra-op threads: what every onnxruntime session onnxconv creates is given.

``--provider`` names (``cpu``, ``cuda``, ``tensorrt`` and their aliases) resolve here to the chain of execution
providers a session gets, for ``bench``, the planner's latency measurements and the calibration runs alike.
Plain data and checks: onnxruntime is imported only to list the available providers, when none are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import OptionError

__all__ = ["PROVIDERS", "MAX_THREADS", "Provider", "ProviderError", "resolve_provider"]

#: Short provider names -> the execution providers a session is given, in order (CPU last: it runs what the
#: accelerator provider has no kernel for).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_ALIASES = {"gpu": "cuda", "trt": "tensorrt", **{v[0].lower(): k for k, v in PROVIDERS.items()}}
_DEVICE = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}

#: Most intra-op threads a session may be given. onnxruntime starts every one of them at session creation, and
#: a thread beyond the cores only waits for one: a typo such as ``--threads 100000`` would start 100000 OS
#: threads (minutes, or a failure to spawn) for nothing. 1024 is above the core count of any single machine
#: onnxruntime runs on, so no real setting is refused.
MAX_THREADS = 1024


class ProviderError(OptionError):
    """A requested execution provider is not in this onnxruntime build, or could not start."""


@dataclass(frozen=True)
class Provider:
    """A resolved provider: short name, the execution providers a session gets, and where tensors live."""

    name: str
    chain: tuple[str, ...]
    device: str


def resolve_provider(name: str, available: Sequence[str] | None = None) -> Provider:
    """Map ``cpu|cuda|tensorrt`` (or a full execution-provider name) to a :class:`Provider`.

    Raises:
        ProviderError: unknown name, or not available in this onnxruntime build (one line that lists the
            available ones and the ``gpu`` extra).
    """
    if available is None:
        import onnxruntime as ort  # lazy: ~150 ms to import, which commands that run no model skip

        available = ort.get_available_providers()
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PROVIDERS:
        raise ProviderError(f"--provider {name}: unknown; choose from {', '.join(PROVIDERS)}")
    chain = PROVIDERS[key]
    if chain[0] not in available:
        short = {v[0]: k for k, v in PROVIDERS.items()}
        listed = ", ".join(short.get(a, a) for a in available) or "none"
        hint = (" (for GPUs install the gpu extra, pip install 'onnxconv[gpu]', which brings onnxruntime-gpu;"
                " uninstall onnxruntime first)") if key != "cpu" else ""
        raise ProviderError(f"provider '{key}' ({chain[0]}) is not available; available: {listed}{hint}")
    return Provider(key, tuple(p for p in chain if p in available), _DEVICE[key])
