"""Execute the notebooks and store their outputs (``make notebooks``); render them as an HTML book (``make book``).

``run`` executes each notebook top to bottom in ``notebooks/`` in full mode (never quick mode), then
stores it with its outputs, a hash of every code cell's source in that cell's metadata
(``tests/test_notebooks.py`` fails when a cell changed without re-execution), and a "run info" cell
under the title saying what the notebook needs and how long this run took on which machine. A notebook
that fails is left as it was, and the command names it and its failing cell (exit 1).

``book`` renders the stored notebooks, without executing anything, into a static site: one page per
notebook with its figures and formulas embedded (formulas typeset by matplotlib's mathtext, so the
pages need no network), and ``index.html``, the contents in the chapter's order.
"""
import argparse
import copy
import datetime
import glob
import hashlib
import html
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, 'notebooks')
RUN_INFO = 'run-info'  # cell.metadata['d2lseg']['role'] of the generated cell


class ToolError(Exception):
    """A one-line failure of the command (exit 1): a notebook failed, or the book has stale notebooks."""
    exit_code = 1


class UnknownNotebook(ToolError):
    """A notebook named on the command line does not exist (exit 2)."""
    exit_code = 2


def notebook_paths(names=(), notebook_dir=NOTEBOOK_DIR):
    """The notebooks in order; ``names`` picks some, each by file name (with or without .ipynb) or number."""
    paths = sorted(glob.glob(os.path.join(notebook_dir, '[0-9][0-9]_*.ipynb')))
    if not names:
        return paths
    chosen, missing = [], []
    for name in names:
        hits = [p for p in paths if name in (os.path.basename(p), os.path.basename(p)[:-6], os.path.basename(p)[:2])]
        chosen += hits
        missing += [] if hits else [name]
    if missing:
        raise UnknownNotebook(f'notebooks: no notebook {", ".join(missing)} under notebooks/ '
                              f'(there are {", ".join(os.path.basename(p) for p in paths)})')
    return sorted(set(chosen))


def source_hash(source):
    """The hash stored in a code cell's metadata: sha256 of its source, trailing whitespace ignored."""
    return hashlib.sha256(source.rstrip().encode('utf-8')).hexdigest()


