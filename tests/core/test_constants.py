"""The constants the Python side mirrors from the C++ headers are equal to them, read from the
built extension (fastcl._C.constants(), which takes them from the headers that define them)."""

from __future__ import annotations

import pytest

from fastcl import _extension, augment, problem
from fastcl.bench import kernel_traits

pytestmark = pytest.mark.skipif(not _extension.has_ops(), reason="needs the compiled extension")


@pytest.fixture(scope="module")
def constants():
    from fastcl import _C

    return _C.constants()


def test_the_contrastive_core(constants):
    assert problem.POSITIVE_ONLY == constants["positive_only"]
    assert problem.NORM_EPS == constants["norm_eps"]
    assert kernel_traits.SAMPLE_IDS == constants["features"]["sample_ids"]


def test_the_hardness_modes(constants):
    st = pytest.importorskip("fastcl.integrations.sentence_transformers")
    others, own = constants["penalty_others"], constants["penalty_own"]
    assert st.HARDNESS_MODES == {"in_batch_negatives": others, "hard_negatives": own, "all_negatives": others | own}


def test_the_augmentation_parameter_columns(constants):
    columns = constants["augment_columns"]
    for name in ("top", "left", "height", "width", "flip", "jitter", "brightness", "contrast", "saturation", "hue",
                 "gray", "blur_sigma", "solarize", "angle"):
        assert getattr(augment, name.upper()) == columns[name], name
    assert augment.ORDER == slice(columns["order"], columns["order"] + 4)
    assert augment.FILL == slice(columns["fill"], columns["fill"] + 3)
    assert augment.NUM_PARAMS == columns["num_params"]


def test_feature_flags_are_distinct_bits(constants):
    bits = list(constants["features"].values())
    assert all(b > 0 and b & (b - 1) == 0 for b in bits) and len(set(bits)) == len(bits)
