"""ShuffleNetV2 unit with explicit channel maps, for models whose stage streams were pruned.

torchvision's ``InvertedResidual`` ends with ``channel_shuffle(cat(...), 2)`` and (stride 1)
starts with ``x.chunk(2)``: both tie every channel to a fixed position, so a stream that lost
channels at arbitrary positions no longer fits them. :class:`ShuffleUnit` computes the same
function with the positions made explicit: the first ``split`` input channels pass through, the
rest feed ``branch2`` (stride 1), and the concatenated output is reordered by ``perm`` (the
channel shuffle restricted to the kept channels). With nothing pruned, ``split = C/2`` and
``perm`` is the shuffle's permutation, so it equals torchvision's unit exactly.

The state-dict keys are the unit's own (``branch1.*``, ``branch2.*``) plus the ``perm`` buffer.
"""

from __future__ import annotations

import torch
from torch import nn


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit whose channel split and shuffle are given as explicit maps.

    ``split`` is ``-1`` for a stride-2 unit (both branches read the whole input), otherwise the
    number of input channels passed through unchanged; ``perm`` (length = output channels) picks,
    for every output position, a channel of ``cat(pass-through or branch1, branch2)``.
    """

    def __init__(
        self, branch1: nn.Module, branch2: nn.Module, split: int, perm: torch.Tensor
    ) -> None:
        super().__init__()
        self.branch1 = branch1
        self.branch2 = branch2
        self.split = int(split)
        self.register_buffer("perm", perm.to(torch.long).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split < 0:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        else:
            x1 = x[:, : self.split]
            x2 = x[:, self.split :]
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        return out.index_select(1, self.perm)
