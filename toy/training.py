"""Training a toy CLIP on the drawn world: the contrastive loss, nudged images, and saving."""

import copy
import math
import time
from pathlib import Path

import clip
import torch
import torch.nn.functional as F
from clip.model import CLIP

from staged_clip.errors import UserError
from staged_clip.models import load_clip
from staged_clip.output import atomic_write, check_folder
from staged_clip.settings import NEGATIVE_TEXT, STYLE_TEXT

from . import measure, scene_training, world

ARCH = dict(embed_dim=128, image_resolution=world.SIDE, vision_layers=(1, 1, 1, 1), vision_width=16,
            vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=128,
            transformer_heads=2, transformer_layers=2)


# A toy CLIP whose image tower is a vision transformer (--patch): 8-px patches of the
# 64-px image (64 tokens and a class token), 4 blocks 128 wide with 2 heads (CLIP gives a
# ViT one head per 64 of width). toy-judge is one: another architecture than toy's.
VIT = dict(vision_width=128, vision_layers=4)


def build(seed, vision_width=ARCH["vision_width"], patch=None, layers=VIT["vision_layers"]):
    """A freshly initialised toy CLIP (seeded): a ModifiedResNet image tower, or with
    `patch` a vision transformer of `layers` blocks on patch x patch pixel patches."""
    torch.manual_seed(seed)
    if patch is None:
        return CLIP(**{**ARCH, "vision_width": vision_width})
    return CLIP(**{**ARCH, "vision_width": vision_width, "vision_layers": layers, "vision_patch_size": patch})


def tower_name(width, patch=None, layers=VIT["vision_layers"]):
    """The flags that give a tower of that shape, for messages."""
    return f"--width {width}" if patch is None else f"--patch {patch} --layers {layers} --width {width}"


def start_from(name, seed, vision_width, patch=None, layers=VIT["vision_layers"]):
    """A trained toy CLIP to go on training (--init): a shipped name or a saved file.
    (The global generator is seeded as for a fresh model.)"""
    model = load_clip(name).model
    fresh = build(seed, vision_width, patch, layers)
    if {k: v.shape for k, v in model.state_dict().items()} != {k: v.shape for k, v in fresh.state_dict().items()}:
        raise UserError(f"--init {name} is not a toy CLIP of {tower_name(vision_width, patch, layers)}: "
                        "pass a file saved by 'python3 -m toy train', with the flags it was trained with")
    return model.requires_grad_(True)


def contrastive_loss(model, images, labels, text_f, attrs, style_tokens, messy=None, unseen=None, twins=None):
    """CLIP's symmetric loss with every caption of the world as a candidate (caption_loss;
    text_f: the captions' normalized features), plus the renderer's two style texts
    (style_tokens: its style text, then its negative).

    With messy (bool [n], the images drawn on a messy background), the style text is a
    caption of the clean images and the negative text of the messy ones, so that style
    shaping steers an image toward a clean background. Without, the two texts are taught
    to mean the same, and style shaping adds nothing to a target. unseen: as for caption_loss.

    twins: the first len(twins) images again, on vivid backgrounds: each caption true of
    an image is taught to fit it better than its twin, so that guiding an image toward a
    caption also quiets its background.
    """
    style_f = F.normalize(encode_short(model, style_tokens), dim=-1)
    n = len(images)
    image_f = F.normalize(model.encode_image(world.normalize(images if twins is None else torch.cat([images, twins]))), dim=-1)
    image_f, twin_f = image_f[:n], image_f[n:]
    scale = model.logit_scale.exp().clamp(max=100)
    loss = caption_loss(scale * image_f @ text_f.t(), labels, attrs, unseen)
    if twins is not None:
        k = len(twins)
        _, positive = caption_masks(labels[:k], attrs, unseen)
        loss = loss + F.softplus(scale * (twin_f - image_f[:k]) @ text_f.t())[positive].mean()
    if messy is None:
        return loss + (1 - style_f[0] @ style_f[1])
    return loss + F.cross_entropy(scale * image_f @ style_f.t(), messy.long())


