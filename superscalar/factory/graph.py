"""The factory's transactions: the kickoff/state tree for a set of state indices, and the transactions
around it (distribution at the timeout, cooperative close, the LSP's timeout sweeps).

A node v of a Decker-Wattenhofer layer (the lowest `params.layers` depths) has two transactions:
  kickoff K_v   spends the output v owns (the funding output for the root, else an output of the
                parent's last tx); one output keyed by MuSig2(v's signers) with no script path.
  state   S_v   spends K_v's output with nSequence = the DW wait of v's state index; its outputs are
                one per child c (MuSig2(c's signers), script path: the LSP after timeout(depth c)),
                or, at a leaf, the clients' channel outputs and the L-stock output.
A static node (the depths above, "static near root") has one transaction, N_v: it spends the output v
owns straight into its children's outputs, with no relative wait, and is never re-signed. In the
graph, `states[v]` is a node's last transaction (S_v or N_v) and `kickoffs[v]` is None when static.
Every transaction is version 3, carries a P2A anchor as its last output and pays the pre-agreed fee
`params.fee(vsize)` computed from its signed size. Values are computed bottom-up, so every output is
exactly what its subtree needs; transactions are built top-down, so every input names its parent.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, cast

from ..crypto import musig2
from ..bitcoin.encoding import ser_string_vector
from ..bitcoin.errors import BitcoinError
from ..bitcoin.script import cltv_leaf_script, csv_leaf_script, p2a_script
from ..bitcoin.sighash import SIGHASH_DEFAULT, taproot_sighash
from ..bitcoin.taproot import TapLeaf, TaprootInfo, taproot_construct
from ..bitcoin.tx import SEQUENCE_FINAL, OutPoint, OutputVector, Tx, TxIn, TxOut, output_values
from ..crypto.memo import once
from .dw import DWCounter
from .errors import FactoryError
from .params import ClientTerms, FactoryParams
from .tree import LSP, Topology, build_topology

TX_VERSION = 3  # BIP-431 TRUC: the whole tree is version 3
TRUC_MAX_VSIZE = 10_000  # BIP-431: a version-3 transaction may not exceed 10,000 vB
SEQUENCE_LOCKTIME_ENABLED = 0xFFFFFFFE  # BIP-65: a non-final input makes nLockTime count
KEYPATH_WITNESS = (bytes(64),)  # BIP-341 key path, SIGHASH_DEFAULT: one 64-byte signature


@lru_cache(maxsize=64)
def anchor_output(params: FactoryParams) -> TxOut:
    return TxOut(params.anchor_sat, p2a_script())


def signed_vsize(tx: Tx, witness: Sequence[bytes] = KEYPATH_WITNESS) -> int:
    """vsize of `tx` once input 0 carries a witness of the given shape and the others none.

    BIP-141: weight = 4·base size + witness bytes (marker, flag and one stack per input)."""
    if any(i.witness for i in tx.inputs[1:]):
        raise FactoryError("only input 0 may carry a witness here")
    witness_bytes = 2 + len(ser_string_vector(witness)) + (len(tx.inputs) - 1)
    return (4 * tx.legacy_size + witness_bytes + 3) // 4


@dataclass(frozen=True, slots=True)
class Spend:
    """How an output is spent through its key path: the signers and the taproot tweak to apply."""

    signers: tuple[int, ...]
    keyagg: musig2.KeyAggCache  # MuSig2 KeyAgg of the signers' keys in BIP-327 KeySort order
    taproot: TaprootInfo

    @property
    def tweak(self) -> bytes:
        return self.taproot.tweak


@dataclass(frozen=True)
class TreeTx:
    """One transaction of the factory with what is needed to sign its single input."""

    name: str
    tx: Tx
    prevout: TxOut
    spend: Spend
    relative_wait: int = 0  # BIP-68 blocks after its parent confirms

    @once
    def sighash(self) -> bytes:
        """BIP-341 key-path signature hash of input 0 (SIGHASH_DEFAULT)."""
        return taproot_sighash(self.tx, 0, [self.prevout], SIGHASH_DEFAULT)

    @property
    def fee(self) -> int:
        return self.prevout.value - sum(output_values(self.tx.outputs))

    @once
    def vsize(self) -> int:
        """vsize once signed."""
        return signed_vsize(self.tx)


class FactoryKeys:
    """The participants' keys (index 0: LSP) and the MuSig2 aggregates of the node signer sets."""

    def __init__(self, pubkeys: Sequence[bytes]) -> None:
        if len(pubkeys) < 2:
            raise FactoryError("a factory needs the LSP and at least one client")
        if not (set(map(type, pubkeys)) <= {bytes} and set(map(len, pubkeys)) == {33}
                and set(b"".join(pubkeys)[::33]) <= {2, 3}):
            bad = next(i for i, pk in enumerate(pubkeys) if not isinstance(pk, bytes) or len(pk) != 33 or pk[0] not in (2, 3))
            raise FactoryError(f"participant {bad} key must be a 33-byte compressed public key")
        if len(set(pubkeys)) != len(pubkeys):
            raise FactoryError("participant keys must be distinct")
        self.pubkeys = tuple(pubkeys)
        self._agg: dict[tuple[int, ...], musig2.KeyAggCache] = {}
        self._sorted: dict[tuple[int, ...], tuple[musig2.PlainPk, ...]] = {}
        # BIP-327 KeySort of everyone (the root's signers); checked above, so a plain sort.
        self._all_sorted = cast(tuple[musig2.PlainPk, ...], tuple(sorted(self.pubkeys)))

    @property
    def lsp_xonly(self) -> bytes:
        return self.pubkeys[LSP][1:]

    def sorted_keys(self, signers: tuple[int, ...]) -> tuple[musig2.PlainPk, ...]:
        """The signers' keys in BIP-327 KeySort order (computed once per signer set)."""
        if len(signers) == len(self.pubkeys):
            return self._all_sorted
        if signers not in self._sorted:
            keys = cast(list[musig2.PlainPk], [self.pubkeys[i] for i in signers])
            self._sorted[signers] = tuple(musig2.key_sort(keys))
        return self._sorted[signers]

    def keyagg(self, signers: tuple[int, ...]) -> musig2.KeyAggCache:
        """MuSig2 KeyAgg of `signers` (computed once per signer set)."""
        if signers not in self._agg:
            self._agg[signers] = musig2.key_agg_cache(self.sorted_keys(signers))
        return self._agg[signers]

    def aggregate(self, signers: tuple[int, ...]) -> bytes:
        """x-only MuSig2 aggregate (untweaked internal key) of `signers`."""
        return self.keyagg(signers).Q.xonly()

    def spend(self, signers: tuple[int, ...], taproot: TaprootInfo) -> Spend:
        return Spend(signers, self.keyagg(signers), taproot)


