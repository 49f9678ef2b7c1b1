"""Engine schedulers (one engine runs one iteration at a time) and routers across engines.

To add a scheduler: subclass :class:`~perfcast.serving.schedulers.base.Engine`, implement
``load``, ``schedule`` and ``finish``, and register the class in ``SCHEDULERS`` under the name a
config's ``scheduler`` key gives.
"""

from perfcast.serving.schedulers.base import Engine
from perfcast.serving.schedulers.hfcb import HFContinuousBatching
from perfcast.serving.schedulers.router import ROUTERS, make_router
from perfcast.serving.schedulers.static import StaticBatching
from perfcast.serving.schedulers.vllm import ContinuousBatching

SCHEDULERS: dict[str, type[Engine]] = {"vllm": ContinuousBatching, "static": StaticBatching,
                                       "hf-cb": HFContinuousBatching}

__all__ = ["ROUTERS", "SCHEDULERS", "ContinuousBatching", "Engine", "HFContinuousBatching", "StaticBatching",
           "make_router"]
