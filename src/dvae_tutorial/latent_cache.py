"""Cached latents: a frozen analysis transform's ``y`` of every training photo.

Backs *Hierarchical VAEs* (training the prior with the transforms frozen).
With ``g_a`` frozen, ``y = g_a(x)`` of a photo never changes, so it is
computed once (float32, then stored as float16: its rounding, ≤ 5e-4
relative, is far below the unit-width training noise) and the prior trains
on random crops of ``y`` — a density-modelling problem at 1/16 of the image
resolution, with no transform in the loop. Whole photos are cached, so
every crop position is available (QRes-VAE and the hyperprior papers crop
images; here the crop is taken on the latent grid, 16 pixels a step).

The cache is a plain ``torch.save`` dict (tensors, strings): the weights'
fingerprint it was made with, the photo paths, and one ``(M, h, w)`` float16
tensor per photo. A cache whose fingerprint differs from the model's is
rebuilt, never silently used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .codec import fingerprint
from .configs import LATENT_STRIDE
from .errors import DataError, DVAEError
from .images import image_files, load_image, to_tensor01
from .single_layer_vae import pad_to_multiple

#: Layout of the cache dict (bump when keys change meaning).
CACHE_VERSION = 1


@torch.no_grad()
def cache_latents(g_a: torch.nn.Module, root: str | os.PathLike, path: str | os.PathLike,
                  progress: bool = True) -> dict:
    """``y = g_a(x)`` of every photo under ``root``, saved to ``path`` (or loaded
    from it when it holds the same weights' latents of the same photos).

    Photos are padded (replicate) to multiples of 16 and coded whole, in
    float32 on the CPU. Returns the cache dict (see the module docstring).
    """
    from tqdm.auto import tqdm

    paths = [str(p) for p in image_files(root)]
    key = fingerprint(g_a).hex()
    path = Path(path)
    if path.is_file():
        cache = torch.load(path, weights_only=True)
        if (cache.get("version") == CACHE_VERSION and cache.get("fingerprint") == key
                and cache.get("paths") == paths):
            return cache
    g_a = g_a.eval()
    latents = []
    for p in tqdm(paths, desc="caching latents", disable=not progress):
        x = pad_to_multiple(to_tensor01(load_image(p)).unsqueeze(0), LATENT_STRIDE)
        latents.append(g_a(x)[0].half())
    cache = {"version": CACHE_VERSION, "fingerprint": key, "paths": paths,
             "latents": latents}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(cache, tmp)
    os.replace(tmp, path)
    return cache


class LatentCrops:
    """Random ``crop × crop`` windows of cached latents, for ``DataLoader``.

    Item ``i``: a random window (float32 ``(M, crop, crop)``) of latent
    ``i mod n``; positions from torch's generator (so
    :func:`~dvae_tutorial.training.fit`'s keyed seeding repeats a run).
    Latents smaller than the window are left out (``skipped`` counts them).
    ``paths`` lists the photos used (the recipe records them).
    """

    def __init__(self, cache: dict, crop: int) -> None:
        keep = [i for i, y in enumerate(cache["latents"]) if min(y.shape[-2:]) >= crop]
        if not keep:
            raise DataError(f"no cached latent is {crop}×{crop} or larger")
        self.latents = [cache["latents"][i] for i in keep]
        self.paths = [cache["paths"][i] for i in keep]
        self.crop, self.skipped = crop, len(cache["latents"]) - len(keep)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> Tensor:
        y = self.latents[index % len(self.latents)]
        top = int(torch.randint(y.shape[-2] - self.crop + 1, ()))
        left = int(torch.randint(y.shape[-1] - self.crop + 1, ()))
        return y[:, top:top + self.crop, left:left + self.crop].float()


def latent_crop(patch_size: int) -> int:
    """The latent window of a ``patch_size``-pixel patch (a multiple of 16)."""
    if patch_size % LATENT_STRIDE:
        raise DVAEError(f"patch size {patch_size} is not a multiple of {LATENT_STRIDE}")
    return patch_size // LATENT_STRIDE
