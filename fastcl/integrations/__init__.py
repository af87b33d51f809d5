"""Drop-in fused losses for the libraries people already train with. Each submodule imports its
library only where it needs it (importing fastcl never does), and computes the original class's
numbers with fastcl's kernels:

    from fastcl.integrations.sentence_transformers import MultipleNegativesRankingLoss  # and the
    #   symmetric and cached forms, for sentence_transformers' classes of those names
    from fastcl.integrations.lightly import NTXentLoss          # for lightly.loss.NTXentLoss
    from fastcl.integrations.open_clip import ClipLoss          # for open_clip.ClipLoss
    from fastcl.integrations.open_clip import SigLipLoss        # for open_clip.loss.SigLipLoss
"""
