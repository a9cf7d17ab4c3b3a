#!/usr/bin/env python3
"""Regenerate a stratum's randomisation list from the seed and the trial definition (URS §3).

Standard library only, and independent of Sealroom's code: an independent statistician
runs it with the seed and the definition file, and compares what it prints with the
service's own export (``sealroom lists export``). See docs/reproduce-list.md.

    python3 reproduce_list.py --trial reclaiim.toml --seed-file seed.hex --stratum 4
    python3 reproduce_list.py --trial reclaiim.toml --seed-file seed.hex --all \
        --compare lists.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import itertools
import sys
import tomllib
from collections.abc import Iterator


def stream(seed: bytes, stratum_key: str) -> Iterator[int]:
    """The stratum's 64-bit integers: HMAC-SHA256 blocks, each read as four big-endian."""
    for counter in itertools.count():
        message = b"sealroom/list/v1|" + stratum_key.encode("utf-8") + b"|"
        block = hmac.new(seed, message + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        for offset in range(0, 32, 8):
            yield int.from_bytes(block[offset : offset + 8], "big")


def below(integers: Iterator[int], n: int) -> int:
    """A uniform integer in [0, n): rejection of the top ``2**64 % n`` values."""
    limit = 2**64 - (2**64 % n)
    while True:
        u = next(integers)
        if u < limit:
            return u % n


def stratum_list(
    seed: bytes, key: str, arms: list[tuple[str, int]], sizes: list[int], slots: int
) -> list[str]:
    """Blocks of a random size, each arm ``size * ratio / total`` times, Fisher-Yates
    shuffled, until the list holds at least ``slots`` slots."""
    integers = stream(seed, key)
    total = sum(ratio for _arm, ratio in arms)
    allocations: list[str] = []
    while len(allocations) < slots:
        size = sizes[below(integers, len(sizes))]
        block = [arm for arm, ratio in arms for _ in range(size * ratio // total)]
        for i in range(size - 1, 0, -1):
            j = below(integers, i + 1)
            block[i], block[j] = block[j], block[i]
        allocations.extend(block)
    return allocations


def strata(definition: dict) -> list[str]:
    """Stratum keys in Cartesian order, the last factor varying fastest (numbered from 1)."""
    factors = definition["stratification"]["factors"]
    levels = [[f"{factor['id']}={level}" for level in factor["levels"]] for factor in factors]
    return ["|".join(combination) for combination in itertools.product(*levels)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial", required=True, help="the trial definition (TOML)")
    seed = parser.add_mutually_exclusive_group(required=True)
    seed.add_argument("--seed-file", help="a file holding the seed as 64 hex digits")
    seed.add_argument("--seed", help="the seed as 64 hex digits (visible in the process list)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--stratum", help="a stratum's number (from 1) or key")
    which.add_argument("--all", action="store_true", help="every stratum")
    parser.add_argument("--compare", help="a `sealroom lists export` CSV to compare with")
    args = parser.parse_args(argv)

    with open(args.trial, "rb") as handle:
        definition = tomllib.load(handle)
    if args.seed:
        text = args.seed
    else:
        with open(args.seed_file, encoding="ascii") as handle:
            text = handle.read()
    seed_bytes = bytes.fromhex(text.strip())
    if len(seed_bytes) != 32:
        parser.error("the seed is 32 bytes (64 hex digits)")
    arms = [(arm["id"], arm["ratio"]) for arm in definition["arms"]]
    sizes = list(definition["randomisation"]["block_sizes"])
    slots = definition["randomisation"]["slots_per_stratum"]
    keys = strata(definition)
    if args.all:
        chosen = list(enumerate(keys, start=1))
    elif args.stratum.isdigit() and 1 <= int(args.stratum) <= len(keys):
        chosen = [(int(args.stratum), keys[int(args.stratum) - 1])]
    elif args.stratum in keys:
        chosen = [(keys.index(args.stratum) + 1, args.stratum)]
    else:
        parser.error(f"no stratum {args.stratum!r}; the strata are: {', '.join(keys)}")

    rows = [
        (key, f"R{number:02d}-{position:04d}", arm)
        for number, key in chosen
        for position, arm in enumerate(stratum_list(seed_bytes, key, arms, sizes, slots), 1)
    ]
    if args.compare is None:
        writer = csv.writer(sys.stdout)
        writer.writerow(["stratum", "randomization_number", "arm"])
        writer.writerows(rows)
        return 0
    with open(args.compare, newline="", encoding="utf-8") as handle:
        wanted = {key for _number, key in chosen}
        exported = [tuple(row) for row in csv.reader(handle)][1:]
        exported = [row for row in exported if row[0] in wanted]
    for mine, theirs in itertools.zip_longest(rows, exported):
        if mine != theirs:
            print(f"DIFFERENT: regenerated {mine}, exported {theirs}")
            return 1
    print(f"SAME: {len(rows)} slots of {len(chosen)} strata regenerated as exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
