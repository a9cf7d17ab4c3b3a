"""Pictures of the reports (R-REP-4), drawn with matplotlib's Agg and SVG backends.

Each function takes a report as the services build it (never a session, never an actor:
the permission was checked when the report was made) and returns SVG or PNG bytes. The
blinded pictures (cumulative enrollment, screen failures) are drawn from the blinded
reports only, so they can depend on no arm; the balance picture is the statistician's.

Pictures are reproducible: no timestamp in the files, a fixed SVG id salt, text kept as
text in the SVG (``svg.fonttype = none``), so that tests can parse what they show.
matplotlib is set up without touching the user's home: its configuration and font cache go
to ``MPLCONFIGDIR``, a private temporary directory unless the caller set one.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Final

FORMATS: Final = {"svg": "image/svg+xml", "png": "image/png"}
_LOCK = threading.Lock()  # matplotlib's rc settings are global: one drawing at a time


@cache
def _matplotlib() -> Any:
    if "MPLCONFIGDIR" not in os.environ:
        private = tempfile.mkdtemp(prefix="sealroom-matplotlib-")
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        os.environ["MPLCONFIGDIR"] = private
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib


@contextmanager
def _figure(width: float = 8.0, height: float = 4.5) -> Iterator[Any]:
    matplotlib = _matplotlib()
    from matplotlib.figure import Figure

    style = {
        "svg.hashsalt": "sealroom",
        "svg.fonttype": "none",
        "font.family": "DejaVu Sans",
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with _LOCK, matplotlib.rc_context(style):
        yield Figure(figsize=(width, height), dpi=100, layout="constrained")


def _whole_numbers(axes: Any) -> None:
    """People are counted whole: no 2.5 on the axis."""
    from matplotlib.ticker import MaxNLocator

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def _save(figure: Any, file_format: str) -> bytes:
    if file_format not in FORMATS:
        raise ValueError(f"unknown picture format {file_format!r}")
    out = io.BytesIO()
    metadata = {"Date": None} if file_format == "svg" else {"Software": None}
    figure.savefig(out, format=file_format, metadata=metadata)
    return out.getvalue()


def cumulative_enrollment(data: dict[str, Any], file_format: str) -> bytes:
    """Randomised participants over time, one step line per site and one for the trial,
    with the target as a dashed line (``reports.randomisations_by_site``)."""
    with _figure() as figure:
        axes = figure.subplots()
        every: list[datetime] = sorted(t for times in data["sites"].values() for t in times)
        for site, times in data["sites"].items():
            if times:
                _steps(axes, times, label=f"site {site}", end=every[-1])
        if every:
            _steps(axes, every, label="all sites", end=every[-1], linewidth=2.5, color="black")
        if data.get("target"):
            axes.axhline(data["target"], linestyle="--", color="grey", label="target")
        axes.set_title(f"{data['trial']}: cumulative randomisations")
        axes.set_xlabel("date (UTC)")
        axes.set_ylabel("participants randomised")
        axes.set_ylim(bottom=0)
        _whole_numbers(axes)
        if not every:
            axes.text(0.5, 0.5, "no participant randomised yet", ha="center", va="center")
        else:
            axes.legend(loc="upper left")
            figure.autofmt_xdate()
        return _save(figure, file_format)


def _steps(axes: Any, times: list[datetime], *, label: str, end: datetime, **style: Any) -> None:
    xs = [*times, max(end, times[-1]) + timedelta(hours=1)]
    ys = [*range(1, len(times) + 1), len(times)]
    axes.step(xs, ys, where="post", label=label, **style)


def screen_failures(report: dict[str, Any], file_format: str) -> bytes:
    """Screen failures by failed eligibility rule, and those outside the screening window
    (``reports.enrollment_report``)."""
    failures = report["screen_failures"]
    names = [item["rule"] for item in failures["by_rule"]] + ["window"]
    counts = [item["participants"] for item in failures["by_rule"]] + [failures["outside_window"]]
    with _figure() as figure:
        axes = figure.subplots()
        bars = axes.bar(names, counts, color="#4c72b0")
        axes.bar_label(bars, labels=[str(n) for n in counts])
        axes.set_title(f"{report['trial']}: screen failures by failed rule")
        axes.set_xlabel("eligibility rule (window: outside the screening window)")
        axes.set_ylabel("participants")
        axes.set_ylim(0, max([*counts, 1]) * 1.15)
        _whole_numbers(axes)
        return _save(figure, file_format)


def balance(report: dict[str, Any], file_format: str) -> bytes:
    """Unblinded: randomised participants per stratum and arm, with each list's slots left
    (``reports.balance_report``). For the statistician only."""
    arms = report["arms"]
    strata = report["strata"]
    with _figure(9.0, 5.0) as figure:
        axes = figure.subplots()
        width = 0.8 / len(arms)
        positions = range(len(strata))
        for index, arm in enumerate(arms):
            counts = [stratum["counts"][arm["id"]] for stratum in strata]
            bars = axes.bar(
                [p + (index - (len(arms) - 1) / 2) * width for p in positions],
                counts,
                width,
                label=arm["label"],
            )
            for stratum, bar in zip(strata, bars, strict=True):
                # Named in the SVG, so that a reader (and a test) finds each bar.
                bar.set_gid(f"bar-{arm['id']}-{stratum['number']}")
            axes.bar_label(bars, labels=[str(n) for n in counts])
        axes.set_xticks(
            list(positions),
            [f"{s['number']}: {s['stratum'].replace('|', chr(10))}" for s in strata],
            fontsize=7,
        )
        axes.set_title(f"{report['trial']}: balance per stratum (UNBLINDED)")
        axes.set_ylabel("participants randomised")
        top = max([1, *(n for s in strata for n in s["counts"].values())])
        axes.set_ylim(0, top * 1.25)
        _whole_numbers(axes)
        axes.legend(loc="upper right")
        return _save(figure, file_format)


#: Each picture by the name ``sealroom report NAME`` and ``?picture=`` use.
PICTURES: Final[dict[str, Callable[[dict[str, Any], str], bytes]]] = {
    "enrollment": cumulative_enrollment,
    "screen-failures": screen_failures,
    "balance": balance,
}