@dataclass(frozen=True)
class FactoryScripts:
    """The output scripts a factory pays to, supplied by the participants."""

    channels: tuple[bytes, ...]  # per client: its leaf channel's funding script_pubkey (P2WSH)
    payouts: tuple[bytes, ...]  # per client: where the distribution pays it
    lsp_payout: bytes  # where the distribution and sweeps pay the LSP


class FactoryShape:
    """What every participant can compute from the parameters and the keys alone: the tree, its DW
    counter and the scripts of its outputs. A client rebuilds its path from this and a proposal."""

    def __init__(self, params: FactoryParams, pubkeys: Sequence[bytes]) -> None:
        if len(pubkeys) != params.n_clients + 1:
            raise FactoryError("one key per client plus the LSP's is needed")
        self.params = params
        self.keys = FactoryKeys(pubkeys)
        self.topology: Topology = build_topology(params.n_clients, params.leaf_arity, params.arity)
        self.dw = DWCounter(params.layers, params.states_per_layer, params.step_blocks)
        self._owned_memo: dict[int, Spend] = {}
        self._kickoff_memo: dict[int, Spend] = {}
        self._lstock_memo: dict[int, TaprootInfo] = {}
        self._derived = False  # derive_outputs has filled the three memos

    def owned_spend(self, node: int) -> Spend:
        """The output `node` owns: MuSig2 of its signers, or the LSP after the node's timeout."""
        spend = self._owned_memo.get(node)
        if spend is None:
            n = self.topology.nodes[node]
            leaf = TapLeaf(cltv_leaf_script(self.params.timeout(n.depth), self.keys.lsp_xonly))
            spend = self.keys.spend(n.signers, taproot_construct(self.keys.aggregate(n.signers), leaf))
            self._owned_memo[node] = spend
        return spend

    def kickoff_spend(self, node: int) -> Spend:
        """A kickoff output: MuSig2 of the node's signers only, so only a state tx can spend it."""
        spend = self._kickoff_memo.get(node)
        if spend is None:
            signers = self.topology.nodes[node].signers
            spend = self._kickoff_memo[node] = self.keys.spend(signers, taproot_construct(self.keys.aggregate(signers)))
        return spend

    def owned_taproot(self, node: int) -> TaprootInfo:
        return self.owned_spend(node).taproot

    def kickoff_taproot(self, node: int) -> TaprootInfo:
        return self.kickoff_spend(node).taproot

    def lstock_taproot(self, leaf: int) -> TaprootInfo:
        """The L-stock: MuSig2 of the leaf's signers, or the LSP alone after a relative delay."""
        info = self._lstock_memo.get(leaf)
        if info is None:
            n = self.topology.nodes[leaf]
            script = csv_leaf_script(self.params.lstock_csv_blocks, self.keys.lsp_xonly)
            info = self._lstock_memo[leaf] = taproot_construct(self.keys.aggregate(n.signers), TapLeaf(script))
        return info

    def derive_outputs(self, threads: int = 2) -> None:
        """Derive every node's output keys now (a MuSig2 key aggregation per signer set, a taproot
        tweak per output: nearly all of a graph's elliptic-curve work) on `threads` threads.

        libsecp256k1 runs without the GIL, so the threads use as many cores. Later calls return the
        memoized results; the results are the same however the work is divided."""
        def derive(nodes: Sequence[int]) -> None:
            for node in nodes:
                self.owned_spend(node)
                self.kickoff_spend(node)
                if self.topology.nodes[node].is_leaf:
                    self.lstock_taproot(node)

        every = range(len(self.topology.nodes))
        if self._derived:
            return
        if threads < 2 or len(every) < 2 * threads:
            derive(every)
        else:
            with ThreadPoolExecutor(threads - 1) as pool:
                helpers = [pool.submit(derive, every[i::threads]) for i in range(1, threads)]
                derive(every[0::threads])
                for h in helpers:
                    h.result()  # re-raises a helper's error here
        self._derived = True

    def advance_path(self, indices: Sequence[int]) -> tuple[tuple[int, ...], int]:
        """The state indices (root first) of a path after one advance of its DW odometer, and the
        depth of the node whose subtree is re-signed. Static depths stay at 0. Raises ExhaustedError
        at the last state, ParamsError if `indices` is not a state of such a path."""
        first = self.params.first_dw_depth
        if len(indices) != first + self.dw.layers or any(indices[:first]):
            raise FactoryError("not the state indices of a path of this factory")
        digits, layer = self.dw.advance(tuple(indices[first:]))
        return (0,) * first + digits, first + layer

    @once
    def params_bytes(self) -> bytes:
        """The parameters as a proposal carries them."""
        return self.params.serialize()

    @property
    def funding_taproot(self) -> TaprootInfo:
        return self.owned_taproot(0)

    def rebuild_path(
        self,
        client: int,
        funding: OutPoint,
        funding_value: int,
        state_indices: Sequence[int],
        state_outputs: Sequence[Sequence[TxOut]],
    ) -> tuple[TreeTx, ...]:
        """A client's path (kickoff, state, … down to its leaf) from the values a proposal gives:
        the funding outpoint and value, and per layer the state index and the state tx's outputs.
        Raises FactoryError unless every transaction balances with its agreed fee and each spends
        the output its node's signers own."""
        path = self.topology.path(client)
        if len(state_indices) != len(path) or len(state_outputs) != len(path):
            raise FactoryError("a state index and a state tx's outputs are needed for each layer")
        outpoint, prevout = funding, TxOut(funding_value, self.funding_taproot.script_pubkey)
        out: list[TreeTx] = []
        for depth, node in enumerate(path):
            n = self.topology.nodes[node]
            static = self.params.is_static(depth)
            if static and state_indices[depth] != 0:
                raise FactoryError(f"node {node} is static: its state index must be 0")
            txs = build_node_txs(self.params, node, outpoint, prevout, self.owned_spend(node),
                                 None if static else self.kickoff_spend(node), state_outputs[depth],
                                 self.dw.nsequence(state_indices[depth]))
            out += txs
            s = txs[-1]
            if depth + 1 < len(path):
                vout = n.children.index(path[depth + 1])
                if vout >= len(s.tx.outputs) - 1:
                    raise FactoryError(f"node {node}: no output for its child")
                outpoint, prevout = s.tx.outpoint(vout), s.tx.outputs[vout]
        return tuple(out)


