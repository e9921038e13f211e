"""Exporting a trained run to ONNX (``d2lseg export``): the graph, its d2lseg metadata and a model card.

``export_onnx(run_or_params, out)`` builds the run's network (fcn32s, fcn16s or fcn8s, its classes from
model.json) with the chapter's transposed convolutions and MXNet's own operators (``native.override(False)``:
the native kernels are never part of an exported graph), converts it with MXNet 1.9.1's exporter
(``mx.onnx.export_model``; it needs onnx 1.14-1.18: 1.19 removed the ``onnx.mapping`` it imports), then
finishes the graph: a dynamic batch, height and width, initializers that are not graph inputs (ONNX
Runtime folds constants only then), the input named ``image`` and the output ``logits``, opset 13, and
the metadata ``onnxrun`` reads (classes and colours, input normalisation, recipe, version, the training
machine, metrics, a digest). ``MODEL_CARD.md`` is written beside the model. Both are written under a
temporary name and renamed, after every check: a bad input writes nothing. ``OnnxNet`` is the way back: an
exported model called like an MXNet network, so the package's own evaluation measures it. About 360 lines,
a third of them the card's text: the card is written from the metadata, so the two stay together.
"""
import json
import os
import tempfile

import mxnet as mx
import numpy as np

from .. import native
from ..data.classes import model_classes, model_inputs
from ..core.constants import BASELINES, OUTPUT_STRIDE
from ..core.errors import D2lsegError, first_line
from ..data.images import RGB_MEAN, RGB_STD
from ..fcn.model import build_fcn
from .onnxrun import FORMAT, PREFIX, TILE, metadata_digest
from ..core.outputs import Output, check_paths, claim, refuse_foreign, write_atomically
from ..core.runfolder import writable_file
from ..core.textfiles import FileMissing, read_json, sha256_of
from ..core.version import __version__

try:  # the d2lseg[onnx] extra: without it `d2lseg export` says how to install it, in one line (``_check_onnx``)
    import onnx
except ImportError:
    onnx = None

# MXNet 1.9.1 translates every operator with its opset-12/13 tables (``mx2onnx._op_translations``) and only
# labels the model with the installed onnx's newest opset (19-23), which older ONNX Runtimes refuse: the
# graph is labelled with the opset its nodes were written for. IR version 7 is opset 13's.
OPSET, IR_VERSION = 13, 7
CARD = 'MODEL_CARD.md'
INPUT, OUTPUT = 'image', 'logits'


def _check_onnx():
    if onnx is None:
        raise D2lsegError("export: the onnx package is not installed; `pip install 'onnx>=1.14,<1.19'` (MXNet 1.9.1's "
                          "exporter needs onnx.mapping, which onnx 1.19 removed), or the d2lseg[onnx] extra")


def params_of(source):
    """The parameters file of ``source``: a run folder (its model.params) or a .params file."""
    path = os.path.join(source, 'model.params') if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise D2lsegError(f"{path}: no such parameters file; give a run folder of d2lseg train or its model.params"
                          if os.path.isdir(source) or not os.path.exists(path) else
                          f"{path}: not a regular file; give a run folder of d2lseg train or its model.params")
    return path


def check_out(out, params, overwrite=False):
    """The outputs of an export (``out`` and the card beside it), checked before any work: a .onnx name in a
    writable folder, not an input (the params, model.json, history.json, eval-published.json), not a file
    another command wrote, nor one nobody recorded unless ``overwrite`` -> [Output]."""
    if not str(out).lower().endswith('.onnx'):
        raise D2lsegError(f"--onnx {out}: give a file name ending in .onnx (e.g. {params[:-len('.params')]}.onnx)"
                          if params.endswith('.params') else f"--onnx {out}: give a file name ending in .onnx")
    writable_file(out, '--onnx')
    card = os.path.join(os.path.dirname(os.path.abspath(out)), CARD)
    outs = [Output.of('--onnx', out), Output('--onnx {}: {} (the model card)'.format(out, CARD), card, '--onnx')]
    inputs = model_inputs(params) + [('the evaluation', _beside(params, 'eval-published.json'))]
    check_paths(outs, inputs)
    refuse_foreign(outs, 'export', overwrite)
    return outs


