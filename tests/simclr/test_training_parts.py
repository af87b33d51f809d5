"""Parts of the SimCLR trainer: LARS, learning-rate rules, encoders and heads, kNN and linear probe."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from fastcl.simclr import evaluate, models, optim


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _reference_lars_step(params, grads, buffers, excluded, lr, momentum, wd, eta):
    """The update of google-research/simclr's lars_optimizer.py, written out per tensor."""
    for i, (w, g) in enumerate(zip(params, grads)):
        if not excluded[i]:
            g = g + wd * w
            w_norm, g_norm = w.norm().item(), g.norm().item()
            trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        else:
            trust = 1.0
        buffers[i] = momentum * buffers[i] + lr * trust * g
        params[i] = w - buffers[i]
    return params, buffers


def test_lars_matches_the_simclr_update():
    model = _small_model()
    reference = copy.deepcopy(model)
    opt = optim.LARS(optim.lars_param_groups(model, weight_decay=1e-4), lr=0.5, momentum=0.9,
                     weight_decay=1e-4, trust_coefficient=0.001)
    ref_params = [p.detach().clone() for p in reference.parameters()]
    excluded = [p.ndim <= 1 for p in reference.parameters()]
    buffers = [torch.zeros_like(p) for p in ref_params]
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        opt.step()
        ref_params, buffers = _reference_lars_step(ref_params, grads, buffers, excluded, 0.5, 0.9, 1e-4, 0.001)
        for got, want in zip(model.parameters(), ref_params):
            torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)
        with torch.no_grad():  # keep the reference's forward in step with the trained model
            for p, r in zip(reference.parameters(), ref_params):
                p.copy_(r)


def test_biases_and_norms_escape_decay_and_adaptation():
    model = _small_model()
    groups = optim.lars_param_groups(model, weight_decay=0.1)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    opt = optim.LARS(groups, lr=1.0, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, old in zip(model.parameters(), before):
        if p.ndim <= 1:
            assert torch.equal(p, old)  # no gradient and no decay: unchanged
        else:
            assert not torch.equal(p, old)  # decayed


def test_learning_rate_rules():
    assert optim.scaled_learning_rate(512, "linear") == pytest.approx(0.6)
    assert optim.scaled_learning_rate(4096, "sqrt") == pytest.approx(4.8)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = optim.warmup_cosine(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[9] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[14] == pytest.approx(0.0, abs=1e-12)
    for bad in (lambda: optim.scaled_learning_rate(0), lambda: optim.scaled_learning_rate(8, "cube"),
                lambda: optim.warmup_cosine(opt, 5, 3), lambda: optim.LARS([nn.Parameter(torch.zeros(1))], lr=0.0),
                lambda: optim.build_optimizer("adam9", _small_model(), 0.1, 0.0)):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_optimizers_reduce_a_loss(name):
    model = _small_model()
    opt = optim.build_optimizer(name, model, lr=0.05 if name != "lars" else 5.0, weight_decay=1e-4)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_encoders_and_heads():
    x = torch.randn(2, 3, 32, 32)
    net = models.encoder("resnet18", cifar_stem=True)
    assert net.out_dim == 512 and net(x).shape == (2, 512)
    assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
    small = models.encoder("small_cnn")
    assert small(x).shape == (2, small.out_dim)
    head = models.ProjectionHead(512, 2048, 128)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    model = models.SimCLRModel(net, head)
    assert model(x).shape == (2, 128)
    with pytest.raises(ValueError, match="arch"):
        models.encoder("vgg")


def test_knn_and_linear_probe_on_separable_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4, 16) * 5
    train_y = torch.arange(4).repeat_interleave(50)
    test_y = torch.arange(4).repeat_interleave(20)
    train_x = centers[train_y] + 0.5 * torch.randn(200, 16, generator=g)
    test_x = centers[test_y] + 0.5 * torch.randn(80, 16, generator=g)
    assert evaluate.knn_accuracy(train_x, train_y, test_x, test_y, k=20) == 1.0
    assert evaluate.linear_probe(train_x, train_y, test_x, test_y) == 1.0
    # Weighted votes: one very close neighbour of class 1 outvotes two distant ones of class 0.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    pred = evaluate.knn_predict(torch.tensor([[0.0, 1.0]]), bank, torch.tensor([1, 0, 0]), 2, k=3, temperature=0.1)
    assert pred.tolist() == [0]
    pred = evaluate.knn_predict(torch.tensor([[1.0, 0.02]]), bank, torch.tensor([1, 0, 0]), 2, k=3, temperature=0.1)
    assert pred.tolist() == [1]