class Factory(FactoryShape):
    """A factory's agreed terms (the LSP's view): builds its transaction graph for any state."""

    def __init__(
        self,
        params: FactoryParams,
        terms: Sequence[ClientTerms],
        pubkeys: Sequence[bytes],
        scripts: FactoryScripts,
    ) -> None:
        super().__init__(params, pubkeys)
        if len(terms) != params.n_clients:
            raise FactoryError(f"{len(terms)} client terms for {params.n_clients} clients")
        if len(scripts.channels) != params.n_clients or len(scripts.payouts) != params.n_clients:
            raise FactoryError("one channel script and one payout script per client are needed")
        for i, t in enumerate(terms):
            if t.capacity_sat < params.dust_limit_sat:
                raise FactoryError(f"client {i}: channel capacity below the dust limit")
        self.terms = tuple(terms)
        self.scripts = scripts

    # --- values, bottom-up ---

    def leaf_outputs(self, leaf: int) -> tuple[TxOut, ...]:
        """A leaf state tx's outputs: each client's channel, the L-stock, the anchor."""
        n = self.topology.nodes[leaf]
        channels = [TxOut(self.terms[c].capacity_sat, self.scripts.channels[c]) for c in n.clients]
        lstock = TxOut(self.params.lstock_sat, self.lstock_taproot(leaf).script_pubkey)
        return (*channels, lstock, anchor_output(self.params))

    @once
    def _required(self) -> tuple[int, ...]:
        """The value each node's owned output must carry (its first transaction's input value)."""
        need = [0] * len(self.topology.nodes)
        for n in reversed(self.topology.nodes):
            outs = self._state_outputs(n.index, need)
            state_in = sum(o.value for o in outs) + self.params.fee(_state_vsize(outs))
            kickoff = 0 if self.params.is_static(n.depth) else self.params.anchor_sat + self.params.fee(_kickoff_vsize())
            need[n.index] = state_in + kickoff
        return tuple(need)

    def _state_outputs(self, node: int, need: Sequence[int]) -> tuple[TxOut, ...]:
        n = self.topology.nodes[node]
        if n.is_leaf:
            return self.leaf_outputs(node)
        children = [TxOut(need[c], self.owned_taproot(c).script_pubkey) for c in n.children]
        return (*children, anchor_output(self.params))

    def state_outputs(self, node: int) -> tuple[TxOut, ...]:
        return self._state_outputs(node, self._required)

    @property
    def funding_output(self) -> TxOut:
        """What the funding transaction must pay: the root's required value to the root's script."""
        return TxOut(self._required[0], self.funding_taproot.script_pubkey)

    # --- the graph for a state ---

    def initial_state(self) -> tuple[int, ...]:
        return (0,) * len(self.topology.nodes)

    def advance(self, state: Sequence[int], client: int) -> tuple[tuple[int, ...], int]:
        """The next Decker-Wattenhofer state for `client`'s path (the odometer on the state indices of
        its path's DW nodes) and the node whose subtree must be re-signed. Raises ExhaustedError at
        the end."""
        path = self.topology.path(client)
        digits, depth = self.advance_path(tuple(state[n] for n in path))
        changed = path[depth]
        new = list(state)
        for n in self.topology.subtree(changed):
            new[n] = 0
        new[changed] = digits[depth]
        return tuple(new), changed

    def advances_left(self, state: Sequence[int], client: int) -> int:
        """How many more state advances `client`'s path allows before the factory must roll over."""
        path = self.topology.path(client)[self.params.first_dw_depth:]
        return self.dw.advances_left(self.dw.epoch(tuple(state[n] for n in path)))

    def graph(self, funding: OutPoint, state: Optional[Sequence[int]] = None) -> "FactoryGraph":
        """Every kickoff and state transaction, for state indices `state` (one per node)."""
        indices = tuple(state) if state is not None else self.initial_state()
        if len(indices) != len(self.topology.nodes):
            raise FactoryError("one state index per node is needed")
        if any(indices[n.index] for n in self.topology.nodes if self.params.is_static(n.depth)):
            raise FactoryError("static nodes have only state 0")
        self.derive_outputs()
        kickoffs: list[Optional[TreeTx]] = [None] * len(indices)
        states: list[Optional[TreeTx]] = [None] * len(indices)
        inputs: dict[int, tuple[OutPoint, TxOut]] = {0: (funding, self.funding_output)}
        for n in self.topology.nodes:
            outpoint, prevout = inputs[n.index]
            static = self.params.is_static(n.depth)
            txs = build_node_txs(self.params, n.index, outpoint, prevout, self.owned_spend(n.index),
                                 None if static else self.kickoff_spend(n.index), self.state_outputs(n.index),
                                 self.dw.nsequence(indices[n.index]))
            kickoffs[n.index], s = (None, txs[0]) if static else txs
            states[n.index] = s
            for vout, child in enumerate(n.children):
                inputs[child] = (s.tx.outpoint(vout), s.tx.outputs[vout])
        return FactoryGraph(self, funding, indices, tuple(kickoffs), tuple(states))  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def _kickoff_vsize() -> int:
    dummy = Tx(TX_VERSION, (TxIn(OutPoint(bytes(32), 0)),), (TxOut(0, bytes(34)), TxOut(0, p2a_script())))
    return signed_vsize(dummy)


