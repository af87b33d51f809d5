"""fastcl.integrations.open_clip.loss.SigLipLoss against open_clip's own class: values and gradients
(features, logit scale, logit bias), fp32 and bf16, odd shapes, output_dict, no bias, a batch of
one, the constructor's arguments, and a few steps of open_clip's smallest shipped model with SigLIP's
scale and bias, randomly initialised (world_size > 1, under 2 processes: tests/distributed/test_siglip_ring.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from fastcl.integrations.open_clip import SigLipLoss  # noqa: E402


def _features(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    image, text = (F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).requires_grad_() for _ in range(2))
    return image, text, torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)


@pytest.mark.parametrize("n,d", [(1, 3), (2, 3), (5, 17), (33, 64), (300, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_open_clip(n, d, dtype):
    image, text, scale, bias = _features(n, d, dtype)
    got = SigLipLoss()(image, text, scale, bias)
    got_grads = torch.autograd.grad(got, (image, text, scale, bias))
    leaves = [x.detach().float().requires_grad_() for x in (image, text)] + [
        x.detach().requires_grad_() for x in (scale, bias)]
    want = open_clip.loss.SigLipLoss()(*leaves)
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.float(), w, **tol)


def test_output_dict_and_no_bias():
    image, text, scale, _ = _features(6, 8, torch.float32)
    got = SigLipLoss()(image, text, scale, None, output_dict=True)
    want = open_clip.loss.SigLipLoss()(image, text, scale, None, output_dict=True)
    assert set(got) == set(want) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"], want["contrastive_loss"], rtol=1e-5, atol=1e-6)


def test_constructor_follows_open_clip():
    criterion = SigLipLoss(cache_labels=True, rank=0, world_size=1, dist_impl="shift")
    assert (criterion.cache_labels, criterion.rank, criterion.world_size, criterion.dist_impl) == (True, 0, 1, "shift")
    assert SigLipLoss().dist_impl == "bidir"
    with pytest.raises(ValueError, match="dist_impl"):
        SigLipLoss(dist_impl="ring")
    image, text, scale, bias = _features(4, 3, torch.float32)
    with pytest.raises(ValueError, match="does not match the torch.distributed group"):  # no process group here
        SigLipLoss(rank=1, world_size=2)(image, text, scale, bias)


def test_a_few_steps_of_an_open_clip_siglip_model():
    """open_clip's smallest model with SigLIP's scale and bias, trained with the drop-in: at every step
    the loss and its gradients (features, scale, bias) equal open_clip's SigLipLoss on the same
    features, and the loss falls."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32-alt", pretrained=None, init_logit_scale=math.log(10),
                                   init_logit_bias=-10.0)
    tokenizer = open_clip.get_tokenizer("ViT-S-32-alt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 224, 224, generator=g)
    texts = tokenizer(["a photo of a cat", "a dog on grass", "a red car", "two birds"])
    losses = []
    for _ in range(2):
        outputs = model(images, texts)
        assert len(outputs) == 4  # image and text features, logit_scale.exp(), logit_bias
        got, want = SigLipLoss()(*outputs), open_clip.loss.SigLipLoss()(*outputs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for x, w in zip(torch.autograd.grad(got, outputs, retain_graph=True),
                        torch.autograd.grad(want, outputs, retain_graph=True)):
            torch.testing.assert_close(x, w, rtol=1e-4, atol=1e-6)
        optimizer.zero_grad()
        got.backward()
        optimizer.step()
        losses.append(float(got.detach()))
    assert losses[-1] < losses[0]
