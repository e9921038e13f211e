"""Intel AMX (``d2lseg.core.startup``): decided at import, float32 and INT8 results unchanged bit for bit,
no cap leaked to child processes. The checks that need AMX are skipped, naming the missing flag,
on CPUs without it; the decision itself is tested everywhere."""
import json
import os
import subprocess
import sys

import pytest

from d2lseg.native import environment
from d2lseg.core import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, 'tests', 'helpers', 'amx_outputs.py')
MISSING = [f for f in startup.AMX_FLAGS if f not in startup.cpu_flags()]
needs_amx = pytest.mark.skipif(bool(MISSING), reason=f"this CPU has no {', '.join(MISSING)} (AMX)")
AMX_FLAGS = set(startup.AMX_FLAGS)


def child(*args, **env):
    """Run the helper in a fresh process with ``env`` over this one's (None removes a variable)."""
    child_env = {k: v for k, v in os.environ.items() if k not in startup.CAP_VARS + ('D2LSEG_AMX',)}
    child_env.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([sys.executable, HELPER, *args], env=child_env, capture_output=True, text=True,
                          timeout=600)


def test_decision_never_touches_a_users_cap_or_a_cpu_without_amx(monkeypatch):
    asked = []
    monkeypatch.setattr(startup, 'request_amx_permission', lambda: asked.append(1))
    cap, status = startup._decide_amx({'DNNL_MAX_CPU_ISA': 'AVX2'}, AMX_FLAGS, False)
    assert cap is None and status == {'enabled': False, 'reason': 'DNNL_MAX_CPU_ISA=AVX2 set by the user'}
    cap, status = startup._decide_amx({'D2LSEG_AMX': '0'}, AMX_FLAGS, False)
    assert cap is None and status == {'enabled': False, 'reason': 'D2LSEG_AMX=0'}
    cap, status = startup._decide_amx({}, {'avx2', 'avx512f', 'amx_tile'}, False)
    assert cap is None and status['reason'] == 'this CPU has no amx_int8, amx_bf16'
    cap, status = startup._decide_amx({}, AMX_FLAGS, True)
    assert cap is None and status['reason'] == 'MXNet was imported before d2lseg'
    assert asked == []  # in none of these cases was the kernel asked


def test_decision_enables_or_says_why_the_kernel_refused(monkeypatch):
    monkeypatch.setattr(startup, 'request_amx_permission', lambda: None)
    cap, status = startup._decide_amx({}, AMX_FLAGS, False)
    assert cap == 'AVX512_CORE_AMX' and status['enabled']
    # a cap naming AMX (the user's, or inherited) gets the permission it needs, and is left as it is
    cap, status = startup._decide_amx({'DNNL_MAX_CPU_ISA': 'avx512_core_amx'}, set(), False)
    assert cap is None and status['enabled'] and 'set by the user' in status['reason']
    monkeypatch.setattr(startup, 'request_amx_permission', lambda: 'the kernel refused the AMX permission (x)')
    cap, status = startup._decide_amx({}, AMX_FLAGS, False)
    assert cap is None and status == {'enabled': False, 'reason': 'the kernel refused the AMX permission (x)'}
    # a user's AMX cap the kernel will not honour is removed: it would kill the process at its first INT8 layer
    cap, status = startup._decide_amx({'DNNL_MAX_CPU_ISA': 'AVX512_CORE_AMX'}, AMX_FLAGS, False)
    assert cap == '' and not status['enabled'] and 'refused' in status['reason'] and 'removed' in status['reason']


def test_this_process_records_the_decision_and_leaks_no_cap():
    amx = environment.environment()['amx']
    assert amx == startup.amx() and isinstance(amx['enabled'], bool) and amx['reason']
    if amx['enabled'] and 'set by the user' not in amx['reason']:
        assert 'DNNL_MAX_CPU_ISA' not in os.environ          # read by oneDNN, then removed
        assert startup.onednn_cap() == 'AVX512_CORE_AMX'
        assert environment.environment()['dnnl_max_cpu_isa'] is None  # the record keeps the user's cap only
    if MISSING:
        assert not amx['enabled'] and ', '.join(MISSING) in amx['reason'] or 'DNNL_MAX_CPU_ISA' in amx['reason']


@needs_amx
def test_amx_changes_no_float32_or_int8_bit_and_is_used():
    on = child(DNNL_VERBOSE='1')
    off = child(D2LSEG_AMX='0', DNNL_VERBOSE='1')
    assert on.returncode == 0 and off.returncode == 0, (on.stderr[-500:], off.stderr[-500:])
    a, b = json.loads(on.stdout.strip().splitlines()[-1]), json.loads(off.stdout.strip().splitlines()[-1])
    assert a['amx']['enabled'] and not b['amx']['enabled'] and b['amx']['reason'] == 'D2LSEG_AMX=0'
    assert a['cap_in_environ'] is None
    assert (a['fp32'], a['grads'], a['int8']) == (b['fp32'], b['grads'], b['int8'])
    # oneDNN ran INT8 and bfloat16 convolutions on AMX kernels only where it was enabled
    assert ':avx512_core_amx_int8,' in on.stdout and ':avx512_core_amx_bf16,' in on.stdout
    assert '_amx' not in off.stdout


@needs_amx
def test_children_of_a_d2lseg_process_do_not_inherit_a_cap_they_cannot_use():
    # this process enabled AMX; a child running MXNet alone (no permission asked) still works ...
    assert child('bare').stdout.strip() == 'ok'
    # ... which it would not if the cap had been left in the environment: the kernel kills it
    killed = child('bare', DNNL_MAX_CPU_ISA='AVX512_CORE_AMX')
    assert killed.returncode in (-4, 132) and 'ok' not in killed.stdout
    # a user's AMX cap with d2lseg imported first: the permission is asked for and bfloat16 runs
    mine = child(DNNL_MAX_CPU_ISA='AVX512_CORE_AMX')
    assert mine.returncode == 0, mine.stderr[-500:]
    assert json.loads(mine.stdout.strip().splitlines()[-1])['amx']['enabled']
