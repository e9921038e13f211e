"""The package's shape holds: imports point down through the named layers (``tools.restructure.LAYOUT``),
the ground floor and ``config`` load no MXNet, private MXNet attributes only in ``mxinternals``, one home for
the native operators and the flag table, lines of at most 120 characters, functions that fit on a screen and take
at most eight parameters (or say why), modules of one job (~300 lines or a docstring saying why), imports at module
top, and a README layout and an architecture table (docs/architecture.md) that name every module where it lives."""
import ast
import glob
import os
import re

from tools.restructure import LAYERS, LAYOUT, TOP, layer_of, target

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
        ('__main__.py', 'core'),              # (the same, once the modules live in subpackages)
        ('__main__.py', 'command'),
        ('doctor.py', ''),                    # doctor runs without MXNet: its MXNet checks import on demand
        ('doctor.py', 'mxnet'),
        ('doctor.py', 'native'),
        ('doctor.py', 'native.library'),
        ('device.py', 'mxnet'),               # the device rule is on the ground floor: MXNet when a context is made
        ('__init__.py', 'fcn'),               # the same lazy viz, once the modules live in subpackages
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


def _package_imports(path):
    """(line, imported d2lseg module as a path inside d2lseg/, e.g. 'voc.py' or 'data/voc.py') of a package file,
    module-top and inside functions, relative and absolute."""
    rel = os.path.relpath(path, os.path.join(ROOT, 'd2lseg')).replace(os.sep, '/')
    here = ['d2lseg'] + rel.split('/')[:-1]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').split('.')[0] == 'd2lseg'):
            base = here[:len(here) - node.level + 1] if node.level else []
            parts = base + (node.module.split('.') if node.module else [])
            for a in node.names:  # a name may be a module of the package imported from (from .data import voc)
                yield node.lineno, _as_file(parts + [a.name])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split('.')[0] == 'd2lseg':
                    yield node.lineno, _as_file(a.name.split('.'))


def _as_file(parts):
    """['d2lseg', 'data', 'voc', 'NAME'] -> the file of the longest module path among them inside d2lseg/
    (a package: its __init__.py)."""
    root = os.path.join(ROOT, 'd2lseg')
    for n in range(len(parts), 1, -1):
        rel = '/'.join(parts[1:n])
        if os.path.isfile(os.path.join(root, rel + '.py')):
            return rel + '.py'
        if os.path.isfile(os.path.join(root, rel, '__init__.py')):
            return rel + '/__init__.py'
    return '__init__.py'


def _layer_name(i):
    return LAYERS[i] if i < len(LAYERS) else 'the package (' + '/'.join(TOP) + ')'


def test_imports_point_down_through_the_layers():
    """A module imports only from its own layer or one below: core < native < data < fcn < deploy < training
    < command (docs/architecture.md says what each holds; tools/restructure.py moves them into those folders)."""
    unassigned, upward = [], []
    for path in PACKAGE:
        rel = os.path.relpath(path, os.path.join(ROOT, 'd2lseg')).replace(os.sep, '/')
        mine = layer_of(rel)
        if mine is None:
            unassigned.append(rel)
            continue
        for line, imported in _package_imports(path):
            theirs = layer_of(imported)
            if theirs is not None and theirs > mine:
                upward.append(f'd2lseg/{rel}:{line} ({_layer_name(mine)}) imports d2lseg/{imported} '
                              f'({_layer_name(theirs)}), a layer above')
    assert not unassigned, f'modules without a layer (add each to LAYOUT in tools/restructure.py): {unassigned}'
    assert not upward, '\n'.join(upward)


