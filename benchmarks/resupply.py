"""The resupply simulation over the bundled trial: refusals a site meets at given levels.

    .venv/bin/python benchmarks/resupply.py [--runs N] [--trigger T --target U]

For a site randomising one participant every 1, 2, 3, 5, 7 or 14 days (60 participants,
40 to 150 kg, shipments arriving 10 days after the request), prints the insufficient-supply
refusals over N simulated sites, the most shipments one needed and the lowest stock of an
arm, at the bundled ``[supply]`` levels (or those given). The service's rules, no database
(randomizer/domain/supply_simulation.py). The bundled levels were chosen from this table.
"""

from __future__ import annotations

import argparse

from randomizer.domain import bundled_trial_path, load_trial
from randomizer.domain.supply import SupplyLevels
from randomizer.domain.supply_simulation import LEAD_TIME_DAYS, PARTICIPANTS, simulate_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--trigger", type=int)
    parser.add_argument("--target", type=int)
    args = parser.parse_args()
    definition = load_trial(bundled_trial_path())
    levels = definition.supply.default
    if args.trigger is not None and args.target is not None:
        levels = SupplyLevels(args.trigger, args.target)
    print(
        f"trigger {levels.trigger}, target {levels.target}; {PARTICIPANTS} participants, "
        f"lead time {LEAD_TIME_DAYS} days, {args.runs} sites"
    )
    print("days between randomisations\trefusals\tmost shipments\tlowest stock of an arm")
    for days in (1, 2, 3, 5, 7, 14):
        results = simulate_runs(definition, levels, runs=args.runs, days_between=days)
        print(
            f"{days}\t{sum(r.refusals for r in results)}\t"
            f"{max(r.shipments for r in results)}\t{min(r.lowest_stock for r in results)}"
        )


if __name__ == "__main__":
    main()
