"""The CDISC SDTM DM-style export (issue 14: R-REP-3, R-REP-5)."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pyreadstat
import pytest
from sqlalchemy import select

from randomizer.models import AuditEntry
from randomizer.services.cdisc import DM_VARIABLES, NAMES
from tests.randomizer.test_reports import STATISTICIAN, arms_by_participant, enrol_scenario

ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
ISO_DATETIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"


def csv_rows(api) -> list[dict[str, str]]:
    response = api.get("/exports/dm", STATISTICIAN)
    assert response.status_code == 200, response.get_data()
    assert response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def read_xpt(content: bytes, tmp_path) -> tuple[pd.DataFrame, object]:
    path = tmp_path / "dm.xpt"
    path.write_bytes(content)
    return pyreadstat.read_xport(str(path))


@pytest.mark.requirement("R-REP-3")
def test_one_dm_row_per_randomised_participant_none_for_screen_failures(api, db, ctx, clock):
    done = enrol_scenario(api, clock)
    arms = arms_by_participant(db, ctx)
    labels = {arm.id: arm.label for arm in ctx.definition.arms}

    rows = csv_rows(api)

    assert list(rows[0]) == list(NAMES)
    assert sorted(row["SUBJID"] for row in rows) == sorted(done["randomized"])
    for row in rows:
        arm = arms[row["SUBJID"]]
        assert (row["STUDYID"], row["DOMAIN"]) == ("RECLAIIM", "DM")
        assert row["USUBJID"] == f"RECLAIIM-{row['SUBJID']}"
        assert row["SITEID"] == row["SUBJID"].split("-")[0]
        assert (row["ARMCD"], row["ARM"]) == (arm.upper(), labels[arm])
        assert (row["ACTARMCD"], row["ACTARM"]) == (row["ARMCD"], row["ARM"])
        assert pd.Series([row["RFSTDTC"]]).str.match(ISO_DATE).all()
        assert pd.Series([row["RANDDTC"]]).str.match(ISO_DATETIME).all()
        assert row["RANDDTC"].startswith(row["RFSTDTC"])
        stratum = ctx.definition.stratum(int(row["STRATARN"]))
        assert row["STRATAR"] == stratum.key == row["STRATAV"]
    assert not {"101-F1", "101-F2", "101-LATE", "101-WAIT"} & {row["SUBJID"] for row in rows}


@pytest.mark.requirement("R-REP-3")
def test_the_verified_stratum_is_the_corrected_one(api):
    assert api.screen_and_randomize("101-COR", prior_ig="no").status_code == 201
    body = {"strata": {"prior_ig": "yes"}, "reason": "prior IVIG found in the records"}
    assert api.post("/participants/101-COR/correct-stratum", "admin", json=body).status_code == 200

    (row,) = csv_rows(api)

    assert row["STRATAR"] == "region=north_america|prior_ig=no"
    assert row["STRATAV"] == "region=north_america|prior_ig=yes"


@pytest.mark.requirement("R-REP-3")
def test_the_xpt_file_reads_back_with_the_csv_rows(api, clock, tmp_path):
    enrol_scenario(api, clock)
    rows = csv_rows(api)

    response = api.get("/exports/dm", STATISTICIAN, headers={"Accept": "application/x-sas-xport"})
    by_query = api.get("/exports/dm?format=xpt", STATISTICIAN)

    assert response.mimetype == by_query.mimetype == "application/x-sas-xport"
    content = response.get_data()
    # XPT version 5 begins with the SAS library header; version 8 says LIBV8 there.
    assert content.startswith(b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!")
    frame, meta = read_xpt(content, tmp_path)
    assert meta.table_name == "DM"
    assert list(frame.columns) == list(NAMES)
    assert dict(zip(meta.column_names, meta.column_labels, strict=True)) == dict(DM_VARIABLES)
    read_back = [
        {name: (str(int(value)) if name == "STRATARN" else value) for name, value in row.items()}
        for row in frame.to_dict("records")
    ]
    assert read_back == rows


@pytest.mark.requirement("R-REP-3")
@pytest.mark.requirement("R-REP-5")
def test_every_dm_export_is_audited_with_its_row_count(api, db):
    for n in range(2):
        assert api.screen_and_randomize(f"101-DM{n}").status_code == 201

    assert api.get("/exports/dm", STATISTICIAN).status_code == 200
    assert api.get("/exports/dm?format=xpt", STATISTICIAN).status_code == 200

    with db.reading() as session:
        entries = [
            json.loads(text)
            for text in session.scalars(
                select(AuditEntry.canonical)
                .where(AuditEntry.action == "export.created")
                .order_by(AuditEntry.seq)
            )
        ]
    assert [entry["data"] for entry in entries] == [
        {"kind": "sdtm-dm", "rows": 2, "format": "csv"},
        {"kind": "sdtm-dm", "rows": 2, "format": "xpt"},
    ]
    assert all(entry["actor"] == "statistician" for entry in entries)


@pytest.mark.requirement("R-REP-3")
def test_an_unknown_format_is_a_validation_problem(api):
    response = api.get("/exports/dm?format=sas7bdat", STATISTICIAN)

    assert response.status_code == 422
    assert "format" in response.get_json()["errors"]
