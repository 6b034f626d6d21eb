"""Text encoders the router computes in its own process: one process and two hops fewer per request.

On a small machine every process on a request's path waits for a core, and at 8 clients the hops
between the router and a model replica cost more than the model (docs/benchmarks.md, "Every hop,
measured"). A text encoder named in the application's `in_router:` list is therefore also loaded
inside each router replica, and the router sends the model's requests to that copy, with the same
priority batcher, instead of over a deployment handle.

The model's deployment still runs and stays the one place for its settings: its `user_config`
(batching, variant) is what the copy mirrors. Every `sync_s` the router reads the deployment's card
and loads the same variant (the registry version the deployment resolved, not whatever an alias
names by then) with the same batching; until the copy serves that, and whenever it cannot, the
deployment answers. The deployment also serves other deployments' calls (a hybrid re-ranker's).
The trade-off: an in-router model's requests scale with the router's replicas, not the model's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the router builds it (router.py); this module only keeps it in step
    from infergraph.deployments.encoder import TextEncoderReplica

log = logging.getLogger("ray.serve")


# Card fields that describe the deployment's configuration rather than the copy that computes.
CONFIGURED = ("variant_requested", "variant_reason", "variant_error")


def mirrored_config(card: dict[str, Any]) -> dict[str, Any]:
    """The `user_config` that makes a copy serve what the deployment's card says it serves."""
    source = card.get("variant_source", "base")
    if source == "registry":
        variant = card["variant_uri"]  # models:/<name>/<version>: the version, not the alias
    elif source == "path":
        variant = card["variant_requested"]
    else:
        variant = "base"
    return {**card.get("batching", {}), "variant": variant}


class InRouterModel:
    """The router's copy of one encoder deployment, kept in step with the deployment's card."""

    def __init__(self, name: str, make: Callable[[dict[str, Any]], TextEncoderReplica]) -> None:
        self.name = name
        self.make = make  # builds and warms a copy for a user_config; blocking
        self.copy: TextEncoderReplica | None = None
        self.serving = False  # the copy serves what the deployment serves
        self.error: str | None = None  # why it does not, when it tried and failed
        self._wanted: dict[str, Any] | None = None
        self.card: dict[str, Any] = {}  # the deployment's card the copy was last brought in step with

    async def sync(self, card: dict[str, Any]) -> None:
        """Load or reconfigure the copy so that it serves what `card` (the deployment's info()) says.

        A change that fails leaves the deployment answering, and is not retried until the card
        changes again (a broken variant would otherwise reload every few seconds).
        """
        self.card = card
        wanted = mirrored_config(card)
        if wanted == self._wanted:
            return
        self._wanted = wanted
        try:
            if self.copy is None:
                self.copy = await asyncio.to_thread(self.make, wanted)
            else:
                await self.copy.reconfigure(wanted)
                if self.copy.variant_error:  # the copy kept its old variant
                    raise RuntimeError(self.copy.variant_error)
        except Exception as exc:
            self.serving, self.error = False, f"{type(exc).__name__}: {exc}"
            log.error("%s: the router's copy does not serve (%s); its deployment answers", self.name, exc)
            return
        if not self.serving:
            log.info("%s: computed in the router from now on", self.name)
        self.serving, self.error = True, None

    async def run(self, jobs: list[Any]) -> list[Any]:
        assert self.copy is not None and self.serving
        return await self.copy.run(jobs)

    def info(self) -> dict[str, Any]:
        """The copy's card (what computes, its batching and counters), with what the deployment's
        configuration asked for and why: the copy was asked for the exact version that resolved to."""
        assert self.copy is not None
        configured = {key: self.card.get(key) for key in CONFIGURED}
        return {**self.copy.info(), **configured, "computed_in": "router"}


async def follow_deployments(
    copies: dict[str, InRouterModel],
    cards: dict[str, Callable[[], Awaitable[dict[str, Any]]]],
    interval_s: float,
    timeout_s: float = 10.0,
) -> None:
    """Every `interval_s`, bring each copy in step with its deployment's card (`cards[name]()`)."""
    while True:
        for name, copy in copies.items():
            try:
                async with asyncio.timeout(timeout_s):
                    card = await cards[name]()
            except Exception as exc:  # the deployment is starting or gone: keep what serves
                log.warning("%s: could not read the deployment's card: %s", name, exc)
                continue
            await copy.sync(card)
        await asyncio.sleep(interval_s)
