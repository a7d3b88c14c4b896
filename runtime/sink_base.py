"""What every output is (`Sink`) and what it is told about a frame (`OutputInfo`): the base the sinks of
runtime/sinks.py and runtime/gstreamer_sinks.py share, so neither imports the other's module for it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class OutputInfo:
    """What a sink knows about a frame besides its pixels."""

    index: int
    name: str
    fps: float = 0.0
    stages_ms: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)      # role -> "ok" / "lost" / "ended" / "reconnecting"
    pair_error_ms: Optional[float] = None
    mode: str = "fused"                             # "fused" or "ir only" / "vis only" while a camera is lost


class Sink(ABC):
    uri: str = ""
    kind: str = "sink"
    wants_overlay: bool = False
    stop_requested: bool = False      # a display window closed by the user

    @abstractmethod
    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        """Show, encode or send one fused RGB uint8 frame."""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.kind} {self.uri}"