def stale_cells(nb):
    """Indices of code cells whose stored outputs are not from their current source (or missing)."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == 'code'
            and (c.execution_count is None or c.metadata.get('d2lseg', {}).get('source_sha256')
                 != source_hash(c.source))]


def _minutes(seconds):
    m, s = divmod(int(round(seconds)), 60)
    return f'{m} min {s:02d} s' if m else f'{s} s'


def machine():
    """One line naming the machine, e.g. '2-core Intel(R) Xeon(R) Processor (avx512f, amx_int8), 2 threads'."""
    from d2lseg import environment
    name, flags = environment.cpu_info()
    isa = ', '.join(f for f in flags if f in ('avx2', 'avx512f', 'avx512_vnni', 'amx_int8'))
    return (f'{os.cpu_count()}-core {name}' + (f' ({isa})' if isa else '')
            + f', {environment.mxnet_threads()} thread(s)')


def run_info_text(needs, seconds, where, date):
    return (f'> **Needs:** {needs}  \n'
            f'> **Stored outputs:** this notebook ran top to bottom in {_minutes(seconds)} on a {where}, '
            f'on {date}. You can read it without running it. Timings, and the numbers of anything trained, '
            f'depend on the CPU and thread count: a run on your machine gives its own.')


def _client(nb):
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)  # this interpreter's ipykernel
    km = KernelManager(kernel_name='python3', kernel_spec_manager=ksm)
    return NotebookClient(nb, km=km, timeout=3600, resources={'metadata': {'path': NOTEBOOK_DIR}})


def _with_run_info(nb, text):
    import nbformat
    nb.cells = [c for c in nb.cells if c.metadata.get('d2lseg', {}).get('role') != RUN_INFO]
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata['d2lseg'] = {'role': RUN_INFO}
    nb.cells.insert(1, cell)
    return cell


def execute(path, where):
    """Run one notebook in full mode and store it with outputs; returns its seconds."""
    import nbformat
    from nbclient.exceptions import CellExecutionError
    name = os.path.basename(path)
    nb = nbformat.read(path, as_version=4)
    needs = nb.metadata.get('d2lseg', {}).get('needs', 'a CPU')
    info = _with_run_info(nb, run_info_text(needs, 0, where, 'today'))
    # full mode, inline figures, no history to compare: whatever the caller's environment says
    env = {k: v for k, v in os.environ.items() if k not in ('D2LSEG_QUICK', 'MPLBACKEND', 'D2LSEG_HISTORY')}
    from d2lseg.progress import bar
    client = _client(nb)
    cells = bar(total=sum(c.cell_type == 'code' for c in nb.cells), desc=name, unit='cell', leave=False)
    client.on_cell_executed = lambda **_: cells.update()  # a bar on a terminal, nothing in a log
    tic = time.time()
    try:
        # the kernel process's own log (a warning about its local TCP ports) is not the notebook's output
        client.execute(stderr=subprocess.DEVNULL, env=env)
    except CellExecutionError as e:
        text = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip()  # the traceback's colours
        first = text.splitlines()[-1] if text else type(e).__name__
        raise ToolError(f'notebooks: {name} failed ({first}); the stored notebook is unchanged') from None
    finally:
        cells.close()
    seconds = time.time() - tic
    date = datetime.date.today().isoformat()
    info.source = run_info_text(needs, seconds, where, date)
    for cell in nb.cells:
        if cell.cell_type == 'code':
            cell.metadata['d2lseg'] = {'source_sha256': source_hash(cell.source)}
    nb.metadata.setdefault('d2lseg', {})['executed'] = {
        'date': date, 'seconds': round(seconds, 1), 'machine': where, 'quick': False}
    tmp = path + '.tmp'
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return seconds


def run(names):
    where = machine()
    paths = notebook_paths(names)
    print(f'executing {len(paths)} notebook(s) in full mode on a {where}')
    total = 0.0
    for i, path in enumerate(paths):
        print(f'  [{i + 1}/{len(paths)}] {os.path.basename(path)} ...', flush=True)
        seconds = execute(path, where)
        total += seconds
        print(f'  [{i + 1}/{len(paths)}] {os.path.basename(path)}: {_minutes(seconds)}', flush=True)
    print(f'all {len(paths)} in {_minutes(total)}; stored with outputs under notebooks/ '
          '(`make book` renders them as HTML)')


# ----------------------------------------------------------------------------------------------- book

PAGE_NAV = ('<nav class="d2lseg-nav" style="font-family:sans-serif;padding:8px 16px;border-bottom:1px solid #ddd">'
            '<a href="index.html">Contents</a>{prev}{next}</nav>')


def _title(nb):
    first = nb.cells[0].source if nb.cells else ''
    m = re.search(r'^#\s+(.+)$', first, re.M)
    return m.group(1).strip() if m else 'Untitled'


def _intro(nb):
    """The first paragraph after the title of the first cell, as plain text."""
    text = re.sub(r'^#.*$', '', nb.cells[0].source, count=1, flags=re.M).strip() if nb.cells else ''
    para = text.split('\n\n')[0].replace('\n', ' ')
    return re.sub(r'[`*]', '', para)


CODE = re.compile(r'(```.*?```|`[^`\n]*`)', re.S)         # fenced blocks and inline code: no math there
MATH = re.compile(r'\$\$(.+?)\$\$|\$([^$\n]+?)\$', re.S)


def _math_svg(tex):
    """``tex`` typeset by matplotlib's mathtext as an inline SVG <img> (offline; no MathJax needed)."""
    import base64
    import io
    from matplotlib import mathtext
    buf = io.BytesIO()
    mathtext.math_to_image(f'${tex}$', buf, format='svg')
    svg = buf.getvalue().decode('utf-8')
    height = float(re.search(r'height="([\d.]+)pt"', svg).group(1))
    data = base64.b64encode(svg.encode('utf-8')).decode('ascii')
    return (f'<img class="math" alt="{html.escape(tex)}" style="height:{height / 10:.2f}em;'
            f'vertical-align:middle" src="data:image/svg+xml;base64,{data}">')


