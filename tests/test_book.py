"""`make book`: the stored notebooks rendered as a static HTML site, every figure embedded, pages that open.

Renders the notebooks as stored (nothing is executed). The browser check needs Chromium
(`apt-get install chromium`, as .ci/run does); without it that test is skipped, saying so.
"""
import base64
import copy
import io
import os
import re
import shutil
import subprocess

import pytest

from notebooks_tool import book, tool

NAMES = [os.path.splitext(os.path.basename(p))[0] for p in tool.notebook_paths()]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
EXTERNAL = re.compile(r'^\s*(https?:)?//', re.I)


def _soup(path):
    from bs4 import BeautifulSoup
    return BeautifulSoup(path.read_text(), features='html.parser')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('book')
    pages = book(str(out))
    return out, pages


def _figures(nb):
    """(png and jpeg payloads, svg documents) of a notebook's outputs."""
    png, svg = [], []
    for cell in nb.cells:
        for o in cell.get('outputs', []):
            data = o.get('data', {})
            if 'image/png' in data or 'image/jpeg' in data:
                png.append(data.get('image/png', data.get('image/jpeg')).replace('\n', ''))
            elif 'image/svg+xml' in data:
                svg.append(data['image/svg+xml'])
    return png, svg


def test_contents_page_lists_every_notebook_in_the_chapters_order(site):
    out, pages = site
    assert [os.path.basename(p) for p in pages] == ['index.html'] + [n + '.html' for n in NAMES]
    index = (out / 'index.html').read_text()
    assert re.findall(r'<li><a href="([^"]+)"', index) == [n + '.html' for n in NAMES]
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


@pytest.mark.slow  # a browser per page: ~1 min
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


def test_no_request_leaves_the_machine(site):
    """No script at all (nbconvert's require.js, MathJax and mermaid loaders come from a CDN), and no
    stylesheet, image or frame fetched from elsewhere; CSS fetches nothing either (url(...) of the web)."""
    out, pages = site
    for page in pages:
        soup = _soup(out / os.path.basename(page))
        assert not soup.find_all('script'), page
        fetched = [t.get('src') or t.get('href') for t in soup.find_all(['link', 'img', 'iframe', 'source', 'video',
                                                                          'audio', 'embed', 'object'])]
        assert not [u for u in fetched if u and EXTERNAL.match(u)], page
        styles = ' '.join(t.get_text() for t in soup.find_all('style'))
        assert not re.search(r'url\(\s*[\'"]?(https?:)?//|@import\s+[\'"]?(https?:)?//', styles), page


def test_figures_have_alt_text_from_their_titles(site):
    import nbformat
    out, _ = site
    for name in NAMES:
        nb = nbformat.read(os.path.join(tool.NOTEBOOK_DIR, name + '.ipynb'), as_version=4)
        titles = [''.join(o['data']['text/plain']) for c in nb.cells for o in c.get('outputs', [])
                  if 'image/png' in o.get('data', {}) or 'image/jpeg' in o.get('data', {})]
        imgs = [i for i in _soup(out / (name + '.html')).find_all('img') if 'math' not in (i.get('class') or [])]
        alts = [i.get('alt', '') for i in imgs]
        assert len(alts) == len(titles) and all(alts), name
        assert not [a for a in alts if 'No description' in a], name
        for title, alt in zip(titles, alts):   # the figure's title, as viz.describe_figures stored it
            assert alt == title if not title.startswith('<Figure') else alt.startswith('a figure of the section'), name


def test_banner_navigation_contents_and_answers(site):
    import nbformat
    out, _ = site
    assert tool.BANNER in (out / 'index.html').read_text()
    for name in NAMES:
        nb = nbformat.read(os.path.join(tool.NOTEBOOK_DIR, name + '.ipynb'), as_version=4)
        page = (out / (name + '.html')).read_text()
        assert (tool.BANNER in page) == tool.trains(nb), name
        soup = _soup(out / (name + '.html'))
        navs = soup.find_all('nav', class_='d2lseg-nav')
        assert len(navs) == 2 and navs[0] is soup.body.find('nav') and not navs[1].find_next(['p', 'div']), name
        toc = [a['href'][1:] for a in soup.find('nav', class_='d2lseg-toc').find_all('a')]
        assert toc == [h['id'] for h in soup.find_all('h2')] and len(toc) >= 3, name
        n_answers = sum(c.source.count('<details>') for c in nb.cells if c.cell_type == 'markdown')
        assert n_answers >= 3 and len(soup.find_all('details')) == n_answers, name
        assert all(d.find('summary') for d in soup.find_all('details')), name
    assert sum(tool.trains(nbformat.read(os.path.join(tool.NOTEBOOK_DIR, n + '.ipynb'), as_version=4))
               for n in NAMES) >= 4