def _beside(params, name):
    return os.path.join(os.path.dirname(os.path.abspath(params)), name)


def _optional_json(path):
    """A JSON object written beside the params (history.json, eval-published.json), or {} when absent."""
    try:
        value = read_json(path, limit=64 << 20, what='JSON written by d2lseg (restore it from the run)')
    except FileMissing:
        return {}
    return value if isinstance(value, dict) else {}


def load_network(params, variant, classes):
    """The run's network with MXNet's own upsampling (the chapter's layers), holding ``params``; a one-line
    D2lsegError naming the file when they are of another variant or class count, truncated or no params."""
    net = build_fcn(len(classes), variant, pretrained=False, fast_upsampling=False)
    try:
        net.load_parameters(params, ctx=[mx.cpu()])  # (FastLayoutParams: the chapter's layout, as files hold it)
    except Exception as e:  # MXNet raises MXNetError/AssertionError/ValueError for another network or a damaged file
        said = ('that model.json beside it says' if os.path.isfile(_beside(params, 'model.json')) else
                '(no model.json beside it: assumed)')
        raise D2lsegError(f"{params}: cannot load into the {variant} with {len(classes)} classes {said} "
                          f"({first_line(e, 120)}); export the params of that run, or pass --variant and "
                          "--num-classes of the network they hold") from None
    return net


def to_onnx(net, path, shape=(1, 3) + TILE):
    """Convert ``net`` with MXNet's exporter into ``path`` (an ONNX model as MXNet writes it: every dimension
    of the input dynamic, initializers listed as inputs too, MXNet's names), the native kernels off."""
    with native.override(False):
        data = mx.sym.var('data')
        sym = net(data)
        params = {p.name: p.data(mx.cpu()) for p in net.collect_params().values()}
        try:
            mx.onnx.export_model(sym, params, in_shapes=[shape], in_types=[np.float32], onnx_file_path=path,
                                 dynamic=True, dynamic_input_shapes=[(None, 3, None, None)])
        except (ImportError, AttributeError) as e:  # onnx >= 1.19 lacks the onnx.mapping MXNet 1.9.1 imports
            raise D2lsegError(f"export: MXNet 1.9.1's ONNX exporter fails with onnx {onnx.__version__} "
                              f"({first_line(e)}); `pip install 'onnx>=1.14,<1.19'`") from None
    return path


def _rename(graph, old, new):
    """Rename the value ``old`` to ``new`` everywhere in ``graph`` (node inputs and outputs, graph in/outputs)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def _dynamic(value, names):
    """Name the dimensions of a graph input or output (N, C, H, W): symbolic where ``names`` says so."""
    for dim, name in zip(value.type.tensor_type.shape.dim, names):
        if name is None:
            continue
        dim.ClearField('dim_value')
        dim.dim_param = name


def finish(model, meta, num_classes):
    """MXNet's ONNX model made deployable, in place: initializers removed from the graph inputs, input
    ``image`` (batch, 3, height, width) and output ``logits`` (batch, classes, height, width), opset 13, the
    d2lseg metadata (``meta``: {key: str}, the digest added) -> ``model``, checked by onnx's checker."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    kept = [v for v in graph.input if v.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    _rename(graph, graph.input[0].name, INPUT)
    _rename(graph, graph.output[0].name, OUTPUT)
    _dynamic(graph.input[0], ('batch', None, 'height', 'width'))
    _dynamic(graph.output[0], ('batch', None, 'height', 'width'))
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = num_classes
    graph.name = 'd2lseg_' + meta[PREFIX + 'variant']
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid('', OPSET)])
    model.ir_version = IR_VERSION
    model.producer_name, model.producer_version = 'd2lseg', __version__
    model.doc_string = meta[PREFIX + 'caveat'] or 'd2lseg FCN; see MODEL_CARD.md'
    entries = dict(meta)
    entries[PREFIX + 'digest'] = metadata_digest(entries)
    onnx.helper.set_model_props(model, entries)
    onnx.checker.check_model(model, full_check=True)
    return model