def _mxnet_at_import(rel, seen):
    """The chain of module-top package imports from ``rel`` that reaches ``import mxnet``, or None."""
    if rel in seen:
        return None
    seen.add(rel)
    tree = _tree(os.path.join(ROOT, 'd2lseg', rel))
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n.split('.')[0] == 'mxnet' for n in names):
            return [rel]
    top = {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    for line, imported in _package_imports(os.path.join(ROOT, 'd2lseg', rel)):
        chain = _mxnet_at_import(imported, seen) if line in top and imported != '__init__.py' else None
        if chain:
            return [rel] + chain
    return None


def test_the_ground_floor_and_config_load_no_mxnet():
    """Every core module and config import without MXNet (the device rule imports it when a context is made)."""
    core = [target(f'{name}.py') for name in LAYOUT[0][2]] + [target('config.py')]
    found = {}
    for rel in core:
        rel = rel if os.path.exists(os.path.join(ROOT, 'd2lseg', rel)) else rel.split('/')[-1]
        chain = _mxnet_at_import(rel, set())
        if chain:
            found[rel] = ' -> '.join(chain) + ' -> mxnet'
    assert not found, found


def test_private_mxnet_attributes_only_in_mxinternals():
    """Every underscored attribute of MXNet's that the package uses goes through ``mxinternals``."""
    from d2lseg.core import mxinternals
    private = {a for names in mxinternals.ATTRIBUTES.values() for a in names}
    found = []
    for path in PACKAGE:
        if path.endswith('mxinternals.py'):
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr in private:  # also self._x: a subclass of MXNet's
                found.append(f'{_rel(path)}:{node.lineno} .{node.attr}')
    assert not found, f'private MXNet attributes outside d2lseg/core/mxinternals.py: {found}'


def test_readme_layout_names_every_module():
    """Every module, at the path it has once tools/restructure.py has run (d2lseg/LAYER/NAME.py)."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    layout = readme[readme.index('\nd2lseg/ ', readme.index('## Layout')):readme.index('\nnotebooks/ ')]
    modules = {target(os.path.relpath(p, os.path.join(ROOT, 'd2lseg')).replace(os.sep, '/')) for p in PACKAGE
               if os.path.basename(p) != '__main__.py'}
    modules = {m for m in modules if m == 'native/__init__.py' or not m.endswith('__init__.py')}
    listed, folder = set(), ''
    for line in layout.split('\n'):
        heading = re.match(r'  (\w+)/ ', line)
        folder = heading.group(1) + '/' if heading else folder  # a folder's modules, on its lines
        listed |= {m if '/' in m else folder + m for m in re.findall(r'(?<![\w/])((?:\w+/)?\w+\.py)', line)}
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


def _modules_by_folder():
    """{layer folder: the names of its modules} as the tree has them (a subpackage's ``__init__`` counts only in
    native/, where it holds the kernels' Python side; elsewhere it holds only a docstring)."""
    found = {}
    for path in PACKAGE:
        parts = os.path.relpath(path, os.path.join(ROOT, 'd2lseg')).replace(os.sep, '/').split('/')
        if len(parts) == 2 and (parts[1] != '__init__.py' or parts[0] == 'native'):
            found.setdefault(parts[0], set()).add(parts[1][:-3])
    return found


def test_architecture_layers_table_names_every_module_of_its_folder():
    """docs/architecture.md's table of the layers: one row a layer, in LAYOUT's order, whose second column names
    (in backticks, outside parentheses) exactly the modules of that folder."""
    with open(os.path.join(ROOT, 'docs', 'architecture.md')) as f:
        doc = f.read()
    section = doc[doc.index('\n## The layers'):doc.index('\n## ', doc.index('\n## The layers') + 1)]
    rows = re.findall(r'^\| `(\w+)/`[^|]*\|([^|]*)\|', section, re.M)
    assert [folder for folder, _ in rows] == list(LAYERS), [folder for folder, _ in rows]
    listed = {folder: set(re.findall(r'`(\w+)`', re.sub(r'\([^()]*\)', '', cell))) for folder, cell in rows}
    tree = _modules_by_folder()
    wrong = {folder: (f'lacks {sorted(tree.get(folder, set()) - names)}',
                      f'names missing {sorted(names - tree.get(folder, set()))}')
             for folder, names in listed.items() if names != tree.get(folder, set())}
    assert not wrong, wrong
    assert set(tree) == set(LAYERS), sorted(set(tree) ^ set(LAYERS))


def test_a_function_of_more_than_eight_parameters_says_why():
    """Past eight parameters (self and cls not counted, *args and **kwargs counted) a function groups them or its
    docstring says why it takes them (a sentence naming its "parameters")."""
    unexplained = []
    for path in PACKAGE:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ('self', 'cls')]
                count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                if count > 8 and 'parameters' not in (ast.get_docstring(node) or ''):
                    unexplained.append(f'{_rel(path)}:{node.lineno} {node.name} ({count} parameters)')
    assert not unexplained, unexplained


def test_package_lines_fit_in_120_characters():
    long_lines = []
    for path in PACKAGE:
        with open(path) as f:
            long_lines += [f'{_rel(path)}:{n}' for n, line in enumerate(f, 1) if len(line.rstrip('\n')) > 120]
    assert not long_lines, long_lines
