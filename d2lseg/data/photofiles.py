"""Which files ``d2lseg predict`` reads, the names of what it writes (image files under folders, one distinct
output stem per input) and what it reports per image (the share of each class).

A leaf module (numpy, ``errors``, ``outputs``, ``vocpalette``): ``photos`` (on MXNet) and ``onnxrun`` (without
MXNet) share it.
"""
import collections
import os

import numpy as np

from ..core.errors import D2lsegError
from ..core.outputs import Output
from .vocpalette import VOC_CLASSES

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def image_files(paths):
    """What to predict: every file given, and every image file under every folder given (recursively, in
    sorted order). A folder holding none is a one-line D2lsegError."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        inside = []
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            inside += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
        if not inside:
            raise D2lsegError(f"{path}: a folder holding no image files ({', '.join(IMAGE_SUFFIXES)}); give image "
                              "files or folders holding some")
        found += inside
    return found


OUTPUT_SUFFIXES = ('.png', '_overlay.png')  # the files of one image: STEM.png, STEM_overlay.png


def output_stems(paths, reserved=('legend.png',)):
    """Output name stems, one per input path, whose files (``OUTPUT_SUFFIXES``) are all distinct from each
    other and from ``reserved`` (letter case ignored, as some file systems do): the file's stem, or for
    inputs sharing one (``a.jpg a.png``) the name with its extension (``a_jpg``, ``a_png``), numbered
    (``-2``, ``-3``, ...) while a file name is still taken."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    # names the outputs of other images (and the legend) take are not given to an image's own outputs
    stems = [s + '_image' if s.lower().endswith('_overlay') or s.lower() == 'legend' else s for s in stems]
    counts = collections.Counter(s.lower() for s in stems)
    names = [os.path.basename(p).replace('.', '_') if counts[s.lower()] > 1 else s for p, s in zip(paths, stems)]
    taken, tried, out = {r.lower() for r in reserved}, {}, []
    for name in names:
        k = tried.get(name.lower(), 1)  # where the numbering of this name goes on (many inputs may share it)
        stem = name if k == 1 else f'{name}-{k}'
        while any((stem + suffix).lower() in taken for suffix in OUTPUT_SUFFIXES):
            k += 1
            stem = f'{name}-{k}'
        tried[name.lower()] = k
        taken |= {(stem + suffix).lower() for suffix in OUTPUT_SUFFIXES}
        out.append(stem)
    return out


def planned_outputs(paths, out_dir, json_path=None):
    """What predicting ``paths`` into ``out_dir`` writes -> (stems, [``Output``]): per image its label PNG and
    overlay under one distinct stem, the legend, and the ``--json`` report when asked for."""
    stems = output_stems(paths)
    outs = []
    for path, stem in zip(paths, stems):
        outs += [Output.of('--out', os.path.join(out_dir, f'{stem}.png'), f'the label PNG of {path}', out_dir),
                 Output.of('--out', os.path.join(out_dir, f'{stem}_overlay.png'), f'the overlay of {path}', out_dir)]
    outs.append(Output.of('--out', os.path.join(out_dir, 'legend.png'), 'the legend', out_dir))
    if json_path:
        outs.append(Output.of('--json', json_path))
    return stems, outs


def class_shares(pred, names=tuple(VOC_CLASSES), rows=256):
    """{class name: share of the pixels}, largest first, of the classes present in ``pred`` (counted ``rows``
    rows at a time: bincount works on a copy as wide integers)."""
    pred = np.asarray(pred)
    counts = np.zeros(len(names), np.int64)
    for y in range(0, pred.shape[0], rows):
        counts += np.bincount(pred[y:y + rows].astype(np.int64).ravel(), minlength=len(names))[:len(names)]
    order = np.argsort(-counts, kind='stable')
    return {names[c]: float(counts[c] / counts.sum()) for c in order if counts[c]}