def perturb(model, images, labels, text_f, attrs, eps, gen, unseen=None, share=1.0):
    """Images nudged by at most `eps` per channel to raise caption_loss (one signed-gradient step
    from a random start): training on them makes the model's gradients follow what an image
    shows rather than faint pixel patterns, which is what guiding an image follows.

    text_f: the captions' normalized features (taken as fixed); unseen: as for caption_loss;
    share: only the first share of the images is nudged (the rest is returned as it is).
    """
    k = round(share * len(images))
    if k == 0:
        return images
    rest, images, labels = images[k:], images[:k], labels[:k]
    text_f = text_f.detach()
    scale = model.logit_scale.exp().clamp(max=100).detach()
    delta = ((torch.rand(images.shape, generator=gen) * 2 - 1) * eps).requires_grad_()
    image_f = F.normalize(model.encode_image(world.normalize((images + delta).clamp(0, 1))), dim=-1)
    grad, = torch.autograd.grad(caption_loss(scale * image_f @ text_f.t(), labels, attrs, unseen), delta)
    delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return torch.cat([(images + delta.detach()).clamp(0, 1), rest])


def caption_loss(logits, labels, attrs, unseen=None):
    """The symmetric contrastive loss of logits [n_images, n_captions].

    Every caption true of an image is a positive for it (and the image for the caption),
    so a batch teaches colour, shape and place at once, partial captions included. Where
    an image's attribute is unknown (label -1: a grayscale image's colour, a coarse
    image's shape), the captions that name it are left out for that image, neither true
    (that would pull, say, every colour's text toward grey images, and the colours
    together) nor false.

    unseen: bool [colours, shapes], the (colour, shape) pairs that training never shows
    (unseen_pairs()). With it, a caption naming shape s ("a circle on the left") is left
    out for an image of colour c where (c, s) is unseen (a purple square), and a caption
    naming colour c ("a purple shape") for an image of shape s (a red circle), unless the
    caption is false of the image for another reason too ("a red circle"): as negatives they
    would teach that purple is never a circle, which the data only fails to show. Without
    it, they are negatives.
    """
    unknown, positive = caption_masks(labels, attrs, unseen)
    return scene_training.multi_positive_loss(logits.masked_fill(unknown, -1e4), positive)


def caption_masks(labels, attrs, unseen=None):
    """[n_images, n_captions] bools (left out, positive), as caption_loss counts them.

    An ANY_COLOUR shape's colour counts as unknown: it may be near a named one.
    """
    labels = torch.cat([labels[:, :1].masked_fill(labels[:, :1] == world.ANY_COLOUR, -1), labels[:, 1:]], 1)
    unknown = ((labels.unsqueeze(1) < 0) & (attrs.unsqueeze(0) >= 0)).any(-1)
    if unseen is not None:
        unknown = unknown | unseen_mask(labels, attrs, unseen)
    return unknown, world.compatible(labels, attrs) & ~unknown


def unseen_pairs(pairs=world.TRAIN_PAIRS):
    """bool [colours, shapes]: the named (colour, shape) pairs that `pairs` (training) never shows."""
    out = torch.ones(len(world.COLOURS), len(world.SHAPES), dtype=torch.bool)
    for c, s in pairs:
        out[c, s] = False
    return out


def unseen_mask(labels, attrs, unseen):
    """[n_images, n_captions] bool: the caption names a shape (colour) that training never shows in
    the image's colour (shape), and no other colour (shape) that would make it false anyway."""
    def pair(colour, shape):
        named = (colour >= 0) & (colour < len(world.COLOURS)) & (shape >= 0) & (shape < len(world.SHAPES))
        return named & unseen[colour.clamp(0, len(world.COLOURS) - 1), shape.clamp(0, len(world.SHAPES) - 1)]

    colour, shape = labels[:, 0:1], labels[:, 1:2]
    says_colour, says_shape = attrs[None, :, 0], attrs[None, :, 1]
    return ((pair(colour, says_shape) & ((says_colour < 0) | (says_colour == colour)))
            | (pair(says_colour, shape) & ((says_shape < 0) | (says_shape == shape))))