def _state_vsize(outputs: Sequence[TxOut]) -> int:
    return signed_vsize(Tx(TX_VERSION, (TxIn(OutPoint(bytes(32), 0)),), tuple(outputs)))


def build_node_txs(
    params: FactoryParams,
    node: int,
    outpoint: OutPoint,
    prevout: TxOut,
    owned: Spend,
    kickoff: Optional[Spend],
    state_outputs: Sequence[TxOut],
    nsequence: int,
) -> tuple[TreeTx, ...]:
    """A node's transactions from its input and its last tx's outputs: (kickoff, state) for a DW node,
    (node tx,) for a static one (`kickoff` None). `owned` and `kickoff` say how the node's own output
    and its kickoff output are spent.

    Shared by the LSP (whole tree) and clients (their path): raises FactoryError unless the values
    balance with the pre-agreed fees and the input is the output the node's signers own."""
    if prevout.script_pubkey != owned.taproot.script_pubkey:
        raise FactoryError(f"node {node}: input is not the output its signers own")
    anchor = anchor_output(params)
    if not state_outputs or state_outputs[-1] != anchor:
        raise FactoryError(f"node {node}: state tx must end with the agreed P2A anchor")
    # A client's path comes as serialized output vectors: they stay so, nothing is parsed twice.
    outputs = state_outputs if isinstance(state_outputs, OutputVector) else tuple(state_outputs)
    values = output_values(outputs)
    if len(values) > 1 and min(values[:-1]) < params.dust_limit_sat:
        raise FactoryError(f"node {node}: output below the dust limit")
    if kickoff is None:
        n_tx = Tx(TX_VERSION, (TxIn(outpoint, sequence=SEQUENCE_FINAL),), outputs)  # type: ignore[arg-type]
        if prevout.value - sum(values) != params.fee(signed_vsize(n_tx)):
            raise FactoryError(f"node {node}: node tx outputs do not leave the agreed fee")
        return (TreeTx(f"node/{node}", n_tx, prevout, owned),)
    k_value = prevout.value - params.anchor_sat - params.fee(_kickoff_vsize())
    k_out = TxOut(k_value, kickoff.taproot.script_pubkey)
    k_tx = Tx(TX_VERSION, (TxIn(outpoint, sequence=SEQUENCE_FINAL),), (k_out, anchor))
    s_tx = Tx(TX_VERSION, (TxIn(k_tx.outpoint(0), sequence=nsequence),), outputs)  # type: ignore[arg-type]
    if k_value - sum(values) != params.fee(signed_vsize(s_tx)):
        raise FactoryError(f"node {node}: state tx outputs do not leave the agreed fee")
    k = TreeTx(f"kickoff/{node}", k_tx, prevout, owned)
    s = TreeTx(f"state/{node}", s_tx, k_out, kickoff, relative_wait=nsequence)
    return k, s


