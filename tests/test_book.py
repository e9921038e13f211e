"""`make book`: the stored notebooks rendered as a static HTML site, every figure embedded, pages that open.

Renders the notebooks as stored (nothing is executed). The browser check needs Chromium
(`apt-get install chromium`, as .ci/run does); without it that test is skipped, saying so.
"""
import base64
import io
import os
import re
import shutil
import subprocess

import pytest

from notebooks_tool import book, tool

NAMES = [os.path.splitext(os.path.basename(p))[0] for p in tool.notebook_paths()]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('book')
    pages = book(str(out))
    return out, pages


def _figures(nb):
    """(png payloads, svg documents) of a notebook's outputs."""
    png, svg = [], []
    for cell in nb.cells:
        for o in cell.get('outputs', []):
            data = o.get('data', {})
            if 'image/png' in data:
                png.append(data['image/png'].replace('\n', ''))
            elif 'image/svg+xml' in data:
                svg.append(data['image/svg+xml'])
    return png, svg


def test_contents_page_lists_every_notebook_in_the_chapters_order(site):
    out, pages = site
    assert [os.path.basename(p) for p in pages] == ['index.html'] + [n + '.html' for n in NAMES]
    index = (out / 'index.html').read_text()
    assert re.findall(r'<a href="([^"]+)"', index) == [n + '.html' for n in NAMES]
    assert index.count('ran in ') == len(NAMES)  # each entry says how long its stored run took


@pytest.mark.parametrize('name', NAMES)
def test_every_figure_is_embedded(site, name):
    import nbformat
    out, _ = site
    page = (out / (name + '.html')).read_text()
    nb = nbformat.read(os.path.join(tool.NOTEBOOK_DIR, name + '.ipynb'), as_version=4)
    png, svg = _figures(nb)
    assert png or svg, f'{name} shows no figure'
    for payload in png:
        assert payload[-200:] in page.replace('\n', '')
        base64.b64decode(payload[:4000] + '=' * (-len(payload[:4000]) % 4))
    for doc in svg:
        paths = re.findall(r' d="([^"]{40,200})"', doc)
        assert paths and all(d in page for d in paths[:5])
    assert not re.findall(r'<img[^>]+src="(?!data:)', page)        # nothing fetched from elsewhere
    assert not re.search(r'href="\d\d_[A-Za-z0-9_]+\.ipynb', page)  # links between notebooks go to pages
    assert '<a href="index.html">Contents</a>' in page


def test_formulas_are_typeset_offline(site):
    """Every $...$ of the notebooks' text is an embedded SVG in its page (no MathJax, no network);
    dollar signs inside code stay as they are."""
    import nbformat
    out, _ = site
    for name in NAMES:
        nb = nbformat.read(os.path.join(tool.NOTEBOOK_DIR, name + '.ipynb'), as_version=4)
        texts = [tool.CODE.split(c.source)[::2] for c in nb.cells if c.cell_type == 'markdown']
        n_math = sum(len(tool.MATH.findall(t)) for parts in texts for t in parts)
        assert (out / (name + '.html')).read_text().count('class="math"') == n_math, name
    typeset = tool.typeset_math('cost $n^2$, not `$HOME` or\n```\nx = "$a$"\n```')
    assert typeset.startswith('cost <img class="math" alt="n^2"') and 'data:image/svg+xml;base64,' in typeset
    assert typeset.endswith(', not `$HOME` or\n```\nx = "$a$"\n```')


def test_a_stale_notebook_is_refused(tmp_path):
    import nbformat
    src = os.path.join(tool.NOTEBOOK_DIR, NAMES[0] + '.ipynb')
    nb = nbformat.read(src, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == 'code')
    code.source += '\nprint("changed")'
    (tmp_path / 'nb').mkdir()
    nbformat.write(nb, str(tmp_path / 'nb' / (NAMES[0] + '.ipynb')))
    with pytest.raises(tool.ToolError, match=f'{NAMES[0]}.ipynb.*make notebooks'):
        book(str(tmp_path / 'out'), notebook_dir=str(tmp_path / 'nb'))
    assert not (tmp_path / 'out').exists()


def _tiny_notebook(path, code):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb.metadata['d2lseg'] = {'needs': 'nothing much'}
    nb.cells = [nbformat.v4.new_markdown_cell('# Tiny\n\nA test.')] + [nbformat.v4.new_code_cell(c) for c in code]
    nbformat.write(nb, str(path))


@pytest.mark.notebook
def test_run_stores_outputs_hashes_and_the_run_info_cell(tmp_path):
    import nbformat
    path = tmp_path / '01_tiny.ipynb'
    _tiny_notebook(path, ['x = 6 * 7', 'print(x)'])
    seconds = tool.execute(str(path), 'a test machine')
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[1].metadata['d2lseg']['role'] == tool.RUN_INFO
    assert 'nothing much' in nb.cells[1].source and 'a test machine' in nb.cells[1].source
    assert nb.cells[3].outputs[0]['text'] == '42\n' and tool.stale_cells(nb) == []
    assert nb.metadata['d2lseg']['executed']['seconds'] == round(seconds, 1)
    nb.cells[2].source = 'x = 6 * 8'
    assert tool.stale_cells(nb) == [2]
    tool.execute(str(path), 'a test machine')  # again: still one run-info cell
    nb = nbformat.read(str(path), as_version=4)
    assert [c.metadata.get('d2lseg', {}).get('role') for c in nb.cells].count(tool.RUN_INFO) == 1


@pytest.mark.notebook
def test_a_failing_notebook_is_left_as_it_was(tmp_path):
    path = tmp_path / '01_tiny.ipynb'
    _tiny_notebook(path, ['print(1)', '1 / 0'])
    before = path.read_bytes()
    with pytest.raises(tool.ToolError) as e:
        tool.execute(str(path), 'a test machine')
    assert str(e.value) == ('notebooks: 01_tiny.ipynb failed (ZeroDivisionError: division by zero); '
                            'the stored notebook is unchanged')
    assert path.read_bytes() == before


def _screenshot(url, path, tmp_path, height):
    cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync',
           f'--user-data-dir={tmp_path / "profile"}', f'--screenshot={path}', f'--window-size=1200,{height}',
           '--hide-scrollbars', url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM, reason='no Chromium on this machine (apt-get install chromium); '
                                         'the pages are not opened in a browser')
def test_pages_open_in_headless_chromium(site, tmp_path):
    import numpy as np
    from PIL import Image
    out, pages = site
    for page in pages:
        shot = tmp_path / (os.path.basename(page) + '.png')
        _screenshot('file://' + page, shot, tmp_path, 900 if page.endswith('index.html') else 3000)
        img = np.asarray(Image.open(shot).convert('RGB'))
        background = np.all(img == img[0, 0], axis=-1).mean()
        colours = len(np.unique(img.reshape(-1, 3), axis=0))
        assert background < 0.97 and colours > 50, (page, background, colours)  # text and figures drawn


def test_notebooks_are_chosen_by_number_or_name_and_an_unknown_one_is_named():
    names = lambda picked: [os.path.basename(p) for p in picked]  # noqa: E731
    assert names(tool.notebook_paths(['06', '04_training.ipynb', '04'])) == ['04_training.ipynb', '06_reproduce.ipynb']
    for asked in (['99'], ['04', '99'], ['04_trainin']):
        with pytest.raises(tool.UnknownNotebook, match=f'no notebook {asked[-1]} under notebooks/'):
            tool.notebook_paths(asked)
