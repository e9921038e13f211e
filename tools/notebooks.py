"""Execute the notebooks and store their outputs (``make notebooks``); render them as an HTML book (``make book``).

``run`` executes each notebook top to bottom in ``notebooks/`` in full mode (never quick mode), then
stores it with its outputs, a hash of every code cell's source in that cell's metadata
(``tests/test_notebooks.py`` fails when a cell changed without re-execution), and a "run info" cell
under the title saying what the notebook needs and how long this run took on which machine. A notebook
that fails is left as it was, and the command names it and its failing cell (exit 1).

``book`` renders the stored notebooks, without executing anything, into a static site: one page per
notebook with its figures and formulas embedded (formulas typeset by matplotlib's mathtext, so the
pages need no network), and ``index.html``, the contents in the chapter's order. What a notebook's text
and outputs put into a page is sanitised (an allow-list of markdown's HTML: no script, event handler or
javascript: URL runs in the reader's browser), and notebook names given to ``run`` are checked before use.

About 560 lines: running the notebooks (with the one kernel launcher and quick mode, used by the tests
too) and rendering them (with the sanitiser, the offline clean-up, alt texts and contents lists) share
how notebooks are found, named and checked for stale outputs.
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
from html.parser import HTMLParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, 'notebooks')
RUN_INFO = 'run-info'  # cell.metadata['d2lseg']['role'] of the generated cell


class ToolError(Exception):
    """A one-line failure of the command (exit 1): a notebook failed, or the book has stale notebooks."""
    exit_code = 1


class UnknownNotebook(ToolError):
    """A notebook named on the command line does not exist (exit 2)."""
    exit_code = 2


NOTEBOOK_NAME = re.compile(r'\d\d(_[A-Za-z0-9_]+)?(\.ipynb)?$', re.ASCII)


def notebook_names(args):
    """The notebook names given on the command line (``make notebooks NB="04 05"`` passes them as one
    argument: split at spaces and commas), each checked to be a notebook's number or file name -- nothing
    else (a path, a shell command) is ever taken; UnknownNotebook (exit 2) otherwise."""
    names = [n for arg in args for n in re.split(r'[\s,]+', arg) if n]
    bad = [n for n in names if not NOTEBOOK_NAME.match(n)]
    if bad:
        raise UnknownNotebook(f'notebooks: {bad[0][:60]!r} is not a notebook name: give its number (04) or file '
                              'name (04_training), e.g. make notebooks NB=04')
    return names


def notebook_paths(names=(), notebook_dir=NOTEBOOK_DIR):
    """The notebooks in order; ``names`` picks some, each by file name (with or without .ipynb) or number."""
    paths = sorted(glob.glob(os.path.join(notebook_dir, '[0-9][0-9]_*.ipynb')))
    names = notebook_names(names)
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


LONG_CELL = 20  # lines; a longer code cell says why in its metadata.d2lseg.long


def long_cells(nb, limit=LONG_CELL):
    """Code cells whose length is not accounted for -> [(index, lines, what is wrong)]: a cell over ``limit``
    lines without ``metadata.d2lseg.long`` (one sentence: why it is the chapter's code or a computation a
    student should read; plotting and bookkeeping belong in ``d2lseg.fcn.viz`` or
    ``d2lseg.training.teaching`` instead), or a cell keeping that reason when it is no longer long."""
    out = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'code':
            continue
        n, reason = len(c.source.splitlines()), c.metadata.get('d2lseg', {}).get('long')
        if n > limit and not (isinstance(reason, str) and reason.strip()):
            out.append((i, n, f'over {limit} lines without a reason (metadata.d2lseg.long)'))
        elif n <= limit and reason is not None:
            out.append((i, n, f'{n} lines: its reason for being long is stale'))
    return out


def _minutes(seconds):
    m, s = divmod(int(round(seconds)), 60)
    return f'{m} min {s:02d} s' if m else f'{s} s'


def machine():
    """One line naming the machine, e.g. '2-core Intel(R) Xeon(R) Processor (avx512f, amx_int8), 2 threads'."""
    from d2lseg.native import environment
    name, flags = environment.cpu_info()
    isa = ', '.join(f for f in flags if f in ('avx2', 'avx512f', 'avx512_vnni', 'amx_int8'))
    return (f'{os.cpu_count()}-core {name}' + (f' ({isa})' if isa else '')
            + f', {environment.mxnet_threads()} thread(s)')


def run_info_text(needs, seconds, where, date):
    return (f'> **Needs:** {needs}  \n'
            f'> **Stored outputs:** this notebook ran top to bottom in {_minutes(seconds)} on a {where}, '
            f'on {date}. You can read it without running it. Timings, and the numbers of anything trained, '
            f'depend on the CPU and thread count: a run on your machine gives its own.')


def kernel_client(nb, cwd, timeout=3600):
    """The one notebook-kernel launcher (``run`` here, the tests' ``nbrun``): an nbclient for ``nb`` on
    this interpreter's ipykernel (its built-in ``python3`` spec, no kernelspec install), in ``cwd``."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)  # this interpreter's ipykernel
    km = KernelManager(kernel_name='python3', kernel_spec_manager=ksm)
    return NotebookClient(nb, km=km, timeout=timeout, resources={'metadata': {'path': str(cwd)}})


PARAMETERS = 'parameters'  # cell.metadata['d2lseg']['role'] of a notebook's one cell of sizes


def parameters_cell(nb):
    """The notebook's parameters cell (the sizes of its run), or None."""
    return next((c for c in nb.cells if c.cell_type == 'code'
                 and c.metadata.get('d2lseg', {}).get('role') == PARAMETERS), None)


def quick(nb, source=None):
    """``nb`` in quick mode: its parameters cell's source replaced by ``source``, by default the notebook's
    ``metadata.d2lseg.quick_parameters`` (a tiny data set and run), nothing else changed. Quick mode is
    set from outside the student's code: no cell of the notebook tests for it."""
    cell = parameters_cell(nb)
    source = source if source is not None else nb.metadata.get('d2lseg', {}).get('quick_parameters')
    if cell is not None and source:
        cell.source = source
    return nb


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
    # inline figures whatever the caller's environment says (full mode: the parameters cell as stored)
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}
    from d2lseg.core.progress import bar
    client = kernel_client(nb, NOTEBOOK_DIR)
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
            cell.metadata.setdefault('d2lseg', {})['source_sha256'] = source_hash(cell.source)  # keeps its role
    nb.metadata.setdefault('d2lseg', {})['executed'] = {
        'date': date, 'seconds': round(seconds, 1), 'machine': where, 'quick': False}
    tmp = path + '.tmp'
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return seconds


