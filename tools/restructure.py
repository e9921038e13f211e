"""Move d2lseg's flat modules into the subpackages of its layers, on whatever tree it runs in; idempotent.

    python -m tools.restructure [ROOT] [--dry-run]

``LAYOUT`` is the one list of the layers, bottom up: a module imports only from its own layer or one
below (``tests/test_layout.py`` checks it, before and after the move, with ``layer_of``). The script

1. ``git mv``\\ s every module of ``LAYOUT`` still at ``d2lseg/NAME.py`` to ``d2lseg/LAYER/NAME.py`` (a
   subpackage ``__init__.py`` holding only its docstring is created first);
2. rewrites the package's relative imports for the new places (``from . import a, b`` split by folder);
3. rewrites references elsewhere: ``d2lseg.NAME`` and ``d2lseg/NAME.py`` in tests, bench, tools, docs, the
   README, setup.py and the Makefile (``from d2lseg import a, b`` split by folder); the notebooks are left
   as they are (their code cells are hashed: ``tools/notebooks.py``), their old paths keep working;
4. writes into ``d2lseg/__init__.py`` the finder that keeps every old path working: ``import d2lseg.NAME``,
   ``from d2lseg.NAME import X`` and ``d2lseg.NAME`` give the module itself (one object, no stub files).

A module at ``d2lseg/NAME.py`` that ``LAYOUT`` does not name stops the script before anything changes,
naming it: give it a layer first.
"""
import ast
import os
import re
import subprocess
import sys
import textwrap

# (subpackage, what it holds, its modules), bottom up. native/__init__.py and native/library.py are there already.
LAYOUT = (
    ('core', 'the ground floor: imports nothing of the package above it; config-free, MXNet-free at import',
     ('errors', 'version', 'compat', 'startup', 'progress', 'textfiles', 'outputs', 'runfolder', 'constants',
      'device', 'mxinternals')),
    ('native', 'the C++ kernels, the upsampling that uses them, and the machine they run on',
     ('upsampling', 'environment')),
    ('data', 'reading data sets: VOC trees, labels, classes, augmentation, the synthetic set, the download',
     ('dataspec', 'vocpalette', 'pixels', 'photofiles', 'palette', 'images', 'augment', 'voc', 'classes',
      'synthetic', 'download')),
    ('fcn', "the chapter's network and what it computes: ops, model, loss, metrics, inference, train, figures",
     ('ops', 'model', 'loss', 'metrics', 'inference', 'chapter', 'viz')),
    ('deploy', 'a trained network made faster or portable: INT8 / bfloat16, ONNX export, the MXNet-free runtime',
     ('quantization', 'mixed', 'export', 'onnxrun')),
    ('training', 'a training run: the Recipe, the loop, checkpoints, callbacks, several workers, the references',
     ('config', 'checkpoint', 'callbacks', 'engine', 'kvstore', 'reference', 'teaching')),
    ('command', 'the d2lseg command: flags, what each subcommand does, predict on files, doctor, launch',
     ('cli', 'app', 'specs', 'preflight', 'photos', 'doctor', 'onnxcli', 'launcher')),
)
TOP = ('__init__', '__main__')  # stay in d2lseg/: the package and ``python -m d2lseg``
MOVED = {name: sub for sub, _, names in LAYOUT for name in names}
LAYERS = tuple(sub for sub, _, _ in LAYOUT)
FINDER_MARKS = ('# -- old import paths (tools/restructure.py writes this block) --', '# -- end of old import paths --')
TEXT_FILES = ('README.md', 'setup.py', 'Makefile', 'CONTRIBUTING.md')
TEXT_DIRS = ('tests', 'bench', 'tools', 'docs')


def layer_of(rel):
    """The layer index of a module given by its path inside d2lseg/ ('voc.py', 'data/voc.py',
    'native/library.py'); len(LAYERS) for the package's own ``__init__``/``__main__``; None when unassigned."""
    parts = rel[:-3].split('/')
    if parts in (['__init__'], ['__main__']):
        return len(LAYERS)
    if len(parts) == 2 and parts[0] in LAYERS:
        return LAYERS.index(parts[0])
    if len(parts) == 1 and parts[0] in MOVED:
        return LAYERS.index(MOVED[parts[0]])
    return None


def target(rel):
    """Where a module given by its path inside d2lseg/ is after the move: 'voc.py' -> 'data/voc.py'."""
    name = rel[:-3]
    return f'{MOVED[name]}/{rel}' if name in MOVED else rel


def remap(parts):
    """A dotted name's parts after the move: ['d2lseg', 'voc', 'X'] -> ['d2lseg', 'data', 'voc', 'X']."""
    if len(parts) >= 2 and parts[0] == 'd2lseg' and parts[1] in MOVED:
        return ['d2lseg', MOVED[parts[1]]] + parts[1:]
    return list(parts)