def typeset_math(markdown):
    """Markdown with every $...$ and $$...$$ outside code replaced by its typeset <img>."""
    parts = CODE.split(markdown)
    for i in range(0, len(parts), 2):  # even parts lie outside code
        parts[i] = MATH.sub(lambda m: _math_svg((m.group(1) or m.group(2)).strip()), parts[i])
    return ''.join(parts)


def _page(exporter, nb, prev_, next_):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            cell.source = typeset_math(cell.source)
    body, _ = exporter.from_notebook_node(nb)
    body = re.sub(r'href="(\d\d_[A-Za-z0-9_]+)\.ipynb', r'href="\1.html', body)  # links between notebooks
    nav = PAGE_NAV.format(prev=f' · <a href="{prev_}">previous</a>' if prev_ else '',
                          next=f' · <a href="{next_}">next</a>' if next_ else '')
    return re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav, body, count=1)


def _index(entries, total):
    rows = '\n'.join(
        f'<li><a href="{html.escape(page)}">{html.escape(title)}</a>'
        f'<p>{html.escape(intro)}</p><p class="run">{html.escape(ran)}</p></li>'
        for page, title, intro, ran in entries)
    return f'''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>d2lseg: Fully Convolutional Networks (D2L 10.10)</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;line-height:1.5}}
li{{margin-bottom:1em}} p{{margin:.2em 0}} .run{{color:#555;font-size:90%}}</style></head>
<body><h1>Fully Convolutional Networks, executed</h1>
<p>The notebooks of <code>d2lseg</code>, in the order of <em>Dive into Deep Learning</em> (MXNet edition),
section 10.10, followed by the package's additions. Each page is a notebook as stored, with the outputs of
its last full run ({html.escape(total)} for all of them, with <code>make notebooks</code>).</p>
<ol>
{rows}
</ol></body></html>
'''


def book(out, notebook_dir=NOTEBOOK_DIR):
    """Render the notebooks under ``notebook_dir`` into ``out``; returns the pages' paths, index first."""
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name='lab')
    paths = notebook_paths(notebook_dir=notebook_dir)
    stale = {os.path.basename(p): stale_cells(nbformat.read(p, as_version=4)) for p in paths}
    stale = {k: v for k, v in stale.items() if v}
    if stale:
        raise ToolError('book: these notebooks have cells without outputs from their current source: '
                         + ', '.join(stale) + '; run `make notebooks` first')
    os.makedirs(out, exist_ok=True)
    pages = [os.path.splitext(os.path.basename(p))[0] + '.html' for p in paths]
    entries, total = [], 0.0
    for i, path in enumerate(paths):
        nb = nbformat.read(path, as_version=4)
        page = _page(exporter, nb, pages[i - 1] if i else None, pages[i + 1] if i + 1 < len(pages) else None)
        with open(os.path.join(out, pages[i]), 'w', encoding='utf-8') as f:
            f.write(page)
        executed = nb.metadata.get('d2lseg', {}).get('executed', {})
        ran = (f"ran in {_minutes(executed['seconds'])} on a {executed['machine']}, {executed['date']}"
               if executed else '')
        entries.append((pages[i], _title(nb), _intro(nb), ran))
        total += executed.get('seconds', 0)
    with open(os.path.join(out, 'index.html'), 'w', encoding='utf-8') as f:
        f.write(_index(entries, _minutes(total)))
    print(f'book: {len(pages)} pages and index.html under {os.path.relpath(out)}')
    return [os.path.join(out, p) for p in ['index.html'] + pages]


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tools/notebooks.py', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p_run = sub.add_parser('run', help='execute notebooks in full mode and store their outputs')
    p_run.add_argument('names', nargs='*', help='notebooks to run, e.g. 04 or 04_training (default: all)')
    p_book = sub.add_parser('book', help='render the stored notebooks as a static HTML site')
    p_book.add_argument('--out', default=os.path.join(ROOT, 'build', 'book'), help='default build/book')
    args = parser.parse_args(argv)
    try:
        if args.command == 'run':
            run(args.names)
        else:
            book(args.out)
    except ToolError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == '__main__':
    sys.exit(main())