def run(names):
    paths = notebook_paths(names)  # the names checked before any work
    where = machine()
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
BANNER = ('<p class="d2lseg-banner" style="font-family:sans-serif;background:#fff4d6;border:1px solid #e0b84c;'
          'padding:8px 16px;margin:8px 16px">These pages train on a <strong>synthetic stand-in</strong> for Pascal '
          'VOC2012, from a <strong>randomly initialised backbone</strong> (no ImageNet weights): their numbers are '
          "not comparable to the book's 0.84 test accuracy.</p>")
STYLE = ('<style>.d2lseg-toc{font-family:sans-serif;padding:4px 16px 8px}.d2lseg-toc ol{margin:0;columns:2}'
         'details{margin:.4em 0 .8em}summary{cursor:pointer;color:#1a5fb4}</style>')


def _title(nb):
    first = nb.cells[0].source if nb.cells else ''
    m = re.search(r'^#\s+(.+)$', first, re.M)
    return m.group(1).strip() if m else 'Untitled'


def _intro(nb):
    """The first cell's text after the title -- the whole description, lists included -- as sanitised
    HTML with its formulas typeset."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    text = re.sub(r'^#.*$', '', nb.cells[0].source, count=1, flags=re.M).strip() if nb.cells else ''
    text = re.sub(r'\]\((\d\d_[A-Za-z0-9_]+)\.ipynb', r'](\1.html', text)  # links between notebooks
    return sanitize_html(markdown2html_mistune(typeset_math(text)))


def trains(nb):
    """Whether a notebook trains a network (its page gets the banner): its metadata's 'needs' says so."""
    return 'train' in nb.metadata.get('d2lseg', {}).get('needs', '').replace('nothing is trained', '')


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


