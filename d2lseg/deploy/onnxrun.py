"""Segmenting with an exported model (``d2lseg export``) on ONNX Runtime, numpy and Pillow alone: no MXNet.

``Model(path)`` opens a ``.onnx`` file and its d2lseg metadata (refused, in one line, when missing or
altered: ``read_metadata``); ``predict_full`` tiles a whole image exactly as ``inference.predict_full``
does (same tile, overlap rule, padding, batching and averaging); ``predict_files`` writes what
``d2lseg predict`` writes (label PNGs in the classes' palette, overlays, a legend, the JSON report);
``evaluate`` measures mIoU on a VOC-format split under the published protocol.

It imports nothing that imports MXNet (only the leaf modules ``errors``, ``outputs``, ``textfiles``,
``photofiles``, ``pixels`` and ``vocpalette``, which the MXNet side uses too), so it runs where MXNet does
not install (macOS on Apple silicon, Windows; ``pip install onnxruntime numpy Pillow``). About 440 lines,
one job: it repeats, without MXNet, the small numpy parts of ``inference`` (tiling), ``classes`` (palette),
``viz`` (legend) and ``metrics`` that prediction needs (those modules import MXNet); tests/test_onnx.py
checks each against its original, so the two cannot drift apart silently.
"""
import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.constants import CHAPTER_CROP, OUTPUT_STRIDE, check_sides
from ..core.errors import D2lsegError
from ..core.outputs import check_paths, claim, clean_temporaries, refuse_foreign, write_atomically
from ..data.photofiles import class_shares, image_files, planned_outputs
from ..data.pixels import MAX_PIXELS, check_pixels, label_bands, load_strict, overlay_bands, read_image, write_png
from ..core.textfiles import FileMissing, open_regular, read_lines
from ..data.vocpalette import IGNORE_INDEX, VOID_COLOR, voc_palette

try:  # the d2lseg[onnx] extra; without it the first use says how to install it, in one line
    import onnxruntime
except ImportError:
    onnxruntime = None

FORMAT = '1'  # of the metadata below; a model of another format is refused
PREFIX = 'd2lseg.'
# The d2lseg metadata every exported model holds (JSON text, except version, variant, caveat and format),
# and ``d2lseg.digest``: the sha256 of all of them (``metadata_digest``), which tells an altered entry.
KEYS = ('format', 'variant', 'classes', 'input', 'output', 'recipe', 'version', 'environment', 'metrics',
        'source', 'caveat')
JSON_KEYS = ('classes', 'input', 'output', 'recipe', 'environment', 'metrics', 'source')
MULTIPLE = OUTPUT_STRIDE  # the networks' output stride: input sides are multiples of it
TILE = CHAPTER_CROP  # the chapter's crop, predict_full's default tile


# ---------------------------------------------------------------------------------------------- metadata

def metadata_digest(entries):
    """sha256 (hex) of the d2lseg entries of a model's metadata, ``d2lseg.digest`` itself left out."""
    body = {k: v for k, v in entries.items() if k.startswith(PREFIX) and k != PREFIX + 'digest'}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode('ascii')).hexdigest()


def read_metadata(entries, path):
    """The d2lseg metadata of a model ({key: value}, JSON entries parsed) from its ONNX metadata_props
    ``entries``; a one-line D2lsegError naming ``path`` when it is missing, altered or of another format."""
    again = 'export it again with `d2lseg export RUN --onnx FILE`'
    missing = [k for k in KEYS + ('digest',) if PREFIX + k not in entries]
    if len(missing) == len(KEYS) + 1:
        raise D2lsegError(f"{path}: an ONNX model without d2lseg metadata (not written by d2lseg export); {again}")
    if missing:
        raise D2lsegError(f"{path}: its d2lseg metadata lacks {', '.join(PREFIX + k for k in missing[:3])}; {again}")
    if entries[PREFIX + 'digest'] != metadata_digest(entries):
        raise D2lsegError(f"{path}: its d2lseg metadata was altered after export (the digest does not match); {again}")
    if entries[PREFIX + 'format'] != FORMAT:
        raise D2lsegError(f"{path}: d2lseg metadata format {entries[PREFIX + 'format'][:20]!r}, this d2lseg reads "
                          f"{FORMAT!r}; {again} with this version")
    meta = {k: entries[PREFIX + k] for k in KEYS}
    for k in JSON_KEYS:
        meta[k] = json.loads(meta[k])
    return meta


def _check_onnxruntime():
    if onnxruntime is None:
        raise D2lsegError("--onnx: onnxruntime is not installed for this Python ({}); `pip install onnxruntime` "
                          "(or d2lseg[onnx])".format(sys.executable))


