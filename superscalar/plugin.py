"""The CLN shell: registers options, methods, hooks and subscriptions with pyln and translates them
into calls on the roles. No logic lives here; hooks never raise (a failure gets the safe answer)."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pyln.client import Plugin, RpcException

from superscalar import __version__
from superscalar.client import Client, channel_in_factory, funding_ok, leaf_status
from superscalar.factory.params import FactoryParams, regtest_params
from superscalar.exits import CLOSING_STATES, Exits
from superscalar.lsp import ClientSpec, Lsp, lsp_exit_path
from superscalar.node import ClnNode, msat
from superscalar.policy import ClientPolicy
from superscalar.protocol.wire import WireError
from superscalar.store import Store
from superscalar.transport import Transport

INVALID_PARAMS = -32602  # JSON-RPC
CREATE_FAILED = 1700  # superscalar-create: the factory was not created (nothing broadcast)


class Roles:
    """Everything the plugin holds once lightningd has initialised it."""

    def __init__(self, plugin: Plugin, options: dict[str, Any], configuration: dict[str, Any]) -> None:
        self.network = str(configuration.get("network", "bitcoin"))
        self.node = ClnNode(plugin.rpc, self.network)
        self.store = Store(self.node)
        self.transport = Transport(self.node)
        self.is_lsp = str(options.get("superscalar-lsp", "false")).lower() in ("true", "1", "yes")
        join = str(options.get("superscalar-join", "") or "")
        self.allowed: Optional[set[str]] = None if join == "any" else {x for x in join.split(",") if x}
        self.profile = str(options.get("superscalar-profile", "mainnet"))
        feerate = options.get("superscalar-feerate-per-kvb")
        self.feerate: Optional[int] = int(feerate) if feerate not in (None, "") else None
        self.developer = _developer_mode(plugin)
        dev_fail_at = str(options.get("superscalar-dev-fail-at", "") or "")
        if dev_fail_at and not self.developer:
            plugin.log("superscalar-dev-fail-at is ignored: lightningd is not running with --developer", level="unusual")
            dev_fail_at = ""
        self.policy = client_policy(self.profile, options)
        timeout = float(options.get("superscalar-timeout", 60))
        self.lsp = Lsp(self.node, self.store, self.transport, self.params_for, plugin.log, timeout, dev_fail_at)
        self.exits = Exits(self.node, self.store, plugin.log)
        self.client = Client(self.node, self.store, self.transport, self.allowed, plugin.log, dev_fail_at,
                             self.policy, stale_after=10 * timeout)

    def params_for(self, n_clients: int, height: int) -> FactoryParams:
        fee = {} if self.feerate is None else {"feerate_per_kvb": self.feerate}
        if self.profile == "regtest":
            return regtest_params(n_clients, height, **fee)
        return FactoryParams(n_clients=n_clients, start_height=height, **fee)


def _developer_mode(plugin: Plugin) -> bool:
    """Is lightningd running with --developer? Test hooks are honoured only then."""
    try:
        return bool(plugin.rpc.call("listconfigs", {"config": "developer"})["configs"]["developer"]["set"])
    except Exception:
        return False


POLICY_OPTION = "superscalar-client-"


def client_policy(profile: str, options: dict[str, Any]) -> ClientPolicy:
    """The profile's client policy with every `superscalar-client-<field>` option that was set."""
    overrides = {f.name: int(options[POLICY_OPTION + f.name.replace("_", "-")])
                 for f in dataclasses.fields(ClientPolicy)
                 if options.get(POLICY_OPTION + f.name.replace("_", "-")) not in (None, "")}
    return ClientPolicy.for_profile(profile).with_overrides(overrides)


def _report(plugin: Plugin, what: str, e: Exception) -> None:
    """A handler's failure: lightningd's RPC socket being gone is shutdown, not a broken plugin."""
    if isinstance(e, OSError):
        plugin.log(f"{what}: lightningd unreachable ({e!r}), probably shutting down", level="info")
    else:
        plugin.log(f"{what}: {e!r}", level="broken")


