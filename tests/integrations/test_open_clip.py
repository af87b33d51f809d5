"""fastcl.integrations.open_clip.ClipLoss against open_clip's own class: values and gradients
(features and logit scale), fp32 and bf16, odd shapes, output_dict, logit_bias, and a few steps
of open_clip's smallest shipped model, randomly initialised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from fastcl.integrations.open_clip import ClipLoss  # noqa: E402


def _features(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    image, text = (F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).requires_grad_() for _ in range(2))
    scale = torch.tensor(14.3, requires_grad=True)
    return image, text, scale


@pytest.mark.parametrize("n,d", [(2, 3), (5, 17), (33, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_open_clip(n, d, dtype):
    image, text, scale = _features(n, d, dtype)
    got = ClipLoss()(image, text, scale)
    got_grads = torch.autograd.grad(got, (image, text, scale))
    leaves = [x.detach().float().requires_grad_() for x in (image, text)] + [scale.detach().requires_grad_()]
    want = open_clip.ClipLoss()(*leaves)
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.float(), w, **tol)


def test_output_dict_and_logit_bias():
    image, text, scale = _features(6, 8, torch.float32)
    bias = torch.tensor(-3.0, requires_grad=True)
    got = ClipLoss()(image, text, scale, logit_bias=bias, output_dict=True)
    want = open_clip.ClipLoss()(image, text, scale, logit_bias=bias, output_dict=True)
    assert set(got) == set(want) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"], want["contrastive_loss"], rtol=1e-5, atol=1e-6)


def test_horovod_is_a_clear_error():
    with pytest.raises(ValueError, match="use_horovod=True"):
        ClipLoss(use_horovod=True)


def _train(criterion_cls, steps=3):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32-alt", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-S-32-alt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = criterion_cls(cache_labels=True)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 224, 224, generator=g)
    texts = tokenizer(["a photo of a cat", "a dog on grass", "a red car", "two birds"])
    losses = []
    for _ in range(steps):
        image_features, text_features, logit_scale = model(images, texts)[:3]
        loss = criterion(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def test_a_few_steps_of_an_open_clip_model():
    with torch.random.fork_rng():
        want = _train(open_clip.ClipLoss)
    with torch.random.fork_rng():
        got = _train(ClipLoss)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert got[-1] < got[0]


def test_a_batch_of_one_matches_open_clip():
    """A loader with drop_last=False meets a last batch of one: one logit a direction, loss 0."""
    image, text, scale = _features(1, 8, torch.float32)
    got = ClipLoss()(image, text, scale)
    leaves = [x.detach().clone().requires_grad_() for x in (image, text, scale)]
    want = open_clip.ClipLoss()(*leaves)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, (image, text, scale)), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(g, w)