class Model:
    """An exported d2lseg model on ONNX Runtime's CPU provider: ``logits(batch)`` and what its metadata says
    (``variant``, ``names``, ``colors``, ``mean``, ``std``, ``tile``, ``caveat``, ``meta``: all of it).

    threads: ONNX Runtime's intra-op threads (None: its default, one per physical core)."""

    def __init__(self, path, threads=None):
        _check_onnxruntime()
        with _open_file(path, 'the ONNX model'):
            pass
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only: its warnings are not the user's to act on
        try:
            self.session = onnxruntime.InferenceSession(os.fspath(path), options, providers=['CPUExecutionProvider'])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... for a damaged file
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise D2lsegError(f"{path}: not an ONNX model ONNX Runtime can load ({reason}); export it again with "
                              "`d2lseg export`") from None
        self.path = os.fspath(path)
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.variant, self.caveat = self.meta['variant'], self.meta['caveat']
        self.names = tuple(self.meta['classes']['names'])
        self.colors = tuple(tuple(int(v) for v in c) for c in self.meta['classes']['colors'])
        self.mean = np.asarray(self.meta['input']['mean'], np.float32)
        self.std = np.asarray(self.meta['input']['std'], np.float32)
        self.tile = tuple(self.meta['input']['tile'])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch):
        """Class scores of a normalised batch: (N, 3, H, W) float32, H and W multiples of 32 -> (N, C, H, W)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        h, w = batch.shape[2:]
        check_sides(h, w, f"{self.path}: a {h}x{w} input;", " (predict_full tiles images of any size)")
        out = self.session.run(None, {self.input_name: batch})[0]
        if out.shape[1] != len(self.names):
            raise D2lsegError(f"{self.path}: the network gives {out.shape[1]} class scores, its metadata names "
                              f"{len(self.names)} classes; export it again with `d2lseg export`")
        return out

    def normalize(self, img):
        """(H, W, 3) uint8 -> (3, H, W) float32, normalised as in training (``images.normalize_image``)."""
        return ((np.asarray(img, dtype=np.float32) / 255 - self.mean) / self.std).transpose(2, 0, 1)


def _open_file(path, what):
    """``path`` opened (a regular file), else a one-line D2lsegError naming it as ``what``."""
    try:
        return open_regular(path)
    except FileMissing:
        raise D2lsegError(f"{path}: no such file ({what}); give the .onnx file `d2lseg export` wrote") from None


# ---------------------------------------------------------------------------------------------- tiling

def tile_starts(length, tile):
    """Start offsets of tiles of size ``tile`` covering [0, length), evenly overlapping (``inference.tile_starts``)."""
    if length <= tile:
        return [0]
    n = int(np.ceil((length - tile) / tile)) + 1
    return sorted({int(round(i * (length - tile) / (n - 1))) for i in range(n)})


def _tile_row(model, img, y, th, pw):
    """Tile row ``y`` of ``img`` normalised and padded with zeros (the mean colour) to (3, th, pw)."""
    rows = img[y:min(y + th, img.shape[0])]
    x = np.zeros((3, th, pw), np.float32)
    if len(rows):
        x[:, :len(rows), :rows.shape[1]] = model.normalize(rows)
    return x


def logit_bands(model, img, tile=TILE, batch_size=4):
    """Averaged logits over overlapping tiles, streamed top to bottom, as ``inference.logit_bands``: yields
    (y0, y1, (C, y1 - y0, W) float32) for consecutive row bands of an (H, W, 3) uint8 image."""
    th, tw = tile
    check_sides(th, tw, f"tile {th}x{tw}:")
    H, W = img.shape[:2]
    ph, pw = max(H, th), max(W, tw)
    ys, xs = tile_starts(ph, th), tile_starts(pw, tw)
    acc = cnt = None
    base = 0  # image row of acc's first row
    for k, y in enumerate(ys):
        X = _tile_row(model, img, y, th, pw)
        for i in range(0, len(xs), batch_size):
            chunk = xs[i:i + batch_size]
            out = model.logits(np.stack([X[:, :, x:x + tw] for x in chunk]))
            if acc is None:
                acc, cnt = np.zeros((out.shape[1], 0, pw), np.float32), np.zeros((0, pw), np.float32)
            need = y + th - base - acc.shape[1]
            if need > 0:
                acc = np.concatenate([acc, np.zeros((acc.shape[0], need, pw), np.float32)], axis=1)
                cnt = np.concatenate([cnt, np.zeros((need, pw), np.float32)], axis=0)
            for x, o in zip(chunk, out):
                acc[:, y - base:y - base + th, x:x + tw] += o
                cnt[y - base:y - base + th, x:x + tw] += 1
        done = (ys[k + 1] if k + 1 < len(ys) else ph) - base  # rows no later tile touches
        y1 = min(base + done, H)
        if y1 > base:
            yield base, y1, (acc[:, :y1 - base] / cnt[:y1 - base])[:, :, :W]
        acc, cnt, base = acc[:, done:], cnt[done:], base + done


def predict_logits_full(model, img, tile=TILE, batch_size=4):
    """Averaged tiled logits of a whole image: (H, W, 3) uint8 -> (C, H, W) float32 (``predict_full`` streams)."""
    return np.concatenate([band for _, _, band in logit_bands(model, img, tile, batch_size)], axis=1)


def predict_full(model, img, tile=TILE, batch_size=4, dtype=np.int64):
    """Class indices of a whole image of any size by tiled logit averaging: -> (H, W) of ``dtype``
    (``inference.predict_full``, with the model's own tile unless ``tile`` is given)."""
    labels = np.empty(img.shape[:2], dtype)
    for y0, y1, band in logit_bands(model, img, tile, batch_size):
        labels[y0:y1] = band.argmax(axis=0)
    return labels


def predict(model, img):
    """Class indices of one image whose sides are multiples of 32: (H, W, 3) uint8 -> (H, W) int64."""
    return model.logits(model.normalize(img)[None])[0].argmax(axis=0)


# ---------------------------------------------------------------------------------------------- files

def class_palette(colors):
    """(256, 3) uint8: the classes' colours, VOC's after them, the void colour at 255 (``ClassList.palette``)."""
    pal = voc_palette()
    pal[:len(colors)] = np.asarray(colors, dtype=np.uint8)
    pal[IGNORE_INDEX] = VOID_COLOR
    return pal


def legend_image(indices, names, colors):
    """A legend of the classes ``indices``: a colour swatch and the name per line, under the title
    'class colours' (the content of ``viz.legend_figure``, drawn with Pillow) -> a PIL image."""
    font = ImageFont.load_default()
    rows = sorted(set(int(i) for i in indices))
    width = 40 + max([len('class colours')] + [len(names[i]) for i in rows]) * 8
    im = Image.new('RGB', (width, 30 + 22 * len(rows)), 'white')
    draw = ImageDraw.Draw(im)
    draw.text((8, 6), 'class colours', fill='black', font=font)
    for k, i in enumerate(rows):
        y = 28 + 22 * k
        draw.rectangle([8, y, 26, y + 14], fill=tuple(colors[i]), outline=(128, 128, 128))
        draw.text((34, y + 1), names[i], fill='black', font=font)
    return im


# ---------------------------------------------------------------------------------------------- predict

def plan_outputs(images, out_dir, json_path=None, model_path=None, overwrite=False):
    """-> (image paths, their output stems, every output), checked before any work as ``photos.plan_outputs``
    checks them: no output is an input (an image, the model) or another output, and none replaces a file
    d2lseg predict did not write unless ``overwrite``; a one-line D2lsegError naming the flag otherwise."""
    paths = image_files(images)
    inside = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(p)) == inside for p in paths):
        raise D2lsegError(f"--out {out_dir}: holds images being predicted, whose names the outputs could take; "
                          "choose another --out")
    stems, outs = planned_outputs(paths, out_dir, json_path)
    inputs = [('the image', p) for p in paths] + ([('the ONNX model', model_path)] if model_path else [])
    check_paths(outs, inputs)
    refuse_foreign(outs, 'predict', overwrite, own=False)
    return paths, stems, outs


