"""PyTorch references for ``tljax bench``: the same architecture and strategy, eagerly.

Written here from the architectures' published definitions (torchvision's ResNet module
layout; timm's ViT, with its fused ``scaled_dot_product_attention``; tljax's small CNNs;
EfficientNet-Lite0 with TF ``SAME`` padding, in ``torch_efficientnet``), not imported:
torchvision and timm are not dependencies. Module names mirror tljax's param paths
(``layer1.0.conv1.weight`` is ``backbone/layer1/0/conv1/kernel``, ``fc`` / ``head`` is
``head``, ``cls_token`` is ``backbone/cls_token``), so one strategy's rules, computed by
tljax, pick the frozen params here too. torch is imported only when a reference is built;
tljax never needs it.

A frozen param gets ``requires_grad=False`` and no optimizer entry; a BatchNorm in a frozen
block is put in ``eval()`` (running statistics, not updated), as tljax's step does.
"""

import numpy as np

from tljax.bench import torch_efficientnet

# tljax.models.cnn's block names, widths and pools, written out so that a torch child
# process never imports JAX (tests check they agree).
_CNNS = {"cnn": (("stem", "block1", "block2"), (32, 64, 128), (False, True, True)),
         "cnn6": (tuple(f"block{i}" for i in range(1, 7)), (16, 32, 32, 64, 64, 128),
                  (False, True, False, True, False, False))}
# tljax.models.vit's configs (patch, width, depth, heads, MLP width, LayerNorm eps), likewise.
_VITS = {"vit_ti16": (16, 192, 12, 3, 768, 1e-6), "vit_b16": (16, 768, 12, 12, 3072, 1e-6)}
REFERENCES = ("cnn", "cnn6", "resnet18", "resnet34", "resnet50", "vit_ti16", "vit_b16",
              "efficientnet_lite0")
_HEADS = ("fc", "head")  # torchvision's classifier; tljax's CNNs', ViT's, EfficientNet's


def has_reference(model: str) -> bool:
    """Returns whether ``model`` has a PyTorch reference here."""
    return model in REFERENCES


def _modules(nn):
    """Returns the reference ``nn.Module`` classes, defined once torch is imported."""

    class ConvBlock(nn.Module):  # tljax.models.cnn.ConvBlock
        def __init__(self, cin, cout, pool):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

        def forward(self, x):
            return self.pool(self.bn(self.conv(x)).relu())

    class SmallCNN(nn.Module):  # tljax.models.cnn.SmallCNN
        def __init__(self, names, widths, pools, channels, num_classes):
            super().__init__()
            cin = channels
            for name, width, pool in zip(names, widths, pools):
                self.add_module(name, ConvBlock(cin, width, pool))
                cin = width
            self.names = names
            self.head = nn.Linear(cin, num_classes)

        def forward(self, x):
            for name in self.names:
                x = getattr(self, name)(x)
            return self.head(x.mean((2, 3)))

    def bn_conv(cin, cout, k, stride=1, pad=0):
        return nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout)

    class Basic(nn.Module):  # torchvision BasicBlock
        expansion = 1

        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1, self.bn1 = bn_conv(cin, width, 3, stride, 1)
            self.conv2, self.bn2 = bn_conv(width, width, 3, 1, 1)
            self.downsample = (nn.Sequential(*bn_conv(cin, width, 1, stride))
                               if stride != 1 or cin != width else None)

        def forward(self, x):
            y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (y + (x if self.downsample is None else self.downsample(x))).relu()

    class Bottleneck(nn.Module):  # torchvision Bottleneck (v1.5: stride in the 3x3)
        expansion = 4

        def __init__(self, cin, width, stride):
            super().__init__()
            out = width * 4
            self.conv1, self.bn1 = bn_conv(cin, width, 1)
            self.conv2, self.bn2 = bn_conv(width, width, 3, stride, 1)
            self.conv3, self.bn3 = bn_conv(width, out, 1)
            self.downsample = (nn.Sequential(*bn_conv(cin, out, 1, stride))
                               if stride != 1 or cin != out else None)

        def forward(self, x):
            y = self.bn1(self.conv1(x)).relu()
            y = self.bn3(self.conv3(self.bn2(self.conv2(y)).relu()))
            return (y + (x if self.downsample is None else self.downsample(x))).relu()

    class ResNet(nn.Module):  # torchvision ResNet
        def __init__(self, block, depths, channels, num_classes):
            super().__init__()
            self.conv1, self.bn1 = bn_conv(channels, 64, 7, 2, 3)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512))):
                blocks = []
                for j in range(depth):
                    blocks.append(block(cin, width, (1 if i == 0 else 2) if j == 0 else 1))
                    cin = width * block.expansion
                self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.bn1(self.conv1(x)).relu())
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean((2, 3)))

    return SmallCNN, ResNet, Basic, Bottleneck