def _math(tex):
    """``_math_svg``, or the TeX as code when matplotlib's mathtext cannot typeset it (malformed TeX)."""
    try:
        return _math_svg(tex)
    except Exception:  # mathtext raises ValueError, and others, for what it cannot parse
        return f'<code class="math-error">{html.escape(tex)}</code>'


def typeset_math(markdown):
    """Markdown with every $...$ and $$...$$ outside code replaced by its typeset <img>."""
    parts = CODE.split(markdown)
    for i in range(0, len(parts), 2):  # even parts lie outside code
        parts[i] = MATH.sub(lambda m: _math((m.group(1) or m.group(2)).strip()), parts[i])
    return ''.join(parts)


# What the notebooks' text may put into a page (an allow-list): markdown's own tags and attributes, links to
# the web, mail or this site, images embedded as data. Everything else a notebook's markdown or HTML output
# holds is dropped (script and style with their content; event handlers, javascript: URLs, other tags).
ALLOWED_TAGS = {'p', 'br', 'hr', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'em', 'strong', 'b', 'i', 'u', 'code', 'pre',
                'blockquote', 'ul', 'ol', 'li', 'a', 'img', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'span',
                'div', 'sup', 'sub', 'del', 's', 'dl', 'dt', 'dd', 'kbd', 'details', 'summary'}
DROPPED_WITH_CONTENT = {'script', 'style', 'iframe', 'object', 'embed', 'template', 'noscript', 'textarea',
                        'title', 'svg', 'math', 'xmp', 'noembed', 'noframes', 'plaintext', 'select', 'frameset'}
ALLOWED_ATTRIBUTES = {'*': {'id', 'class', 'title'}, 'a': {'href'}, 'img': {'src', 'alt', 'width', 'height', 'style'},
                      'th': {'style', 'align'}, 'td': {'style', 'align'}, 'ol': {'start'}}
ALLOWED_STYLE = re.compile(r'(height:[\d.]+em;vertical-align:middle|text-align:\s*(left|right|center);?)$')
VOID_TAGS = {'br', 'hr', 'img'}
IMAGE_DATA = re.compile(r'data:image/(png|jpeg|gif|webp|svg\+xml)[;,]')


def safe_url(url, image=False):
    """Whether a link (or, ``image``, an image source) may stay: no scheme (a page or anchor of this site),
    http(s), mailto; images also data:image/... Browsers ignore tabs, newlines and control characters in
    URLs (``java\tscript:`` is ``javascript:``), so they are ignored here too."""
    flat = re.sub(r'[\x00-\x20\x7f]', '', url).lower()
    scheme = re.match(r'([a-z][a-z0-9+.-]*):', flat)
    if scheme is None:
        return ':' not in flat.split('/')[0]
    return scheme.group(1) in ('http', 'https', 'mailto') or bool(image and IMAGE_DATA.match(flat))


