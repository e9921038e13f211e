"""Execute a notebook for a test, with the one kernel launcher (``tools/notebooks.py``'s ``kernel_client``:
this interpreter's ipykernel, its built-in ``python3`` spec, no kernelspec install), in quick mode when asked
(the notebook's parameters cell swapped for its quick version, ``tools/notebooks.py``'s ``quick``).

With ``report=[names]`` the run also reports values from the kernel's namespace: after the notebook's
own cells, one extra code cell (appended to the in-memory notebook only, and removed again before
``execute_notebook`` returns, so nothing of it is ever saved) prints ``json.dumps`` of those values,
and the caller gets them as a dict. Tests then assert on what the notebook computed, not on how it
printed it.
"""
import json
import textwrap

from notebooks_tool import tool

# Values larger than this (array elements, string characters) are not reported: ask for a summary of
# them instead (``X.shape``, or a count the notebook keeps in a variable).
MAX_ITEMS = 10000

# The report cell. Names are variables of the notebook (``same``) or attribute paths from one
# (``X.shape``, ``reference.PUBLISHED``); nothing is called or evaluated besides attribute look-ups.
# Values become JSON: numbers, booleans, None, strings, lists (tuples, shapes, numpy arrays and MXNet
# NDArrays), dicts; numpy scalars become Python numbers, MXNet contexts their text (``cpu(0)``).
_REPORT_CELL = '''\
def _nbrun_report(names, max_items):
    import json as _json
    import sys as _sys

    def convert(v):
        if v is None or isinstance(v, (bool, int, float)):
            return v
        if isinstance(v, str):
            if len(v) > max_items:
                raise ValueError(f'a string of {len(v)} characters (more than {max_items})')
            return v
        np = _sys.modules.get('numpy')
        if np is not None and isinstance(v, np.generic):
            return v.item()
        mx_array = type(v).__module__.startswith('mxnet') and hasattr(v, 'asnumpy')
        if mx_array or np is not None and isinstance(v, np.ndarray):
            if v.size > max_items:
                raise ValueError(f'an array of shape {tuple(v.shape)} (more than {max_items} values; '
                                 'report its .shape or a value computed from it)')
            return (v.asnumpy() if mx_array else v).tolist()
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {(k if k is None or isinstance(k, (str, int, float, bool)) else str(k)): convert(x)
                    for k, x in v.items()}
        if type(v).__module__.startswith('mxnet') and hasattr(v, 'device_type'):  # a Context
            return str(v)
        raise TypeError(f'a {type(v).__module__}.{type(v).__qualname__}, which has no JSON form here')

    values, problems = {}, {}
    for name in names:
        root, *attrs = name.split('.')
        if root not in globals():
            problems[name] = f'the notebook defines no variable {root!r}'
            continue
        v, path = globals()[root], root
        try:
            for a in attrs:
                if not hasattr(v, a):
                    raise LookupError(f'{path} ({type(v).__name__}) has no attribute {a!r}')
                v, path = getattr(v, a), path + '.' + a
            values[name] = convert(v)
        except (LookupError, TypeError, ValueError) as e:
            problems[name] = f'{path} is {e}' if not isinstance(e, LookupError) else str(e)
    print(_json.dumps({'values': values, 'problems': problems}))


_nbrun_report(%r, %d)
del _nbrun_report
'''


class NotebookReportError(AssertionError):
    """The notebook ran, but a value the test asked for is missing or cannot be reported."""


def execute_notebook(nb, cwd, timeout=180, report=None, name=None, quick=False, parameters=None):
    """Run ``nb`` in place with ``cwd`` as its working folder; returns it with outputs.

    quick: run the notebook's quick parameters instead of its parameters cell (the returned notebook
    shows them in that cell); parameters: a source for that cell instead (what a test sets).

    report: names (or attribute paths such as ``'X.shape'``) to read from the kernel's namespace once
    every cell has run; then returns ``(nb, values)`` with ``values`` a dict keyed by those names,
    and raises :class:`NotebookReportError` naming the notebook (``name``) and every variable it does
    not define or that cannot be reported. ``nb`` comes back without the report cell.
    """
    if quick or parameters is not None:
        tool.quick(nb, parameters)
    client = tool.kernel_client(nb, cwd, timeout=timeout)
    if report is None:
        client.execute()
        return nb
    import nbformat
    names = list(report)
    cell = nbformat.v4.new_code_cell(_REPORT_CELL % (names, MAX_ITEMS))
    nb.cells.append(cell)
    try:
        client.execute()
    finally:  # in memory only: whatever happens, the caller's notebook is as it was
        nb.cells = [c for c in nb.cells if c is not cell]
    stdout = ''.join(o.text for o in cell.outputs if o.output_type == 'stream' and o.name == 'stdout')
    label = name or 'the notebook'
    try:
        result = json.loads(stdout)
    except ValueError:
        raise NotebookReportError(f'{label}: the report cell printed no JSON:\n'
                                  + textwrap.indent(stdout or '(nothing)', '    ')) from None
    if result['problems']:
        raise NotebookReportError(f'{label}: cannot report what the test asks for:\n' + '\n'.join(
            f'    {k}: {msg}' for k, msg in result['problems'].items()))
    return nb, result['values']
