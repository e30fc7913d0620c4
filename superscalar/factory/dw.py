"""The Decker-Wattenhofer counter: an odometer over the tree's state layers.

Layer 0 is the root's state transaction, layer L-1 the leaves'. Each layer has K states; state i of a
layer waits `step × (K − 1 − i)` blocks after its kickoff confirms (its input's nSequence, BIP-68), so a
newer state (higher i) always becomes valid before an older one of the same layer. An epoch is the
number whose base-K digits are the state indices along a path, the innermost layer least significant:
advancing increments the innermost digit and carries outwards, resetting inner layers to state 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ExhaustedError, ParamsError


@dataclass(frozen=True, slots=True)
class DWCounter:
    layers: int
    states_per_layer: int
    step_blocks: int

    def __post_init__(self) -> None:
        if self.layers < 1 or self.states_per_layer < 2 or self.step_blocks < 1:
            raise ParamsError("a DW counter needs ≥ 1 layer, ≥ 2 states per layer and a step ≥ 1")

    @property
    def max_epoch(self) -> int:
        return int(self.states_per_layer ** self.layers) - 1

    def digits(self, epoch: int) -> tuple[int, ...]:
        """State index per layer (root first) of `epoch`."""
        if not 0 <= epoch <= self.max_epoch:
            raise ParamsError(f"epoch {epoch} outside 0..{self.max_epoch}")
        out = []
        for _ in range(self.layers):
            epoch, d = divmod(epoch, self.states_per_layer)
            out.append(d)
        return tuple(reversed(out))

    def epoch(self, digits: tuple[int, ...]) -> int:
        """The epoch whose state indices (root first) are `digits`."""
        if len(digits) != self.layers or not all(0 <= d < self.states_per_layer for d in digits):
            raise ParamsError(f"state indices {digits} do not fit {self.layers} layers of {self.states_per_layer}")
        e = 0
        for d in digits:
            e = e * self.states_per_layer + d
        return e

    def nsequence(self, state_index: int) -> int:
        """BIP-68 nSequence (relative blocks) of state `state_index` of any layer."""
        if not 0 <= state_index < self.states_per_layer:
            raise ParamsError(f"state index {state_index} outside 0..{self.states_per_layer - 1}")
        return self.step_blocks * (self.states_per_layer - 1 - state_index)

    def advances_left(self, epoch: int) -> int:
        """How many more times `epoch` can advance before the counter is exhausted."""
        self.digits(epoch)  # validates the range
        return self.max_epoch - epoch

    def advance(self, digits: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """The next state indices after `digits`, and the outermost layer that changed.

        Raises ExhaustedError when every layer is at its last state (the factory must roll over)."""
        e = self.epoch(digits)
        if e == self.max_epoch:
            raise ExhaustedError("every Decker-Wattenhofer layer is at its last state")
        nxt = self.digits(e + 1)
        changed = next(i for i in range(self.layers) if nxt[i] != digits[i])
        return nxt, changed