class _Sanitizer(HTMLParser):
    """Rebuilds HTML from what it parsed, keeping only the allow-list; text is escaped again."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.open, self.dropping = [], [], 0

    def _attrs(self, tag, attrs):
        kept = []
        for name, value in attrs:
            value = value or ''
            if name not in ALLOWED_ATTRIBUTES['*'] | ALLOWED_ATTRIBUTES.get(tag, set()):
                continue
            if (name in ('href', 'src') and not safe_url(value, image=name == 'src')) or \
                    (name == 'style' and not ALLOWED_STYLE.match(value.replace(' ', ''))):
                continue
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
        return ''.join(kept)

    def handle_starttag(self, tag, attrs):
        if tag in DROPPED_WITH_CONTENT and tag not in VOID_TAGS:
            self.dropping += 1
        elif not self.dropping and tag in ALLOWED_TAGS:
            self.out.append(f'<{tag}{self._attrs(tag, attrs)}>')
            if tag not in VOID_TAGS:
                self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        if not self.dropping and tag in ALLOWED_TAGS:
            self.out.append(f'<{tag}{self._attrs(tag, attrs)}>' + ('' if tag in VOID_TAGS else f'</{tag}>'))

    def handle_endtag(self, tag):
        if tag in DROPPED_WITH_CONTENT:
            self.dropping = max(0, self.dropping - 1)
        elif not self.dropping and tag in self.open:
            while self.open:
                last = self.open.pop()
                self.out.append(f'</{last}>')
                if last == tag:
                    break

    def handle_data(self, data):
        if not self.dropping:
            self.out.append(html.escape(data, quote=False))

    def result(self):
        self.close()
        return ''.join(self.out) + ''.join(f'</{t}>' for t in reversed(self.open))


def sanitize_html(text):
    """``text`` (HTML) with only the allow-list kept: no script, no event handler, no javascript: URL."""
    parser = _Sanitizer()
    parser.feed(text)
    return parser.result()


def _exporter():
    """nbconvert's HTMLExporter (lab template) whose markdown is sanitised after rendering: raw HTML in a
    notebook's text cannot run in the reader's browser."""
    from jinja2 import pass_context
    from nbconvert import HTMLExporter

    class BookExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            return sanitize_html(HTMLExporter.markdown2html(self, context, source))
    return BookExporter(template_name='lab')


KEPT_OUTPUTS = ('text/plain', 'image/png', 'image/jpeg', 'image/gif', 'image/svg+xml', 'text/html', 'text/markdown')


def _safe_outputs(nb):
    """The outputs' data limited to ``KEPT_OUTPUTS`` (no JavaScript, no widgets), their HTML sanitised."""
    for cell in nb.cells:
        for output in cell.get('outputs', []):
            data = output.get('data')
            if data:
                for key in [k for k in data if k not in KEPT_OUTPUTS]:
                    del data[key]
                if 'text/html' in data:
                    data['text/html'] = sanitize_html(''.join(data['text/html']))


def _alt_texts(nb):
    """{the first 200 characters of an image output's base64 payload: its alt text}: the figure's title as
    stored with it (``d2lseg.fcn.viz.describe_figures``), else the heading of the section it is in."""
    alts, heading = {}, _title(nb)
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            found = re.findall(r'^#+\s+(.+)$', cell.source, re.M)
            heading = found[-1].replace('$', '').strip() if found else heading
        for output in cell.get('outputs', []):
            data = output.get('data', {})
            text = ''.join(data.get('text/plain', ''))
            alt = text if text and not text.startswith('<Figure') else f'a figure of the section "{heading}"'
            for key in ('image/png', 'image/jpeg'):
                if key in data:
                    alts[''.join(data[key]).replace('\n', '')[:200]] = alt
    return alts


EXTERNAL = re.compile(r'^\s*(https?:)?//', re.I)


def _offline(soup):
    """Drop every script (nothing on a page needs JavaScript: widgets and JavaScript outputs are already
    dropped; nbconvert's require.js, MathJax and mermaid loaders come from a CDN) and every stylesheet or
    image fetched from elsewhere: no request leaves the machine."""
    for tag in soup.find_all('script'):
        tag.decompose()
    for tag in soup.find_all(['link', 'img', 'iframe', 'source']):
        if EXTERNAL.match(tag.get('href', '') or tag.get('src', '') or ''):
            tag.decompose()


def _contents(soup):
    """An in-page contents list: every h2 of the page, linked to its anchor (nbconvert gives none to a
    heading with a formula: it gets one here, from its text and the formula's TeX)."""
    for h in soup.find_all('h2'):
        if not h.get('id'):
            words = ''.join(t if isinstance(t, str) else t.get('alt', t.get_text()) for t in h.contents)
            h['id'] = re.sub(r'\s+', '-', words.strip())
    items = ''.join(f'<li><a href="#{html.escape(h["id"])}">'
                    f'{html.escape(h.get_text().replace("¶", "").strip())}</a></li>' for h in soup.find_all('h2'))
    return f'<nav class="d2lseg-toc"><strong>On this page</strong><ol>{items}</ol></nav>' if items else ''