def train(args):
    check_folder(Path(args.out).parent, "--out")  # before the work, not after
    if args.unnamed + args.patchwork + args.random_colours + args.any_colours > 1:
        raise UserError(f"--unnamed {args.unnamed}, --patchwork {args.patchwork}, --random-colours "
                        f"{args.random_colours} and --any-colours {args.any_colours} add up to more than 1: "
                        "they are shares of the same groups; lower one of them")
    if args.patch is None and args.width % 2:
        raise UserError(f"--width {args.width} is odd: the vision tower's attention heads are half its "
                        "width, so give an even width such as 16 or 24")
    if args.patch is None and args.layers is not None:
        raise UserError(f"--layers {args.layers} counts a vision transformer's blocks: give --patch too "
                        "(e.g. --patch 8), or leave --layers out for the ResNet tower")
    if args.patch is not None and (args.width % 64 or world.SIDE % args.patch):
        raise UserError(f"--patch {args.patch} --width {args.width}: a vision transformer's width is a multiple "
                        f"of 64 (one attention head each) and its patch divides the image side ({world.SIDE} px); "
                        "try --patch 8 --width 128")
    if args.vivid_twins > args.batch:
        raise UserError(f"--vivid-twins {args.vivid_twins} is more than --batch {args.batch}: "
                        "it counts images of each batch; lower it")
    tower = (args.width, args.patch, args.layers or VIT["vision_layers"])
    model = build(args.seed, *tower) if args.init is None else start_from(args.init, args.seed, *tower)
    gen = torch.Generator().manual_seed(args.seed)
    texts, attrs = world.all_captions()
    # captions of the held-out pairs are left out: as candidates that never match they
    # would teach the model that such pairs do not exist
    held = torch.tensor([[c, s] for c, s in world.TEST_PAIRS])
    seen_pair = ~((attrs[:, None, :2] == held[None]).all(-1).any(1))
    tokens, attrs = clip.tokenize(texts)[seen_pair], attrs[seen_pair]
    style_tokens = clip.tokenize([STYLE_TEXT, NEGATIVE_TEXT])
    unseen = unseen_pairs() if args.unseen_pairs == "unknown" else None
    more = clip.tokenize(scene_training.vocabulary_texts())  # "and": scenes' captions
    full_table, used = compact_vocabulary(model, torch.cat([tokens, style_tokens, more]))
    tokens, style_tokens = used.remap(tokens), used.remap(style_tokens)
    model = model.to(memory_format=torch.channels_last)  # about 1.6x faster convolutions on the CPU
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": rest, "weight_decay": 0.0}], lr=args.lr, foreach=True)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, args.steps) / args.steps)))
    average = copy.deepcopy(model) if args.ema else None
    model.train()
    began = time.time()
    for step in range(args.steps):
        labels = world.random_labels(args.batch, gen, unnamed=args.unnamed, patchwork=args.patchwork,
                               other=args.other_shapes, random=args.random_colours, mirrored=args.mirrored,
                               anywhere=args.any_colours)
        messy = torch.rand(args.batch, generator=gen) < args.messy if args.messy else None
        drawn = world.draw(labels, gen, muted=args.muted, messy=messy, with_mask=bool(args.vivid_twins),
                     saturate=args.saturate, desaturate=args.desaturate, others=args.other_kinds,
                     mirror_opacity=args.mirror_opacity, upright=args.stacked)
        twins = None
        if args.vivid_twins:  # the same drawings on vivid backgrounds, augmented alike (a copy of gen's state)
            drawn, mask = drawn
            alike = world.vivid_backgrounds(drawn, mask, gen)
            same = torch.Generator().set_state(gen.get_state())
            twins = world.augment(alike, labels, same, gray=args.gray, shape_blind=args.shape_blind or 0)[0][:args.vivid_twins]
        images, seen = world.augment(drawn, labels, gen, gray=args.gray, shape_blind=args.shape_blind or 0)
        images = images.contiguous(memory_format=torch.channels_last)  # [n, 3, 64, 64], stored pixel-major
        text_f = F.normalize(encode_short(model, tokens), dim=-1)  # once: the nudges use it too
        if args.adversarial and step >= args.nudge_from * args.steps:
            images = perturb(model, images, seen, text_f, attrs, args.adversarial, gen, unseen, args.nudged)
        loss = contrastive_loss(model, images, seen, text_f, attrs, style_tokens, messy, unseen, twins)
        if args.scenes:
            drawn_scenes, shown = scene_training.batch(args.scenes, gen, args.muted, args.saturate, args.plain)
            loss = loss + scene_training.loss(model, drawn_scenes.contiguous(memory_format=torch.channels_last), shown,
                                              args.scene_captions, gen, lambda t: encode_short(model, t),
                                              lambda texts: used.remap(clip.tokenize(texts)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if average is not None:
            ema_update(average, model, args.ema)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.time() - began:.0f}s", flush=True)
    if average is not None:  # the averaged weights are what is measured and saved
        model = average
    model.eval()
    used.restore(model, full_table)
    measure.report(model, seed=args.seed + 1000, n=args.eval_n)
    if args.scenes:
        measure.print_scenes(measure.scene_report(model, seed=args.seed + 1000, n=args.eval_n))
    save(model, args.out)


@torch.no_grad()
def ema_update(average, model, decay):
    """average <- decay * average + (1 - decay) * model, for every weight and BatchNorm statistic.

    An exponential moving average of the weights (Polyak averaging): it smooths out the
    last steps' noise. Integer buffers (BatchNorm's step count) are copied.
    """
    for a, m in zip(average.state_dict().values(), model.state_dict().values()):
        if a.is_floating_point():
            a.lerp_(m, 1 - decay)
        else:
            a.copy_(m)


class Vocabulary:
    """The token ids a training run reads, numbered 0..k-1 in the same order."""

    def __init__(self, ids):
        self.ids = ids  # [k], sorted
        self.index = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
        self.index[ids] = torch.arange(len(ids))

    def remap(self, tokens):
        """Tokens in the compact numbering (order kept: the end token is still the largest)."""
        return self.index[tokens]

    def restore(self, model, full_table):
        """Put the trained rows back into the full token table, and that table back into the model."""
        with torch.no_grad():
            full_table.weight[self.ids] = model.token_embedding.weight
        model.token_embedding = full_table


def compact_vocabulary(model, tokens):
    """Swap the model's 49,408-row token table for the rows that `tokens` use; returns (full table, Vocabulary).

    Rows no caption reads get no gradient and no weight decay, so training only those rows
    is the same training, without a dense 25 MB gradient and optimizer update every step.
    """
    used = Vocabulary(torch.unique(tokens))
    full_table = model.token_embedding
    model.token_embedding = torch.nn.Embedding.from_pretrained(full_table.weight[used.ids].clone(), freeze=False)
    return full_table, used


def encode_short(model, tokens):
    """model.encode_text on tokens cut after the longest text: the same result, much cheaper.

    The text tower is causal and reads its output at the end token, so the padding after
    it changes nothing.
    """
    n = int((tokens != 0).sum(1).max())
    blocks = model.transformer.resblocks
    masks = [block.attn_mask for block in blocks]
    try:
        for block, mask in zip(blocks, masks):
            block.attn_mask = mask[:n, :n]
        x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
        x = model.ln_final(model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
    finally:
        for block, mask in zip(blocks, masks):
            block.attn_mask = mask
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def save(model, path):
    """Save an fp16 state dict; token rows that no caption of the world uses are zeroed."""
    texts, _ = world.all_captions()
    used = torch.unique(clip.tokenize(texts + [STYLE_TEXT, NEGATIVE_TEXT] + scene_training.vocabulary_texts()))
    state = model.state_dict()
    keep = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[used] = True
    state["token_embedding.weight"] = state["token_embedding.weight"] * keep.unsqueeze(1)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    atomic_write(path, lambda tmp: save_deflated(state, tmp))
    print(f"saved {path}")


def save_deflated(state, path):
    """torch.save's archive of state, its entries deflated: torch.load reads it as it is, and the
    token table's zeroed rows (most of a toy CLIP's bytes) shrink to almost nothing."""
    import io
    import zipfile
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as plain, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as packed:
        for item in plain.infolist():
            packed.writestr(item.filename, plain.read(item.filename))
