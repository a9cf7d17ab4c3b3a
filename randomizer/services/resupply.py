"""Resupply requests (R-SHIP): asked for by the service after an allocation, told to the depot.

:func:`randomizer.services.kits.allocate_kits` calls :func:`request_resupply` when any
arm's dispensable stock at the site has fallen below the site's ``trigger`` level
(``[supply]`` of the trial definition). The request is a ``requested`` shipment with no
kits yet: the depot dispatches it (:func:`randomizer.services.shipments.dispatch_shipment`),
which is when the kits that bring every arm back to ``target`` are chosen. One request per
site at a time: while a shipment to the site is requested or on its way, none is added
(the first allocation after its receipt asks again if the site still needs it).

The message to the depot (the admins with an e-mail address) names the site and the
shipment, never an arm or a count by arm. The work done here depends on the site's stock
by arm: that is resupply timing, the one accepted exception to R-BLIND-1's "the same work
whatever the arm", bounded in README.md's threat model.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from randomizer.models import SHIPMENT_OPEN, SHIPMENT_REQUESTED, Shipment
from randomizer.roles import ADMIN, SYSTEM
from randomizer.services.context import TrialContext
from randomizer.services.notifications import notify, users_to_notify

log = logging.getLogger(__name__)

RESUPPLY_TOPIC = "shipment.requested"
RESUPPLY = "resupply"


def open_shipment(session: Session, site_id: str) -> Shipment | None:
    """The site's shipment that is requested or on its way, if there is one."""
    return session.scalars(
        select(Shipment)
        .where(Shipment.site_id == site_id, Shipment.status.in_(SHIPMENT_OPEN))
        .order_by(Shipment.id)
        .limit(1)
    ).first()


def request_resupply(session: Session, ctx: TrialContext, site_id: str) -> Shipment | None:
    """Ask the depot to resupply ``site_id`` (its lock held); None if a shipment is open.

    Audited (``shipment.requested``, by ``system``) and announced through the outbox in the
    caller's transaction: a rolled-back allocation leaves neither.
    """
    if open_shipment(session, site_id) is not None:
        return None
    shipment = Shipment(
        site_id=site_id,
        status=SHIPMENT_REQUESTED,
        origin=RESUPPLY,
        created_at=ctx.clock(),
        created_by=SYSTEM.name,
    )
    session.add(shipment)
    session.flush()
    ctx.audit.append(
        session,
        SYSTEM,
        "shipment.requested",
        str(shipment.id),
        {"shipment": shipment.id, "site": site_id, "origin": RESUPPLY},
    )
    recipients = users_to_notify(session, ADMIN)
    definition = ctx.definition
    subject = f"[{definition.id}] Resupply of site {site_id}: shipment {shipment.id}"
    lines = [
        f"Site {site_id} of {definition.id} has fallen below its resupply level.",
        f"Dispatch shipment {shipment.id}: POST /api/v1/shipments/{shipment.id}/dispatch",
        f"or `sealroom shipments dispatch {shipment.id}`; the service chooses the kits.",
        "",
    ]
    notify(session, ctx, RESUPPLY_TOPIC, recipients, subject, lines, site_id)
    if not recipients:
        log.warning("resupply of site %s requested; no admin has an e-mail address", site_id)
    return shipment
