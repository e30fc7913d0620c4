"""The CLN shell: registers options, methods, hooks and subscriptions with pyln and translates them
into calls on the roles. No logic lives here; hooks never raise (a failure gets the safe answer)."""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Callable, Optional

from pyln.client import Plugin, RpcException

from superscalar import __version__
from superscalar.cln.bitcoind import Bitcoind, BitcoindError, from_lightningd
from superscalar.chain.blocks import Blocks
from superscalar.chain.close_watch import CloseWatch
from superscalar.chain.exits import UNILATERAL_STATES, Exits
from superscalar.chain.fee_schedule import DEFAULT_MAX_FEERATE_PERKVB
from superscalar.chain.forget import Forgetter
from superscalar.chain.follower import ChainFollower
from superscalar.chain.htlc_watch import DEFAULT_HTLC_EXIT_ALLOWANCE, HtlcWatch
from superscalar.chain.lifecycle import Lifecycle
from superscalar.chain.routing import exit_for_closing_channel, exit_late_funded, exit_plan
from superscalar.client.closing import ClientCloser
from superscalar.client.jit import JitClient
from superscalar.client.leaving import request_leave
from superscalar.client.membership import Client
from superscalar.client.migration import JitMigration
from superscalar.client.sale import ClientSales
from superscalar.client.backup import ClientBackup
from superscalar.client.tower import HelperPackages, TowerClient
from superscalar.client.moving import move
from superscalar.client.on_demand import (DEFAULT_MAX_FEE_BASE_SAT, DEFAULT_MAX_FEE_PPM, InboundFeeLimit,
                                          OnDemandPayments)
from superscalar.client.onboarding import ask_join, ask_terms, hello, register_webhook
from superscalar.client.orders import buy_inbound, get_order
from superscalar.client.policy import ClientPolicy
from superscalar.factory.params import FactoryParams, regtest_params
from superscalar.cln.htlc_guard import TEMPORARY_NODE_FAILURE, HtlcGuard
from superscalar.cln.htlc_index import CHANNEL_FIELDS, HtlcIndex, LiveChannel, PeerRefresh
from superscalar.cln.invoices import CONTINUE, Invoices
from superscalar.cln.listing import describe
from superscalar.helper.backups import Backups
from superscalar.helper.distributions import Distributions, PackageLimits
from superscalar.helper.exits import HelpedExits
from superscalar.helper.tower import Tower, TowerLimits
from superscalar.lsp.closing import Closer
from superscalar.lsp.sale import Seller
from superscalar.lsp.creation import ClientSpec, Lsp
from superscalar.lsp.jit import JitService, liquidity_shortfall, wallet_channel
from superscalar.cln.htlc_exposure import DEFAULT_PER_CLIENT_MSAT, DEFAULT_TOTAL_MSAT, ShortHtlcExposure, ShortHtlcLimits
from superscalar.lsp.leaving import Leavers, roll_or_close
from superscalar.lsp.webhooks import DEFAULT_MAX_WEBHOOKS, Webhooks
from superscalar.lsp.ladder import Ladder, LadderConfig
from superscalar.lsp.inbound import OnDemand, sale_first, sale_somewhere
from superscalar.lsp.onboarding import JoinLimits, Onboarding, Speakers, terms
from superscalar.lsp.orders import HOLD_EXTRA_BLOCKS, Orders
from superscalar.lsps.client import LspsClient
from superscalar.lsps.server import LspsServer
from superscalar.cln.node import ClnNode, msat
from superscalar.protocol.lsps0 import LspsError, is_lsps
from superscalar.protocol.lsps5 import PAYMENT_INCOMING
from superscalar.protocol.lsps1 import Options as Lsps1Options
from superscalar.protocol.lsps2 import PROMISE_LABEL, FeeTerms
from superscalar.protocol.wire import (BackupBlob, BackupFetch, BackupStore, HelpExit, HelpPackage, TowerAnswer,
                                       TowerStore, WireError)
from superscalar.cln.store import Store
from superscalar.cln.transport import Transport

