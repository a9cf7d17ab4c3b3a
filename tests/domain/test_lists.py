"""Randomisation lists (URS §3): the Appendix A vectors, the stream, and the properties every
list must have whatever the seed, arms, ratios and block sizes."""

import hashlib
import hmac
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from randomizer.domain import (
    LIST_DOMAIN,
    Arm,
    RandomStream,
    bundled_trial_path,
    generate_lists,
    load_trial,
    parse_seed,
    parse_trial,
    randomization_number,
    seed_commitment,
    seed_matches,
    stratum_list,
)

APPENDIX_A_SEED = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
LETTER = {"igpro20": "A", "placebo": "P"}


@pytest.fixture(scope="module")
def trial():
    return load_trial(bundled_trial_path())


@pytest.mark.requirement("R-LIST")
@pytest.mark.parametrize(
    ("number", "key", "first_16_slots"),
    [
        (1, "region=north_america|prior_ig=yes", "A P A P P A A P A P P A P A P A"),
        (4, "region=europe|prior_ig=no", "A P A P P A A A P P A A P P P A"),
        (6, "region=rest_of_world|prior_ig=no", "P A P A A P A P P A A P P P A A"),
    ],
)
def test_appendix_a_vectors(trial, number, key, first_16_slots):
    lists = generate_lists(APPENDIX_A_SEED, trial)
    assert trial.stratum(number).key == key
    assert " ".join(LETTER[arm] for arm in lists[number][:16]) == first_16_slots


@pytest.mark.requirement("R-LIST")
def test_every_stratum_gets_a_list_of_at_least_its_slots(trial):
    lists = generate_lists(APPENDIX_A_SEED, trial)
    assert sorted(lists) == [1, 2, 3, 4, 5, 6]
    assert all(len(allocations) >= trial.slots_per_stratum for allocations in lists.values())


# An independent statistician's short script, written from the URS §3 text alone; the
# service's lists must be exactly what it gives.
def reference_list(seed, stratum_key, arms, block_sizes, slots):
    def integers():
        counter = 0
        while True:
            message = b"sealroom/list/v1|" + stratum_key.encode("utf-8") + b"|"
            block = hmac.new(seed, message + counter.to_bytes(8, "big"), hashlib.sha256).digest()
            for offset in range(0, 32, 8):
                yield int.from_bytes(block[offset : offset + 8], "big")
            counter += 1

    stream = integers()

    def below(n):
        while True:
            u = next(stream)
            if u < 2**64 - (2**64 % n):
                return u % n

    ratio_sum = sum(ratio for _, ratio in arms)
    result = []
    while len(result) < slots:
        size = block_sizes[below(len(block_sizes))]
        block = []
        for arm_id, ratio in arms:
            block += [arm_id] * (size * ratio // ratio_sum)
        for i in range(size - 1, 0, -1):
            j = below(i + 1)
            block[i], block[j] = block[j], block[i]
        result += block
    return result


@st.composite
def designs(draw):
    """Arms with ratios, and a set of block sizes that are multiples of the ratio sum."""
    ratios = draw(st.lists(st.integers(1, 3), min_size=2, max_size=4))
    arms = tuple(Arm(f"arm_{index}", f"Arm {index}", ratio) for index, ratio in enumerate(ratios))
    multiples = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True))
    block_sizes = tuple(multiple * sum(ratios) for multiple in multiples)
    return arms, block_sizes


seeds = st.binary(min_size=32, max_size=32)
stratum_keys = st.text(min_size=1, max_size=40)


@pytest.mark.requirement("R-LIST")
@given(seed=seeds, key=stratum_keys, design=designs(), slots=st.integers(1, 80))
def test_list_is_what_an_independent_script_regenerates(seed, key, design, slots):
    arms, block_sizes = design
    expected = reference_list(seed, key, [(a.id, a.ratio) for a in arms], block_sizes, slots)
    assert list(stratum_list(seed, key, arms, block_sizes, slots)) == expected