def _progress_note(plugin: Plugin, request: Any, text: str) -> None:
    """A step of superscalar-create: a notification to the caller, and a line in the log."""
    plugin.log(f"superscalar-create: {text}")
    plugin.notify_message(request, text)


def _parse_clients(clients: Any) -> list[ClientSpec]:
    if not isinstance(clients, list) or not clients:
        raise RpcException("clients must be a non-empty array", code=INVALID_PARAMS)
    out = []
    for c in clients:
        try:
            node_id = str(c["id"])
            balance = int(c.get("balance_sat", 0))
            inbound = int(c["inbound_sat"])
        except (TypeError, KeyError, ValueError):
            raise RpcException("each client needs id, inbound_sat and optionally balance_sat", code=INVALID_PARAMS)
        if len(node_id) != 66 or balance < 0 or inbound <= 0:
            raise RpcException(f"bad client entry {c!r}", code=INVALID_PARAMS)
        out.append(ClientSpec(node_id, balance, inbound))
    return out


def build_plugin() -> Plugin:
    """A pyln Plugin with every superscalar option, method and hook registered; `.run()` starts it."""
    plugin = Plugin(dynamic=False)
    holder: dict[str, Roles] = {}

    plugin.add_option("superscalar-lsp", "false", "Offer factories to clients (act as an LSP): true/false.")
    plugin.add_option("superscalar-join", "", "LSP node ids (comma-separated) whose factories this node joins, or 'any'.")
    plugin.add_option("superscalar-profile", "mainnet", "Factory parameter profile: 'mainnet' or 'regtest' (short timelocks).")
    plugin.add_option("superscalar-timeout", "60", "Seconds to wait for each step of a factory ceremony.")
    plugin.add_option("superscalar-feerate-per-kvb", "", "Fee rate (sat per 1000 vB) pre-agreed for every factory "
                      "transaction; default: the profile's (2000).")
    plugin.add_option("superscalar-dev-fail-at", "", "Testing only (honoured with --developer): make this node "
                      "fail or misbehave in a ceremony on purpose.")
    defaults = ClientPolicy()
    for f in dataclasses.fields(ClientPolicy):
        plugin.add_option(POLICY_OPTION + f.name.replace("_", "-"), "",
                          f"Client policy: {f.name.replace('_', ' ')} (default {getattr(defaults, f.name)} on "
                          f"mainnet, {getattr(ClientPolicy.for_profile('regtest'), f.name)} on the regtest profile).")

    @plugin.init()
    def init(options: dict[str, Any], configuration: dict[str, Any], plugin: Plugin, **kwargs: Any) -> None:
        holder["roles"] = Roles(plugin, options, configuration)
        pruned = holder["roles"].store.prune_unfinished()
        if pruned:
            plugin.log(f"removed the records of {len(pruned)} ceremonies that never completed")
        plugin.log(f"superscalar {__version__} started on {holder['roles'].network}")

    @plugin.method("superscalar-getinfo")
    def getinfo(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        """Show the plugin's version, role settings and factory counts."""
        r = holder["roles"]
        sample = r.params_for(1, 0)
        return {"version": __version__, "network": r.network, "lsp": r.is_lsp,
                "join": "any" if r.allowed is None else sorted(r.allowed), "profile": r.profile,
                "parameters": {"leaf_arity": sample.leaf_arity, "arity": sample.arity,
                               "states_per_layer": sample.states_per_layer, "step_blocks": sample.step_blocks,
                               "active_blocks": sample.active_blocks, "dying_blocks": sample.dying_blocks,
                               "feerate_per_kvb": sample.feerate_per_kvb, "lstock_sat": sample.lstock_sat},
                "client_policy": dataclasses.asdict(r.policy), "developer": r.developer,
                "factories": len(r.store.factory_ids())}

    @plugin.async_method("superscalar-create")
    def create(plugin: Plugin, request: Any, clients: Any, **kwargs: Any) -> None:
        """Create a factory with {id, balance_sat, inbound_sat} clients (LSP only)."""
        r = holder["roles"]
        if not r.is_lsp:
            request.set_exception(RpcException("this node does not offer factories (superscalar-lsp=false)",
                                               code=INVALID_PARAMS))
            return
        try:
            specs = _parse_clients(clients)
        except RpcException as e:
            request.set_exception(e)
            return

        def work() -> None:
            try:
                request.set_result(r.lsp.create(specs, lambda text: _progress_note(plugin, request, text)))
            except Exception as e:  # CreateError, RPC errors of the steps: report, never crash the plugin
                request.set_exception(RpcException(f"factory not created: {e}", code=CREATE_FAILED))

        threading.Thread(target=work, name="superscalar-create", daemon=True).start()

    @plugin.method("superscalar-list")
    def list_factories(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        """List every factory this node is in, with its channels and this node's exit cost."""
        r = holder["roles"]
        return {"factories": [_describe(r, fid) for fid in r.store.factory_ids()
                              if (rec := r.store.get(fid, "factory")) and rec.get("stage") != "abandoned"]}

    @plugin.method("superscalar-exit")
    def exit_factory(plugin: Plugin, factory_id: str, peer_id: Optional[str] = None, **kwargs: Any) -> dict[str, Any]:
        """Start a unilateral exit from factory `factory_id`: a client publishes its own path; the LSP
        the path of client `peer_id`, or every path. It proceeds block by block and survives restarts."""
        r = holder["roles"]
        if not isinstance(factory_id, str) or len(factory_id) != 64:
            raise RpcException("factory_id must be 64 hex characters", code=INVALID_PARAMS)
        try:
            txs, channels = _exit_plan(r, factory_id, peer_id)
        except ValueError as e:
            raise RpcException(str(e), code=INVALID_PARAMS)
        return {"factory_id": factory_id, "exit": r.exits.start(factory_id, txs, channels, _bump_after(r, factory_id))}

    @plugin.subscribe("block_added")
    def on_block_added(plugin: Plugin, **kwargs: Any) -> None:
        r = holder.get("roles")
        if r is None:
            return
        height = int(kwargs.get("block_added", {}).get("height") or 0)
        steps: tuple[tuple[str, Callable[[], None]], ...] = (
            ("funding broadcast", r.lsp.resume),
            ("funding watch", lambda: r.client.on_block(height or r.node.blockheight())),
            ("exit progress", lambda: r.exits.on_block(height or r.node.blockheight())))
        for what, step in steps:
            try:
                step()
            except Exception as e:
                _report(plugin, what, e)

    @plugin.subscribe("channel_state_changed")
    def on_channel_state_changed(plugin: Plugin, channel_state_changed: dict[str, Any], **kwargs: Any) -> None:
        """A factory channel that starts closing before its leaf is on chain can only pay out once the
        leaf confirms: publish its path (either side may do it; both protect their own balance)."""
        r = holder.get("roles")
        if r is None or channel_state_changed.get("new_state") not in CLOSING_STATES:
            return
        try:
            _exit_for_closing_channel(r, channel_state_changed)
        except Exception as e:
            _report(plugin, "exit for closing channel", e)

    @plugin.hook("htlc_accepted")
    def on_htlc_accepted(onion: dict[str, Any], htlc: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        r = holder.get("roles")
        try:
            failure = _htlc_headroom_failure(r, onion, htlc) if r else None
        except Exception as e:
            _report(plugin, "htlc_accepted check", e)
            failure = None
        if failure is None:
            return {"result": "continue"}
        plugin.log(f"failing HTLC {htlc.get('payment_hash')}: {failure[1]}", level="info")
        return {"result": "fail", "failure_message": failure[0]}

    @plugin.hook("custommsg")
    def on_custommsg(peer_id: str, payload: str, plugin: Plugin, **kwargs: Any) -> dict[str, str]:
        r = holder.get("roles")
        try:
            raw = bytes.fromhex(payload)
            if r is None or not Transport.is_ours(raw):
                return {"result": "continue"}
            msg = r.transport.receive(peer_id, raw)
            if msg is not None and not r.lsp.on_message(peer_id, msg):
                r.client.on_message(peer_id, msg)
        except WireError as e:
            plugin.log(f"malformed superscalar message from {peer_id}: {e}", level="info")
        except Exception as e:  # never let an exception escape into the hook
            _report(plugin, f"handling a message from {peer_id}", e)
        return {"result": "continue"}

    @plugin.hook("openchannel")
    def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        r = holder.get("roles")
        try:
            return r.client.openchannel(openchannel) if r else {"result": "continue"}
        except Exception as e:
            plugin.log(f"openchannel hook error: {e!r}", level="broken")
            return {"result": "continue"}  # CLN's normal policy (no zero-conf)

    @plugin.subscribe("disconnect")
    def on_disconnect(plugin: Plugin, **kwargs: Any) -> None:
        r = holder.get("roles")
        peer = kwargs.get("disconnect", {}).get("id") or kwargs.get("id")
        if r is None or not peer:
            return
        try:
            r.transport.forget(peer)
            r.lsp.on_disconnect(peer)
            r.client.on_disconnect(peer)
        except Exception as e:
            _report(plugin, f"disconnect handling for {peer}", e)

    return plugin


# BOLT-4 "Failure Messages": temporary_node_failure = NODE|2; incorrect_or_unknown_payment_details =
# PERM|15 with htlc_msat (u64) and height (u32).
TEMPORARY_NODE_FAILURE = 0x2002
INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = 0x400F


@dataclass(frozen=True)
class FactoryViews:
    """Per HTLC, one look at the records and at lightningd's channels, keyed by every short channel id
    and alias: each factory channel's early-warning blocks; the channels nothing backs (unconfirmed
    channels from our factory LSPs that are not our leaf, channels of unfunded or abandoned factories);
    and our client channels whose leaf script is not verified yet (→ factory id)."""

    headroom: dict[str, int]
    unbacked: set[str]
    unverified: dict[str, str]


def _factory_views(r: Roles) -> FactoryViews:
    records = [(fid, rec) for fid in r.store.factory_ids() if (rec := r.store.get(fid, "factory"))]
    wanted: dict[str, int] = {}  # channel_id or funding outpoint → early warning
    lsps: set[str] = set()
    dead: set[str] = set()  # channel ids or leaf outpoints of factories that nothing funds
    checking: dict[str, str] = {}  # leaf outpoint → factory id, while its leaf script is unverified
    for fid, rec in records:
        if rec.get("role") == "lsp":
            warnings = {c["channel_id"]: int(c["early_warning_blocks"]) for c in rec["channels"] if c["channel_id"]}
            if rec.get("stage") in ("abandoned", "funding-mismatch"):
                dead.update(warnings)
            else:
                wanted.update(warnings)
        elif rec.get("role") == "client":
            lsps.add(rec["lsp"])
            if funding_ok(rec):
                wanted[rec["leaf_outpoint"]] = int(rec["early_warning_blocks"])
                if leaf_status(rec) == "unverified":
                    checking[rec["leaf_outpoint"]] = fid
            else:
                dead.add(rec["leaf_outpoint"])
    views = FactoryViews({}, set(), {})
    for ch in r.node.peer_channels():
        outpoint = f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}"
        ids = [x for x in (ch.get("short_channel_id"), *(ch.get("alias") or {}).values()) if x]
        ew = wanted.get(ch.get("channel_id", "")) or wanted.get(outpoint)
        if ch.get("channel_id") in dead or outpoint in dead:
            views.unbacked.update(ids)
        elif ew is not None:
            views.headroom.update({x: ew for x in ids})
            if outpoint in checking:
                views.unverified.update({x: checking[outpoint] for x in ids})
        elif ch.get("peer_id") in lsps and not ch.get("short_channel_id"):
            views.unbacked.update(ids)
    return views


def _htlc_headroom_failure(r: Roles, onion: dict[str, Any], htlc: dict[str, Any]) -> Optional[tuple[str, str]]:
    """An HTLC into or out of a factory channel must leave that channel's early-warning time of CLTV
    headroom (the tree must be able to unwind before it expires), and a client takes nothing into a
    zero-conf channel from its LSP that is not its leaf; (failure_message hex, reason) if refused."""
    relative = int(htlc["cltv_expiry_relative"])
    height = int(htlc["cltv_expiry"]) - relative
    views = _factory_views(r)
    headroom, unbacked = views.headroom, views.unbacked
    amount = msat(htlc["amount_msat"])
    if str(htlc.get("short_channel_id")) in unbacked:
        return (f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{amount:016x}{height:08x}",
                "incoming channel is not backed by a funded factory leaf")
    checking = views.unverified.get(str(htlc.get("short_channel_id")))
    if checking is not None:
        verdict = r.client.verify_leaf(checking)
        if verdict is not True:
            why = ("its leaf does not pay our channel's 2-of-2" if verdict is False
                   else "its leaf script cannot be verified yet (no commitment signed by our channeld in the log)")
            return f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{amount:016x}{height:08x}", f"incoming channel: {why}"
    if onion.get("short_channel_id") and str(onion.get("short_channel_id")) in unbacked:
        return f"{TEMPORARY_NODE_FAILURE:04x}", "outgoing channel is not backed by a funded factory leaf"
    incoming = headroom.get(str(htlc.get("short_channel_id")))
    outgoing = headroom.get(str(onion.get("short_channel_id"))) if onion.get("short_channel_id") else None
    if outgoing is not None and int(onion.get("outgoing_cltv_value", 0)) - height < outgoing:
        return f"{TEMPORARY_NODE_FAILURE:04x}", f"outgoing factory channel needs {outgoing} blocks of CLTV headroom"
    if incoming is not None and relative < incoming:
        reason = f"incoming factory channel needs {incoming} blocks of CLTV headroom, HTLC has {relative}"
        if onion.get("short_channel_id"):
            return f"{TEMPORARY_NODE_FAILURE:04x}", reason
        return f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{amount:016x}{height:08x}", reason
    return None


def _bump_after(r: Roles, factory_id: str) -> int:
    """Blocks a published factory transaction may stay unconfirmed before it is bumped by CPFP."""
    rec = r.store.get(factory_id, "factory") or {}
    return FactoryParams.deserialize(rec["params"].encode()).confirm_blocks + 1


def _exit_plan(r: Roles, factory_id: str, peer_id: Optional[str]) -> tuple[list[list[Any]], list[str]]:
    rec = r.store.get(factory_id, "factory")
    if rec is None:
        raise ValueError(f"unknown factory {factory_id}")
    if rec.get("stage") in ("completing", "abandoned", "funding-mismatch") or \
            (rec["role"] == "client" and not funding_ok(rec)):
        raise ValueError(f"factory {factory_id} was never funded: there is no exit path to publish")
    if rec["role"] == "lsp":
        return lsp_exit_path(rec, peer_id)
    return r.client.exit_path(factory_id)


def _exit_for_closing_channel(r: Roles, change: dict[str, Any]) -> None:
    channel_id = change.get("channel_id")
    live = next((c for c in r.node.peer_channels() if c.get("channel_id") == channel_id), None)
    if live is None or live.get("short_channel_id"):
        return  # not ours, or its leaf is on chain already: CLN's close machinery has what it needs
    for fid in r.store.factory_ids():
        rec = r.store.get(fid, "factory") or {}
        if rec.get("stage") in ("completing", "abandoned", "funding-mismatch") or \
                (rec.get("role") == "client" and not funding_ok(rec)):
            continue  # its funding output never existed: there is no path to publish
        if rec.get("role") == "lsp":
            peer = next((c["peer_id"] for c in rec["channels"] if c["channel_id"] == channel_id), None)
            if peer is not None:
                txs, channels = lsp_exit_path(rec, peer)
                r.exits.start(fid, txs, channels, _bump_after(r, fid))
        elif rec.get("role") == "client":
            ch = next((c for c in r.node.peer_channels(rec["lsp"]) if c.get("channel_id") == channel_id), None)
            if ch is not None and channel_in_factory(rec, ch):
                txs, channels = r.client.exit_path(fid)
                r.exits.start(fid, txs, channels, _bump_after(r, fid))


def _progress(r: Roles, fid: str) -> dict[str, Any]:
    p = r.store.get(fid, "exit")
    if p is None:
        return {"status": "none"}
    return {"status": p["status"], "published": p["published"], "confirmed": p.get("confirmed", []),
            "bumped": p.get("bumped", {}), "transactions": len(p["txs"]), "closed_channels": p["closed"],
            "last_error": p["last_error"]}


def _describe(r: Roles, fid: str) -> dict[str, Any]:
    rec = r.store.get(fid, "factory") or {}
    params = FactoryParams.deserialize(rec["params"].encode())
    progress = r.store.get(fid, "exit")
    out: dict[str, Any] = {
        "factory_id": fid, "role": rec["role"],
        "state": "exiting" if progress is not None else ("open" if rec.get("stage", "funded") == "funded" else rec["stage"]),
        "funding_outpoint": rec["funding_outpoint"], "n_clients": params.n_clients,
        "expiry_height": params.expiry_height, "dying_height": params.distribution_height,
    }
    if rec["role"] == "lsp":
        out["epoch"] = rec["state"]  # DW state index of every node of the tree
        out["participants"] = [c["peer_id"] for c in rec["channels"]]
        by_id = {c["channel_id"]: c for c in r.node.peer_channels()}
        channels = []
        for c in rec["channels"]:
            live = by_id.get(c["channel_id"], {})
            channels.append({**{k: c[k] for k in ("peer_id", "channel_id", "funding_outpoint", "capacity_msat",
                                                  "early_warning_blocks", "exit")},
                             "state": live.get("state"), "our_balance_msat": msat(live.get("to_us_msat", 0))})
        out["channels"] = channels
        out["exit_progress"] = _progress(r, fid)
        return out
    channels = []
    for ch in r.node.peer_channels(rec["lsp"]):
        if channel_in_factory(rec, ch):
            channels.append({"peer_id": rec["lsp"], "channel_id": ch.get("channel_id"), "state": ch.get("state"),
                             "funding_outpoint": rec["leaf_outpoint"], "capacity_msat": rec["capacity_sat"] * 1000,
                             "our_balance_msat": msat(ch.get("to_us_msat", 0)),
                             "early_warning_blocks": rec["early_warning_blocks"]})
    funding = rec.get("funding") or {"status": "confirmed", "confirmed_height": None}  # records before the watch
    leaf = leaf_status(rec)
    if leaf == "mismatch":
        out["state"] = "leaf_script_mismatch"
    elif progress is None or funding["status"] == "unfunded":
        out["state"] = {"awaiting": "awaiting_funding", "confirmed": "open", "unfunded": "unfunded"}[funding["status"]]
    out.update({"lsp": rec["lsp"], "participants": [rec["lsp"]], "epoch": rec.get("state_indices", []),
                "channels": channels, "exit": rec["exit"], "exit_progress": _progress(r, fid),
                "safety": _client_safety(funding, rec.get("verified", {}).get("leaf_script") or {}),
                "verified": {**rec.get("verified", {}), "funding": funding}})
    return out


def _client_safety(funding: dict[str, Any], leaf: dict[str, Any]) -> str:
    """One line for a client: can its money in this factory be relied on?"""
    if leaf.get("status") == "mismatch":
        return f"not backed: {leaf.get('reason')}; the channel was closed and takes no HTLCs"
    if funding["status"] == "unfunded":
        return f"not backed: {funding.get('reason')}; the channel was closed and takes no HTLCs"
    parts = ["exit path stored"]
    parts.append("leaf output verified as our channel's 2-of-2" if leaf.get("status") == "verified"
                 else "leaf script not verified yet (checked before the first incoming HTLC is accepted)")
    if funding["status"] == "awaiting":
        parts.append(f"funding output not confirmed yet (given up at height {funding.get('deadline_height')}): "
                     "until then the channel is only as good as the LSP")
    else:
        parts.append(f"funding output confirmed as signed at height {funding.get('confirmed_height')}")
    return "; ".join(parts)