INVALID_PARAMS = -32602  # JSON-RPC
CREATE_FAILED = 1700  # superscalar-create: the factory was not created (nothing broadcast)
MAINNET_LADDER_INTERVAL = 144  # blocks: a new factory a day
REGTEST_LADDER_INTERVAL = 5
SALE_FAILED = 1702  # superscalar-sell-inbound: no sale (nothing changed, or a signed sale kept: see message)
CLOSE_FAILED = 1701  # superscalar-close / -rollover: aborted before the close existed, factory unfrozen
LSP_REFUSED = 1702  # superscalar-terms / -join-next: the LSP answered an error, or did not answer


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
        self.confirm_depth = confirm_depth(self.profile, options)
        timeout = float(options.get("superscalar-timeout", 60))
        self.speakers = Speakers()
        self.lsp = Lsp(self.node, self.store, self.transport, self.params_for, plugin.log, timeout, dev_fail_at,
                       self.speakers.silent)
        max_feerate = int(options.get("superscalar-exit-max-feerate-perkvb") or DEFAULT_MAX_FEERATE_PERKVB)
        bitcoind = _bitcoind(plugin, self.network)
        # each block parsed once for every step, read from bitcoind itself: lightningd's bcli answers
        # `getrawblockbyheight` only after the rebroadcasts it queued for that block (one failing
        # `sendrawtransaction` per retired channel), which made the plugin's block time grow with them
        self.blocks = Blocks(raw_block_reader(bitcoind, self.node.raw_block))
        self.exits = Exits(self.node, self.store, plugin.log, bitcoind, max_feerate, self.blocks)
        self.client = Client(self.node, self.store, self.transport, self.allowed, plugin.log, dev_fail_at,
                             self.policy, stale_after=10 * timeout, blocks=self.blocks, confirm_depth=self.confirm_depth)
        self.closer = Closer(self.lsp, plugin.log, timeout, dev_fail_at, extra_inbound=self.jit_held)
        self.client_closer = ClientCloser(self.node, self.store, self.transport, plugin.log, dev_fail_at,
                                          self.policy.max_close_wait_blocks,
                                          self.exit_unfinished_close)
        self.client.accept_rollover = self.client_closer.accept_rollover
        self.client.rollover_dropped = self.client_closer.rollover_dropped
        self.close_watch = CloseWatch(self.node, self.store, plugin.log, self.confirm_depth, self.exits.bitcoind,
                                      max_feerate)
        forget = bool(options.get("superscalar-forget-retired", False))
        if forget and not self.developer:
            plugin.log("superscalar-forget-retired=true is refused: lightningd is not running with --developer, "
                       "which dev-forget-channel needs; retired channels are kept (docs/retiring-channels.md)",
                       level="unusual")
            forget = False
        self.forgetter = Forgetter(self.node, self.store, plugin.log, forget)
        self.seller = Seller(self.node, self.store, self.transport, plugin.log, timeout,
                             int(options.get("superscalar-sale-fee-base-sat") or 0),
                             int(options.get("superscalar-sale-fee-ppm") or 0), dev_fail_at,
                             lambda name: self.lsp._dev_crash_point(name, kill_node=True))
        self.client_sales = ClientSales(self.node, self.store, self.transport, plugin.log, dev_fail_at, InboundFeeLimit(
            int(options.get("superscalar-client-max-inbound-fee-base-sat") or DEFAULT_MAX_FEE_BASE_SAT),
            int(options.get("superscalar-client-max-inbound-fee-ppm") or DEFAULT_MAX_FEE_PPM)))
        self.on_demand_payments = OnDemandPayments(self.node, self.store, plugin.log)
        self.client.sale_channel = self.client_sales.expect_channel
        self.leavers = Leavers(self.store, plugin.log, self.node.blockheight)
        self.index = HtlcIndex()
        self.refresh = PeerRefresh(self.index, self.node.peer_channels, lambda e: _report(plugin, "HTLC index refresh", e))
        self.store.listen(self.index.on_record)
        self.exposure = ShortHtlcExposure(ShortHtlcLimits(
            int(options.get("superscalar-lsp-short-htlc-max-msat-per-client") or DEFAULT_PER_CLIENT_MSAT),
            int(options.get("superscalar-lsp-short-htlc-max-msat-total") or DEFAULT_TOTAL_MSAT)))
        self.htlcs = HtlcGuard(self.node, self.index, self.client, self.exposure)
        self.invoices = Invoices(self.node, self.index, plugin.log)
        self.watch = HtlcWatch(self.node, self.store, self.index, self.client, self.exits, self.exposure, plugin.log,
                               int(options.get("superscalar-htlc-exit-allowance-blocks") or DEFAULT_HTLC_EXIT_ALLOWANCE))
        self.ladder: Optional[Ladder] = None
        if self.is_lsp and str(options.get("superscalar-ladder", "false")).lower() in ("true", "1", "yes"):
            interval = options.get("superscalar-ladder-interval-blocks") or (
                REGTEST_LADDER_INTERVAL if self.profile == "regtest" else MAINNET_LADDER_INTERVAL)
            self.ladder = Ladder(self.node, self.store,
                                 LadderConfig(int(interval), int(options.get("superscalar-ladder-max-alive") or 33),
                                              batch_size=int(options.get("superscalar-batch-size") or 0),
                                              batch_wait_blocks=int(options.get("superscalar-batch-wait-blocks") or 0)),
                                 lambda waiting, height: self.lsp.create(
                                     [ClientSpec(w.node_id, w.balance_sat, w.inbound_sat + self.jit_held(w.node_id))
                                      for w in waiting], height=height),
                                 lambda fid: roll_or_close(self.closer, self.store, fid,
                                                           lambda text: plugin.log(f"ladder: {text}")),
                                 plugin.log)
        ladder = self.ladder
        self.lsps_client = LspsClient(self.node.send_message)
        self.lsps_server: Optional[LspsServer] = None
        self.webhooks: Optional[Webhooks] = None
        self.jit: Optional[JitService] = None
        self.on_demand: Optional[OnDemand] = None
        self.jit_client = JitClient(self.node, self.store, self.lsps_client, plugin.log)
        self.jit_migration = JitMigration(self.node, self.store, self.jit_client, plugin.log)
        if self.is_lsp:
            others = tuple(x.strip() for x in str(options.get("superscalar-lsps-others") or "").split(",") if x.strip())
            self.lsps_server = LspsServer(self.node.send_message, plugin.log, others)
            limits = JoinLimits(int(options.get("superscalar-lsp-join-min-inbound-sat") or 0),
                                int(options.get("superscalar-lsp-join-max-inbound-sat") or 0),
                                int(options.get("superscalar-lsp-join-max-waiting") or 0))
            interval = ladder.config.interval_blocks if ladder is not None else None
            self.onboarding = Onboarding(lambda: terms(self.params_for, limits, interval, self.network), limits,
                                         None if ladder is None else lambda peer, inbound: (
                                             ladder.add(peer, 0, inbound), ladder.status(self.node.blockheight()))[1],
                                         self.speakers,
                                         lambda: [] if ladder is None else [w["node_id"] for w in ladder.state()["waiting"]])
            self.lsps_server.register("superscalar.get_info", self.onboarding.get_info)
            self.lsps_server.register("superscalar.join", self.onboarding.join)
            max_webhooks = int(options.get("superscalar-lsps5-max-webhooks") or 0)
            if max_webhooks > 0 and "lsps5" not in others:
                allow_http = bool(options.get("superscalar-lsps5-allow-http")) and self.profile == "regtest"
                self.webhooks = Webhooks(self.node, self.store, plugin.log, self.peer_connected, max_webhooks,
                                         allow_http, ready=self.channel_ready)
                self.lsps_server.register("lsps5.set_webhook", self.webhooks.set_webhook)
                self.lsps_server.register("lsps5.list_webhooks", self.webhooks.list_webhooks)
                self.lsps_server.register("lsps5.remove_webhook", self.webhooks.remove_webhook)
            hooks = self.webhooks
            self.jit = JitService(self.node, self.store, self.node.secret(PROMISE_LABEL), [lsps2_terms(options)],
                                  _config_int(plugin, "cltv-delta"), plugin.log,
                                  sale_first(self.seller, self.store, wallet_channel(self.node), plugin.log),
                                  shortfall=liquidity_shortfall(self.node),
                                  wake=(lambda peer: hooks.notify(peer, PAYMENT_INCOMING)) if hooks else (lambda peer: 0),
                                  wakeable=hooks.wakeable if hooks else (lambda peer: False))
            self.on_demand = OnDemand(self.node, self.store, self.seller, self.is_factory_channel, plugin.log)
            self.lsps_server.register("lsps2.get_info", self.jit.get_info)
            self.lsps_server.register("lsps2.buy", self.jit.buy)
        self.orders: Optional[Orders] = None
        if self.lsps_server is not None and ladder is not None and ladder.config.wait_bound_blocks() is not None:
            self.orders = lsps1_orders(self, ladder, options, plugin)
            self.lsps_server.register("lsps1.get_info", self.orders.get_info)
            self.lsps_server.register("lsps1.create_order", self.orders.create_order, background=True)
            self.lsps_server.register("lsps1.get_order", self.orders.get_order)
            ladder.on_started = self.orders.reconcile
        orders = self.orders
        self.lifecycle = Lifecycle(self.node, self.store, self.blocks, self.client, self.exits, plugin.log,
                                   self.confirm_depth)
        self.tower: Optional[Tower] = None
        self.distributions: Optional[Distributions] = None
        self.helped_exits: Optional[HelpedExits] = None
        self.backups: Optional[Backups] = None
        if str(options.get("superscalar-helper", "false")).lower() in ("true", "1", "yes"):
            self.backups = Backups(self.node, PackageLimits(), plugin.log, dev_fail_at == "helper-withhold-backups")
            self.distributions = Distributions(self.node, self.blocks, PackageLimits(), plugin.log)
            self.helped_exits = HelpedExits(self.node, self.blocks, PackageLimits(), plugin.log,
                                            lambda store: Exits(self.node, store, plugin.log, self.exits.bitcoind,
                                                                max_feerate, self.blocks))
            self.tower = Tower(self.node, self.blocks, TowerLimits(
                int(options.get("superscalar-helper-max-blobs") or TowerLimits.blobs_per_client),
                TowerLimits.blob_bytes,
                int(options.get("superscalar-helper-max-clients") or TowerLimits.clients)), plugin.log)
        helpers = tuple(x.strip() for x in str(options.get("superscalar-helpers") or "").split(",") if x.strip())
        self.tower_client = TowerClient(self.node, self.transport.send, helpers, plugin.log)
        self.helper_packages = HelperPackages(self.store, self.transport.send, helpers, plugin.log,
                                              lambda fid: exit_plan(self.store, self.client, fid, None),
                                              lambda: self.node.spendable_wallet_sat() == 0)
        self.store.listen(self.helper_packages.changed)
        self.client_backup = ClientBackup(self.node, self.store, self.transport.send, helpers, plugin.log,
                                          10 if self.profile == "regtest" else 144)
        self.store.listen(self.client_backup.changed)
        tower, distributions, helped_exits = self.tower, self.distributions, self.helped_exits
        self.follower = ChainFollower((
            ("new block", self.blocks.new_tip),
            ("funding broadcast", lambda height: self.lsp.resume()),
            ("liquidity sales", self.seller.resume),
            ("funding watch", lambda height: exit_late_funded(self.store, self.client, self.exits,
                                                              self.client.on_block(height))),
            ("HTLC watch", self.watch.on_block),
            ("exit progress", self.exits.on_block),
            ("lifecycle", self.lifecycle.on_block),
            *((("ladder", ladder.on_block),) if ladder is not None else ()),
            *((("LSPS1 orders", orders.on_block),) if orders is not None else ()),
            ("close recovery (LSP)", self.closer.on_block),
            ("close recovery (client)", self.client_closer.on_block),
            ("cooperative close", self.close_watch.on_block),
            ("retired channels", self.forgetter.on_block),
            ("JIT channel migration", self.jit_migration.on_block),
            *((("LSPS5 dying-period notices", self.webhooks.on_block),) if self.webhooks is not None else ()),
            *((("helper: watchtower", tower.on_block),) if tower is not None else ()),
            *((("helper: distributions", distributions.on_block),) if distributions is not None else ()),
            *((("helper: exit paths", helped_exits.on_block),) if helped_exits is not None else ()),
            ("distributions to helpers", self.helper_packages.on_block),
            ("backups to helpers", self.client_backup.on_block),
        ), lambda what, e: _report(plugin, what, e))

    def exit_unfinished_close(self, factory_id: str) -> None:
        """A client frozen too long after it signed a close nobody completed: its own exit."""
        exit_plan(self.store, self.client, factory_id, None).start(
            self.exits, factory_id, reason={"reason": "a close we signed was not completed in time",
                                               "height": self.node.blockheight()})

    def jit_held(self, peer: str) -> int:
        """A joining client's balance in its JIT wallet channels with us: added to its factory inbound."""
        if self.jit is None:
            return 0
        return self.jit.held_by(peer, lambda ch: any(self.is_factory_channel(n)
                                                     for n in LiveChannel.from_listing(ch).names))

    def peer_connected(self, peer: str) -> bool:
        return self.node.connected(peer)

    def channel_ready(self, peer: str) -> bool:
        """Has the peer a normal channel with us, connected and reestablished?"""
        return any(ch.get("peer_connected") and ch.get("state") == "CHANNELD_NORMAL" and ch.get("reestablished", True)
                   for ch in self.node.peer_channels(peer))

    def sleeping_peer_of(self, short_channel_id: Optional[str]) -> Optional[str]:
        """The peer of an outgoing channel, if it is not connected and has an LSPS5 webhook."""
        if self.webhooks is None or not short_channel_id:
            return None
        found = self.index.lookup(short_channel_id)  # in memory: no RPC for every HTLC
        peer = found.channel.peer_id if found is not None else None
        if peer is None or not self.webhooks.wakeable(peer) or self.peer_connected(peer):
            return None
        return peer

    def is_factory_channel(self, name: str) -> bool:
        found = self.index.lookup(name)
        return found is not None and found.factory is not None

    def load_index(self) -> None:
        """At start: every factory record, and lightningd's channels, into the HTLC index."""
        self.index.load(self.store)
        self.index.set_channels(self.node.peer_channels_fields(CHANNEL_FIELDS))

    def params_for(self, n_clients: int, height: int) -> FactoryParams:
        fee = {} if self.feerate is None else {"feerate_per_kvb": self.feerate}
        if self.profile == "regtest":
            return regtest_params(n_clients, height, **fee)
        return FactoryParams(n_clients=n_clients, start_height=height, **fee)