def blocks_by_replay(seed, key, block_sizes, allocations):
    """Cut a list into blocks by replaying the stream's draws (size, then the shuffle's)."""
    stream = RandomStream(seed, key)
    blocks, start = [], 0
    while start < len(allocations):
        size = block_sizes[stream.below(len(block_sizes))]
        for i in range(size - 1, 0, -1):
            stream.below(i + 1)
        blocks.append(allocations[start : start + size])
        start += size
    return blocks


def assert_balanced_blocks(allocations, blocks, arms, block_sizes, slots):
    """Every block has an allowed size and holds each arm in its ratio; only whole blocks."""
    ratio_sum = sum(arm.ratio for arm in arms)
    assert [slot for block in blocks for slot in block] == list(allocations)
    for block in blocks:
        assert len(block) in block_sizes
        expected = {arm.id: len(block) * arm.ratio // ratio_sum for arm in arms}
        assert Counter(block) == expected
    assert len(allocations) >= slots
    assert len(allocations) - len(blocks[-1]) < slots  # no block added after slots were met


def can_be_cut_into_balanced_blocks(allocations, arms, block_sizes):
    """Without replaying anything: can the list be cut into balanced blocks of allowed sizes?"""
    ratio_sum = sum(arm.ratio for arm in arms)

    def balanced(segment):
        counts = Counter(segment)
        return all(counts[arm.id] * ratio_sum == len(segment) * arm.ratio for arm in arms)

    reachable = {0}
    for start in range(len(allocations)):
        if start in reachable:
            for size in block_sizes:
                segment = allocations[start : start + size]
                if len(segment) == size and balanced(segment):
                    reachable.add(start + size)
    return len(allocations) in reachable


@pytest.mark.requirement("R-LIST")
@given(seed=seeds, key=stratum_keys, design=designs(), slots=st.integers(1, 80))
def test_every_block_is_balanced_and_of_an_allowed_size(seed, key, design, slots):
    arms, block_sizes = design
    allocations = stratum_list(seed, key, arms, block_sizes, slots)
    blocks = blocks_by_replay(seed, key, block_sizes, allocations)
    assert_balanced_blocks(allocations, blocks, arms, block_sizes, slots)
    assert can_be_cut_into_balanced_blocks(allocations, arms, block_sizes)


def test_the_balance_checks_catch_a_changed_slot():
    arms = (Arm("igpro20", "IgPro20", 1), Arm("placebo", "Placebo", 1))
    allocations = list(stratum_list(APPENDIX_A_SEED, "k", arms, (2, 4), 40))
    tampered = [*allocations[:-1], "placebo" if allocations[-1] == "igpro20" else "igpro20"]
    blocks = blocks_by_replay(APPENDIX_A_SEED, "k", (2, 4), tampered)
    with pytest.raises(AssertionError):
        assert_balanced_blocks(tampered, blocks, arms, (2, 4), 40)
    assert not can_be_cut_into_balanced_blocks(tampered, arms, (2, 4))
    # ... and a list cut short inside a block.
    assert not can_be_cut_into_balanced_blocks(allocations[:-1], arms, (2, 4))


def test_the_balance_checks_catch_a_size_outside_the_set():
    arms = (Arm("igpro20", "IgPro20", 1), Arm("placebo", "Placebo", 1))
    allocations = list(stratum_list(APPENDIX_A_SEED, "k", arms, (2, 4), 40))
    blocks = blocks_by_replay(APPENDIX_A_SEED, "k", (2, 4), allocations)
    assert 4 in {len(block) for block in blocks}
    with pytest.raises(AssertionError):
        assert_balanced_blocks(allocations, blocks, arms, (2,), 40)
    assert not can_be_cut_into_balanced_blocks(allocations, arms, (2,))


@pytest.mark.requirement("R-LIST")
@given(seed=seeds, design=designs(), slots=st.integers(1, 40))
def test_same_seed_and_key_give_the_same_list(seed, design, slots):
    arms, block_sizes = design
    first = stratum_list(seed, "region=europe|prior_ig=no", arms, block_sizes, slots)
    again = stratum_list(bytes(seed), "region=europe|prior_ig=no", arms, block_sizes, slots)
    assert first == again


@pytest.mark.requirement("R-LIST")
@given(seed=seeds, other=seeds)
def test_different_seeds_give_different_lists(seed, other):
    if seed == other:
        return
    arms = (Arm("igpro20", "IgPro20", 1), Arm("placebo", "Placebo", 1))
    # 200 slots of 1:1 blocks: two seeds agree on all of them with probability below 2**-50.
    first = stratum_list(seed, "region=europe|prior_ig=no", arms, (2, 4), 200)
    second = stratum_list(other, "region=europe|prior_ig=no", arms, (2, 4), 200)
    assert first != second


@pytest.mark.requirement("R-LIST")
@given(seed=seeds, keys=st.lists(stratum_keys, min_size=2, max_size=2, unique=True))
def test_strata_draw_from_independent_streams(seed, keys):
    first, second = (RandomStream(seed, key) for key in keys)
    assert [first.next_u64() for _ in range(4)] != [second.next_u64() for _ in range(4)]


@pytest.mark.requirement("R-LIST")
def test_a_stratum_list_depends_only_on_its_own_key(trial):
    # Renaming one region changes the keys of strata 5 and 6 only; the others keep their lists.
    renamed = parse_trial(
        bundled_trial_path()
        .read_text(encoding="utf-8")
        .replace('"rest_of_world"]', '"other_countries"]', 1)
    )
    before = generate_lists(APPENDIX_A_SEED, trial)
    after = generate_lists(APPENDIX_A_SEED, renamed)
    for number in (1, 2, 3, 4):
        assert renamed.stratum(number).key == trial.stratum(number).key
        assert after[number] == before[number]
    for number in (5, 6):
        assert after[number] != before[number]
    for stratum in trial.strata():
        assert before[stratum.number] == stratum_list(
            APPENDIX_A_SEED, stratum.key, trial.arms, trial.block_sizes, trial.slots_per_stratum
        )


@pytest.mark.requirement("R-LIST")
def test_stream_reads_hmac_blocks_as_big_endian_u64s_in_order():
    key = "region=europe|prior_ig=no"
    stream = RandomStream(APPENDIX_A_SEED, key)
    expected = []
    for counter in (0, 1):
        message = LIST_DOMAIN + key.encode("utf-8") + b"|" + counter.to_bytes(8, "big")
        block = hmac.new(APPENDIX_A_SEED, message, hashlib.sha256).digest()
        expected += [int.from_bytes(block[i : i + 8], "big") for i in (0, 8, 16, 24)]
    assert [stream.next_u64() for _ in range(8)] == expected
    assert LIST_DOMAIN == b"sealroom/list/v1|"


class ScriptedStream(RandomStream):
    """A stream that hands out the given integers, to test below() at its boundary."""

    def __init__(self, values):
        self.values = list(values)
        self.taken = 0

    def next_u64(self):
        self.taken += 1
        return self.values.pop(0)


@pytest.mark.requirement("R-LIST")
def test_below_rejects_from_the_boundary_up_and_accepts_just_under_it():
    limit = 2**64 - (2**64 % 3)  # 2**64 % 3 == 1, so only 2**64 - 1 is rejected
    assert limit == 2**64 - 1
    stream = ScriptedStream([limit, limit - 1])
    assert stream.below(3) == (limit - 1) % 3
    assert stream.taken == 2

    stream = ScriptedStream([limit - 1])
    assert stream.below(3) == (2**64 - 2) % 3
    assert stream.taken == 1


@pytest.mark.requirement("R-LIST")
def test_below_takes_values_until_one_is_under_the_limit():
    n = 6  # 2**64 % 6 == 4: the top four values are rejected
    limit = 2**64 - 4
    stream = ScriptedStream([2**64 - 1, limit, limit + 3, 17])
    assert stream.below(n) == 17 % n
    assert stream.taken == 4


def test_below_one_still_consumes_a_value():
    stream = ScriptedStream([2**64 - 1, 5])
    assert stream.below(1) == 0
    assert stream.taken == 1


@pytest.mark.parametrize("n", [0, -1])
def test_below_refuses_an_empty_range(n):
    with pytest.raises(ValueError):
        RandomStream(APPENDIX_A_SEED, "k").below(n)


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_a_seed_is_exactly_32_bytes(seed):
    with pytest.raises(ValueError):
        RandomStream(seed, "k")
    with pytest.raises(ValueError):
        seed_commitment(seed)


def test_stream_repr_does_not_show_the_seed():
    assert APPENDIX_A_SEED.hex() not in repr(RandomStream(APPENDIX_A_SEED, "k"))


@pytest.mark.parametrize(
    ("arms", "block_sizes", "slots"),
    [
        ((Arm("a", "A", 1), Arm("b", "B", 1)), (3,), 10),
        ((Arm("a", "A", 1), Arm("b", "B", 1)), (), 10),
        ((Arm("a", "A", 0), Arm("b", "B", 1)), (2,), 10),
        ((Arm("a", "A", 1), Arm("b", "B", 1)), (2,), 0),
    ],
)
def test_stratum_list_refuses_an_impossible_design(arms, block_sizes, slots):
    with pytest.raises(ValueError):
        stratum_list(APPENDIX_A_SEED, "k", arms, block_sizes, slots)


@pytest.mark.requirement("R-LIST")
@pytest.mark.parametrize(
    ("stratum", "position", "number"),
    [(1, 1, "R01-0001"), (4, 12, "R04-0012"), (6, 200, "R06-0200"), (12, 1234, "R12-1234")],
)
def test_randomization_number(stratum, position, number):
    assert randomization_number(stratum, position) == number


@pytest.mark.parametrize(("stratum", "position"), [(0, 1), (1, 0)])
def test_randomization_numbers_count_from_one(stratum, position):
    with pytest.raises(ValueError):
        randomization_number(stratum, position)


@pytest.mark.requirement("R-LIST-3")
def test_seed_commitment_is_a_domain_separated_sha256():
    commitment = seed_commitment(APPENDIX_A_SEED)
    assert (
        commitment == hashlib.sha256(b"sealroom/seed-commitment/v1|" + APPENDIX_A_SEED).hexdigest()
    )
    assert commitment != hashlib.sha256(APPENDIX_A_SEED).hexdigest()
    assert APPENDIX_A_SEED.hex() not in commitment


@pytest.mark.requirement("R-LIST-3")
def test_seed_matches_its_commitment_only():
    commitment = seed_commitment(APPENDIX_A_SEED)
    assert seed_matches(APPENDIX_A_SEED, commitment)
    assert seed_matches(APPENDIX_A_SEED, commitment.upper())
    assert not seed_matches(bytes(32), commitment)


def test_parse_seed_takes_64_hex_characters():
    assert parse_seed(APPENDIX_A_SEED.hex()) == APPENDIX_A_SEED
    assert parse_seed(APPENDIX_A_SEED.hex().upper()) == APPENDIX_A_SEED


@pytest.mark.parametrize(
    "text",
    [
        "",
        APPENDIX_A_SEED.hex()[:-1],
        APPENDIX_A_SEED.hex() + "0",
        APPENDIX_A_SEED.hex()[:-1] + "g",
        APPENDIX_A_SEED.hex()[:-2] + " 1",  # bytes.fromhex would skip the space
        APPENDIX_A_SEED.hex() + "\n",
        "0x" + APPENDIX_A_SEED.hex()[2:],
    ],
)
def test_parse_seed_refuses_anything_else_without_echoing_it(text):
    with pytest.raises(ValueError) as refused:
        parse_seed(text)
    assert "1a1b1c1d" not in str(refused.value)
    assert "hexadecimal" in str(refused.value)