def _writable_folder(path):
    """Create ``--out`` when missing; a one-line D2lsegError when it cannot be (``runfolder.writable_folder``)."""
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise D2lsegError(f"--out {path}: a file, not a folder; choose another --out")
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise D2lsegError(f"--out {path}: cannot write there (no permission); choose another --out")
    except OSError as e:
        raise D2lsegError(f"--out {path}: cannot write there ({e.strerror}); choose another --out") from None


def _claim(outs):
    """Record every output in its folder's manifest as predict's, before any is written (``photos._claim``)."""
    folders = {}
    for out in outs:
        folder, name = os.path.split(os.path.abspath(out.path))
        folders.setdefault(folder, []).append(name)
    for folder, names in folders.items():
        claim(folder, names, 'predict')
        clean_temporaries(folder)


def _predict_one(model, path, stem, out_dir, full, log, max_pixels):
    """Predict one image, write its label PNG and overlay -> its entry of the report ('error' when it failed)."""
    try:
        img = read_image(path, max_pixels)
        if full:
            pred = predict_full(model, img, model.tile, dtype=np.uint8)
        else:
            h, w = img.shape[0] // MULTIPLE * MULTIPLE, img.shape[1] // MULTIPLE * MULTIPLE
            if not h or not w:
                raise D2lsegError(f"{path}: smaller than 32x32, too small for --crop (use --full)")
            img = img[:h, :w]
            pred = predict(model, img).astype(np.uint8)
        label, over = os.path.join(out_dir, f'{stem}.png'), os.path.join(out_dir, f'{stem}_overlay.png')
        write_atomically(label, lambda tmp: write_png(tmp, label_bands(pred), pred.shape, class_palette(model.colors)))
        write_atomically(over, lambda tmp: write_png(tmp, overlay_bands(img, pred, model.colors), pred.shape))
    except D2lsegError as e:
        log(f'error: {e}')
        return {'image': path, 'error': str(e)}
    except OSError as e:
        log(f'error: {path}: writing its output to {out_dir} failed ({e.strerror})')
        return {'image': path, 'error': f'writing failed ({e.strerror})'}
    shares = class_shares(pred, model.names)
    log(f"{path}: {', '.join(f'{name} {share:.1%}' for name, share in shares.items())} -> "
        f"{os.path.join(out_dir, stem)}.png, {stem}_overlay.png")
    return {'image': path, 'label': label, 'overlay': over, 'size': list(pred.shape), 'classes': shares}