LSPS1_MARGIN_BLOCKS = 6  # the ceremony and the funding's confirmation, beyond the ladder's wait bound


def lsps1_options(wait_bound: int, active_blocks: int, options: dict[str, Any]) -> Lsps1Options:
    """What lsps1.get_info publishes: a paid order waits at most `wait_bound` blocks for its factory."""
    min_lsp = int(options.get("superscalar-lsps1-min-lsp-balance-sat") or 0)
    max_lsp = int(options.get("superscalar-lsps1-max-lsp-balance-sat") or 0)
    max_client = int(options.get("superscalar-lsps1-max-client-balance-sat") or 0)
    return Lsps1Options(
        min_required_channel_confirmations=1,  # batching: bLIP-51 asks an immediate open for 0
        min_funding_confirms_within_blocks=wait_bound + LSPS1_MARGIN_BLOCKS,
        supports_zero_channel_reserve=False,
        max_channel_expiry_blocks=max(1, active_blocks - LSPS1_MARGIN_BLOCKS),
        min_initial_client_balance_sat=0, max_initial_client_balance_sat=max_client,
        min_initial_lsp_balance_sat=min_lsp, max_initial_lsp_balance_sat=max_lsp,
        min_channel_balance_sat=min_lsp, max_channel_balance_sat=max_lsp + max_client,
        fee_base_sat=int(options.get("superscalar-lsps1-fee-base-sat") or 0),
        fee_ppm=int(options.get("superscalar-lsps1-fee-ppm") or 0))


def lsps1_orders(roles: "Roles", ladder: Ladder, options: dict[str, Any], plugin: Plugin) -> Orders:
    bound = ladder.config.wait_bound_blocks()
    assert bound is not None
    return Orders(roles.node, roles.store, lsps1_options(bound, roles.params_for(2, 0).active_blocks, options), ladder,
                  bound + HOLD_EXTRA_BLOCKS, plugin.log, spoke=lambda peer: not roles.speakers.silent([peer], 0.0),
                  sell=lambda peer, capacity: sale_somewhere(roles.seller, roles.store, peer, capacity, plugin.log),
                  onchain_confirmations=roles.confirm_depth if options.get("superscalar-lsps1-onchain", True) else 0,
                  state_changed=roles.webhooks.order_state if roles.webhooks is not None else lambda *_: None)


def raw_block_reader(bitcoind: Optional[Bitcoind], fallback: Callable[[int], str]) -> Callable[[int], str]:
    """The block at a height, hex: from bitcoind (`getblockhash`, `getblock` verbosity 0), or through
    lightningd when bitcoind cannot be reached directly."""
    def read(height: int) -> str:
        if bitcoind is not None:
            try:
                return str(bitcoind.call("getblock", str(bitcoind.call("getblockhash", height)), 0))
            except BitcoindError:
                pass
        return fallback(height)
    return read


def _bitcoind(plugin: Plugin, network: str) -> Optional[Bitcoind]:
    """bitcoind as lightningd reaches it (for packages and mempool checks), or None if unreadable."""
    try:
        return from_lightningd(plugin.rpc, network)
    except Exception as e:
        plugin.log(f"cannot read lightningd's bitcoind settings ({e!r}): exits send no packages", level="unusual")
        return None


