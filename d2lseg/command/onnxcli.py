"""The ``d2lseg`` command where MXNet is missing: ``predict --onnx`` and ``evaluate --onnx`` on ONNX Runtime.

``__main__`` calls ``main`` when MXNet cannot be imported and the command line asks for an exported model;
every other command says MXNet is missing, in one line. The flags are ``cli``'s, as far as an exported
model takes them (``cli`` itself imports MXNet); the work is ``onnxrun``'s.
"""
import argparse
import os
import sys

from ..deploy import onnxrun
from ..core.errors import D2lsegError
from ..core.outputs import Output, check_paths
from ..data.pixels import allow_pixels


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def build_parser():
    parser = _OneLineParser(prog='d2lseg', description='d2lseg without MXNet: exported models on ONNX Runtime')
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_OneLineParser)
    p = sub.add_parser('predict', help='label PNGs, overlays and a legend for images, with an exported model')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files, or folders (searched recursively)')
    p.add_argument('--onnx', required=True, metavar='FILE', help='a model of d2lseg export')
    p.add_argument('--out', '--output-dir', default='predictions', help='output folder (default %(default)s)')
    p.add_argument('--json', metavar='FILE', help='also write what was found per image as JSON (default: none)')
    p.add_argument('--overwrite', action='store_true', help='replace files predict did not write')
    p.add_argument('--chapter-crop', action='store_true', help="only the top-left crop with sides multiples of 32")
    p.add_argument('--max-pixels', type=int, default=onnxrun.MAX_PIXELS, help='refuse larger images (default '
                   '%(default)s)')
    e = sub.add_parser('evaluate', help='metrics of an exported model under the published protocol')
    e.add_argument('--onnx', required=True, metavar='FILE', help='a model of d2lseg export')
    e.add_argument('--data-dir', default='data', help='folder holding VOCdevkit/VOC2012 (default %(default)s)')
    e.add_argument('--split', default='val', help='the list to evaluate (default %(default)s)')
    e.add_argument('--max-images', type=int, help='only the first N images (default: all)')
    e.add_argument('--json', help='where to write the metrics (default: eval-published.json beside --onnx)')
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    allow_pixels(getattr(args, 'max_pixels', onnxrun.MAX_PIXELS))  # PIL's own guard gives way to --max-pixels
    try:
        if args.command == 'predict':
            return 1 if onnxrun.predict_files(args.onnx, args.images, args.out, args.json, full=not args.chapter_crop,
                                              overwrite=args.overwrite, max_pixels=args.max_pixels) else 0
        out = args.json or os.path.join(os.path.dirname(os.path.abspath(args.onnx)), 'eval-published.json')
        check_paths([Output.of('--json', out)], [('the ONNX model', args.onnx)])  # before any work
        record = onnxrun.evaluate(args.onnx, args.data_dir, args.split, args.max_images)
        onnxrun.write_json(out, record)
        print(f"mIoU {record['miou']:.4f}, pixel accuracy {record['pixel_acc']:.4f} on {record['images']} images "
              f"({record['protocol_text']}) -> {out}")
        return 0
    except D2lsegError as e:
        print(f'd2lseg: error: {e}', file=sys.stderr)
        return 2
