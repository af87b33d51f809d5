"""The one problem object: its fields are the op schema's arguments in order, it survives the round
trip through the op's argument lists, and each loss's translation builds the problem its
docstring promises (labels, masks, offsets, bias, ids), checked on the objects themselves."""

from __future__ import annotations

import pytest
import torch

from fastcl import ops, translate
from fastcl.problem import OP_SCALARS, OP_TENSORS, ContrastiveProblem, LossProblem, PairProblem
from fastcl.queue import MemoryQueue

from helpers import make_case


def _schema_names(op) -> list[str]:
    return [a.name for a in op.default._schema.arguments]


def test_fields_are_the_schema_arguments_in_order():
    forward = _schema_names(torch.ops.fastcl.contrastive_forward)
    assert forward == [*OP_TENSORS, *OP_SCALARS]
    backward = _schema_names(torch.ops.fastcl.contrastive_backward)
    assert backward == ["grad_loss", *OP_TENSORS, "lse", "num_pos", *OP_SCALARS]
    assert set(OP_TENSORS) | set(OP_SCALARS) == set(ContrastiveProblem._fields)
    assert _schema_names(torch.ops.fastcl.contrastive_pair_forward) == list(PairProblem._fields)


def test_round_trip_through_the_op_arguments():
    q, k, lr, lc, scale, kw = make_case("hard_negative", 5, 4, torch.float32, "cpu")
    problem = ContrastiveProblem(q, k, lr, lc, scale, **kw, constant_cols=2, hardness=0.5, hardness_mode=1)
    again = ContrastiveProblem.from_op(problem.op_tensors(), problem.op_scalars())
    assert all(a is b for a, b in zip(again, problem))


def test_nt_xent_two_views():
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    lp = translate.nt_xent(z1, z2, None, None, 0.5, True, False)
    (p,) = lp.parts
    assert not lp.global_batch
    assert p.q is p.k and p.row_labels is p.col_labels  # the C++ side specialises on one tensor
    assert p.row_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert p.exclude_self and p.row_offset == 0 and p.row_ids is None
    assert float(p.logit_scale) == 2.0 and p.logit_scale.dtype == torch.float32


def test_nt_xent_views_and_ids():
    z = torch.randn(2, 3, 4)  # 2 samples, 3 views: rows view-major
    lp = translate.nt_xent(z, None, None, torch.tensor([7, -1]), 0.1, False, False)
    (p,) = lp.parts
    torch.testing.assert_close(p.q, torch.cat(torch.unbind(z, 1)))
    assert p.row_labels.tolist() == [0, 1] * 3 and p.row_ids.tolist() == [7, -1] * 3
    assert p.col_ids is p.row_ids and not p.normalize


def test_info_nce_hard_negatives_and_queue():
    q, k, neg = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    queue = MemoryQueue(5, 4)
    queue.push(torch.randn(5, 4))
    pairs = translate.Pairs(q, k, neg, hard_negative_weight=0.7)
    (p,) = translate.info_nce(pairs, False, queue, 0.05, True, False).parts
    assert p.k.shape == (11, 4) and p.constant_cols == 5
    assert p.col_labels.tolist() == [0, 1, 2] + [-1] * 8
    assert p.col_bias.tolist() == pytest.approx([0, 0, 0, 0.7, 0.7, 0.7, 0, 0, 0, 0, 0])
    assert p.col_bias_owner.tolist() == [0, 1, 2, 0, 1, 2] + [-1] * 5


def test_info_nce_symmetric_is_one_pair_problem():
    q, k = torch.randn(3, 4), torch.randn(3, 4)
    lp = translate.info_nce(translate.Pairs(q, k), True, None, 0.07, True, False)
    assert len(lp.parts) == 1 and isinstance(lp.parts[0], PairProblem)
    # Its per-row loss is the mean of the two directions, each as the general core computes it.
    loss, num_pos = ops.solve(lp)
    rows = torch.arange(3)
    one, _ = ops.contrastive(ContrastiveProblem(q, k, rows, rows, lp.parts[0].logit_scale))
    two, _ = ops.contrastive(ContrastiveProblem(k, q, rows, rows, lp.parts[0].logit_scale))
    torch.testing.assert_close(loss, (one + two) / 2)
    assert num_pos.tolist() == [1.0] * 3


def test_info_nce_without_in_batch_negatives_masks_the_other_keys():
    q, k = torch.randn(3, 4), torch.randn(3, 4)
    queue = MemoryQueue(4, 4)
    queue.push(torch.randn(4, 4))
    (p,) = translate.info_nce(translate.Pairs(q, k, in_batch_negatives=False), False, queue, 0.2, True,
                              False).parts
    assert p.col_ids[:3].tolist() == [ops.POSITIVE_ONLY] * 3 and p.row_ids.tolist() == [-1] * 3


def test_solve_averages_the_parts():
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    rows = torch.arange(4)
    scale = torch.tensor(3.0)
    a = ContrastiveProblem(q, k, rows, rows, scale)
    b = ContrastiveProblem(k, q, rows, rows, scale)
    loss, _ = ops.solve(LossProblem((a, b)))
    torch.testing.assert_close(loss, (ops.contrastive(a)[0] + ops.contrastive(b)[0]) / 2)


@pytest.mark.parametrize("bad", ["k_width", "labels", "ids", "scale"])
def test_the_fake_kernel_refuses_what_the_kernels_refuse(bad):
    """Under FakeTensorMode (torch.compile's tracing) the op's fake kernel checks ranks, sizes and
    dtypes as csrc/checks.cpp does, instead of returning shapes for arguments the kernel refuses."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.randn(6, 4), torch.randn(5, 3 if bad == "k_width" else 4)
        rows, cols = torch.arange(6), torch.arange(4 if bad == "labels" else 5)
        ids = dict(row_ids=torch.arange(6), col_ids=torch.arange(7)) if bad == "ids" else {}
        scale = torch.tensor(2.0, dtype=torch.float64 if bad == "scale" else torch.float32)
        problem = ContrastiveProblem(q, k, rows, cols, scale, **ids)
        with pytest.raises(RuntimeError, match="fastcl: "):
            torch.ops.fastcl.contrastive_forward(*problem.op_tensors(), *problem.op_scalars())


def test_the_pair_fake_kernel_refuses_mismatched_rows():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b, scale = torch.randn(6, 4), torch.randn(5, 4), torch.tensor(2.0)
        with pytest.raises(RuntimeError, match="fastcl: a and b"):
            torch.ops.fastcl.contrastive_pair_forward(a, b, scale, True)