def predict_files(model, images, out_dir, json_path=None, full=True, overwrite=False, log=print,
                  max_pixels=MAX_PIXELS):
    """``d2lseg predict --onnx``: per image ``<stem>.png`` (class indices in the classes' palette) and
    ``<stem>_overlay.png``, one ``legend.png``, a line of the classes found, and with ``json_path`` the same
    report as ``photos.predict_files`` writes; the model's caveat once on stderr. model: a ``Model`` or the
    path of a .onnx file. Nothing is written when an output would land on an input (``plan_outputs``); each
    file is written whole or not at all. -> the number of images that failed."""
    model = model if isinstance(model, Model) else Model(model)
    paths, stems, outs = plan_outputs(images, out_dir, json_path, model.path, overwrite)
    _writable_folder(out_dir)
    _claim(outs)
    if model.caveat:
        print(f'd2lseg predict: warning: {model.caveat}', file=sys.stderr)
    report = [_predict_one(model, p, s, out_dir, full, log, max_pixels) for p, s in zip(paths, stems)]
    found = {name for r in report for name in r.get('classes', ())}
    if found:
        legend = legend_image([model.names.index(c) for c in found], model.names, model.colors)
        write_atomically(os.path.join(out_dir, 'legend.png'), lambda tmp: legend.save(tmp, format='PNG'))
    if json_path:
        write_json(json_path, {'images': report})
    return sum('error' in r for r in report)


def write_json(path, obj):
    """``obj`` (plain Python values) as JSON in ``path``, written whole or not at all."""
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(obj, f, indent=1)
    write_atomically(path, write)


# ---------------------------------------------------------------------------------------------- evaluate

def split_items(data_dir, split='val', limit=None, label_dir='SegmentationClass'):
    """(image path, label path) of every sample of a VOC-format split (``voc.read_split``, ``voc._sample_paths``):
    ``data_dir/VOCdevkit/VOC2012``, or ``data_dir`` itself when it holds JPEGImages and ImageSets."""
    root = os.path.join(data_dir, 'VOCdevkit', 'VOC2012')
    if not os.path.isdir(root) and os.path.isdir(os.path.join(data_dir, 'ImageSets')):
        root = data_dir
    txt = os.path.join(root, 'ImageSets', 'Segmentation', split + '.txt')
    try:
        names = [line.strip() for line in read_lines(txt) if line.strip()][:limit]
    except FileMissing:
        raise D2lsegError(f"--data-dir {data_dir}: no list file {txt}; give the folder holding VOCdevkit/VOC2012 "
                          "(or a VOC-format tree)") from None
    if any('/' in n or '\\' in n or n in ('.', '..') for n in names):
        raise D2lsegError(f"{txt}: an entry is a path, not an image id; the list file must hold bare ids")
    items = []
    for name in names:
        images = [os.path.join(root, 'JPEGImages', name + ext) for ext in ('.jpg', '.png', '.jpeg')]
        items.append((next((p for p in images if os.path.isfile(p)), images[0]),
                      os.path.join(root, label_dir, name + '.png')))
    return items


