"""Randomisation lists (URS §3, R-LIST): permuted blocks per stratum from a secret seed.

The algorithm is normative: an independent statistician must be able to regenerate any list
from the seed and the trial definition with a short script, so every step here follows the
URS text literally. Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from randomizer.domain.trial import Arm, TrialDefinition

LIST_DOMAIN = b"sealroom/list/v1|"
SEED_COMMITMENT_DOMAIN = b"sealroom/seed-commitment/v1|"
DEFINITION_COMMITMENT_DOMAIN = b"sealroom/definition-commitment/v1|"
SEED_BYTES = 32

_U64_RANGE = 2**64
_SEED_HEX = re.compile(r"[0-9A-Fa-f]{64}")


class RandomStream:
    """The deterministic random stream of one stratum: HMAC-SHA256 blocks read as u64s.

    Block ``c`` is ``HMAC-SHA256(key=seed, msg=LIST_DOMAIN + stratum_key + b"|" + c)`` with
    ``c`` as 8 big-endian bytes; each block gives four big-endian unsigned 64-bit integers.
    """

    def __init__(self, seed: bytes, stratum_key: str) -> None:
        _check_seed(seed)
        self._seed = bytes(seed)
        self._prefix = LIST_DOMAIN + stratum_key.encode("utf-8") + b"|"
        self._counter = 0
        self._pending: list[int] = []

    def __repr__(self) -> str:
        # Never show the seed: this object may end up in a traceback or a log line.
        return f"RandomStream(prefix={self._prefix!r}, counter={self._counter})"

    def next_u64(self) -> int:
        """The next unsigned 64-bit integer of the stream."""
        if not self._pending:
            message = self._prefix + self._counter.to_bytes(8, "big")
            block = hmac.new(self._seed, message, hashlib.sha256).digest()
            self._counter += 1
            # Reversed so that pop() hands them out in block order.
            self._pending = [
                int.from_bytes(block[offset : offset + 8], "big") for offset in (24, 16, 8, 0)
            ]
        return self._pending.pop()

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)``, by rejection so that no value is favoured."""
        if n < 1:
            raise ValueError(f"below(n) needs n >= 1, got {n}")
        limit = _U64_RANGE - (_U64_RANGE % n)
        while True:
            u = self.next_u64()
            if u < limit:
                return u % n


def stratum_list(
    seed: bytes,
    stratum_key: str,
    arms: Sequence[Arm],
    block_sizes: Sequence[int],
    slots: int,
) -> tuple[str, ...]:
    """The arm ids of one stratum's slots, in slot order (URS §3).

    Whole blocks are appended until there are at least ``slots`` slots, so the list may be
    longer; the extra slots are part of the list like any other.
    """
    ratio_sum = _check_design(arms, block_sizes, slots)
    stream = RandomStream(seed, stratum_key)
    allocations: list[str] = []
    while len(allocations) < slots:
        size = block_sizes[stream.below(len(block_sizes))]
        block = [arm.id for arm in arms for _ in range(size * arm.ratio // ratio_sum)]
        for i in range(size - 1, 0, -1):
            j = stream.below(i + 1)
            block[i], block[j] = block[j], block[i]
        allocations.extend(block)
    return tuple(allocations)


def generate_lists(seed: bytes, trial: TrialDefinition) -> dict[int, tuple[str, ...]]:
    """Every stratum's list for ``trial``, keyed by stratum number."""
    return {
        stratum.number: stratum_list(
            seed, stratum.key, trial.arms, trial.block_sizes, trial.slots_per_stratum
        )
        for stratum in trial.strata()
    }


def randomization_number(stratum_number: int, position: int) -> str:
    """The randomisation number of slot ``position`` (from 1) of a stratum: ``R04-0012``."""
    if stratum_number < 1 or position < 1:
        raise ValueError("stratum numbers and slot positions start at 1")
    return f"R{stratum_number:02d}-{position:04d}"


def definition_commitment(seed: bytes, definition_text: str) -> str:
    """Hex HMAC-SHA256, keyed by the seed, of the trial definition's exact text.

    What the audit trail (which blinded auditors read) records of the definition, instead of
    its plain hash: with a plain hash, anyone who guesses the block sizes could confirm the
    guess by hashing candidate files. Only whoever holds the seed (the statistician) can
    check this commitment.
    """
    _check_seed(seed)
    return hmac.new(
        seed, DEFINITION_COMMITMENT_DOMAIN + definition_text.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def seed_commitment(seed: bytes) -> str:
    """Hex SHA-256 commitment to a list seed, stored instead of the seed (R-LIST-3).

    A plain hash is a sound commitment here because the seed is 32 uniformly random bytes:
    hiding needs no added randomness when the committed value already has 256 bits of
    entropy (guessing it is as hard as guessing the seed), and binding follows from
    SHA-256's collision resistance. The domain prefix keeps this hash apart from any other
    use of the seed, such as the list stream's HMAC.
    """
    _check_seed(seed)
    return hashlib.sha256(SEED_COMMITMENT_DOMAIN + seed).hexdigest()


def seed_matches(seed: bytes, commitment: str) -> bool:
    """Whether ``seed`` is the seed ``commitment`` was made to (constant-time comparison)."""
    return hmac.compare_digest(seed_commitment(seed), commitment.lower())


def parse_seed(hex_text: str) -> bytes:
    """A 32-byte seed from exactly 64 hexadecimal characters.

    The error never repeats the text given: it may be most of a secret seed.
    """
    if len(hex_text) != 2 * SEED_BYTES:
        raise ValueError(
            f"a seed is exactly {2 * SEED_BYTES} hexadecimal characters "
            f"({SEED_BYTES} bytes); got {len(hex_text)} characters"
        )
    if not _SEED_HEX.fullmatch(hex_text):
        raise ValueError("a seed contains only the hexadecimal characters 0-9 and a-f")
    return bytes.fromhex(hex_text)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ValueError(f"a list seed is exactly {SEED_BYTES} bytes")


def _check_design(arms: Sequence[Arm], block_sizes: Sequence[int], slots: int) -> int:
    """Check what the trial definition checks at load; returns the sum of the ratios."""
    if not arms or any(arm.ratio < 1 for arm in arms):
        raise ValueError("need at least one arm, each with a positive ratio")
    ratio_sum = sum(arm.ratio for arm in arms)
    if not block_sizes or any(size < 1 or size % ratio_sum for size in block_sizes):
        raise ValueError(f"block sizes must be positive multiples of the ratio sum {ratio_sum}")
    if slots < 1:
        raise ValueError(f"slots must be positive, got {slots}")
    return ratio_sum
