"""The package's shape holds: one home for the native operators and the flag table, functions that fit
on a screen, modules of one job (~300 lines or a docstring saying why), imports at module top, and a
README layout that names every module."""
import ast
import glob
import os
import re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
PACKAGE = sorted(glob.glob(os.path.join(ROOT, 'd2lseg', '**', '*.py'), recursive=True))
BENCH = sorted(glob.glob(os.path.join(ROOT, 'bench', '*.py')))


def _rel(path):
    return os.path.relpath(path, ROOT)


def _tree(path):
    with open(path) as f:
        return ast.parse(f.read())


def test_native_operators_are_named_only_in_the_native_package():
    outside = []
    for path in PACKAGE + BENCH:
        if os.sep + 'native' + os.sep in path:
            continue
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if re.search(r'\bd2lseg_(upsample|softmax_ce|softmax_ce_weighted|argmax|upsample_argmax)\b', line) and \
                        not line.lstrip().startswith('#'):
                    outside.append(f'{_rel(path)}:{n}')
    assert not outside, f'native operators named outside d2lseg/native: {outside}'


def test_functions_fit_on_a_screen_and_modules_have_one_job():
    long_functions, long_modules = [], []
    for path in PACKAGE + BENCH:
        tree = _tree(path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f'{_rel(path)}:{node.name} ({length} lines)')
        with open(path) as f:
            lines = f.read().count('\n')
        doc = ast.get_docstring(tree) or ''
        if lines > 310 and 'lines' not in doc:  # a longer module says why in its docstring
            long_modules.append(f'{_rel(path)} ({lines} lines)')
    assert not long_functions, long_functions
    assert not long_modules, long_modules


def test_package_imports_are_at_module_top():
    """Inside functions only what a measured cost or an optional dependency needs (named here, with why)."""
    allowed = {
        ('viz.py', 'matplotlib_inline'),      # Jupyter's inline backend, only in a notebook
        ('viz.py', 'matplotlib.ticker'),
        ('__init__.py', ''),                  # PEP 562: matplotlib (viz) loads on first use, ~0.4 s
        ('startup.py', 'mxnet'),              # startup runs before MXNet loads; settle() runs after
        ('compat.py', 'mxnet'),               # imported only after the numpy names MXNet uses are restored
        ('__main__.py', ''),                  # the command: without MXNet it says so in one line, or runs doctor
        ('doctor.py', ''),                    # doctor runs without MXNet: its MXNet checks import on demand
        ('doctor.py', 'mxnet'),
        ('doctor.py', 'native'),
        ('doctor.py', 'native.library'),
    }
    found = []
    for path in PACKAGE:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        name = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                        if (os.path.basename(path), name or '') not in allowed:
                            found.append(f'{_rel(path)}:{inner.lineno} {name}')
    assert not found, f'imports inside functions: {found}'


def test_readme_layout_names_every_module():
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    layout = readme[readme.index('\nd2lseg/ ', readme.index('## Layout')):readme.index('\nnotebooks/ ')]
    modules = {os.path.relpath(p, os.path.join(ROOT, 'd2lseg')) for p in PACKAGE if not p.endswith('__main__.py')}
    modules -= {'__init__.py'}
    listed = set(re.findall(r'(?<![\w/])((?:native/)?\w+\.py)', layout))
    assert listed == modules, (f'README layout lacks {sorted(modules - listed)}, '
                               f'names missing {sorted(listed - modules)}')


def test_install_requires_is_what_the_package_imports():
    """Every third-party module the package imports is installed by setup.py, and nothing else is."""
    import sys
    setup = _tree(os.path.join(ROOT, 'setup.py'))
    stack = next(ast.literal_eval(n.value) for n in setup.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == 'STACK')
    names = {req.split(';')[0].split('=')[0].split('<')[0].split('>')[0] for req in stack}
    imported = set()
    for path in PACKAGE:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split('.')[0])
    third_party = imported - set(sys.stdlib_module_names) - {'d2lseg'}
    # mxnet comes from the cpu / cu112 extra; matplotlib_inline with Jupyter (viz uses it only there)
    # onnx and onnxruntime come from the onnx extra (d2lseg export, inference without MXNet)
    distribution = {'cv2': 'opencv-python', 'PIL': 'Pillow', 'mxnet': None, 'matplotlib_inline': None, 'onnx': None,
                    'onnxruntime': None}
    needed = {distribution.get(m, m) for m in third_party} - {None}
    assert needed == names, (sorted(needed), sorted(names))
