"""The CDISC SDTM DM-style export (R-REP-3, R-REP-5): one row per randomised participant.

Variables, in this order, with SDTMIG names and labels (``DM_VARIABLES``):

* ``STUDYID``, ``DOMAIN`` (``DM``), ``USUBJID`` (``STUDYID-SUBJID``), ``SUBJID`` (the
  screening number), ``RFSTDTC`` (reference start: the day of randomisation, when the first
  kits are handed out), ``SITEID``;
* ``ARMCD``/``ARM`` (planned arm: the arm id upper-cased, at most 20 characters, and its
  label), ``ACTARMCD``/``ACTARM`` (actual arm: the same, since kits are only ever of the
  participant's arm);
* ``RANDDTC``: date and time of randomisation (ISO 8601, UTC). SDTMIG has no DM variable
  for it: ``RANDDTC`` is the name sponsors give it as a supplemental qualifier (SUPPDM
  QNAM), carried here on the DM row;
* ``STRATAR``/``STRATARN``: the stratum used for randomisation and its number, and
  ``STRATAV``: the stratum as verified (the latest correction, R-FIX, else ``STRATAR``),
  as the CDISC stratification variables name them.

Dates are ISO 8601; screen failures have no row. The same rows are written as CSV and as a
SAS transport file (XPT version 5, by pyreadstat); every export is one ``export.created``
entry, every refusal one ``export.refused``.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.orm import Session

from randomizer.errors import ValidationFailed
from randomizer.roles import EXPORT_DM, Actor
from randomizer.services.context import TrialContext
from randomizer.services.reports import allocation_rows, audited_export, export_refusals_audited

FORMATS: Final = ("csv", "xpt")

#: (name, label): SDTMIG names; labels at most 40 characters (XPT version 5).
DM_VARIABLES: Final = (
    ("STUDYID", "Study Identifier"),
    ("DOMAIN", "Domain Abbreviation"),
    ("USUBJID", "Unique Subject Identifier"),
    ("SUBJID", "Subject Identifier for the Study"),
    ("RFSTDTC", "Subject Reference Start Date/Time"),
    ("SITEID", "Study Site Identifier"),
    ("ARMCD", "Planned Arm Code"),
    ("ARM", "Description of Planned Arm"),
    ("ACTARMCD", "Actual Arm Code"),
    ("ACTARM", "Description of Actual Arm"),
    ("RANDDTC", "Date/Time of Randomization"),
    ("STRATAR", "Strata Used for Randomization"),
    ("STRATARN", "Strata Used for Randomization (N)"),
    ("STRATAV", "Strata from Verification Source"),
)
NAMES: Final = tuple(name for name, _label in DM_VARIABLES)


@dataclass(frozen=True)
class DmExport:
    """The file's bytes, its format and how many participants it holds."""

    content: bytes
    format: str
    rows: int


def arm_code(arm_id: str) -> str:
    """ARMCD: the arm id upper-cased, at most 20 characters (SDTMIG)."""
    return arm_id.upper()[:20]


def dm_rows(session: Session, ctx: TrialContext) -> list[dict[str, Any]]:
    """The DM rows, in randomisation order (unaudited: :func:`export_dm` records it)."""
    definition = ctx.definition
    numbers = {stratum.key: stratum.number for stratum in definition.strata()}
    rows = []
    for allocation in allocation_rows(session, ctx):
        arm = definition.arm(allocation["arm"])
        randomized_at = allocation["randomized_at"]
        rows.append(
            {
                "STUDYID": definition.id,
                "DOMAIN": "DM",
                "USUBJID": f"{definition.id}-{allocation['screening_number']}",
                "SUBJID": allocation["screening_number"],
                "RFSTDTC": randomized_at.date().isoformat(),
                "SITEID": allocation["site"],
                "ARMCD": arm_code(arm.id),
                "ARM": arm.label,
                "ACTARMCD": arm_code(arm.id),
                "ACTARM": arm.label,
                "RANDDTC": randomized_at.strftime("%Y-%m-%dT%H:%M:%S"),
                "STRATAR": allocation["stratum"],
                "STRATARN": numbers[allocation["stratum"]],
                "STRATAV": allocation["corrected_stratum"] or allocation["stratum"],
            }
        )
    return rows


def dm_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as CSV (UTF-8, a header of the variable names, CRLF as RFC 4180 says)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(NAMES)
    for row in rows:
        writer.writerow([row[name] for name in NAMES])
    return out.getvalue().encode("utf-8")


def dm_xpt(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as a SAS transport file, version 5, dataset ``DM`` (pyreadstat writes it)."""
    import pandas as pd
    import pyreadstat

    frame = pd.DataFrame(
        {
            name: pd.Series(
                [row[name] for row in rows], dtype="float64" if name == "STRATARN" else "object"
            )
            for name in NAMES
        }
    )
    labels = dict(DM_VARIABLES)
    # pyreadstat writes to a path only: a private temporary file, read back and removed.
    with tempfile.TemporaryDirectory(prefix="sealroom-dm-") as directory:
        path = os.path.join(directory, "dm.xpt")
        pyreadstat.write_xport(
            frame,
            path,
            file_label="Demographics",
            column_labels=labels,
            table_name="DM",
            file_format_version=5,
        )
        with open(path, "rb") as written:
            return written.read()


def export_dm(session: Session, ctx: TrialContext, actor: Actor, file_format: str) -> DmExport:
    """The DM dataset as ``csv`` or ``xpt``: statistician only, audited, refusals audited."""
    with export_refusals_audited(session, ctx, actor, "sdtm-dm"):
        EXPORT_DM.check(actor)
        if file_format not in FORMATS:
            raise ValidationFailed({"format": [f"Must be one of: {', '.join(FORMATS)}."]})
        rows = dm_rows(session, ctx)
        content = dm_csv(rows) if file_format == "csv" else dm_xpt(rows)
        audited_export(session, ctx, actor, "sdtm-dm", rows, format=file_format)
        return DmExport(content=content, format=file_format, rows=len(rows))