def lsps2_terms(options: dict[str, Any]) -> FeeTerms:
    """The LSP's one LSPS2 menu entry, from the `superscalar-lsps2-*` options."""
    return FeeTerms(int(options.get("superscalar-lsps2-min-fee-msat") or 0),
                    int(options.get("superscalar-lsps2-proportional") or 0),
                    int(options.get("superscalar-lsps2-valid-seconds") or 0),
                    int(options.get("superscalar-lsps2-min-lifetime") or 0),
                    int(options.get("superscalar-lsps2-max-client-to-self-delay") or 0),
                    int(options.get("superscalar-lsps2-min-payment-msat") or 0),
                    int(options.get("superscalar-lsps2-max-payment-msat") or 0))


def _config_int(plugin: Plugin, name: str) -> int:
    return int(plugin.rpc.call("listconfigs", {"config": name})["configs"][name]["value_int"])


def _developer_mode(plugin: Plugin) -> bool:
    """Is lightningd running with --developer? Test hooks are honoured only then."""
    try:
        return bool(plugin.rpc.call("listconfigs", {"config": "developer"})["configs"]["developer"]["set"])
    except Exception:
        return False


CONFIRM_DEPTH = {"mainnet": 3, "regtest": 1}  # the profile's default confirmations before acting on a spend


def confirm_depth(profile: str, options: dict[str, Any]) -> int:
    """Confirmations a close, a distribution or a funding needs before this node acts on it."""
    value = options.get("superscalar-confirm-depth")
    return max(1, int(value)) if value not in (None, "") else CONFIRM_DEPTH.get(profile, 3)


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


def _invoice_made(plugin: Plugin, r: Roles, rpc_command: dict[str, Any], request: Any) -> None:
    """The `invoice` hook's answer from `Invoices.made`; if that failed, lightningd makes the invoice."""
    try:
        answer = r.invoices.made(rpc_command)
    except Exception as e:
        _report(plugin, "invoice route hint", e)
        try:
            answer = r.invoices.lightningds(rpc_command)
        except Exception as e2:
            _report(plugin, "invoice final CLTV", e2)
            answer = CONTINUE
    request.set_result(answer)