@dataclass(frozen=True, slots=True)
class ExitPath:
    """What one client publishes to reach its channel: transactions in order and their waits."""

    client: int
    txs: tuple[TreeTx, ...]

    @property
    def waits(self) -> tuple[int, ...]:
        """Blocks each transaction must wait after its parent confirms (BIP-68)."""
        return tuple(t.relative_wait for t in self.txs)

    @property
    def vbytes(self) -> int:
        return sum(t.vsize for t in self.txs)

    @property
    def fee(self) -> int:
        return sum(t.fee for t in self.txs)

    def early_warning_blocks(self, confirm_blocks: int) -> int:
        """CLTV headroom an HTLC on this client's channel needs: every relative wait on the path, plus
        `confirm_blocks` for each transaction to confirm."""
        return sum(self.waits) + confirm_blocks * len(self.txs)


@dataclass(frozen=True)
class FactoryGraph:
    factory: Factory
    funding: OutPoint
    state: tuple[int, ...]
    kickoffs: tuple[Optional[TreeTx], ...]  # None for a static node
    states: tuple[TreeTx, ...]  # each node's last transaction (its state tx, or a static node's one)

    def node_txs(self, node: int) -> tuple[TreeTx, ...]:
        kickoff = self.kickoffs[node]
        return (self.states[node],) if kickoff is None else (kickoff, self.states[node])

    def txs(self) -> list[TreeTx]:
        """All tree transactions, parents before children."""
        out: list[TreeTx] = []
        for n in self.factory.topology.nodes:
            out += self.node_txs(n.index)
        return out

    def path_txs(self, client: int) -> tuple[TreeTx, ...]:
        out: list[TreeTx] = []
        for node in self.factory.topology.path(client):
            out += self.node_txs(node)
        return tuple(out)

    def exit_path(self, client: int) -> ExitPath:
        return ExitPath(client, self.path_txs(client))

    def channel_outpoint(self, client: int) -> OutPoint:
        """Where `client`'s leaf channel is funded (its output in the leaf state tx)."""
        leaf = self.factory.topology.nodes[self.factory.topology.leaf_of_client[client]]
        return self.states[leaf.index].tx.outpoint(client - leaf.first_client)

    def lstock(self, leaf: int) -> tuple[OutPoint, TxOut]:
        s = self.states[leaf]
        vout = len(s.tx.outputs) - 2
        return s.tx.outpoint(vout), s.tx.outputs[vout]

    def owned_outpoint(self, node: int) -> tuple[OutPoint, TxOut]:
        """The output `node` owns in this graph (the funding output for the root)."""
        n = self.factory.topology.nodes[node]
        if n.parent is None:
            return self.funding, self.factory.funding_output
        parent = self.states[n.parent]
        vout = self.factory.topology.nodes[n.parent].children.index(node)
        return parent.tx.outpoint(vout), parent.tx.outputs[vout]

    def distribution(self) -> TreeTx:
        return distribution_tx(self.factory, self.funding)

    def distributions(self) -> tuple[TreeTx, ...]:
        """The distribution and its fee variants, cheapest first."""
        base = self.distribution()
        return (base, *fee_variants(self.factory, base, self.funding))