def _metrics(history, evaluation):
    """What the run measured: its last and best epochs (validation during training) and, when evaluate ran,
    eval-published.json's figures under the published protocol."""
    last = (history.get('epochs') or [{}])[-1]
    found = {'training_validation': {k: last[k] for k in ('epoch', 'val_miou', 'test_acc', 'val_mean_acc', 'val_fwiou')
                                     if k in last},
             'best': history.get('best'), 'untrained': history.get('untrained')}
    if evaluation:
        found['evaluate'] = {k: evaluation.get(k) for k in ('protocol', 'protocol_text', 'miou', 'pixel_acc',
                                                            'mean_acc', 'fwiou', 'images', 'params')}
    return found


def caveat(recipe):
    """The one-line limit of a model, from its recipe (``photos.training_caveat``'s, without the run's paths)."""
    if not isinstance(recipe, dict):
        return 'trained by a run without history.json: its training data and recipe are unknown'
    if recipe.get('synthetic'):
        return ("trained on d2lseg's synthetic shapes: it segments only such shapes, and on photographs its classes "
                "are not meaningful; a model trained on Pascal VOC2012 (d2lseg reproduce) segments photos")
    if recipe.get('pretrained') is False and not recipe.get('backbone_params'):
        return 'trained from a random backbone (--no-pretrained): expect rough results'
    return ''


def metadata(params, variant, classes, history, evaluation):
    """The d2lseg metadata of an export: {``d2lseg.KEY``: str} for every ``onnxrun.KEYS``."""
    values = {
        'format': FORMAT, 'variant': variant, 'classes': classes.to_dict(), 'version': __version__,
        'input': {'name': INPUT, 'layout': 'NCHW', 'dtype': 'float32', 'channels': 'RGB',
                  'normalise': '(pixel / 255 - mean) / std', 'mean': [float(v) for v in RGB_MEAN],
                  'std': [float(v) for v in RGB_STD], 'multiple_of': OUTPUT_STRIDE, 'tile': list(TILE),
                  'tiling': 'inference.predict_full: tiles evenly overlapping, logits averaged; images smaller than '
                            'a tile padded with zeros after normalising (the mean colour)', 'tile_batch': 4},
        'output': {'name': OUTPUT, 'layout': 'NCHW', 'meaning': 'class scores before softmax; argmax over C'},
        'recipe': history.get('recipe', {}), 'environment': history.get('environment', {}),
        'metrics': _metrics(history, evaluation),
        'source': {'params': os.path.basename(params), 'sha256': sha256_of(params),
                   'run': os.path.basename(os.path.dirname(os.path.abspath(params)))},
        'caveat': caveat(history.get('recipe')),
    }
    return {PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}


def _band(recipe):
    """The measured spread of the final val mIoU of the demo recipe when ``recipe`` is it, else None."""
    path = os.path.join(BASELINES, 'demo-spread.json')
    spread = _optional_json(path)
    if not spread or not isinstance(recipe, dict):
        return None
    if any(recipe.get(k) != v for k, v in spread.get('recipe', {}).items() if k != 'max_images'):
        return None
    band = spread['epochs'][-1]['val_miou']
    return (f"the `make demo` recipe's final val mIoU spans {band['min']:.3f}-{band['max']:.3f} over {band['n']} runs "
            "(seeds, instruction sets, kernels, threads: d2lseg/baselines/demo-spread.json)")


