"""No injection through the notebook tools: `make book` keeps only an allow-list of HTML from the notebooks
(no script, event handler or javascript: URL reaches a page), `make notebooks NB=...` takes only notebook
names (never runs what follows a `;`), and the book tool's own failures are one line."""
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from notebooks_tool import tool

pytestmark = pytest.mark.fault

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
PAYLOADS = ('<script>document.body.setAttribute("data-pwned", "script")</script>\n\n'
            '<img src="x" onerror="document.body.setAttribute(\'data-pwned\', \'onerror\')">\n\n'
            '<div onmouseover="alert(1)" style="background:url(javascript:alert(2))">hover</div>\n\n'
            '[click](javascript:alert(3)) [tab](java&#x09;script:alert(4)) <a href="JaVaScRiPt:alert(5)">x</a>\n\n'
            '<iframe src="javascript:alert(6)"></iframe><svg onload="alert(7)"><circle r="1"/></svg>\n\n'
            '<object data="x.swf"></object><form action="javascript:alert(8)"><button>b</button></form>\n\n'
            '<a href="data:text/html,&lt;script&gt;alert(9)&lt;/script&gt;">data</a> <!-- <script>x</script> -->')


class _Unsafe(HTMLParser):
    """Collects what could run in a page: script elements, on* attributes, javascript:/data:text URLs."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        if tag in ('script', 'iframe', 'object', 'embed', 'form'):
            self.found.append(tag)
        for name, value in attrs:
            flat = re.sub(r'[\x00-\x20]', '', (value or '')).lower()
            if name.startswith('on') or flat.startswith(('javascript:', 'data:text', 'vbscript:')):
                self.found.append(f'{tag} {name}={value}')
            if name == 'style' and 'url(' in flat:
                self.found.append(f'{tag} style={value}')


def unsafe(html_text):
    parser = _Unsafe()
    parser.feed(html_text)
    return parser.found


def test_the_sanitizer_keeps_markdown_and_drops_what_could_run():
    assert unsafe(tool.sanitize_html(PAYLOADS)) == []
    kept = tool.sanitize_html('<h1 id="t">T<a class="anchor-link" href="#t">¶</a></h1><p>a &lt; b <em>c</em> '
                              '<a href="https://d2l.ai">d2l</a> <img class="math" alt="x^2" style="height:1.00em;'
                              'vertical-align:middle" src="data:image/svg+xml;base64,AAAA"></p>'
                              '<th style="text-align:left">h</th><p>unclosed <b>bold')
    assert kept == ('<h1 id="t">T<a class="anchor-link" href="#t">¶</a></h1><p>a &lt; b <em>c</em> '
                    '<a href="https://d2l.ai">d2l</a> <img class="math" alt="x^2" style="height:1.00em;'
                    'vertical-align:middle" src="data:image/svg+xml;base64,AAAA"></p><th style="text-align:left">h'
                    '</th><p>unclosed <b>bold</b></p>')
    assert not tool.safe_url('java\tscript:alert(1)') and not tool.safe_url('\x01javascript:x')
    assert not tool.safe_url('data:text/html,x', image=True) and tool.safe_url('data:image/png;base64,AA', image=True)
    assert tool.safe_url('04_training.html#top') and tool.safe_url('mailto:a@b.c') and not tool.safe_url('file:///x')


def _notebook(folder, markdown, html_output=None):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell('# Payloads\n\n' + markdown)]
    if html_output is not None:
        code = nbformat.v4.new_code_cell('show()', execution_count=1, outputs=[nbformat.v4.new_output(
            'display_data', data={'text/html': html_output, 'application/javascript': 'alert(10)',
                                  'text/plain': 'x'})])
        code.metadata['d2lseg'] = {'source_sha256': tool.source_hash(code.source)}
        nb.cells.append(code)
    os.makedirs(folder, exist_ok=True)
    nbformat.write(nb, os.path.join(folder, '01_payloads.ipynb'))


def test_the_book_renders_no_script_from_a_notebook(tmp_path):
    _notebook(tmp_path / 'nb', PAYLOADS + '\n\nbroken TeX: $\\frac{1}{$ and good $x^2$', PAYLOADS)
    pages = tool.book(str(tmp_path / 'out'), notebook_dir=str(tmp_path / 'nb'))
    page = open(pages[1], encoding='utf-8').read()
    main = page[page.index('<main>'):page.index('</main>')]  # the notebook's part (the template's scripts outside)
    assert unsafe(main) == [] and 'alert(10)' not in page
    assert 'hover' in main and 'class="math"' in main and '<code class="math-error">\\frac{1}{</code>' in main


@pytest.mark.skipif(not CHROMIUM, reason='no Chromium on this machine (apt-get install chromium); the payloads are '
                                         'checked in the HTML only')
def test_the_payloads_do_not_run_in_a_headless_browser(tmp_path):
    _notebook(tmp_path / 'nb', PAYLOADS, PAYLOADS)
    page = tool.book(str(tmp_path / 'out'), notebook_dir=str(tmp_path / 'nb'))[1]
    dom = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                          f'--user-data-dir={tmp_path / "profile"}', '--virtual-time-budget=3000', '--dump-dom',
                          'file://' + page], capture_output=True, text=True, timeout=120).stdout
    assert '<main>' in dom and 'data-pwned' not in dom


def test_the_book_tool_fails_in_one_line(tmp_path):
    _notebook(tmp_path / 'nb', 'text')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(tool.ToolError, match='book: --out .*cannot write there'):
        tool.book(str(tmp_path / 'file' / 'out'), notebook_dir=str(tmp_path / 'nb'))


PAYLOADS_NB = ['99;touch {pwned}', '`touch {pwned}`', '04 && touch {pwned}', '04 | touch {pwned}', '../etc/passwd',
               '$(shell touch {pwned})', '${{shell touch {pwned}}}', "04' ; touch {pwned} ; '", '$$(touch {pwned})',
               '04 $(touch {pwned})']


def _fake_python(tmp_path):
    """A stand-in python for the recipe that records its arguments (nothing is executed, whatever NB holds)."""
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'python').write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    (fake / 'python').chmod(0o755)
    return fake


def _make(*args, env=None):
    if shutil.which('make') is None:
        pytest.skip('no make on this machine')
    return subprocess.run(['make', '-s', '-o', 'kernels', 'notebooks', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize('nb', PAYLOADS_NB)
def test_notebook_names_are_validated_and_never_reach_a_shell(nb, tmp_path):
    """make neither expands NB (a command-line variable it exported would be: `$(shell ...)` ran at d0eafc3)
    nor lets the shell read it: the tool gets NB's text as one argument, and refuses it."""
    pwned = tmp_path / 'PWNED'
    nb = nb.format(pwned=pwned)
    with pytest.raises(tool.UnknownNotebook, match='is not a notebook name'):
        tool.notebook_paths([nb])
    p = _make(f'NB={nb}', f'BIN={_fake_python(tmp_path)}')
    assert not pwned.exists(), p.stderr
    assert (tmp_path / 'argv').read_text().splitlines() == ['tools/notebooks.py', 'run', nb]