def _vit(torch):
    """Returns timm's ViT as a ``torch.nn.Module`` class (pre-norm blocks, exact GELU, class token
    after the final LayerNorm), attention through ``scaled_dot_product_attention``."""
    nn, functional = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(
                2, 0, 3, 1, 4)
            out = functional.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(b, n, d))

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(functional.gelu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, heads, hidden, eps):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
            self.attn, self.mlp = Attention(dim, heads), Mlp(dim, hidden)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, patch, dim, depth, heads, hidden, eps, channels, image_size,
                     num_classes):
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(channels, dim, patch, patch)
            self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
            tokens = (image_size // patch) ** 2 + 1
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
            self.blocks = nn.ModuleList([Block(dim, heads, hidden, eps) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=eps)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x):
            x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x)[:, 0])

    return ViT


def create(model: str, channels: int, num_classes: int, image_size: int | None = None):
    """Returns the PyTorch reference of tljax model ``model`` (a ``torch.nn.Module``);
    a ViT is built for ``image_size`` px."""
    import torch

    SmallCNN, ResNet, Basic, Bottleneck = _modules(torch.nn)
    if model in _CNNS:
        return SmallCNN(*_CNNS[model], channels, num_classes)
    if model in _VITS:
        return _vit(torch)(*_VITS[model], channels, image_size, num_classes)
    if model == "efficientnet_lite0":
        return torch_efficientnet.efficientnet_lite(torch)(channels, num_classes)
    depths = {"resnet18": (Basic, (2, 2, 2, 2)), "resnet34": (Basic, (3, 4, 6, 3)),
              "resnet50": (Bottleneck, (3, 4, 6, 3))}
    block, depth = depths[model]
    return ResNet(block, depth, channels, num_classes)


def tljax_path(torch_name: str, ndim: int) -> str:
    """Returns tljax's param path of a torch parameter (``layer1.0.bn1.weight`` ->
    ``backbone/layer1/0/bn1/scale``)."""
    module, _, leaf = torch_name.rpartition(".")
    if module in _HEADS:
        top = "head"
    else:  # a param of the model itself (a ViT's cls_token) is under no module
        top = "/".join(["backbone", *module.split(".")]) if module else "backbone"
    if leaf == "weight":
        leaf = "kernel" if ndim > 1 else "scale"
    return f"{top}/{leaf}"


def load_tljax(module, variables: dict) -> None:
    """Copies tljax ``variables`` (flat ``{"params/backbone/...": array}`` or nested) into
    the reference ``module``, params and BatchNorm running statistics, in torch layout."""
    import torch
    from flax import traverse_util

    flat = variables if "/" in next(iter(variables)) else traverse_util.flatten_dict(
        variables, sep="/")
    for name, tensor in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        module_name, _, leaf = name.rpartition(".")
        if leaf in ("running_mean", "running_var"):
            top = "backbone/" + module_name.replace(".", "/")
            key = f"batch_stats/{top}/{'mean' if leaf == 'running_mean' else 'var'}"
        else:
            key = "params/" + tljax_path(name, tensor.ndim)
        array = np.asarray(flat[key])
        layout = {2: (1, 0), 4: (3, 2, 0, 1)}.get(array.ndim)  # HWIO -> OIHW, (in,out)->(out,in)
        tensor.copy_(torch.from_numpy(np.array(  # a writable copy
            array.transpose(layout) if layout else array)))