def read_label(path, colors, max_pixels=MAX_PIXELS):
    """Class indices (H, W) uint8 of a label PNG under the published protocol (``images.read_label_indices``
    with the void border ignored): palette or grey PNGs hold indices, RGB PNGs the classes' colours; 255 (or
    the void colour) is ignored; any other value that is no class is a one-line D2lsegError naming the file."""
    try:
        with open_regular(path) as f:
            im = Image.open(f)
            check_pixels(path, im, max_pixels)
            load_strict(im)
    except FileMissing:
        raise D2lsegError(f"{path}: file missing (named in the split's list file); restore it") from None
    except D2lsegError:
        raise
    except Exception as e:
        raise D2lsegError(f"{path}: not a readable label PNG ({type(e).__name__})") from None
    if im.mode in ('P', 'L'):
        idx = np.asarray(im).astype(np.uint8)
        bad = (idx >= len(colors)) & (idx != IGNORE_INDEX)
    elif im.mode in ('RGB', 'RGBA'):
        rgb = np.asarray(im.convert('RGB')).astype(np.int64)
        packed = (rgb[..., 0] * 256 + rgb[..., 1]) * 256 + rgb[..., 2]
        table = {(r * 256 + g) * 256 + b: i for i, (r, g, b) in enumerate(colors)}
        table[(VOID_COLOR[0] * 256 + VOID_COLOR[1]) * 256 + VOID_COLOR[2]] = IGNORE_INDEX
        keys = np.array(sorted(table), np.int64)
        pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        bad = keys[pos] != packed
        idx = np.array([table[k] for k in keys], np.uint8)[pos]
    else:
        raise D2lsegError(f"{path}: label PNG of mode {im.mode!r} is not supported; save it as a palette ('P') PNG")
    if bad.any():
        raise D2lsegError(f"{path}: a label value or colour that is no class of the model ({len(colors)} classes, 255 "
                          "ignored); fix the label, or evaluate a model of these classes")
    return idx


def confusion(pred, label, n):
    """mat[true, pred] of one image: (n, n) int64, labels outside [0, n) (the ignored 255) left out."""
    keep = label < n
    return np.bincount(label[keep].astype(np.int64) * n + pred[keep].astype(np.int64), minlength=n * n).reshape(n, n)


def scores(mat):
    """The FCN paper's four metrics and per-class IoU of a confusion matrix (``metrics.ConfusionMatrix.compute``)."""
    m = mat.astype(np.float64)
    tp, gt = np.diag(m), m.sum(axis=1)
    union, total = gt + m.sum(axis=0) - tp, m.sum()
    with np.errstate(divide='ignore', invalid='ignore'):
        acc, iou = tp / gt, tp / union
    valid = gt > 0
    return {'pixel_acc': float(tp.sum() / total) if total else float('nan'),
            'mean_acc': float(np.nanmean(acc)) if valid.any() else float('nan'),
            'miou': float(np.nanmean(iou)) if (union > 0).any() else float('nan'),
            'fwiou': float(((gt / total)[valid] * iou[valid]).sum()) if valid.any() else float('nan'),
            'iou': [float(v) for v in iou]}


def evaluate(model, data_dir, split='val', limit=None, label_dir='SegmentationClass', max_pixels=MAX_PIXELS):
    """Metrics of an exported model on a VOC-format split under the published protocol (whole images tiled
    with the model's tile, the void border ignored), as ``d2lseg evaluate`` measures them -> the record
    (the four metrics, per-class IoU, the confusion matrix, images, protocol)."""
    model = model if isinstance(model, Model) else Model(model)
    n = len(model.names)
    mat = np.zeros((n, n), np.int64)
    items = split_items(data_dir, split, limit, label_dir)
    for image_path, label_path in items:
        img, label = read_image(image_path, max_pixels), read_label(label_path, model.colors, max_pixels)
        if img.shape[:2] != label.shape:
            raise D2lsegError(f"{image_path} is {img.shape[1]}x{img.shape[0]} but {label_path} is {label.shape[1]}x"
                              f"{label.shape[0]}: image and label must have the same size")
        mat += confusion(predict_full(model, img, model.tile), label, n)
    tile = 'x'.join(map(str, model.tile))
    return dict(scores(mat), protocol='published', classes=list(model.names), confusion=mat.tolist(), images=len(items),
                protocol_text=f'whole images (tiled {tile}); the void border ignored; ONNX Runtime', model=model.path)
