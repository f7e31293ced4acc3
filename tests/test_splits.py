import pytest

from lightning_bts.data import DatasetError, load_records, make_split
from tests.conftest import SAMPLE_ROOT


@pytest.fixture(scope="module")
def records():
    return load_records(SAMPLE_ROOT)


def test_no_patient_group_in_two_validation_folds(records):
    group_of = dict(zip(records.key, records.patient_group))
    seen: dict[str, int] = {}
    for fold in range(5):
        split = make_split(records, 5, fold, seed=7)
        for group in {group_of[k] for k in split.val}:
            assert seen.setdefault(group, fold) == fold, f"group {group} in folds {seen[group]} and {fold}"
        assert not {group_of[k] for k in split.train} & {group_of[k] for k in split.val}


def test_every_slice_is_in_exactly_one_validation_fold(records):
    validation = [k for fold in range(5) for k in make_split(records, 5, fold).val]
    assert sorted(validation) == sorted(records.key)


def test_same_seed_same_split_and_input_order_does_not_matter(records):
    shuffled = records.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert make_split(records, 5, 2, seed=11) == make_split(shuffled, 5, 2, seed=11)
    assert make_split(records, 5, 2, seed=11).val != make_split(records, 5, 2, seed=12).val


def test_tumour_types_are_spread_over_folds(records):
    type_of = dict(zip(records.key, records.tumor_type))
    for fold in range(5):
        assert len({type_of[k] for k in make_split(records, 5, fold).val}) >= 2


def test_held_out_test_groups_are_in_no_fold(records):
    group_of = dict(zip(records.key, records.patient_group))
    first = make_split(records, 3, 0, test_fraction=0.2)
    test_groups = {group_of[k] for k in first.test}
    assert test_groups
    for fold in range(3):
        split = make_split(records, 3, fold, test_fraction=0.2)
        assert split.test == first.test
        assert not test_groups & {group_of[k] for k in split.train + split.val}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_folds": 5, "fold": 5}, "fold 5 is out of range"),
        ({"num_folds": 5, "fold": -1}, "out of range"),
        ({"num_folds": 1, "fold": 0}, "at least 2"),
        ({"num_folds": 16, "fold": 0}, "needs at least 16 patient groups, the dataset has 15"),
        ({"num_folds": 5, "fold": 0, "test_fraction": 0.7}, "test_fraction"),
    ],
)
def test_bad_split_requests_name_the_value(records, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        make_split(records, **kwargs)


def test_split_is_written_as_json(records, tmp_path):
    import json

    make_split(records, 5, 1).to_json(tmp_path / "splits.json")
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["fold"] == 1 and len(saved["train"]) + len(saved["val"]) == len(records)