def spend_funding(
    shape: FactoryShape, name: str, funding: OutPoint, funding_value: int, outputs: Sequence[TxOut] | bytes,
    locktime: int = 0, fee_multiplier: int = 1,
) -> TreeTx:
    """A key-path spend of the funding output by everyone (close, distribution) paying `outputs`
    (or a consensus-serialized output vector, as a proposal carries it).

    Raises FactoryError unless the outputs end with the agreed anchor, none is dust, and they leave
    exactly the pre-agreed fee (`fee_multiplier` times it, for a fee variant)."""
    params = shape.params
    sequence = SEQUENCE_LOCKTIME_ENABLED if locktime else SEQUENCE_FINAL
    inputs = (TxIn(funding, sequence=sequence),)
    if isinstance(outputs, bytes):
        try:
            tx = Tx.with_output_vector(TX_VERSION, inputs, outputs, locktime)
        except BitcoinError as e:
            raise FactoryError(f"{name}: invalid outputs: {e}") from None
        outputs = tx.outputs
    else:
        tx = Tx(TX_VERSION, inputs, tuple(outputs), locktime)
    if not outputs or outputs[-1] != anchor_output(params):
        raise FactoryError(f"{name}: must end with the agreed P2A anchor")
    values = output_values(outputs)
    if len(values) > 1 and min(values[:-1]) < params.dust_limit_sat:
        raise FactoryError(f"{name}: an output is below the dust limit")
    vsize = signed_vsize(tx)
    if vsize > TRUC_MAX_VSIZE:
        # Too large for TRUC (a distribution or close for hundreds of clients): version 2, still
        # with its P2A anchor and pre-agreed fee.
        tx = tx.with_version(2)
    if funding_value - sum(values) != params.fee(vsize, fee_multiplier):
        raise FactoryError(f"{name}: outputs do not leave the agreed fee")
    prevout = TxOut(funding_value, shape.funding_taproot.script_pubkey)
    return TreeTx(name, tx, prevout, shape.owned_spend(0))