def test_index_descriptions_are_whole_and_typeset(site):
    import nbformat
    out, _ = site
    soup = _soup(out / 'index.html')
    intros = soup.find_all('div', class_='intro')
    assert len(intros) == len(NAMES)
    for name, intro in zip(NAMES, intros):
        nb = nbformat.read(os.path.join(tool.NOTEBOOK_DIR, name + '.ipynb'), as_version=4)
        last_words = re.sub(r'[`*_]', '', nb.cells[0].source.strip()).split()[-3:]
        assert ' '.join(last_words) in ' '.join(intro.get_text().split()), name   # not cut mid-sentence
        assert '$' not in intro.get_text(), name                                  # no raw TeX
    assert soup.find_all('img', class_='math')


@pytest.mark.slow  # a browser per page
@pytest.mark.skipif(not CHROMIUM, reason='no Chromium on this machine (apt-get install chromium): the pages are '
                                         'not loaded in a browser; test_no_request_leaves_the_machine checks the HTML')
def test_chromium_requests_nothing_from_the_network(site, tmp_path):
    """Headless Chromium loads every page with a network log: no http(s) request is made, but to the hosts
    Chromium contacts on its own (those it contacts for an empty page, and Google's update, time and
    account services it calls in the background, which vary from run to run). A page that loads a script
    from a CDN is caught (checked first, so the test can fail)."""
    out, pages = site
    own = {_host(u) for u in _requests('about:blank', tmp_path / 'blank.json', tmp_path)}
    google = re.compile(r'(^|\.)(google\.com|googleapis\.com|gvt1\.com)$')
    chromiums = lambda host: host in own or google.search(host)  # noqa: E731
    probe = tmp_path / 'cdn.html'
    probe.write_text('<html><head><script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/'
                     'require.min.js"></script></head><body>x</body></html>')
    assert [_host(u) for u in _requests('file://' + str(probe), tmp_path / 'cdn.json', tmp_path)
            if not chromiums(_host(u))] == ['cdnjs.cloudflare.com']
    for page in pages:
        urls = _requests('file://' + page, tmp_path / (os.path.basename(page) + '.json'), tmp_path)
        assert not [u for u in urls if not chromiums(_host(u))], (page, urls)


def _host(url):
    return re.sub(r'^[a-z]+://([^/:?#]*).*$', r'\1', url)


def _requests(url, log, tmp_path):
    """The http(s)/ws(s) URLs headless Chromium requested while loading ``url`` (from its network log)."""
    import json
    subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                    '--disable-background-networking', '--disable-component-update', '--disable-sync',
                    '--disable-domain-reliability', f'--user-data-dir={tmp_path / "profile"}',
                    f'--log-net-log={log}', '--dump-dom', url], check=True, capture_output=True, timeout=120)
    text = log.read_text()
    try:
        events = json.loads(text)['events']
    except ValueError:   # Chromium stopped before closing the log: the events so far
        events = json.loads(text.rstrip().rstrip(',') + ']}')['events']
    urls = {e['params']['url'] for e in events if isinstance(e.get('params'), dict) and 'url' in e['params']}
    return sorted(u for u in urls if u.startswith(('http:', 'https:', 'ws:', 'wss:')))


def test_quick_mode_swaps_only_the_parameters_cell():
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('import os'), nbformat.v4.new_code_cell('n = 600'),
                nbformat.v4.new_code_cell('print(n)')]
    nb.cells[1].metadata['d2lseg'] = {'role': tool.PARAMETERS}
    nb.metadata['d2lseg'] = {'quick_parameters': 'n = 8'}
    assert tool.parameters_cell(nb) is nb.cells[1]
    assert [c.source for c in tool.quick(copy.deepcopy(nb)).cells] == ['import os', 'n = 8', 'print(n)']
    assert [c.source for c in tool.quick(nb, 'n = 3').cells] == ['import os', 'n = 3', 'print(n)']


@pytest.mark.notebook
def test_run_keeps_the_parameters_cell_and_its_role(tmp_path):
    import nbformat
    path = tmp_path / '01_tiny.ipynb'
    _tiny_notebook(path, ['n = 600', 'print(n)'])
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].metadata['d2lseg'] = {'role': tool.PARAMETERS}
    nb.metadata['d2lseg']['quick_parameters'] = 'n = 8'
    nbformat.write(nb, str(path))
    tool.execute(str(path), 'a test machine')    # full mode: the stored parameters, not the quick ones
    nb = nbformat.read(str(path), as_version=4)
    cell = tool.parameters_cell(nb)
    assert cell.source == 'n = 600' and cell.metadata['d2lseg']['source_sha256'] == tool.source_hash('n = 600')
    assert nb.cells[3].outputs[0]['text'] == '600\n'