def _relative(target_parts, here):
    """The relative module text for ``target_parts`` seen from the package ``here`` (both lists of names)."""
    common = 0
    while common < min(len(target_parts), len(here)) and target_parts[common] == here[common]:
        common += 1
    return '.' * (len(here) - common + 1) + '.'.join(target_parts[common:])


def _format(indent, module, names, comment=''):
    """``from MODULE import a, b`` at ``indent``, wrapped in parentheses past 115 characters."""
    line = f"{indent}from {module} import {', '.join(names)}"
    if len(line) <= 115:
        return line + comment
    lines, current = [], f"{indent}from {module} import ("
    for i, n in enumerate(names):
        piece = n + (', ' if i < len(names) - 1 else ')')
        if len(current) + len(piece) > 115:
            lines.append(current.rstrip())
            current = indent + '    '
        current += piece
    return '\n'.join(lines + [current]) + comment


def _alias(a):
    return a.name + (f' as {a.asname}' if a.asname else '')


def _groups(base, aliases, here=None):
    """[(module text, [names])]: ``from BASE import names`` split by where each name's module now lives."""
    groups = {}
    for a in aliases:
        new = remap(base + [a.name])
        parent = new[:-1] if new != base + [a.name] else base
        groups.setdefault(tuple(parent), []).append(_alias(a))
    return [(_relative(list(p), here) if here else '.'.join(p), names) for p, names in groups.items()]


def _rewrite_imports(source, here, was=None):
    """The source with its imports of d2lseg rewritten for the new places; ``here``: the file's package parts
    for relative imports (None: absolute imports of d2lseg only, as in tests and bench); ``was``: the package
    it was in before this run moved it (its relative imports mean names there)."""
    was = was or here
    lines = source.split('\n')
    edits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if here is not None and node.level:
            base = was[:len(was) - node.level + 1]
            if node.module:
                groups = [(_relative(remap(base + node.module.split('.')), here), [_alias(a) for a in node.names])]
            else:
                groups = _groups(base, node.names, here)
        elif node.level == 0 and node.module == 'd2lseg':
            groups = _groups(['d2lseg'], node.names)
        else:
            continue
        first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
        indent = first[:node.col_offset]
        comment = last[node.end_col_offset:] if last[node.end_col_offset:].strip().startswith('#') else ''
        new = '\n'.join(_format(indent, m, n, comment if i == len(groups) - 1 else '')
                        for i, (m, n) in enumerate(groups))
        old = '\n'.join(lines[node.lineno - 1:node.end_lineno])
        written = '.' * node.level + (node.module or '') if node.level else node.module
        if not (len(groups) == 1 and groups[0][0] == written):
            edits.append((node.lineno - 1, node.end_lineno, new.split('\n')))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = new
    return '\n'.join(lines)


_MODULES = '|'.join(sorted(MOVED, key=len, reverse=True))
_DOTTED = re.compile(rf'(?<![\w.])d2lseg\.({_MODULES})\b(?!\.py)')
_PATH = re.compile(rf'(?<![\w.])d2lseg/({_MODULES})\.py\b')
_JOINED = re.compile(rf"""(['"])d2lseg\1, (['"])({_MODULES})\.py\2""")


def rewrite_text(text):
    """``d2lseg.NAME`` -> ``d2lseg.LAYER.NAME``, ``d2lseg/NAME.py`` -> ``d2lseg/LAYER/NAME.py`` and
    ``'d2lseg', 'NAME.py'`` -> ``'d2lseg', 'LAYER', 'NAME.py'`` (already moved names stay)."""
    text = _DOTTED.sub(lambda m: f'd2lseg.{MOVED[m.group(1)]}.{m.group(1)}', text)
    text = _PATH.sub(lambda m: f'd2lseg/{MOVED[m.group(1)]}/{m.group(1)}.py', text)
    return _JOINED.sub(lambda m: f"{m.group(1)}d2lseg{m.group(1)}, {m.group(2)}{MOVED[m.group(3)]}{m.group(2)}, "
                                 f"{m.group(2)}{m.group(3)}.py{m.group(2)}", text)


FINDER = '''{start}
# The modules moved into subpackages keep their old paths: ``import d2lseg.NAME``, ``from d2lseg.NAME import X``
# and ``d2lseg.NAME`` give the module d2lseg.LAYER.NAME itself (one object, registered under both names).
MOVED = {moved}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``d2lseg.NAME`` -> the module at its new path, registered under both names."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition('.')
        return importlib.util.spec_from_loader(fullname, self) if package == __name__ and name in MOVED else None

    specs = {{}}

    def create_module(self, spec):
        name = spec.name.partition('.')[2]
        module = importlib.import_module(f'{{__name__}}.{{MOVED[name]}}.{{name}}')
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.specs[module.__name__]  # its own spec back (the import set the alias's)


sys.meta_path.insert(0, _OldPaths())  # first: an editable install's finder would look for the old files
{end}'''


