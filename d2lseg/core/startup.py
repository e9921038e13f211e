"""What ``import d2lseg`` sets up before MXNet loads: OpenMP threads and Intel AMX. No MXNet import here.

Threads: MXNet reads ``OMP_NUM_THREADS`` once, when it loads, and otherwise runs its CPU operators
on one thread per two cores (or one), so ``configure`` sets it to the CPUs this process may use
when the user has not, and replaces a value MXNet would abort on (not a whole number, 0, more than
``max_threads``) with that, saying so in one warning.

AMX: MXNet 1.9.1's oneDNN (v2.4) has kernels for Intel AMX (the matrix units of 4th-generation and
later Xeons) but caps itself at AVX-512 unless ``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX``, and predates
the Linux (5.16+) rule that a process must ask for the AMX tile state before its first AMX
instruction (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``); without it that cap kills the
process with ``Illegal instruction`` at the first INT8 or bfloat16 convolution. When the CPU has AMX,
the user has not set the cap and ``D2LSEG_AMX`` is not ``0``, ``configure`` asks for the permission
and sets the cap; ``settle`` (called once MXNet is loaded) makes oneDNN read it with one tiny
convolution and then removes the variable again, so child processes that load MXNet without d2lseg
(and so without the permission) never inherit it. Whenever the cap in force names AMX (set by the
user or inherited), the permission is asked for. INT8 and bfloat16 convolutions then run on AMX;
float32 results are unchanged bit for bit (tests/test_amx.py). ``amx()`` says what happened and why.
"""
import ctypes
import functools
import logging
import os
import platform
import sys

logger = logging.getLogger('d2lseg')

CAP_VARS = ('DNNL_MAX_CPU_ISA', 'MKLDNN_MAX_CPU_ISA')
AMX_CAP = 'AVX512_CORE_AMX'
AMX_FLAGS = ('amx_tile', 'amx_int8', 'amx_bf16')
_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

_state = {'cap': None, 'user_cap': None, 'set_by_us': False,
          'amx': {'enabled': False, 'reason': 'd2lseg.core.startup.configure() has not run'}}


def default_threads():
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def cpuinfo():
    """The first CPU's fields in /proc/cpuinfo (up to its flags), read once; empty where there is none."""
    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
                if key.strip() == 'flags':
                    break
    except OSError:
        pass
    return fields


def cpu_flags():
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    return set(cpuinfo().get('flags', '').split())


def request_amx_permission():
    """Ask Linux for the AMX tile state (arch_prctl). -> None when granted, else why not (one phrase)."""
    if sys.platform != 'linux' or platform.machine() != 'x86_64':
        return f'not Linux on x86-64 ({sys.platform}, {platform.machine()})'
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
            return f'the kernel refused the AMX permission (arch_prctl: {os.strerror(ctypes.get_errno())})'
    except (OSError, AttributeError) as e:
        return f'arch_prctl could not be called ({type(e).__name__})'
    return None


def _decide_amx(environ, flags, mxnet_loaded):
    """-> (cap to set, '' to remove the user's, or None to leave the environment; {'enabled': bool,
    'reason': str}); asks for the permission when needed."""
    user_cap = next((environ[k] for k in CAP_VARS if environ.get(k)), None)
    if user_cap is not None:
        if 'AMX' not in user_cap.upper():
            return None, {'enabled': False, 'reason': f'DNNL_MAX_CPU_ISA={user_cap} set by the user'}
        why = request_amx_permission()  # the cap asks for AMX: without the permission it would crash
        if why:
            return '', {'enabled': False, 'reason': f'DNNL_MAX_CPU_ISA={user_cap} set by the user, but {why}: '
                                                    'removed (without the permission it crashes the process)'}
        return None, {'enabled': True, 'reason': f'DNNL_MAX_CPU_ISA={user_cap} set by the user'}
    if environ.get('D2LSEG_AMX', '1') == '0':
        return None, {'enabled': False, 'reason': 'D2LSEG_AMX=0'}
    missing = [f for f in AMX_FLAGS if f not in flags]
    if missing:
        return None, {'enabled': False, 'reason': f"this CPU has no {', '.join(missing)}"}
    if mxnet_loaded:
        return None, {'enabled': False, 'reason': 'MXNet was imported before d2lseg'}
    why = request_amx_permission()
    if why:
        return None, {'enabled': False, 'reason': why}
    return AMX_CAP, {'enabled': True, 'reason': 'the CPU has AMX; enabled by d2lseg (D2LSEG_AMX=0 turns it off)'}


def max_threads():
    """The most OpenMP threads d2lseg lets MXNet start: far more than cores only slows it down, and at about
    100000 thread creation fails and MXNet aborts (exit 134)."""
    return max(256, 4 * default_threads())


def checked_threads(value):
    """``OMP_NUM_THREADS`` as MXNet may read it -> (value to set, warning or None). Unset: the CPUs this
    process may use. MXNet parses the variable as one whole number and aborts the process on anything else
    (``abc``, ``1.5``, OpenMP's ``4,2``); libgomp ignores 0 and negative values with a message of its own."""
    sane = str(default_threads())
    if value is None:
        return sane, None
    text = value.strip()
    if text.isdigit() and 1 <= int(text) <= max_threads():
        return str(int(text)), None
    return sane, (f"d2lseg: warning: OMP_NUM_THREADS={value[:20]!r} is not a whole number from 1 to {max_threads()}; "
                  f"using {sane} (the CPUs this process may use)")


def configure():
    """Set the thread count and decide AMX; call before MXNet loads (``d2lseg/__init__`` does)."""
    threads, warning = checked_threads(os.environ.get('OMP_NUM_THREADS'))
    if warning:
        print(warning, file=sys.stderr)
    os.environ['OMP_NUM_THREADS'] = threads
    given = next((os.environ[k] for k in CAP_VARS if os.environ.get(k)), None)
    cap, status = _decide_amx(os.environ, cpu_flags(), 'mxnet' in sys.modules)
    if cap:
        os.environ['DNNL_MAX_CPU_ISA'] = cap
    elif cap == '':
        for k in CAP_VARS:
            os.environ.pop(k, None)
        logger.warning('d2lseg: %s', status['reason'])
    _state.update(cap=cap or (None if cap == '' else given), user_cap=None if cap == '' else given,
                  amx=status, set_by_us=bool(cap))
    logger.debug('AMX %s: %s', 'on' if status['enabled'] else 'off', status['reason'])


def settle():
    """Make oneDNN read the cap ``configure`` set (one tiny convolution), then unset the variable."""
    if not _state['set_by_us']:
        return
    import mxnet as mx
    x = mx.nd.ones((1, 1, 3, 3))
    mx.nd.Convolution(x, mx.nd.ones((1, 1, 1, 1)), kernel=(1, 1), num_filter=1, no_bias=True).wait_to_read()
    os.environ.pop('DNNL_MAX_CPU_ISA', None)


def amx():
    """{'enabled': bool, 'reason': str}: whether oneDNN may use AMX in this process, and why."""
    return dict(_state['amx'])


def onednn_cap():
    """The ``DNNL_MAX_CPU_ISA`` oneDNN was given in this process (the user's or d2lseg's), or None."""
    return _state['cap']


def user_cap():
    """The ``DNNL_MAX_CPU_ISA`` the user set (and d2lseg kept), or None: what "simulate another machine" means."""
    return _state.get('user_cap')
