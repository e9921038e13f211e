"""The sizes of notebook 04's exercise 3 (docs/instructors.md): one setting trained as the notebook trains
it (``engine.fit`` on a ``Recipe``, the chapter's defaults, random backbone), one seed at a time, each run
printed as one JSON line: the final val pixel accuracy, the all-background floor of that seed's validation
crops (``teaching.crops_baseline``), their difference, the val mIoU before and after training, the seconds
and the machine's load.

    OMP_NUM_THREADS=1 .venv/bin/python bench/exercise3.py --crop 64x96 --images 400 --batch 16 --epochs 3
"""
import argparse
import dataclasses
import json
import os
import time

import d2lseg as d2l
from d2lseg.command.specs import parse_size
from d2lseg.core.constants import crop_text
from d2lseg.data.synthetic import choose_data
from d2lseg.data.voc import VOC_SUBDIR
from d2lseg.native.environment import mxnet_threads
from d2lseg.training import teaching
from d2lseg.training.engine import fit

SETTINGS = {  # notebook 04's SETTINGS
    'chapter': {},
    'momentum': {'lr': 0.01, 'momentum': 0.9},
    '05': {'lr': 0.05, 'momentum': 0.9, 'lr_schedule': 'poly', 'warmup_epochs': 0.5},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--crop', default=(64, 96), type=parse_size, help='HEIGHTxWIDTH (default 64x96)')
    p.add_argument('--images', type=int, default=None, help='the first N images of each split (default: all)')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--setting', default='chapter', choices=SETTINGS)
    p.add_argument('--data-dir', default='data', help='VOC2012 under it, else its synthetic set (made once)')
    a = p.parse_args(argv)
    data_dir = choose_data(a.data_dir)
    base = d2l.Recipe(data_dir=data_dir, synthetic=True, crop=a.crop,
                      batch_size=a.batch, epochs=a.epochs, pretrained=False, ctx='cpu', workers=0, max_images=a.images)
    for seed in (int(s) for s in a.seeds.split(',')):
        recipe = dataclasses.replace(base, seed=seed, **SETTINGS[a.setting])
        floor = teaching.crops_baseline(recipe, os.path.join(data_dir, VOC_SUBDIR))
        load, tic = os.getloadavg()[0], time.time()
        history = fit(recipe, progress=False)
        last = history['epochs'][-1]
        print(json.dumps({'crop': crop_text(a.crop), 'images': a.images, 'batch': a.batch, 'epochs': a.epochs,
                          'setting': a.setting, 'seed': seed, 'val_acc': round(last['test_acc'], 3),
                          'floor': round(floor, 3), 'above_floor': round(last['test_acc'] - floor, 3),
                          'val_miou': round(last['val_miou'], 3), 'untrained_miou': round(history['untrained']['miou'], 3),
                          'seconds': round(time.time() - tic, 1), 'threads': mxnet_threads(), 'load': round(load, 2),
                          'val_acc_per_epoch': [round(e['test_acc'], 3) for e in history['epochs']]}), flush=True)


if __name__ == '__main__':
    main()