def test_nb_from_the_environment_is_not_expanded_either(tmp_path):
    pwned = tmp_path / 'PWNED'
    p = _make(f'BIN={_fake_python(tmp_path)}', env=dict(os.environ, NB=f'$(shell touch {pwned})'))
    assert not pwned.exists(), p.stderr
    assert (tmp_path / 'argv').read_text().splitlines() == ['tools/notebooks.py', 'run', f'$(shell touch {pwned})']


@pytest.mark.parametrize('nb', ['$(shell touch {pwned})', '99;touch {pwned}'])
def test_the_real_tool_refuses_a_bad_nb_in_one_line_with_exit_2(nb, tmp_path):
    """Through make and the real tool (with this Python): one line, exit 2, nothing run or created."""
    pwned = tmp_path / 'PWNED'
    p = _make(f'NB={nb.format(pwned=pwned)}', f'BIN={os.path.dirname(sys.executable)}')
    assert not pwned.exists()
    tool_lines = [line for line in p.stderr.splitlines() if not line.startswith('make')]
    assert len(tool_lines) == 1 and 'is not a notebook name' in tool_lines[0], p.stderr
    assert p.returncode == 2 and 'executing' not in p.stdout
    assert tool.main(['run', nb.format(pwned=pwned)]) == 2 and not pwned.exists()