# Fee variants of the distribution, signed with it at creation: the same payments to the clients at
# these multiples of the agreed fee rate, the extra fee taken from the LSP's output (the LSP is the
# party whose job was to close or roll the factory over before it came to this). Any holder, with no
# coin of its own, can publish the cheapest one that confirms when fees are far above the agreed rate.
FEE_VARIANT_MULTIPLIERS = (4, 16, 64)


def fee_variants(shape: FactoryShape, base: TreeTx, funding: OutPoint) -> tuple[TreeTx, ...]:
    """`base` (a spend of the funding output whose last output before the anchor is the LSP's) again at
    each of FEE_VARIANT_MULTIPLIERS times the agreed fee rate, named "<name>-x<m>", while the LSP's output
    stays at or above the dust limit. Both roles build them the same way from the base."""
    params = shape.params
    vsize = signed_vsize(base.tx)
    out: list[TreeTx] = []
    for m in FEE_VARIANT_MULTIPLIERS:
        outputs = list(base.tx.outputs)
        lsp = outputs[-2]
        value = lsp.value - (params.fee(vsize, m) - params.fee(vsize))
        if value < params.dust_limit_sat:
            break
        outputs[-2] = TxOut(value, lsp.script_pubkey)
        out.append(spend_funding(shape, f"{base.name}-x{m}", funding, base.prevout.value, outputs, base.tx.locktime, m))
    return tuple(out)


def _pay_lsp_the_rest(factory: Factory, name: str, funding: OutPoint, clients: Sequence[TxOut], locktime: int) -> TreeTx:
    params = factory.params
    funding_out = factory.funding_output
    anchor = anchor_output(params)
    sequence = SEQUENCE_LOCKTIME_ENABLED if locktime else SEQUENCE_FINAL
    probe = Tx(TX_VERSION, (TxIn(funding, sequence=sequence),),
               (*clients, TxOut(0, factory.scripts.lsp_payout), anchor), locktime)
    lsp_value = funding_out.value - sum(o.value for o in clients) - params.anchor_sat - params.fee(signed_vsize(probe))
    if lsp_value < params.dust_limit_sat:
        raise FactoryError(f"{name}: the LSP would be left less than the dust limit")
    outputs = (*clients, TxOut(lsp_value, factory.scripts.lsp_payout), anchor)
    return spend_funding(factory, name, funding, funding_out.value, outputs, locktime)


def distribution_tx(factory: Factory, funding: OutPoint) -> TreeTx:
    """Spends the funding output at the distribution height: each client gets its channels' full
    capacity, the LSP what is left (the L-stock and the tree's unspent fees). An LSP that lets the
    factory reach this point has given its side of every channel away, so it closes or rolls over first."""
    clients = [TxOut(t.capacity_sat, s) for t, s in zip(factory.terms, factory.scripts.payouts)]
    return _pay_lsp_the_rest(factory, "distribution", funding, clients, factory.params.distribution_height)


def cooperative_close(factory: Factory, funding: OutPoint, client_amounts: Sequence[int]) -> TreeTx:
    """One key-path spend of the funding output paying each client `client_amounts[i]` (to its payout
    script; nothing for 0) and the LSP the rest, less the fee and the anchor."""
    if len(client_amounts) != factory.params.n_clients:
        raise FactoryError("one amount per client is needed")
    clients = [TxOut(a, s) for a, s in zip(client_amounts, factory.scripts.payouts) if a > 0]
    return _pay_lsp_the_rest(factory, "close", funding, clients, 0)