def _progress_note(plugin: Plugin, request: Any, text: str, command: str = "superscalar-create") -> None:
    """A step of a ceremony command: a notification to the caller, and a line in the log."""
    plugin.log(f"{command}: {text}")
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
    plugin.add_option("superscalar-confirm-depth", "",
                      "Confirmations before a factory's close, distribution or funding is acted on (channels "
                      "retired, the next factory unfrozen); a reorganisation before that puts it back to pending "
                      "(default 3 on mainnet, 1 on regtest).")
    plugin.add_option("superscalar-feerate-per-kvb", "", "Fee rate (sat per 1000 vB) pre-agreed for every factory "
                      "transaction; default: the profile's (2000).")
    plugin.add_option("superscalar-exit-max-feerate-perkvb", str(DEFAULT_MAX_FEERATE_PERKVB),
                      "Highest fee rate (sat per 1000 vB, parent and CPFP child together) an exit pays as a "
                      "transaction's deadline comes (see README, Exits).")
    plugin.add_option("superscalar-dev-fail-at", "", "Testing only (honoured with --developer): make this node "
                      "fail or misbehave in a ceremony on purpose.")
    plugin.add_option("superscalar-lsp-short-htlc-max-msat-per-client", str(DEFAULT_PER_CLIENT_MSAT),
                      "LSP: most msat of HTLCs from one client's factory channels, with less CLTV headroom than the "
                      "channel's early-warning time, pending at once (0: take none).")
    plugin.add_option("superscalar-lsp-short-htlc-max-msat-total", str(DEFAULT_TOTAL_MSAT),
                      "LSP: the same, summed over all its factory channels.")
    plugin.add_option("superscalar-htlc-exit-allowance-blocks", str(DEFAULT_HTLC_EXIT_ALLOWANCE),
                      "Blocks for the commitment and HTLC transactions: a factory exit starts at an HTLC's expiry "
                      "minus the path's early-warning time minus this.")
    plugin.add_option("superscalar-sale-fee-base-sat", "0", "LSP: price of inbound sold out of a leaf's L-stock "
                      "(superscalar-sell-inbound): this many sat per sale, plus superscalar-sale-fee-ppm.")
    plugin.add_option("superscalar-sale-fee-ppm", "0", "LSP: price of inbound sold out of the L-stock, in millionths "
                      "of the capacity sold (rounded up), on top of superscalar-sale-fee-base-sat.")
    plugin.add_option("superscalar-client-max-inbound-fee-base-sat", str(DEFAULT_MAX_FEE_BASE_SAT),
                      "Client: the most it pays for a channel the LSP sells it on demand (its inbound was used up "
                      "by a payment to it, paid out of that payment): this many sat, plus the ppm below.")
    plugin.add_option("superscalar-client-max-inbound-fee-ppm", str(DEFAULT_MAX_FEE_PPM),
                      "Client: ... plus this many millionths of the channel's capacity.")
    plugin.add_option("superscalar-ladder", "false", "LSP: start a factory every interval for the clients waiting "
                      "(superscalar-ladder-add) and roll every dying factory over into the next: true/false.")
    plugin.add_option("superscalar-ladder-interval-blocks", "", f"LSP ladder: blocks between two new factories "
                      f"(default {MAINNET_LADDER_INTERVAL}, a day; {REGTEST_LADDER_INTERVAL} on the regtest profile).")
    plugin.add_option("superscalar-ladder-max-alive", "33", "LSP ladder: most factories alive (active or dying) at once.")
    plugin.add_option("superscalar-batch-size", "0", "LSP ladder: start a factory at once when this many clients "
                      "(paid LSPS1 orders, joins) wait (0: off).")
    plugin.add_option("superscalar-batch-wait-blocks", "0", "LSP ladder: start a factory when the client waiting "
                      "longest has waited this many blocks (0: off). With superscalar-ladder-interval-blocks=0 only "
                      "the batch size and wait start factories.")
    plugin.add_option("superscalar-lsps1-min-lsp-balance-sat", "100000", "LSP, LSPS1: least inbound an order buys.")
    plugin.add_option("superscalar-lsps1-max-lsp-balance-sat", "10000000", "LSP, LSPS1: most inbound an order buys.")
    plugin.add_option("superscalar-lsps1-max-client-balance-sat", "1000000", "LSP, LSPS1: most client_balance_sat "
                      "an order buys (paid in full on top of the fee, the client's balance in its new channel).")
    plugin.add_option("superscalar-lsps1-fee-base-sat", "1000", "LSP, LSPS1: fee_total_sat = this + "
                      "ceil(lsp_balance_sat * fee-ppm / 1e6).")
    plugin.add_option("superscalar-forget-retired", "false", "Forget a retired factory channel (dev-forget-channel) "
                      "once its funding output provably cannot exist; needs lightningd --developer.", opt_type="bool")
    plugin.add_option("superscalar-lsps1-onchain", "true", "LSP, LSPS1: offer on-chain payment to a client that "
                      "gives a refund address (counted at superscalar-confirm-depth confirmations).", opt_type="bool")
    plugin.add_option("superscalar-lsps1-fee-ppm", "10000", "LSP, LSPS1: fee per million sat of inbound sold.")
    plugin.add_option("superscalar-lsp-join-min-inbound-sat", "20000", "LSP: least inbound a client may ask for "
                      "with superscalar.join (its free place in the next laddered factory).")
    plugin.add_option("superscalar-lsp-join-max-inbound-sat", "500000", "LSP: most inbound a client gets free with "
                      "superscalar.join; more is bought (LSPS1).")
    plugin.add_option("superscalar-lsp-join-max-waiting", "100", "LSP: most clients waiting for the next factory "
                      "when superscalar.join takes one more (free inbound strangers can lock up is bounded).")
    plugin.add_option("superscalar-lsps-others", "", "LSP: method families (e.g. 'lsps5,lsps7') another plugin on "
                      "this node answers over message 37913: their requests pass through unanswered by us.")
    plugin.add_option("superscalar-helper", "false", "Serve other nodes' clients as their helper: keep their "
                      "sealed penalty transactions and publish one when its revoked commitment confirms.",
                      opt_type="bool")
    plugin.add_option("superscalar-helper-max-blobs", str(TowerLimits.blobs_per_client),
                      "Helper: most penalty blobs kept for one client.")
    plugin.add_option("superscalar-helper-max-clients", str(TowerLimits.clients), "Helper: most clients served.")
    plugin.add_option("superscalar-helpers", "", "Helper node ids (comma-separated) this node sends the penalty of "
                      "each revoked commitment of its channels to, sealed (a watchtower while it is offline).")
    plugin.add_option("superscalar-lsps5-max-webhooks", str(DEFAULT_MAX_WEBHOOKS),
                      "LSP: most LSPS5 webhooks one client may register (0: no LSPS5 here).")
    plugin.add_option("superscalar-lsps5-allow-http", "false",
                      "LSP: also accept http:// webhooks (a test's local server; regtest profile only).", opt_type="bool")
    for name, default, text in (
            ("min-fee-msat", "546000", "the least opening fee of a JIT channel"),
            ("proportional", "1000", "the opening fee in parts per million of the payment, if above the least"),
            ("valid-seconds", "3600", "how long an offered fee stays valid (valid_until); at least 600 by bLIP-52"),
            ("min-lifetime", "1008", "blocks the LSP keeps a paid JIT channel open after it confirms"),
            ("max-client-to-self-delay", "2016", "the longest to_self_delay a JIT client may impose on the LSP"),
            ("min-payment-msat", "1000000", "the smallest payment a JIT channel is opened for"),
            ("max-payment-msat", "1000000000", "the largest payment a JIT channel is opened for")):
        plugin.add_option(f"superscalar-lsps2-{name}", default, f"LSP, LSPS2 (JIT channels): {text}.")
    defaults = ClientPolicy()
    for f in dataclasses.fields(ClientPolicy):
        plugin.add_option(POLICY_OPTION + f.name.replace("_", "-"), "",
                          f"Client policy: {f.name.replace('_', ' ')} (default {getattr(defaults, f.name)} on "
                          f"mainnet, {getattr(ClientPolicy.for_profile('regtest'), f.name)} on the regtest profile).")

    @plugin.init()
    def init(options: dict[str, Any], configuration: dict[str, Any], plugin: Plugin, **kwargs: Any) -> None:
        holder["roles"] = Roles(plugin, options, configuration)
        holder["roles"].lsp.release_unfinished()
        pruned = holder["roles"].store.prune_unfinished()
        holder["roles"].load_index()
        holder["roles"].jit_client.load()
        if holder["roles"].jit is not None:
            holder["roles"].jit.load()
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
                "parameters": {"leaf_arity": sample.leaf_arity, "arity": sample.arity, "dw_layers": sample.dw_layers,
                               "states_per_layer": sample.states_per_layer, "step_blocks": sample.step_blocks,
                               "active_blocks": sample.active_blocks, "dying_blocks": sample.dying_blocks,
                               "feerate_per_kvb": sample.feerate_per_kvb, "lstock_sat": sample.lstock_sat,
                               # the longest exit (EWT) of this profile's tree at a few sizes
                               "early_warning_blocks": {str(n): r.params_for(n, 0).longest_exit_blocks
                                                        for n in (2, 16, 128, 1024)}},
                "client_policy": dataclasses.asdict(r.policy), "developer": r.developer,
                "forget_retired": r.forgetter.forget, "channels_forgotten": r.forgetter.forgotten,
                "factories": len(r.store.factory_ids()), "factories_archived": r.store.archived()["factories"],
                "helper": {**r.tower.info(), **r.distributions.info(), **r.helped_exits.info(), **r.backups.info()}
                if r.tower is not None and r.distributions is not None and r.helped_exits is not None
                and r.backups is not None else None,
                "watchtowers": {**r.tower_client.info(), **r.helper_packages.info(), **r.client_backup.info()}
                if r.tower_client.helpers else None}

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

    @plugin.method("superscalar-ladder-add")
    def ladder_add(plugin: Plugin, id: str, inbound_sat: int, balance_sat: int = 0, **kwargs: Any) -> dict[str, Any]:
        """Queue client `id` for the next laddered factory with `inbound_sat` (and `balance_sat`) (LSP, ladder on)."""
        r = holder["roles"]
        if r.ladder is None:
            raise RpcException("the ladder is off (superscalar-lsp and superscalar-ladder must be true)",
                               code=INVALID_PARAMS)
        [spec] = _parse_clients([{"id": id, "inbound_sat": inbound_sat, "balance_sat": balance_sat}])
        return r.ladder.add(spec.node_id, spec.balance_sat, spec.inbound_sat)

    @plugin.method("superscalar-ladder")
    def ladder_status(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        """Show the ladder: clients waiting, when it last started a factory, the factories alive."""
        r = holder["roles"]
        if r.ladder is None:
            return {"enabled": False}
        return r.ladder.status(r.node.blockheight())

    def close_command(request: Any, factory_id: Any, work: Any, command: str, code: int = CLOSE_FAILED,
                      failed: str = "factory not closed") -> None:
        r = holder["roles"]
        if not r.is_lsp:
            request.set_exception(RpcException("this node is not an LSP (superscalar-lsp=false)", code=INVALID_PARAMS))
            return
        if not isinstance(factory_id, str) or len(factory_id) != 64:
            request.set_exception(RpcException("factory_id must be 64 hex characters", code=INVALID_PARAMS))
            return

        def run() -> None:
            try:
                request.set_result(work(r, lambda text: _progress_note(plugin, request, text, command)))
            except Exception as e:  # CloseError: aborted, the factory unfrozen
                request.set_exception(RpcException(f"{failed}: {e}", code=code))

        threading.Thread(target=run, name=command, daemon=True).start()

    def close_factory(plugin: Plugin, request: Any, factory_id: Any, **kwargs: Any) -> None:
        """Close factory `factory_id` cooperatively (LSP; every client online): each client is paid its
        channel balance on chain, the channels are retired once the close confirms."""
        close_command(request, factory_id, lambda r, note: r.closer.close(factory_id, note), "superscalar-close")

    def rollover_factory(plugin: Plugin, request: Any, factory_id: Any, leave: Any = None, **kwargs: Any) -> None:
        """Roll factory `factory_id` over into a new factory (LSP): its clients carry their balances to the
        msat, except those in `leave` (node ids), paid on chain in the same close."""
        if leave is not None and not (isinstance(leave, list) and all(isinstance(x, str) for x in leave)):
            request.set_exception(RpcException("leave must be a list of node ids", code=INVALID_PARAMS))
            return
        close_command(request, factory_id, lambda r, note: r.closer.rollover(factory_id, list(leave or []), note),
                      "superscalar-rollover")

    def sell_inbound(plugin: Plugin, request: Any, factory_id: Any, id: Any, capacity_sat: Any, **kwargs: Any) -> None:
        """Sell client `id` a new channel of `capacity_sat` out of its leaf's L-stock in factory `factory_id`
        (LSP; every signer of that leaf online). Reports the channel, the sale's fee and the price fee_sat."""
        try:
            capacity = int(capacity_sat)
        except (TypeError, ValueError):
            capacity = 0
        if not isinstance(id, str) or len(id) != 66 or capacity <= 0:
            request.set_exception(RpcException("id must be a node id and capacity_sat a positive integer",
                                               code=INVALID_PARAMS))
            return
        close_command(request, factory_id, lambda r, note: r.seller.sell(factory_id, id, capacity, note),
                      "superscalar-sell-inbound", SALE_FAILED, "no sale")

    plugin.add_method("superscalar-close", close_factory, background=True)
    plugin.add_method("superscalar-sell-inbound", sell_inbound, background=True)
    plugin.add_method("superscalar-rollover", rollover_factory, background=True)

    def ask_lsp(request: Any, work: Any, command: str) -> None:
        """Run a request to an LSP in a thread (it waits for the LSP's answer)."""
        def run() -> None:
            try:
                request.set_result(work(holder["roles"]))
            except LspsError as e:
                data = f" {json.dumps(e.data)}" if e.data else ""
                request.set_exception(RpcException(f"the LSP answered error {e.code}: {e.message}{data}",
                                                   code=LSP_REFUSED))
            except Exception as e:  # no answer in time, peer gone, bad parameters, an RPC failure
                request.set_exception(RpcException(f"{command}: {e}", code=LSP_REFUSED))

        threading.Thread(target=run, name=command, daemon=True).start()

    def lsp_terms(plugin: Plugin, request: Any, id: str, **kwargs: Any) -> None:
        """Ask LSP `id` (a connected peer) which LSPS protocols it serves and its SuperScalar terms."""
        ask_lsp(request, lambda r: ask_terms(r.lsps_client, id), "superscalar-terms")

    def join_next(plugin: Plugin, request: Any, id: str, inbound_sat: int, **kwargs: Any) -> None:
        """Ask LSP `id` for a place in its next laddered factory with `inbound_sat` of inbound."""
        ask_lsp(request, lambda r: ask_join(r.lsps_client, id, int(inbound_sat)), "superscalar-join-next")

    def move_factory(plugin: Plugin, request: Any, factory_id: str, id: str, inbound_sat: int, **kwargs: Any) -> None:
        """Roll over into LSP `id`'s next factory (with `inbound_sat`) instead of factory `factory_id`'s next
        one: a place there first, then a leave request here (paid on chain at this factory's rollover)."""
        ask_lsp(request, lambda r: move(r.node, r.store, r.transport, r.lsps_client, r.allowed, factory_id, id,
                                        int(inbound_sat)), "superscalar-move")

    def jit_invoice(plugin: Plugin, request: Any, lsp_id: str, amount_msat: Any, description: str,
                    **kwargs: Any) -> None:
        """Buy a JIT channel (LSPS2) from connected LSP `lsp_id` and make an invoice of `amount_msat`
        ("any": variable amount, no MPP) paid through it; returns the bolt11 and the opening fee."""
        try:
            wanted = None if amount_msat == "any" else int(amount_msat)
        except (TypeError, ValueError):
            request.set_exception(RpcException("amount_msat must be an integer or 'any'", code=INVALID_PARAMS))
            return
        ask_lsp(request, lambda r: r.jit_client.invoice(lsp_id, wanted, str(description)), "superscalar-jit-invoice")

    def jit_list(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        """The JIT channels (LSPS2) this node sold (LSP) and bought (client), with their channels."""
        r = holder["roles"]
        return {"sold": r.jit.buys() if r.jit is not None else [], "bought": r.jit_client.buys()}

    plugin.add_method("superscalar-jit-invoice", jit_invoice, background=True)
    plugin.add_method("superscalar-jit-list", jit_list)
    def set_webhook(plugin: Plugin, request: Any, id: str, app_name: str, webhook: str, **kwargs: Any) -> None:
        """Register `webhook` (https) under `app_name` with LSP `id` (LSPS5, bLIP-55): the LSP posts a
        signed notification there when something needs this node while it is not connected."""
        ask_lsp(request, lambda r: register_webhook(r.lsps_client, id, str(app_name), str(webhook)),
                "superscalar-webhook")

    plugin.add_method("superscalar-webhook", set_webhook, background=True)
    plugin.add_method("superscalar-terms", lsp_terms, background=True)
    plugin.add_method("superscalar-move", move_factory, background=True)
    plugin.add_method("superscalar-join-next", join_next, background=True)

    def buy(plugin: Plugin, request: Any, id: str, lsp_balance_sat: int, client_balance_sat: int = 0,
            channel_expiry_blocks: Optional[int] = None, **kwargs: Any) -> None:
        """Buy `lsp_balance_sat` of inbound (and `client_balance_sat` of balance) in LSP `id`'s next
        factory (LSPS1): get_info, create_order, then pay its invoice from this node's channels. Returns
        once the LSP holds the payment (or the order failed); `superscalar-order` follows it."""
        ask_lsp(request, lambda r: buy_inbound(r.node, r.lsps_client, r.allowed, id, int(lsp_balance_sat),
                                               int(client_balance_sat),
                                               None if channel_expiry_blocks is None else int(channel_expiry_blocks),
                                               plugin.log), "superscalar-buy-inbound")

    def order(plugin: Plugin, request: Any, id: str, order_id: str, **kwargs: Any) -> None:
        """Show order `order_id` at LSP `id` (lsps1.get_order)."""
        ask_lsp(request, lambda r: get_order(r.lsps_client, id, str(order_id)), "superscalar-order")

    plugin.add_method("superscalar-buy-inbound", buy, background=True)
    plugin.add_method("superscalar-order", order, background=True)

    @plugin.method("superscalar-list")
    def list_factories(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        """List every factory this node is in, with its channels and this node's exit cost."""
        r = holder["roles"]
        height = r.node.blockheight()
        return {"factories": [describe(r.node, r.store, fid, height) for fid in r.store.factory_ids()
                              if (rec := r.store.get(fid, "factory")) and rec.get("stage") != "abandoned"]}

    @plugin.method("superscalar-exit")
    def exit_factory(plugin: Plugin, factory_id: str, peer_id: Optional[str] = None, **kwargs: Any) -> dict[str, Any]:
        """Start a unilateral exit from factory `factory_id`: a client publishes its own path; the LSP
        the path of client `peer_id`, or every path. It proceeds block by block and survives restarts."""
        r = holder["roles"]
        if not isinstance(factory_id, str) or len(factory_id) != 64:
            raise RpcException("factory_id must be 64 hex characters", code=INVALID_PARAMS)
        try:
            plan = exit_plan(r.store, r.client, factory_id, peer_id)
        except ValueError as e:
            raise RpcException(str(e), code=INVALID_PARAMS)
        return {"factory_id": factory_id, "exit": plan.start(r.exits, factory_id)}

    @plugin.method("superscalar-helper-exit")
    def helper_exit(plugin: Plugin, factory_id: str, **kwargs: Any) -> dict[str, Any]:
        """Ask this client's helpers to publish its exit path from factory `factory_id` now, bumping it
        with their coins (its LSP stopped answering); they answer in the background."""
        r = holder["roles"]
        if not r.helper_packages.helpers:
            raise RpcException("no helper configured (superscalar-helpers)", code=INVALID_PARAMS)
        try:
            return {"factory_id": factory_id, "asked": r.helper_packages.act_now(str(factory_id))}
        except ValueError as e:
            raise RpcException(str(e), code=INVALID_PARAMS)

    def restore(plugin: Plugin, request: Any, recover_channels: bool = False, **kwargs: Any) -> None:
        """A node started again from its hsm_secret alone: fetch our factory records from our connected
        helpers, check each (our key, its signatures, its funding output on chain) and write them back;
        with `recover_channels`, also hand the channels' static backups to `recoverchannel`
        (client/backup.py says why that is off by default)."""
        r = holder["roles"]
        if not r.client_backup.helpers:
            request.set_exception(RpcException("no helper configured (superscalar-helpers)", code=INVALID_PARAMS))
            return

        def run() -> None:
            try:
                request.set_result(r.client_backup.restore(recover_channels=bool(recover_channels)))
            except Exception as e:
                request.set_exception(RpcException(f"restore failed: {e}"))
        threading.Thread(target=run, name="superscalar-restore", daemon=True).start()

    plugin.add_method("superscalar-restore", restore, background=True)

    @plugin.method("superscalar-leave")
    def leave(plugin: Plugin, factory_id: str, **kwargs: Any) -> dict[str, Any]:
        """Ask the LSP of factory `factory_id` to pay this client on chain at the factory's next cooperative
        close or rollover instead of carrying it into the next factory (client)."""
        r = holder["roles"]
        if not isinstance(factory_id, str) or len(factory_id) != 64:
            raise RpcException("factory_id must be 64 hex characters", code=INVALID_PARAMS)
        try:
            return request_leave(r.node, r.store, r.transport, factory_id)
        except ValueError as e:
            raise RpcException(str(e), code=INVALID_PARAMS)

    @plugin.subscribe("block_added")
    def on_block_added(plugin: Plugin, **kwargs: Any) -> None:
        r = holder.get("roles")
        if r is None:
            return
        try:
            height = int(kwargs.get("block_added", {}).get("height") or 0) or r.node.blockheight()
        except Exception as e:
            _report(plugin, "block height", e)
            return
        steps = r.follower.on_block(height)
        slowest = sorted(steps.seconds, key=lambda s: -s[1])
        plugin.log(f"block {height}: steps took {steps.total_seconds * 1000:.1f} ms ("
                   + "; ".join(f"{what} {s * 1000:.1f}" for what, s in slowest if s >= 0.0005) + ")",
                   level="debug")

    @plugin.subscribe("channel_state_changed")
    def on_channel_state_changed(plugin: Plugin, channel_state_changed: dict[str, Any], **kwargs: Any) -> None:
        """A factory channel closing unilaterally before its leaf is on chain can only pay out once the
        leaf confirms: publish its path (either side may do it; both protect their own balance). A
        mutual close leaves the tree alone."""
        r = holder.get("roles")
        if r is None:
            return
        if channel_state_changed.get("peer_id"):
            r.refresh.mark(str(channel_state_changed["peer_id"]))
        if channel_state_changed.get("new_state") not in UNILATERAL_STATES:
            return
        try:
            exit_for_closing_channel(r.node, r.store, r.client, r.exits, str(channel_state_changed.get("channel_id")))
        except Exception as e:
            _report(plugin, "exit for closing channel", e)

    def on_channel_opened(plugin: Plugin, channel_opened: dict[str, Any], **kwargs: Any) -> None:
        r = holder.get("roles")
        peer = channel_opened.get("id")
        if r is None or not peer:
            return
        r.refresh.mark(str(peer))

    def on_forward_event(plugin: Plugin, forward_event: dict[str, Any], **kwargs: Any) -> None:
        """A forward resolved: a short-headroom HTLC from a client no longer counts (htlc_exposure.py); a forward
        short by an on-demand sale's price was taken or refused (lsp/inbound.py)."""
        r = holder.get("roles")
        if r is None or forward_event.get("status") not in ("settled", "failed", "local_failed"):
            return
        channel_id = r.index.channel_of(str(forward_event.get("in_channel")))
        if channel_id is not None:
            r.exposure.resolved(channel_id, str(forward_event.get("payment_hash")))
        if r.on_demand is not None:
            r.on_demand.on_forward_event(forward_event)

    plugin.add_subscription("channel_opened", on_channel_opened)
    plugin.add_subscription("forward_event", on_forward_event)

    @plugin.async_hook("htlc_accepted")
    def on_htlc_accepted(onion: dict[str, Any], htlc: dict[str, Any], plugin: Plugin, request: Any,
                         **kwargs: Any) -> None:
        """A client's JIT payment part first (lsps2: underpaid by the opening fee, over the LSP's new
        zero-conf channel); then the factory channels' policy; then a part paying an on-demand sale's price
        (client/on_demand.py); then, at an LSP, a part of an LSPS1 order's
        hold invoice is held until the order is filled or failed, a part for a JIT scid until its channel
        is open, and a forward to a factory client whose inbound is used up until a sale adds a channel
        (each answered later, from another thread)."""
        r = holder.get("roles")

        def checked(what: str, check: Callable[[Roles], Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
            """`check`'s answer for this HTLC (None: not its HTLC); a failure if it raised (fail closed)."""
            try:
                return check(r) if r is not None else None
            except Exception as e:
                _report(plugin, what, e)
                return {"result": "fail", "failure_message": f"{TEMPORARY_NODE_FAILURE:04x}"}

        jit_answer = checked("htlc_accepted JIT part check", lambda roles: roles.jit_client.on_htlc(onion, htlc))
        if jit_answer is not None:
            request.set_result(jit_answer)
            return
        try:
            failure = r.htlcs.failure(onion, htlc) if r else None
        except Exception as e:  # fail closed: an HTLC we could not check may be one nothing backs
            _report(plugin, "htlc_accepted check", e)
            failure = (f"{TEMPORARY_NODE_FAILURE:04x}", f"the factory channel check failed: {e!r}")
        if failure is not None:
            plugin.log(f"failing HTLC {htlc.get('payment_hash')}: {failure[1]}", level="info")
            request.set_result({"result": "fail", "failure_message": failure[0]})
            return
        # a payment to us over a channel sold on demand, short by the sale's agreed price
        paid = checked("htlc_accepted on-demand price check", lambda roles: roles.on_demand_payments.on_htlc(onion, htlc))
        if paid is not None:
            request.set_result(paid)
            return
        try:  # an LSPS1 order's hold invoice: answered once the order is filled or failed
            if r is not None and r.orders is not None and r.orders.on_htlc(
                    str(htlc.get("payment_hash")), msat(htlc.get("amount_msat")), int(htlc.get("cltv_expiry") or 0),
                    request.set_result):
                return
        except Exception as e:
            _report(plugin, "LSPS1 hold invoice", e)
        try:
            if r is not None and r.jit is not None and r.jit.on_htlc(onion, htlc, request.set_result):
                return
            if r is not None and r.on_demand is not None and r.on_demand.on_htlc(onion, htlc, request.set_result):
                return
        except Exception as e:  # fail closed: a JIT forward we could not handle
            _report(plugin, "htlc_accepted JIT forward", e)
            request.set_result({"result": "fail", "failure_message": f"{TEMPORARY_NODE_FAILURE:04x}"})
            return
        try:  # LSPS5: a forward to a client that sleeps waits (bounded) for its webhook to wake it
            sleeper = r.sleeping_peer_of(onion.get("short_channel_id")) if r is not None else None
            if sleeper is not None and r is not None and r.webhooks is not None \
                    and r.webhooks.hold(sleeper, request.set_result):
                return
        except Exception as e:  # lightningd's own handling: the forward fails if the peer stays away
            _report(plugin, "htlc_accepted LSPS5 hold", e)
        request.set_result({"result": "continue"})

    def on_rpc_command(rpc_command: dict[str, Any], plugin: Plugin, request: Any, **kwargs: Any) -> None:
        """`invoice` on a node with factory channels asks for their final CLTV; a client's gets a route
        hint through its LSP if lightningd gave it none (invoices.py: made in a thread)."""
        r = holder.get("roles")
        try:
            answer = r.invoices.at_once(rpc_command) if r else CONTINUE
        except Exception as e:  # the invoice is still made, with lightningd's defaults
            _report(plugin, "invoice final CLTV", e)
            answer = CONTINUE
        if answer is not None:
            request.set_result(answer)
            return
        threading.Thread(target=_invoice_made, args=(plugin, r, rpc_command, request), name="superscalar-invoice",
                         daemon=True).start()

    plugin.add_hook("rpc_command", on_rpc_command, background=True, filters=["invoice"])

    @plugin.hook("custommsg")
    def on_custommsg(peer_id: str, payload: str, plugin: Plugin, **kwargs: Any) -> dict[str, str]:
        r = holder.get("roles")
        try:
            raw = bytes.fromhex(payload)
            if r is not None and is_lsps(raw):  # LSPS0: a response to us, else a request to the LSP
                if not r.lsps_client.on_message(peer_id, raw) and r.lsps_server is not None:
                    r.lsps_server.on_message(peer_id, raw)
                return {"result": "continue"}
            if r is None or not Transport.is_ours(raw):
                return {"result": "continue"}
            msg = r.transport.receive(peer_id, raw)
            if isinstance(msg, TowerStore):  # a client of any LSP asks us, its helper, to keep a penalty
                r.transport.send(peer_id, r.tower.keep(peer_id, msg) if r.tower is not None else TowerAnswer(
                    msg.factory_id, msg.session_id, 0, 0, "this node is not a helper (superscalar-helper)"))
            elif isinstance(msg, HelpPackage):  # and to publish its factory's distribution if need be
                r.transport.send(peer_id, r.distributions.keep(peer_id, msg) if r.distributions is not None else TowerAnswer(
                    msg.factory_id, msg.session_id, 0, 0, "this node is not a helper (superscalar-helper)"))
            elif isinstance(msg, HelpExit):  # and to publish its exit path, with our coins, when it must
                r.transport.send(peer_id, r.helped_exits.keep(peer_id, msg) if r.helped_exits is not None else TowerAnswer(
                    msg.factory_id, msg.session_id, 0, 0, "this node is not a helper (superscalar-helper)"))
            elif isinstance(msg, BackupStore):  # and to keep its encrypted records
                r.transport.send(peer_id, r.backups.keep(peer_id, msg) if r.backups is not None else TowerAnswer(
                    msg.factory_id, msg.session_id, 0, 0, "this node is not a helper (superscalar-helper)"))
            elif isinstance(msg, BackupFetch):  # and to give them back
                r.transport.send_many([(peer_id, m) for m in (r.backups.fetch(peer_id, msg) if r.backups is not None
                                                              else [BackupBlob(msg.factory_id, msg.session_id, 0, 0, b"")])])
            elif msg is not None and not r.helper_packages.on_message(peer_id, msg) \
                    and not r.client_backup.on_message(peer_id, msg) and not r.tower_client.on_message(peer_id, msg) and not r.lsp.on_message(peer_id, msg) and not r.closer.on_message(peer_id, msg) \
                    and not r.seller.on_message(peer_id, msg) and not r.client_sales.on_message(peer_id, msg) \
                    and not (r.is_lsp and r.leavers.on_message(peer_id, msg)) \
                    and not r.client_closer.on_message(peer_id, msg):
                r.client.on_message(peer_id, msg)
        except WireError as e:
            plugin.log(f"malformed superscalar message from {peer_id}: {e}", level="info")
        except Exception as e:  # never let an exception escape into the hook
            _report(plugin, f"handling a message from {peer_id}", e)
        return {"result": "continue"}

    @plugin.subscribe("connect")
    def on_connect(plugin: Plugin, **kwargs: Any) -> None:
        """A peer whose factories we join: say hello (superscalar.get_info), so it may invite us."""
        r = holder.get("roles")
        peer = (kwargs.get("connect") or {}).get("id") or kwargs.get("id")
        if r is not None and peer and r.webhooks is not None:
            r.webhooks.on_connect(peer)  # HTLCs held while it slept go on
        if r is not None and peer:
            r.tower_client.on_connect(peer)  # a helper back: the penalties it has not answered go again
            r.helper_packages.on_connect(peer)
        if r is None or not peer or r.is_lsp or (r.allowed is not None and peer not in r.allowed):
            return
        threading.Thread(target=hello, args=(r.lsps_client, peer, plugin.log), name="superscalar-hello",
                         daemon=True).start()

    @plugin.subscribe("onionmessage_forward_fail")
    def on_onion_forward_fail(plugin: Plugin, **kwargs: Any) -> None:
        """An onion message lightningd could not forward: one for a sleeping client with an LSPS5
        webhook is kept and the client woken (lsp/webhooks.py `hold_onion`)."""
        r = holder.get("roles")
        fail = kwargs.get("onionmessage_forward_fail") or kwargs
        peer, path_key, incoming = fail.get("next_node_id"), fail.get("path_key"), fail.get("incoming")
        if r is None or r.webhooks is None or not (peer and path_key and incoming and fail.get("outgoing")):
            return
        try:
            if r.webhooks.hold_onion(str(peer), str(path_key), str(incoming)):
                plugin.log(f"LSPS5: an onion message for sleeping {peer} is kept until it wakes", level="debug")
        except Exception as e:
            _report(plugin, "keeping an onion message", e)

    @plugin.hook("commitment_revocation")
    def on_commitment_revocation(plugin: Plugin, commitment_txid: str, penalty_tx: str, channel_id: str = "",
                                 commitnum: int = 0, **kwargs: Any) -> dict[str, str]:
        """A peer revoked a commitment: its penalty goes, sealed, to our helpers (client/tower.py)."""
        r = holder.get("roles")
        if r is not None:
            try:
                r.tower_client.on_revocation(str(commitment_txid), str(penalty_tx), str(channel_id), int(commitnum))
            except Exception as e:
                _report(plugin, "guarding a revoked commitment", e)
        return {"result": "continue"}

    @plugin.hook("openchannel")
    def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        r = holder.get("roles")
        try:
            if r is None:
                return {"result": "continue"}
            # both see every open (a factory's invitation or sale, a JIT buy's channel): a sale's
            # expectation is noted even when the channel also serves a JIT buy
            factory_answer = r.client.openchannel(openchannel)
            jit_answer = r.jit_client.openchannel(openchannel)
            return factory_answer if "mindepth" in factory_answer else (jit_answer or factory_answer)
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
            r.speakers.forget(peer)
            r.lsps_client.on_disconnect(peer)
            if r.lsps_server is not None:
                r.lsps_server.forget(peer)
            r.transport.forget(peer)
            r.lsp.on_disconnect(peer)
            r.closer.on_disconnect(peer)
            r.seller.on_disconnect(peer)
            r.client_sales.on_disconnect(peer)
            r.client.on_disconnect(peer)
            r.client_closer.on_disconnect(peer)
        except Exception as e:
            _report(plugin, f"disconnect handling for {peer}", e)

    return plugin
