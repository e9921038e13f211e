"""Start-up checks of a training configuration: every problem found in one message, before any download,
any data is decoded or a network is built (``check``; ``app.run_training`` calls it for a new run).

The data checks read only image headers (PIL reads the size without decoding the pixels).
"""
import glob
import os

from PIL import Image

from ..core.errors import D2lsegError
from ..core.constants import OUTPUT_STRIDE
from ..data.voc import _sample_paths, has_voc, read_split, voc_root


def _backbone_cached():
    """Whether MXNet's model zoo holds the ImageNet resnet18_v2 weights already (no download needed)."""
    home = os.environ.get('MXNET_HOME', os.path.join(os.path.expanduser('~'), '.mxnet'))
    return bool(glob.glob(os.path.join(home, 'models', 'resnet18_v2-*.params')))


def _sizes(root, split, limit):
    """(height, width) of the split's images that can be opened (the others are named when read)."""
    sizes = []
    for name in read_split(root, split=split)[:limit]:
        try:
            with Image.open(_sample_paths(root, name)[0]) as im:
                sizes.append((im.size[1], im.size[0]))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sizes


def largest_crop(recipe, cap):
    """The largest crop, sides multiples of 32 and at most ``cap`` (h, w), that every image of the recipe's train
    and val splits holds -> (h, w), or None when the data is not there yet (or no such crop exists)."""
    if not has_voc(recipe.data_folder, (recipe.train_split, recipe.val_split)):
        return None
    root = voc_root(recipe.data_folder)
    sizes = [s for split in (recipe.train_split, recipe.val_split) for s in _sizes(root, split, recipe.max_images)]
    if not sizes:
        return None
    crop = tuple(min(cap[i], min(s[i] for s in sizes)) // OUTPUT_STRIDE * OUTPUT_STRIDE for i in (0, 1))
    return crop if min(crop) else None


def _data_problems(recipe):
    """What the recipe's crop and batch size cannot do with its data (nothing when the data is not there yet)."""
    if not has_voc(recipe.data_folder, (recipe.train_split, recipe.val_split)):
        return []
    root, (h, w), found = voc_root(recipe.data_folder), recipe.crop, []
    for split in (recipe.train_split, recipe.val_split):
        sizes = _sizes(root, split, recipe.max_images)
        fit = [s for s in sizes if s[0] >= h and s[1] >= w]
        if sizes and not fit:
            hold = [min(s[i] for s in sizes) // OUTPUT_STRIDE * OUTPUT_STRIDE for i in (0, 1)]
            found.append(f"--crop {h}x{w}: all {len(sizes)} images of the {split} split are smaller"
                         + (f" (a crop every one holds: --crop {hold[0]}x{hold[1]})" if min(hold) else ''))
        usable = fit or sizes  # with a crop that fits none, the batch is judged by the images there are
        if split == recipe.train_split and sizes and recipe.batch_size > len(usable):
            found.append(f"--batch-size {recipe.batch_size}: larger than the {len(usable)} training images"
                         + (' that hold the crop' if fit else '') + f"; use --batch-size {min(len(usable), 8)} or less")
    return found


def problems(recipe, data=True):
    """Every problem of ``recipe`` found without training -> [one line each]."""
    found = []
    try:
        recipe.validate()
    except D2lsegError as e:
        found.append(str(e))
    if data and not found:  # the data checks need a valid crop
        found += _data_problems(recipe)
    return found


def check(recipe, data=True):
    """One D2lsegError listing every problem of ``recipe`` (``problems``), with what would help."""
    found = problems(recipe, data)
    if not found:
        return
    text = found[0] if len(found) == 1 else f"{len(found)} problems: " + '; '.join(
        f"({i}) {p}" for i, p in enumerate(found, 1))
    if not any(p.startswith(('--crop', '--batch-size')) for p in found):
        raise D2lsegError(text)
    if recipe.pretrained and not (recipe.backbone_params or recipe.init_from or _backbone_cached()):
        text += ("; this recipe would also download the ImageNet backbone resnet18_v2 (offline: --backbone-params "
                 "FILE, or --no-pretrained)")
    raise D2lsegError(text + "; --preset small is a recipe for a few dozen images of your own on a CPU")
