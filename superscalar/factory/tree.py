"""The timeout tree's shape: which clients sit under which node.

Clients 0..n-1 are grouped `leaf_arity` to a leaf, nodes `arity` to a parent, until one root is left,
so all leaves share one depth. Node 0 is the root; nodes are numbered breadth-first. Participant 0 is the
LSP and participant i+1 is client i; every node is signed by the LSP and the clients below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from .errors import FactoryError

LSP = 0  # participant index of the LSP


@dataclass(frozen=True, slots=True)
class Node:
    index: int
    depth: int
    first_client: int
    n_clients: int
    children: tuple[int, ...]
    parent: Optional[int]
    signers: tuple[int, ...]  # participants signing this node's transactions: the LSP and its clients

    @property
    def clients(self) -> range:
        return range(self.first_client, self.first_client + self.n_clients)

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    leaf_of_client: tuple[int, ...]

    @property
    def root(self) -> Node:
        return self.nodes[0]

    @property
    def n_clients(self) -> int:
        return len(self.leaf_of_client)

    def path(self, client: int) -> tuple[int, ...]:
        """Node indices from the root down to `client`'s leaf."""
        if not 0 <= client < self.n_clients:
            raise FactoryError(f"no client {client}")
        out = [self.leaf_of_client[client]]
        while (parent := self.nodes[out[-1]].parent) is not None:
            out.append(parent)
        return tuple(reversed(out))

    def subtree(self, node: int) -> list[int]:
        """`node` and all its descendants, parents before children."""
        out = [node]
        for n in out:
            out.extend(self.nodes[n].children)
        return out


@lru_cache(maxsize=32)
def build_topology(n_clients: int, leaf_arity: int, arity: int) -> Topology:
    """The tree for these sizes (memoized: a pure function of three integers)."""
    if n_clients < 1 or leaf_arity < 1 or arity < 2:
        raise FactoryError("a tree needs ≥ 1 client, leaf arity ≥ 1 and arity ≥ 2")
    # Bottom-up: each group is (first_client, n_clients, child groups).
    Group = tuple[int, int, tuple]  # type: ignore[type-arg]
    level: list[Group] = [
        (first, min(leaf_arity, n_clients - first), ()) for first in range(0, n_clients, leaf_arity)
    ]
    while len(level) > 1:
        level = [
            (chunk[0][0], sum(g[1] for g in chunk), tuple(chunk))
            for chunk in (level[i:i + arity] for i in range(0, len(level), arity))
        ]
    # Breadth-first numbering from the root.
    nodes: list[Node] = []
    leaf_of_client = [0] * n_clients
    queue: list[tuple[Group, Optional[int], int]] = [(level[0], None, 0)]
    next_index = 1
    for group, parent, depth in queue:
        first, count, kids = group
        index = len(nodes)
        child_indices = tuple(range(next_index, next_index + len(kids)))
        next_index += len(kids)
        signers = (LSP, *range(first + 1, first + count + 1))
        nodes.append(Node(index, depth, first, count, child_indices, parent, signers))
        queue.extend((kid, index, depth + 1) for kid in kids)
        if not kids:
            for c in range(first, first + count):
                leaf_of_client[c] = index
    return Topology(tuple(nodes), tuple(leaf_of_client))
