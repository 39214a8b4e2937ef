"""The losses: the spherical distance, the renderer's image loss, and the bake's meta-loss."""

import torch
import torch.nn.functional as F

from . import cutouts, palettes, prompts

TV_WEIGHT = 1.4
STD_WEIGHT = 0.05


def spherical_distance(x, y):
    """Half the squared angle between x and y, computed as 2 * arcsin(|x^ - y^| / 2)^2.

    Orthogonal vectors lie pi / 2 apart, so their distance is (pi / 2)^2 / 2 = pi^2 / 8;
    identical directions give 0, opposite ones pi^2 / 2.
    """
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


def total_variation(z):
    """Mean squared difference of vertical and of horizontal neighbours, per image: [B]."""
    dy = (z[:, :, 1:, :] - z[:, :, :-1, :]).pow(2).mean((1, 2, 3))
    dx = (z[:, :, :, 1:] - z[:, :, :, :-1]).pow(2).mean((1, 2, 3))
    return dx + dy


def to_image(z):
    """The shown image of a tensor z: clamp(z / 2 + 0.5, 0, 1)."""
    return z.div(2).add(0.5).clamp(0, 1)


def image_loss_with(model, z, target, cutn, draws, palette=None):
    """image_loss with its random cutout choices given (what the compiled loss compiles)."""
    b = z.shape[0]
    shown = image = to_image(z)
    if palette is not None:
        colours, weight, hard = palette
        if hard:
            image = palettes.snap(shown, colours)
    cuts = cutouts.make_cutouts(image, model.size, cutn, draws)  # [B * cutn, 3, R, R]
    embeds = prompts.embed_images(model, cuts).view(b, cutn, -1)  # [B, cutn, D]
    clip_loss = spherical_distance(embeds, target.view(-1, 1, embeds.shape[-1])).mean(1)
    out_of_range = (z - z.clamp(-1, 1)).pow(2).mean((1, 2, 3))
    spread = (z.flatten(1).std(1) - 1).pow(2)
    loss = clip_loss + out_of_range + TV_WEIGHT * total_variation(z) + STD_WEIGHT * spread
    if palette is not None:
        loss = loss + weight * palettes.distance(shown, colours)
    return loss.sum()


def image_loss(model, z, target, cutn, draws=None, palette=None):
    """The original's loss of a batch of images z toward target(s), summed over the batch.

    Per image: spherical distance of CLIP's cutout embeddings to the target, + the
    out-of-range penalty, + 1.4 * total variation, + 0.05 * (std(z) - 1)^2. palette: where
    the run has one, (colours [K, 3], the soft term's weight, whether CLIP sees the image
    through the hard lookup) (palettes.Schedule.at): + weight * each pixel's squared
    distance to its nearest colour.
    """
    if draws is None:
        draws = cutouts.draw_cutouts(z.shape[0], cutn, z.shape[-2:], model.size, z.device)
    return image_loss_with(model, z, target, cutn, draws, palette)


def bake_loss(model, z, prompt, cutn, draws=None, look=None):
    """How far each final image z is from the prompt (plus pixel MSE for an image prompt): [B].

    prompt.embed: [D], or one per image [B, D]. draws: the cutouts' random choices
    (cutouts.draw_cutouts), drawn here when not given. look: what is done to the image before
    it is seen (e.g. output.quantize: the image as saved).
    """
    b = z.shape[0]
    image = to_image(z) if look is None else look(to_image(z))
    embeds = prompts.embed_images(model, cutouts.make_cutouts(image, model.size, cutn, draws)).view(b, cutn, -1)
    loss = spherical_distance(embeds, prompt.embed.view(-1, 1, embeds.shape[-1])).mean(1)
    if prompt.image is not None:
        resized = F.interpolate(image, size=prompt.image.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + (resized - prompt.image).pow(2).mean((1, 2, 3))
    return loss


def stage_regularizer(stages, prompt_embed, progress):
    """The fading 'stay near the prompt' term: sum_i d(stage_i, p) / S * (1 - progress) * (1 - i / S)."""
    s = stages.shape[0]
    fade = 1 - torch.arange(s, device=stages.device) / s
    return (spherical_distance(stages, prompt_embed) * fade).sum() / s * (1 - progress)