def rollover_close(factory: Factory, funding: OutPoint, next_funding: TxOut, client_amounts: Sequence[int]) -> TreeTx:
    """A cooperative close that funds the next factory: output 0 is `next_funding` (the next factory's
    funding output, so the next tree is signed over (this txid, 0) before this is signed), then each
    leaving client's `client_amounts[i]` (nothing for 0: a rolling client is carried by the next
    factory), the LSP the rest, the anchor. Raises FactoryError when the next factory does not fit."""
    if len(client_amounts) != factory.params.n_clients:
        raise FactoryError("one amount per client is needed")
    leavers = [TxOut(a, s) for a, s in zip(client_amounts, factory.scripts.payouts) if a > 0]
    try:
        return _pay_lsp_the_rest(factory, "close", funding, [next_funding, *leavers], 0)
    except FactoryError as e:
        raise FactoryError(f"the next factory's funding ({next_funding.value} sat) does not fit in this "
                           f"factory's {factory.funding_output.value} sat: {e}") from None


@dataclass(frozen=True, slots=True)
class ScriptSpend:
    """A single-key script-path spend (the LSP's timeout or L-stock sweeps), unsigned."""

    tx: Tx
    prevout: TxOut
    leaf: TapLeaf
    taproot: TaprootInfo

    @property
    def sighash(self) -> bytes:
        return taproot_sighash(self.tx, 0, [self.prevout], SIGHASH_DEFAULT, leaf_hash=self.leaf.leaf_hash)

    def signed(self, signature: bytes) -> Tx:
        return self.tx.with_witness(0, self.taproot.script_path_witness(self.leaf, (signature,)))


def _sweep(params: FactoryParams, outpoint: OutPoint, prevout: TxOut, taproot: TaprootInfo,
           dest: bytes, sequence: int, locktime: int) -> ScriptSpend:
    [(leaf, _)] = taproot.leaves
    probe = Tx(TX_VERSION, (TxIn(outpoint, sequence=sequence),), (TxOut(0, dest),), locktime)
    witness = taproot.script_path_witness(leaf, (bytes(64),))
    value = prevout.value - params.fee(signed_vsize(probe, witness))
    if value < params.dust_limit_sat:
        raise FactoryError("nothing worth sweeping after the fee")
    tx = Tx(TX_VERSION, probe.inputs, (TxOut(value, dest),), locktime)
    return ScriptSpend(tx, prevout, leaf, taproot)


def timeout_sweep(graph: FactoryGraph, node: int, dest: bytes) -> ScriptSpend:
    """The LSP alone takes the output `node` owns once its absolute timeout has passed."""
    factory = graph.factory
    outpoint, prevout = graph.owned_outpoint(node)
    depth = factory.topology.nodes[node].depth
    return _sweep(factory.params, outpoint, prevout, factory.owned_taproot(node), dest,
                  SEQUENCE_LOCKTIME_ENABLED, factory.params.timeout(depth))


def lstock_sweep(factory: Factory, leaf: int, outpoint: OutPoint, prevout: TxOut, dest: bytes) -> ScriptSpend:
    """The LSP alone takes an L-stock output `lstock_csv_blocks` after it confirmed."""
    return _sweep(factory.params, outpoint, prevout, factory.lstock_taproot(leaf), dest,
                  factory.params.lstock_csv_blocks, 0)


def liquidity_sale(
    factory: FactoryShape, leaf: int, lstock: tuple[OutPoint, TxOut], capacity_sat: int, channel_script: bytes
) -> TreeTx:
    """Spend a leaf's current L-stock into a new channel output (for a client of that leaf, funded by
    the LSP) and a smaller L-stock with the same script; chained sales never conflict."""
    params = factory.params
    outpoint, prevout = lstock
    taproot = factory.lstock_taproot(leaf)
    if prevout.script_pubkey != taproot.script_pubkey:
        raise FactoryError("not this leaf's L-stock output")
    probe = Tx(TX_VERSION, (TxIn(outpoint),),
               (TxOut(capacity_sat, channel_script), TxOut(0, taproot.script_pubkey), anchor_output(params)))
    rest = prevout.value - capacity_sat - params.anchor_sat - params.fee(signed_vsize(probe))
    if capacity_sat < params.dust_limit_sat:
        raise FactoryError("the new channel is below the dust limit")
    if rest < params.dust_limit_sat:
        raise FactoryError("the L-stock cannot fund a channel of that size")
    tx = Tx(TX_VERSION, probe.inputs,
            (TxOut(capacity_sat, channel_script), TxOut(rest, taproot.script_pubkey), anchor_output(params)))
    signers = factory.topology.nodes[leaf].signers
    return TreeTx(f"sale/{leaf}", tx, prevout, factory.keys.spend(signers, taproot))
