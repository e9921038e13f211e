"""The peer: the same FCN written out in PyTorch (no torchvision), and its parts of the benchmark (its
side of the paired timing, its peak RSS). These run in the peer's interpreter (bench/.venv-peer).

PyTorch is imported inside the functions, not at the top: it is a benchmark-only dependency that lives
in a venv of its own (gluoncv refuses to import beside PyTorch >= 2), so this module stays importable
from the package's venv, where PyTorch is absent.
"""
import resource

from protocol import BATCH, CROP, NUM_CLASSES, marked_steps, serve


def torch_fcn(num_classes=NUM_CLASSES):
    """The same FCN in PyTorch: ResNet-18 v2 (pre-activation, as MXNet's model zoo) to the stride-32
    features + final BN/ReLU, a 1x1 conv to the classes, ConvTranspose2d(64, stride 32, padding 16)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            a = torch.relu(self.bn1(x))
            residual = self.down(a) if self.down is not None else x
            return self.conv2(torch.relu(self.bn2(self.conv1(a)))) + residual

    layers = [nn.BatchNorm2d(3, affine=False), nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    for cin, cout, stride in ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
    layers += [nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.Conv2d(512, num_classes, 1),
               nn.ConvTranspose2d(num_classes, num_classes, 64, stride=32, padding=16)]
    return nn.Sequential(*layers)


def _torch_setup(threads, compiled=False):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_fcn().to(memory_format=torch.channels_last)
    model = torch.compile(net) if compiled else net
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    X = torch.randn(BATCH, 3, *CROP).to(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (BATCH,) + CROP)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(X)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        # the same bookkeeping as the package's step: loss value and pixel accuracy
        return loss.item(), (out.argmax(1) == y).sum().item()
    return torch, net, model, X, step


def serve_torch(args):
    """The peer's side of the paired timing: an eager training step, eager and (unless --quick)
    ``torch.compile``d inference (forward + argmax). Compiled training measured slower here (0.44 vs
    1.19 img/s) and compiles for minutes, so training is eager."""
    torch, net, model, X, step = _torch_setup(args.threads)

    def train():
        net.train()
        step()

    def infer_with(m, module):
        def infer():
            module.eval()
            with torch.inference_mode():
                m(X).argmax(1)
        return infer
    fns = {'train': train, 'infer_eager': infer_with(net, net)}
    if not args.quick:
        _, net_c, model_c, _, _ = _torch_setup(args.threads, compiled=True)
        fns['infer_compiled'] = infer_with(model_c, net_c)
    return serve(fns, {'torch': torch.__version__})


def part_torch_rss(args):
    torch, net, model, X, step = _torch_setup(args.threads)  # eager: compiling costs memory of its own
    for _ in range(3):
        step()
    return {'peer_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _autocast_step(torch, net, step_fp32):
    """The peer's bfloat16 training step: forward and loss under ``torch.autocast('cpu', bfloat16)`` (its
    mixed precision: oneDNN bfloat16 convolutions, AMX where the CPU has it), float32 weights and SGD."""
    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return step_fp32()
    return step


def serve_torch_bf16(args):
    """The peer's side of the paired bfloat16 training timing: eager float32 and bfloat16-autocast steps."""
    torch, net, _, _, step = _torch_setup(args.threads)
    _, net16, _, _, step16 = _torch_setup(args.threads)
    net.train()
    net16.train()
    return serve({'float32': step, 'bfloat16': _autocast_step(torch, net16, step16)}, {'torch': torch.__version__})


def part_torch_bf16_step(args):
    """``args.steps`` bfloat16-autocast training steps (run under ONEDNN_VERBOSE by bf16_train.onednn_counts)."""
    torch, net, _, _, step = _torch_setup(args.threads)
    net.train()
    marked_steps(_autocast_step(torch, net, step), args.steps)
    return {}
