"""Networks: plain ``nn.Module``s returning logits."""

from lightning_bts.models.factory import PAPER_UNET, InputScaled, build_network, check_image_size
from lightning_bts.models.unet import NORMS, UNet

__all__ = ["NORMS", "PAPER_UNET", "InputScaled", "UNet", "build_network", "check_image_size"]
