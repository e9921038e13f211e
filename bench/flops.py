"""FLOP counting: the floating-point work of one forward pass of a Gluon network, from its symbol graph."""
import json

import d2lseg  # noqa: F401  (first: it sets the threads and AMX that MXNet reads when it loads)
import mxnet as mx


def forward_flops(net, shape):
    """Multiply-adds x 2 of every (de)convolution and dense layer of ``net`` for one input of ``shape``."""
    sym = net(mx.sym.var('data'))
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=(1,) + shape)
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    arg_shapes = dict(zip(sym.list_arguments(), sym.infer_shape(data=(1,) + shape)[0]))
    nodes = json.loads(sym.tojson())['nodes']
    total = 0
    for node in nodes:
        if node['op'] not in ('Convolution', 'Deconvolution', 'FullyConnected'):
            continue
        weight = arg_shapes[nodes[node['inputs'][1][0]]['name']]
        out = shapes[node['name'] + '_output']
        if node['op'] == 'Deconvolution':  # every input pixel meets the whole kernel
            data = shapes[nodes[node['inputs'][0][0]]['name'] + '_output'] \
                if nodes[node['inputs'][0][0]]['op'] != 'null' else (1,) + shape
            total += 2 * data[2] * data[3] * weight[0] * weight[1] * weight[2] * weight[3]
        else:
            per_out = 1
            for d in weight[1:]:
                per_out *= d
            total += 2 * per_out * out[1] * (out[2] * out[3] if len(out) == 4 else 1)
    return total
