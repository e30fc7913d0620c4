"""Test kit: a factory whose every participant's keys live in this process, and an in-process signer.

Used by unit tests, bitcoind integration tests and benchmarks alike, so they exercise one engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from coincurve import PrivateKey

from superscalar.crypto import musig2
from superscalar.crypto.bip340 import schnorr_sign
from superscalar.bitcoin.script import funding_script_2of2, p2tr_script, p2wsh_script
from superscalar.bitcoin.taproot import xonly_from_seckey
from superscalar.bitcoin.tx import Tx
from superscalar.factory.graph import Factory, FactoryScripts, ScriptSpend, TreeTx
from superscalar.factory.params import ClientTerms, FactoryParams

if TYPE_CHECKING:
    from superscalar.bitcoin.tx import OutPoint
    from superscalar.protocol.ceremony import Participant
    from superscalar.protocol.rounds import Expectation, Round


def key(tag: int, i: int) -> bytes:
    return (0x1000_0000 * (tag + 1) + i + 1).to_bytes(32, "big")


@dataclass
class Kit:
    factory: Factory
    seckeys: list[bytes]  # participant 0 = LSP
    lsp_channel_keys: list[bytes]  # per client: the LSP's funding key of that client's channel
    client_channel_keys: list[bytes]  # per client: the client's funding key
    payout_keys: list[bytes]  # per client, plus the LSP's last

    def channel_witness_script(self, client: int) -> bytes:
        return funding_script_2of2(
            PrivateKey(self.lsp_channel_keys[client]).public_key.format(),
            PrivateKey(self.client_channel_keys[client]).public_key.format(),
        )


def make_kit(params: FactoryParams, terms: Sequence[ClientTerms] | None = None) -> Kit:
    n = params.n_clients
    # Clients numbered in the order of their factory keys, as the LSP numbers them.
    seckeys = [key(0, 0), *sorted((key(0, i) for i in range(1, n + 1)), key=musig2.individual_pk)]
    lsp_chan = [key(1, i) for i in range(n)]
    client_chan = [key(2, i) for i in range(n)]
    payout = [key(3, i) for i in range(n + 1)]
    channels = tuple(
        p2wsh_script(funding_script_2of2(PrivateKey(a).public_key.format(), PrivateKey(b).public_key.format()))
        for a, b in zip(lsp_chan, client_chan)
    )
    scripts = FactoryScripts(
        channels=channels,
        payouts=tuple(p2tr_script(xonly_from_seckey(k)) for k in payout[:n]),
        lsp_payout=p2tr_script(xonly_from_seckey(payout[n])),
    )
    if terms is None:
        terms = [ClientTerms(balance_sat=40_000 + 1_000 * i, inbound_sat=160_000) for i in range(n)]
    pubkeys = [musig2.individual_pk(sk) for sk in seckeys]
    return Kit(Factory(params, terms, pubkeys, scripts), seckeys, lsp_chan, client_chan, payout)


def musig_sign(t: TreeTx, seckeys: Sequence[bytes]) -> Tx:
    """Every signer of `t` signs in this process; returns `t.tx` with its key-path witness."""
    msg = t.sighash
    sks = [seckeys[i] for i in t.spend.signers]
    by_pk = {musig2.individual_pk(sk): sk for sk in sks}
    pubkeys = musig2.key_sort(list(by_pk))
    assert musig2.key_agg_cache(pubkeys) == t.spend.keyagg, "spend data does not match the signers"
    keygen = musig2.apply_tweak(musig2.key_agg(pubkeys), t.spend.tweak, True)
    aggpk = musig2.get_xonly_pk(keygen)
    assert aggpk == t.prevout.script_pubkey[2:], "spend data does not match the output"
    nonces = [musig2.nonce_gen(by_pk[pk], pk, aggpk, msg, None) for pk in pubkeys]
    ctx = musig2.SessionContext(musig2.nonce_agg([pn for _, pn in nonces]), tuple(pubkeys), (t.spend.tweak,), (True,), msg)
    psigs = [musig2.sign(sn, by_pk[pk], ctx) for (sn, _), pk in zip(nonces, pubkeys)]
    return t.tx.with_witness(0, [musig2.partial_sig_agg(psigs, ctx)])


def lsp_sign_script_spend(spend: ScriptSpend, lsp_seckey: bytes) -> Tx:
    return spend.signed(schnorr_sign(spend.sighash, lsp_seckey, bytes(32)))


def construction_participants(kit: Kit, clients: Sequence[int] | None = None) -> dict[int, "Participant"]:
    """A Participant per client that expects exactly what the kit's factory gives it."""
    from superscalar.protocol.ceremony import Participant
    from superscalar.protocol.rounds import Expectation, Kind

    f = kit.factory
    out = {}
    for c in (range(f.params.n_clients) if clients is None else clients):
        expect = Expectation(Kind.CONSTRUCTION, f.keys.pubkeys[c + 1], channel_script=f.scripts.channels[c],
                             capacity_sat=f.terms[c].capacity_sat, payout_script=f.scripts.payouts[c], params=f.params)
        out[c] = Participant(expect, kit.seckeys[c + 1])
    return out


def run_round(kit: Kit, rnd: "Round", expectations: dict[int, "Expectation"]) -> dict[str, Tx]:
    """Run `rnd` through the real ceremony machines over the in-memory link; every client checks
    its proposal against `expectations`. Returns the LSP's signed transactions by txid."""
    from superscalar.protocol import memlink
    from superscalar.protocol.ceremony import Completed, Coordinator, Participant

    participants = {c: Participant(e, kit.seckeys[c + 1]) for c, e in expectations.items()}
    result = memlink.run(Coordinator(rnd, kit.seckeys[0]), participants)
    outcome = result.lsp_outcome
    assert isinstance(outcome, Completed), outcome
    for c in participants:
        assert isinstance(result.client_outcome(c), Completed), (c, result.client_outcome(c))
    return {tx.txid: tx for tx in outcome.signed}


def construction_expectations(kit: Kit) -> dict[int, "Expectation"]:
    return {c: p.expect for c, p in construction_participants(kit).items()}


def advance_expectations(kit: Kit, old_state: Sequence[int], changed: int, funding: "OutPoint") -> dict[int, "Expectation"]:
    from superscalar.protocol.rounds import Expectation, Kind

    f = kit.factory
    out = {}
    for c in f.topology.nodes[changed].clients:
        out[c] = Expectation(Kind.ADVANCE, f.keys.pubkeys[c + 1], channel_script=f.scripts.channels[c],
                             capacity_sat=f.terms[c].capacity_sat,
                             previous_state=tuple(old_state[n] for n in f.topology.path(c)),
                             funding=(funding, f.funding_output.value))
    return out