def _write_finder(init_path):
    with open(init_path) as f:
        text = f.read()
    rows = (textwrap.fill(', '.join(map(repr, names)), 100, initial_indent=f'    ({sub!r}, (',
                          subsequent_indent=' ' * 14) + ')),\n' for sub, _, names in LAYOUT)
    moved = '{name: sub for sub, names in (\n' + ''.join(rows) + ') for name in names}'
    block = FINDER.format(start=FINDER_MARKS[0], end=FINDER_MARKS[1], moved=moved)
    if FINDER_MARKS[0] in text:
        start, end = text.index(FINDER_MARKS[0]), text.index(FINDER_MARKS[1]) + len(FINDER_MARKS[1])
        text = text[:start] + block + text[end:]
    else:
        head = text.index('\nfrom ') + 1  # after the docstring: before the package's first import
        imports = 'import importlib.abc\nimport importlib.util\nimport sys\n\n'
        text = text[:head] + imports + block + '\n\n' + text[head:]
    if "    if name in MOVED:" not in text:
        text = text.replace("    raise AttributeError(f\"module 'd2lseg' has no attribute {name!r}\")",
                            "    if name in MOVED:\n        return importlib.import_module(f'{__name__}.{name}')\n"
                            "    raise AttributeError(f\"module 'd2lseg' has no attribute {name!r}\")")
    with open(init_path, 'w') as f:
        f.write(text)


def _unassigned(pkg):
    """Modules at d2lseg/NAME.py that LAYOUT does not name."""
    return sorted(f[:-3] for f in os.listdir(pkg) if f.endswith('.py') and f[:-3] not in MOVED and f[:-3] not in TOP)


def _move(root, pkg, dry_run):
    """Move every module still at d2lseg/NAME.py; -> the new paths of those moved."""
    moved = set()
    for sub, what, names in LAYOUT:
        init = os.path.join(pkg, sub, '__init__.py')
        if not os.path.exists(init) and not dry_run:
            os.makedirs(os.path.dirname(init), exist_ok=True)
            with open(init, 'w') as f:
                f.write(f'"""{what[0].upper()}{what[1:]} (the {sub} layer: docs/architecture.md)."""\n')
            subprocess.run(['git', 'add', init], cwd=root, check=False, capture_output=True)
        for name in names:
            old, new = os.path.join(pkg, f'{name}.py'), os.path.join(pkg, sub, f'{name}.py')
            if os.path.exists(old) and not os.path.exists(new):
                print(f'd2lseg/{name}.py -> d2lseg/{sub}/{name}.py')
                moved.add(new)
                if not dry_run and subprocess.run(['git', 'mv', old, new], cwd=root, capture_output=True).returncode:
                    os.rename(old, new)  # not a git tree, or an untracked file
    return moved


def _package_parts(pkg, path):
    rel = os.path.relpath(os.path.dirname(path), os.path.dirname(pkg))
    return rel.split(os.sep)


def _rewrite_file(path, here, moved):
    with open(path) as f:
        text = f.read()
    new = rewrite_text(text)
    if path.endswith('.py'):
        new = _rewrite_imports(new, here, ['d2lseg'] if path in moved else here)
    if new != text:
        with open(path, 'w') as f:
            f.write(new)
        return True
    return False


def _files(root):
    pkg = os.path.join(root, 'd2lseg')
    for dirpath, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d not in ('__pycache__', 'csrc', 'baselines')]
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(dirpath, f)
                yield path, _package_parts(pkg, path)
    for d in TEXT_DIRS:
        for dirpath, dirs, files in os.walk(os.path.join(root, d)):
            dirs[:] = [x for x in dirs if x != '__pycache__']
            for f in files:
                if f.endswith(('.py', '.md', '.sh', '.txt')) and f != os.path.basename(__file__):
                    yield os.path.join(dirpath, f), None
    for f in TEXT_FILES:
        if os.path.exists(os.path.join(root, f)):
            yield os.path.join(root, f), None


def restructure(root, dry_run=False):
    """Move and rewrite (see the module's docstring); returns the files rewritten."""
    pkg = os.path.join(root, 'd2lseg')
    missing = _unassigned(pkg)
    if missing:
        raise SystemExit(f"restructure: d2lseg/{{{','.join(missing)}}}.py have no layer; add each to LAYOUT in "
                         "tools/restructure.py (docs/architecture.md says which layer holds what), then run again")
    moved = _move(root, pkg, dry_run)
    if dry_run:
        return []
    changed = [path for path, here in _files(root) if _rewrite_file(path, here, moved)]
    _write_finder(os.path.join(pkg, '__init__.py'))
    return changed


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    dry_run = '--dry-run' in argv
    roots = [a for a in argv if a != '--dry-run']
    root = os.path.abspath(roots[0] if roots else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
    for path in restructure(root, dry_run):
        print('rewrote', os.path.relpath(path, root))
    return 0


if __name__ == '__main__':
    sys.exit(main())
