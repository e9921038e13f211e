"""Data-layer benchmark: VOCSegDataset memory and throughput on a synthetic VOC-format set.

Prints one JSON line: storage bytes (uint8, as stored) against float32 storage and the chapter's
(float32 images + RGB uint8 labels), samples/s of ``__getitem__`` and of gluon DataLoaders
(batch 8, 320x480 crops, 0 and 2 workers). Run from the repo root:

    .venv/bin/python bench/data.py [--quick] [--images N]
"""
import json
import os
import sys
import tempfile
import time

import d2lseg  # noqa: F401  (first: it sets the thread count, which MXNet reads when it loads)
from mxnet import gluon

from d2lseg.data.synthetic import make_synthetic_voc
from d2lseg.data.voc import VOCSegDataset

SIZES = ((320, 480), (375, 500), (352, 512))  # at least the crop, near VOC's typical 500x375
CROP = (320, 480)
BATCH = 8


def rate(fn, n_items, min_seconds):
    """Items per second of ``fn`` (which handles n_items per call), repeated for at least min_seconds."""
    fn()  # warm-up (thread/process start, first allocations)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * n_items / elapsed


def loader_rate(ds, workers, thread_pool, min_seconds):
    loader = gluon.data.DataLoader(ds, BATCH, shuffle=True, last_batch='discard', num_workers=workers,
                                   thread_pool=thread_pool)
    n = len(loader) * BATCH

    def epoch():
        for x, y in loader:
            x.wait_to_read()
    return rate(epoch, n, min_seconds)


def parse(argv):
    """``[--quick] [--images N]`` -> (quick, images or None); the package keeps argparse to cli.py."""
    quick, images, rest = False, None, list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == '--quick':
            quick = True
        elif arg == '--images' and rest and rest[0].isdigit() and int(rest[0]) > 0:
            images = int(rest.pop(0))
        else:
            sys.exit(f'usage: bench/data.py [--quick] [--images N]  (got {arg!r})')
    return quick, images


def main(argv=None):
    quick, images = parse(sys.argv[1:] if argv is None else argv)
    n_images = images or (16 if quick else 60)
    min_seconds = 1.0 if quick else 4.0
    with tempfile.TemporaryDirectory(prefix='d2lseg-bench-') as tmp:
        t0 = time.perf_counter()
        voc_dir = make_synthetic_voc(tmp, n_train=n_images, n_val=1, sizes=SIZES, seed=0, progress=False)
        make_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = VOCSegDataset(True, CROP, voc_dir, seed=0, verbose=False)
        load_s = time.perf_counter() - t0
        pixels = sum(f.shape[0] * f.shape[1] for f in ds.features)
        stored = ds.nbytes()
        result = {
            'bench': 'data', 'quick': quick, 'images': len(ds), 'crop': list(CROP), 'batch': BATCH,
            'pixels': pixels,
            'storage_uint8_bytes': stored,
            'storage_float32_bytes': pixels * (3 + 1) * 4,  # float32 images and float32 labels
            'storage_chapter_bytes': pixels * (3 * 4 + 3),  # the chapter: float32 images, RGB uint8 labels
            'make_synthetic_s': round(make_s, 2), 'dataset_init_s': round(load_s, 2),
        }
        result['float32_over_uint8'] = round(result['storage_float32_bytes'] / stored, 2)

        def getitems():
            for i in range(len(ds)):
                ds[i][0].wait_to_read()
        result['getitem_samples_per_s'] = round(rate(getitems, len(ds), min_seconds), 1)
        result['loader_w0_samples_per_s'] = round(loader_rate(ds, 0, False, min_seconds), 1)
        result['loader_w2_threads_samples_per_s'] = round(loader_rate(ds, 2, True, min_seconds), 1)
        result['loader_w2_processes_samples_per_s'] = round(loader_rate(ds, 2, False, min_seconds), 1)
    from d2lseg.native.environment import environment
    result.update(cpus=os.cpu_count(), environment=environment())
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
