"""Networks: plain ``nn.Module``s returning logits."""

from lightning_bts.models.unet import UNet

__all__ = ["UNet"]