def _page(exporter, nb, prev_, next_):
    from bs4 import BeautifulSoup
    alts = _alt_texts(nb)
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            cell.source = typeset_math(cell.source)
    _safe_outputs(nb)
    body, _ = exporter.from_notebook_node(nb)
    body = re.sub(r'href="(\d\d_[A-Za-z0-9_]+)\.ipynb', r'href="\1.html', body)  # links between notebooks
    soup = BeautifulSoup(body, features='html.parser')
    _offline(soup)
    for img in soup.find_all('img'):
        payload = re.sub(r'^data:image/[a-z+]+;base64,', '', img.get('src', ''))[:200]
        if payload in alts:
            img['alt'] = alts[payload]
    nav = PAGE_NAV.format(prev=f' · <a href="{prev_}">previous</a>' if prev_ else '',
                          next=f' · <a href="{next_}">next</a>' if next_ else '')
    top = STYLE + nav + (BANNER if trains(nb) else '') + _contents(soup)
    soup.body.insert(0, BeautifulSoup(top, features='html.parser'))
    soup.body.append(BeautifulSoup(nav.replace('border-bottom', 'border-top'), features='html.parser'))
    return str(soup)


def _index(entries, total):
    rows = '\n'.join(
        f'<li><a href="{html.escape(page)}">{html.escape(title)}</a>'
        f'<div class="intro">{intro}</div><p class="run">{html.escape(ran)}</p></li>'
        for page, title, intro, ran in entries)
    return f'''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>d2lseg: Fully Convolutional Networks (D2L 10.10)</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;line-height:1.5}}
li{{margin-bottom:1em}} p{{margin:.2em 0}} .run{{color:#555;font-size:90%}} .intro ul{{margin:.2em 0}}
img.math{{vertical-align:middle}}</style></head>
<body><h1>Fully Convolutional Networks, executed</h1>
{BANNER}
<p>The notebooks of <code>d2lseg</code>, in the order of <em>Dive into Deep Learning</em> (MXNet edition),
section 10.10, followed by the package's additions. Each page is a notebook as stored, with the outputs of
its last full run ({html.escape(total)} for all of them, with <code>make notebooks</code>).</p>
<ol>
{rows}
</ol></body></html>
'''


def _writable(out):
    try:
        os.makedirs(out, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, 'Permission denied')
    except OSError as e:
        raise ToolError(f'book: --out {out}: cannot write there ({e.strerror}); choose another --out') from None


def _write(path, text):
    """Write a page whole (a temporary beside it, renamed)."""
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise ToolError(f'book: {path}: writing failed ({e.strerror})') from None
    finally:
        if os.path.isfile(tmp):
            os.remove(tmp)


def book(out, notebook_dir=NOTEBOOK_DIR):
    """Render the notebooks under ``notebook_dir`` into ``out``; returns the pages' paths, index first."""
    import nbformat
    exporter = _exporter()
    paths = notebook_paths(notebook_dir=notebook_dir)
    stale = {os.path.basename(p): stale_cells(nbformat.read(p, as_version=4)) for p in paths}
    stale = {k: v for k, v in stale.items() if v}
    if stale:
        raise ToolError('book: these notebooks have cells without outputs from their current source: '
                         + ', '.join(stale) + '; run `make notebooks` first')
    _writable(out)
    pages = [os.path.splitext(os.path.basename(p))[0] + '.html' for p in paths]
    entries, total = [], 0.0
    for i, path in enumerate(paths):
        nb = nbformat.read(path, as_version=4)
        page = _page(exporter, nb, pages[i - 1] if i else None, pages[i + 1] if i + 1 < len(pages) else None)
        _write(os.path.join(out, pages[i]), page)
        executed = nb.metadata.get('d2lseg', {}).get('executed', {})
        ran = (f"ran in {_minutes(executed['seconds'])} on a {executed['machine']}, {executed['date']}"
               if executed else '')
        entries.append((pages[i], _title(nb), _intro(nb), ran))
        total += executed.get('seconds', 0)
    _write(os.path.join(out, 'index.html'), _index(entries, _minutes(total)))
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
