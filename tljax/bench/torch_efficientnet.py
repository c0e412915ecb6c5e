"""PyTorch reference of EfficientNet-Lite0 for ``tljax bench`` (method ``torch``).

Written here from the paper (Tan & Le 2019; the TF-Lite variant: ReLU6, no
squeeze-excitation, stem and head not scaled) and tljax's own definition
(``tljax.models.efficientnet``), not copied from a port: bias-free convs padded like
TensorFlow's ``SAME`` (the odd pixel at the end, from the input size at forward time),
BatchNorm eps 1e-3 and momentum 0.01 (flax's 0.99), no drop-connect. Module names mirror
tljax's param paths (``_blocks.3._depthwise_conv.weight`` is
``backbone/_blocks/3/_depthwise_conv/kernel``); the classifier is ``head``. It imports
neither JAX nor tljax.models: the stage table is written out (tests check it is tljax's).
"""

# (repeats, kernel, stride, expand ratio, in, out) per stage: tljax.models.efficientnet's.
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # torch's momentum: 1 - flax's 0.99


def _same_pads(size: int, kernel: int, stride: int) -> tuple:
    """Returns TF's ``SAME`` (low, high) padding: output ceil(size / stride)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def efficientnet_lite(torch):
    """Returns EfficientNet-Lite as a ``torch.nn.Module`` class:
    ``EfficientNetLite(channels, num_classes, stages=LITE0_STAGES)``."""
    nn, functional = torch.nn, torch.nn.functional

    class SameConv(nn.Conv2d):
        """A bias-free conv padded like TF's ``SAME`` (asymmetric where it must be)."""

        def __init__(self, cin, cout, kernel, stride=1, groups=1):
            super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=False)

        def forward(self, x):
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            top, bottom = _same_pads(x.shape[2], kh, sh)
            left, right = _same_pads(x.shape[3], kw, sw)
            if top or bottom or left or right:
                x = functional.pad(x, (left, right, top, bottom))
            return super().forward(x)

    def bn(channels):
        return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    class MBConvBlock(nn.Module):
        """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity)."""

        def __init__(self, cin, cout, expand, kernel, stride):
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv, self._bn0 = SameConv(cin, mid, 1), bn(mid)
            self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
            self._bn1 = bn(mid)
            self._project_conv, self._bn2 = SameConv(mid, cout, 1), bn(cout)
            self.expand, self.residual = expand != 1, stride == 1 and cin == cout

        def forward(self, inputs):
            x = functional.relu6(self._bn0(self._expand_conv(inputs))) if self.expand \
                else inputs
            x = functional.relu6(self._bn1(self._depthwise_conv(x)))
            x = self._bn2(self._project_conv(x))
            return x + inputs if self.residual else x

    class EfficientNetLite(nn.Module):
        """Stem -> MBConv blocks -> 1x1 conv to 1280 -> global average pool -> ``head``."""

        def __init__(self, channels, num_classes, stages=LITE0_STAGES):
            super().__init__()
            self._conv_stem, self._bn0 = SameConv(channels, 32, 3, 2), bn(32)
            self._blocks = nn.ModuleList(
                MBConvBlock(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1)
                for repeats, kernel, stride, expand, cin, cout in stages for i in range(repeats))
            self._conv_head, self._bn1 = SameConv(stages[-1][-1], 1280, 1), bn(1280)
            self.head = nn.Linear(1280, num_classes)

        def forward(self, x):
            x = functional.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = functional.relu6(self._bn1(self._conv_head(x)))
            return self.head(x.mean((2, 3)))

    return EfficientNetLite
