"""Low-precision accuracy check: validation mIoU of a trained run in float32, after ``quantization.quantize``
(INT8) and after ``quantization.to_bfloat16`` (bfloat16).

    .venv/bin/python bench/int8_accuracy.py RUN_DIR [--calib-mode naive|entropy] [--calib-images 8]

RUN_DIR is a ``d2lseg train --out`` folder (model.params + history.json); the validation set, crop
and variant are the run's own recipe. Calibration uses the first training crops (never validation
images). Prints one JSON line: miou_fp32, miou_int8, delta_points (INT8 - fp32, in points of mIoU),
miou_bf16, delta_bf16_points (null, with bf16_unavailable saying why, where oneDNN has no bfloat16),
pixel accuracies.
"""
import argparse
import json
import os
import sys

from d2lseg.training import engine
from d2lseg.training.callbacks import load_history
from d2lseg.training.config import Recipe
from d2lseg.native.environment import environment
from d2lseg.fcn.model import load_params
from d2lseg.core.errors import D2lsegError
from d2lseg.deploy.quantization import quantize, to_bfloat16


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run_dir')
    p.add_argument('--calib-mode', default='naive', choices=('naive', 'entropy'))
    p.add_argument('--calib-images', type=int, default=8)
    args = p.parse_args(argv)
    history = load_history(os.path.join(args.run_dir, 'history.json'))
    recipe = Recipe.from_dict(history['recipe'])
    recipe.ctx, recipe.pretrained, recipe.backbone_params = 'cpu', False, None
    run = engine.prepare(recipe)
    load_params(run.net, os.path.join(args.run_dir, 'model.params'), run.ctx)
    from mxnet import nd
    calib = nd.stack(*[run.train_data[i][0] for i in range(args.calib_images)])
    res = {'calib_mode': args.calib_mode, 'calib_images': args.calib_images, 'crop': list(recipe.crop)}
    convert = {'fp32': lambda: run.net, 'int8': lambda: quantize(run.net, calib, calib_mode=args.calib_mode),
               'bf16': lambda: to_bfloat16(run.net)}
    for name, make in convert.items():
        try:
            net = make()
        except D2lsegError as e:
            res[f'miou_{name}'] = res[f'pixel_acc_{name}'] = None
            res[f'{name}_unavailable'] = str(e)
            continue
        m = engine.evaluate(run.val_iter, net, run.ctx, run.recipe.num_classes).compute()
        res[f'miou_{name}'], res[f'pixel_acc_{name}'] = m['miou'], m['pixel_acc']
    res['delta_points'] = 100 * (res['miou_int8'] - res['miou_fp32'])
    res['delta_bf16_points'] = None if res['miou_bf16'] is None else 100 * (res['miou_bf16'] - res['miou_fp32'])
    res['environment'] = environment()
    print(json.dumps(res))
    return 0


if __name__ == '__main__':
    sys.exit(main())