def build(model: str, rules: dict, frozen_bn: list, inputs: np.ndarray, labels: np.ndarray,
          optimizer: dict, num_classes: int, variables: dict | None = None,
          device: str = "cpu", dtype: str = "float32", compile: bool = False,
          precision: str = "highest"):
    """Returns ``(step, module)``: ``step()`` runs one SGD step of the reference of
    ``model`` on the batch and returns the loss before the update (``.item()``: on a GPU
    it waits for the step to finish).

    ``rules`` maps every tljax param path to its LR multiplier, ``None`` for frozen;
    ``frozen_bn`` lists the tljax module paths of BatchNorms in frozen blocks;
    ``optimizer`` holds ``lr``, ``momentum``, ``weight_decay`` and ``grad_clip`` (over the
    trainable params, decay on those of rank > 1, as ``tljax.optim`` does).
    ``variables`` (tljax's), if given, are copied in first. ``device`` is where the
    module and batch live ("cuda": convolutions in channels_last, as a tuned torch user
    runs them); ``dtype`` "bfloat16" runs the forward under ``torch.autocast`` (params,
    gradients and optimizer state stay float32, as tljax's ``compute_dtype``).
    ``precision`` sets float32 matmuls and cuDNN convs to true float32 ("highest"), TF32
    ("tf32") or leaves torch's defaults ("default"; ``bench.PRECISIONS``).
    ``compile`` runs the module through ``torch.compile`` and takes one step to compile it
    here, then puts back the weights, BatchNorm statistics and optimizer state it changed,
    so the first step the caller takes is the same as eager torch's.
    """
    import torch

    if precision != "default":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    module = create(model, inputs.shape[-1], num_classes, inputs.shape[1])
    if variables is not None:
        with torch.no_grad():
            load_tljax(module, variables)
    groups = {}
    for name, param in module.named_parameters():
        path = tljax_path(name, param.ndim)
        if path not in rules:
            raise KeyError(f"torch param {name} ({path}) has no tljax rule")
        mult = rules[path]
        param.requires_grad_(mult is not None)
        if mult is not None:
            decay = optimizer["weight_decay"] if param.ndim > 1 else 0.0
            groups.setdefault((mult, decay), []).append(param)
    opt = torch.optim.SGD([{"params": ps, "lr": optimizer["lr"] * mult, "weight_decay": decay}
                           for (mult, decay), ps in groups.items()],
                          lr=optimizer["lr"], momentum=optimizer["momentum"])
    trainable = [p for ps in groups.values() for p in ps]
    module.train()
    frozen_bn = set(frozen_bn)
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.BatchNorm2d) and \
                "backbone/" + name.replace(".", "/") in frozen_bn:
            sub.eval()  # running statistics, never updated
    x = torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)) if
                         inputs.ndim == 4 else inputs)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    if device != "cpu" and x.ndim == 4:
        module.to(device, memory_format=torch.channels_last)
        x = x.to(device, memory_format=torch.channels_last)
    else:
        module.to(device)
        x = x.to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=dtype == "bfloat16")

    forward = torch.compile(module) if compile else module

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        if optimizer["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(trainable, optimizer["grad_clip"])
        opt.step()
        return loss.item()

    if compile:
        import copy

        before = copy.deepcopy(module.state_dict()), copy.deepcopy(opt.state_dict())
        step()
        module.load_state_dict(before[0])  # copies in place: the compiled graph still holds
        opt.load_state_dict(before[1])
        opt.zero_grad(set_to_none=True)
    return step, module

