"""The configs a single-file checkpoint does not carry (UNet, VAE, text encoders, scheduler) for SD-1.x, SD-2.x and
SDXL base, as the public diffusers folders of runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 (and
-2-base) and stabilityai/stable-diffusion-xl-base-1.0 write them. ppti.model_source reads them and replaces every
size a checkpoint's shapes decide (widths, depths, vocabulary), so these files hold only what shapes cannot say:
activations, head sizes, norm groups, scaling factors and the noise schedule."""
