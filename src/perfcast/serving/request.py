"""One request's state as it moves through the simulator (plain slots: it is touched every event)."""

from __future__ import annotations

WAITING, PREFILL, DECODE, DONE = range(4)


class Request:
    """Token counts and timestamps (seconds) of one request.

    KV bookkeeping: ``computed`` tokens have their KV cached. A prefill runs until
    ``computed == prompt + generated`` (after a preemption the generated tokens are recomputed
    too) and then emits a token. A decoding request joined its engine's decode set at iteration
    ``j0`` with ``l0`` cached tokens and ``g0`` tokens generated; from those and the engine's
    iteration counter everything else follows, so a decode step costs nothing per request.
    """

    __slots__ = (
        "arrival",
        "computed",
        "end_it",
        "engine",
        "finish_t",
        "first_t",
        "g0",
        "generated",
        "id",
        "j0",
        "l0",
        "last_t",
        "output",
        "preemptions",
        "prompt",
        "res",
        "sched_t",
        "state",
    )

    def __init__(self, rid: int, arrival: float, prompt: int, output: int):
        self.id = rid
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.state = WAITING
        self.computed = 0
        self.generated = 0
        self.sched_t = -1.0  # first scheduled (left the queue)
        self.first_t = -1.0  # first token out
        self.finish_t = -1.0  # last token out
        self.last_t = -1.0  # time of the latest token before a gap (preemption, KV transfer)
        self.j0 = self.l0 = self.g0 = 0
        self.res = 0  # decode iterations i with i % block_size == res need one more KV block
        self.end_it = -1  # engine iteration that emits the last token
        self.preemptions = 0
        self.engine = -1

    @property
    def target(self) -> int:
        """Tokens a prefill must cache before the next token comes out."""
        return self.prompt + self.generated

    def __repr__(self) -> str:
        return (f"Request(id={self.id}, arrival={self.arrival:.3f}, prompt={self.prompt}, "
                f"output={self.output}, state={self.state}, generated={self.generated})")