def _metrics_lines(meta):
    """The card's evaluation section: figures, the protocol each was measured under, the band, the machine."""
    m, env = json.loads(meta[PREFIX + 'metrics']), json.loads(meta[PREFIX + 'environment'])
    recipe = json.loads(meta[PREFIX + 'recipe'])
    val, lines = m.get('training_validation') or {}, []
    if 'val_miou' in val:
        crop = 'x'.join(map(str, recipe.get('crop', ()))) or '?'
        acc = val.get('test_acc', float('nan'))
        lines.append(f"- val mIoU {val['val_miou']:.4f}, pixel accuracy {acc:.4f} at epoch "
                     f"{val.get('epoch')}: measured during training on the validation split, {crop} crops, the void "
                     "border counted as background (`history.json`)")
    if m.get('untrained'):
        lines.append(f"- the untrained network: val mIoU {m['untrained'].get('miou', float('nan')):.4f}")
    ev = m.get('evaluate')
    if ev and ev.get('miou') is not None:
        acc = ev.get('pixel_acc', float('nan'))
        lines.append(f"- `d2lseg evaluate`: mIoU {ev['miou']:.4f}, pixel accuracy {acc:.4f} on {ev.get('images')} "
                     f"images; protocol: {ev.get('protocol_text') or ev.get('protocol')}")
    lines.append('- ' + (_band(recipe) or 'no measured spread is stored for this recipe: a rerun may differ by a few '
                         'points (docs/reproducibility.md)'))
    if env:
        lines.append(f"- trained on: {env.get('cpu', '?')}, {env.get('mxnet_threads', '?')} thread(s), oneDNN "
                     f"{env.get('onednn_isa', '?')}; d2lseg {env.get('versions', {}).get('d2lseg', '?')}, MXNet "
                     f"{env.get('versions', {}).get('mxnet', '?')}")
    return lines or ['- no metrics: the run left no history.json']


SYNTHETIC_DATA = ("d2lseg's offline synthetic VOC-format set (`d2lseg synth`): rectangles, ellipses and stars of the "
                  "20 VOC classes, told apart by colour and texture, over textured, noisy, unevenly lit backgrounds")


def model_card(meta, onnx_name):
    """MODEL_CARD.md of an export (the layout of Hugging Face model cards: YAML header, then sections)."""
    classes, recipe = json.loads(meta[PREFIX + 'classes']), json.loads(meta[PREFIX + 'recipe'])
    inp, variant = json.loads(meta[PREFIX + 'input']), meta[PREFIX + 'variant']
    synthetic = bool(recipe.get('synthetic'))
    data = (SYNTHETIC_DATA if synthetic else f"the VOC-format data set at `{recipe.get('data_dir', '?')}` (split "
            f"`{recipe.get('train_split', 'train')}`; `{recipe.get('val_split', 'val')}` for validation)")
    rows = [f"| {i} | {n} | {c[0]} {c[1]} {c[2]} | #{c[0]:02x}{c[1]:02x}{c[2]:02x} |"
            for i, (n, c) in enumerate(zip(classes['names'], classes['colors']))]
    keys = ('variant', 'crop', 'batch_size', 'epochs', 'lr', 'lr_schedule', 'momentum', 'wd', 'pretrained', 'augment',
            'class_weights', 'seed', 'max_images')
    text = [
        '---', 'license: apache-2.0', 'library_name: onnx', 'pipeline_tag: image-segmentation',
        'tags: [semantic-segmentation, fcn, resnet18_v2, onnx, d2lseg]',
        f"datasets: [{'d2lseg-synthetic' if synthetic else 'pascal-voc-2012'}]", 'metrics: [mean_iou]', '---', '',
        f'# {variant} (d2lseg, ONNX)', '',
        f'`{onnx_name}`: the fully convolutional network of *Dive into Deep Learning* 10.10 ({variant} on ResNet-18 v2 '
        f"features), trained with d2lseg {meta[PREFIX + 'version']} and exported with `d2lseg export`.", '',
        '## Intended use and limits', '',
        f"Semantic segmentation into the {len(classes['names'])} classes below, one class per pixel, on CPUs "
        'with ONNX Runtime (any platform it has wheels for).',
        f"**{meta[PREFIX + 'caveat'][:1].upper() + meta[PREFIX + 'caveat'][1:]}.**" if meta[PREFIX + 'caveat'] else
        'It knows only the classes of its training data; anything else is labelled as one of them.',
        'Not for decisions about people, safety or health.', '',
        '## Training data', '', data + '.', '',
        '## Training procedure', '', '| recipe | value |', '|---|---|',
        *[f'| {k} | {recipe[k]} |' for k in keys if k in recipe], '',
        '## Evaluation', '', *_metrics_lines(meta), '',
        '## Classes', '', '| index | name | RGB | hex |', '|---|---|---|---|', *rows, '',
        'Label PNGs use these colours as their palette; 255 means "ignored" (void).', '',
    ]
    return '\n'.join(text + _usage(inp, onnx_name)) + '\n'


