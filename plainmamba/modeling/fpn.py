"""FPN pieces Detectron2 lacks for the released RetinaNet neck."""

from __future__ import annotations

from typing import List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm

__all__ = ["LastLevelP6P7Conv"]


class LastLevelP6P7Conv(nn.Module):
    """P6 and P7 from P5's FPN output by 3x3 stride-2 convs, each with an optional norm.

    The released RetinaNet (MMDetection FPN, ``add_extra_convs='on_output'``) normalises the
    extra convs like the other FPN convs and puts no ReLU between P6 and P7, unlike Detectron2's
    ``LastLevelP6P7``; ``relu_before_p7=True`` gives Detectron2's variant.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "",
        in_feature: str = "p5",
        relu_before_p7: bool = False,
    ):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.relu_before_p7 = relu_before_p7
        for name, cin in (("p6", in_channels), ("p7", out_channels)):
            conv = Conv2d(
                cin,
                out_channels,
                kernel_size=3,
                stride=2,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(conv)
            self.add_module(name, conv)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]
