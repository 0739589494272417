"""ResNet18 for one-channel chest X-rays, with one logit: P(pneumonia) = sigmoid(logit).

Grayscale decision: the first convolution takes one channel. With ImageNet weights its RGB
kernels are summed over the colour axis, which is exactly what the RGB network computes on a
grey image replicated three times, at a third of the first layer's cost and input memory.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

ARCH = "resnet18"


def _one_channel(model: nn.Module) -> nn.Module:
    old = model.conv1
    conv = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(old.weight.sum(dim=1, keepdim=True))
    model.conv1 = conv
    return model


def _binary_head(model: nn.Module) -> nn.Module:
    model.fc = nn.Linear(model.fc.in_features, 1)
    return model


def build_model(init: str | Path = "scratch") -> nn.Module:
    """init: `scratch` | `imagenet` | path to a model.pt to warm start from (a registered version's
    `models:/<name>@<alias>` is resolved to its model.pt by pipeline.mlops.loading.resolve_model)."""
    if init == "scratch":
        return _binary_head(_one_channel(resnet18(weights=None)))
    if init == "imagenet":
        return _binary_head(_one_channel(resnet18(weights=_imagenet_weights())))
    if str(init).startswith("models:/"):
        raise ValueError(f"model.init={init}: resolve it to a model.pt first (pipeline.mlops.loading.resolve_model)")
    if not Path(init).is_file():
        raise FileNotFoundError(
            f"model.init={init!r} is neither scratch, imagenet, an existing checkpoint file nor models:/...")
    state = load_checkpoint(init)["state_dict"]
    model = build_model("scratch")
    model.load_state_dict(state)
    return model


# Explicit passes instead of forward hooks: a hook lives on the shared module, so two threads
# predicting at once (`mlflow models serve` runs requests in a thread pool) would each collect the
# other's features, and the input gate would judge one patient's film by another's.
def last_stage(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv1 .. layer4: the last residual stage's activations [N, 512, s, s] (Grad-CAM's layer)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def head(model: nn.Module, stage: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-stage activations -> (logit [N], pooled features [N, 512], which the input gate judges)."""
    features = torch.flatten(model.avgpool(stage), 1)
    return model.fc(features)[:, 0], features


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers as model(x) [N, 1] (as [N]), with the pooled features of the same pass."""
    return head(model, last_stage(model, x))


def _imagenet_weights():
    """torchvision's own weights API; fails loudly offline, never falls back to random weights."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        weights.get_state_dict(progress=False, check_hash=True)  # cached in $TORCH_HOME, else downloaded
    except Exception as exc:
        raise RuntimeError(
            f"model.init=imagenet but the ImageNet weights could not be loaded ({exc}). "
            f"Put {Path(weights.url).name} in $TORCH_HOME/hub/checkpoints/ (default "
            f"~/.cache/torch/hub/checkpoints/) or set model.init=scratch or a checkpoint to warm start from."
        ) from exc
    return weights


def load_checkpoint(path: str | Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a {ARCH} checkpoint written by pipeline.training.train")
    return ckpt