def _usage(inp, onnx_name):
    mean, std = ', '.join(f'{v:.3f}' for v in inp['mean']), ', '.join(f'{v:.3f}' for v in inp['std'])
    return [
        '## Input and output', '',
        f"- input `{inp['name']}`: float32 (batch, 3, height, width), RGB, `(pixel / 255 - mean) / std` with mean "
        f"({mean}) and std ({std}); height and width any multiples of {inp['multiple_of']}",
        '- output `logits`: float32 (batch, classes, height, width), class scores; the class is their argmax',
        f"- whole images of any size: tiles of {inp['tile'][0]}x{inp['tile'][1]}, evenly overlapping, logits "
        'averaged (what `d2lseg predict` and `evaluate` do; `d2lseg.deploy.onnxrun.predict_full`)', '',
        '## How to use', '', '```bash', 'pip install onnxruntime numpy Pillow   # no MXNet needed',
        f'd2lseg predict --onnx {onnx_name} photos/ --out predictions', '```', '',
        'The d2lseg metadata inside the model (classes, colours, normalisation, recipe, training machine, '
        'metrics) is checked by a digest: `d2lseg.deploy.onnxrun.Model` refuses an altered model.', '',
        '## Licence', '', 'Apache-2.0, as d2lseg; the training data\'s own licence applies to what it holds.', '',
    ]


def export_onnx(source, out, variant=None, num_classes=None, overwrite=False, log=print):
    """Export the run folder or params file ``source`` to the ONNX model ``out``, with ``MODEL_CARD.md`` beside
    it. variant / num_classes: as ``d2lseg evaluate`` takes them (default: model.json beside the params).
    Every check comes first (outputs, parameters, conversion); then both files are written whole, the model
    last. -> {'onnx': out, 'card': path, 'variant', 'classes': count}."""
    _check_onnx()
    params = params_of(source)
    outs = check_out(out, params, overwrite)
    variant, classes = model_classes(params, variant, num_classes)
    net = load_network(params, variant, classes)
    history = _optional_json(_beside(params, 'history.json'))
    meta = metadata(params, variant, classes, history, _optional_json(_beside(params, 'eval-published.json')))
    with tempfile.TemporaryDirectory(prefix='d2lseg-export-') as tmp:
        model = onnx.load(to_onnx(net, os.path.join(tmp, 'mxnet.onnx')))
    finish(model, meta, len(classes))
    card_text = model_card(meta, os.path.basename(out))
    folder = os.path.dirname(os.path.abspath(out))
    claim(folder, [os.path.basename(o.path) for o in outs], 'export')
    try:
        write_atomically(outs[1].path, lambda tmp: _write_text(tmp, card_text))
        write_atomically(out, lambda tmp: onnx.save_model(model, tmp))
    except OSError as e:
        raise D2lsegError(f"--onnx {out}: writing failed ({e.strerror}); free disk space or choose another "
                          "--onnx (what was there before is kept)") from None
    log(f"exported {variant} ({len(classes)} classes) from {params} to {out} (dynamic batch, height and width: "
        f"multiples of {OUTPUT_STRIDE}; opset {OPSET}) and {outs[1].path}")
    return {'onnx': out, 'card': outs[1].path, 'variant': variant, 'classes': len(classes)}


def _write_text(path, text):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


class OnnxNet:
    """An exported model (``onnxrun.Model``) called like the network it came from: (N, 3, H, W) NDArray -> (N, C,
    H, W) NDArray of logits, so ``inference`` and ``app.evaluate_split`` measure it with the package's own tiling,
    protocols and reports (``d2lseg evaluate --onnx`` where MXNet is installed; the parity tests)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        return mx.nd.array(self.model.logits(x.asnumpy()), ctx=x.context)
