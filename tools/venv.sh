#!/usr/bin/env bash
# The virtual environment every make target uses: tools/venv.sh VENV PYTHON EXTRA (the Makefile calls it).
#
# Which Python: PYTHON when given (it must be 3.9-3.13); else an existing, complete VENV of a supported
# Python; else python3 when it is supported; else the newest python3.X on PATH that is; else one line
# naming the supported versions and how to get one (exit 2).
# The venv is rebuilt, saying so, when it is of another Python than PYTHON asks for, or half made (its
# python does not run, or no install finished in it); reinstalled when setup.py or the extra changed.
# On Python 3.13 pip cannot satisfy MXNet 1.9.1's declared numpy<2, so MXNet is installed without its
# declared dependencies (setup.py brings what it really needs).
# A fourth argument "plan" prints the decision (python=... action=...) and changes nothing (tests/test_pythons.py).
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${2:-}
EXTRA=${3:-cpu}
PLAN=${4:-}
SUPPORTED="3.13 3.12 3.11 3.10 3.9"

say() { echo "venv: $*" >&2; }
fail() { echo "venv: error: $*" >&2; exit 2; }
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
supported() { case " $SUPPORTED " in *" $1 "*) return 0 ;; esac; return 1; }
stamp_for() {  # what a finished install in this venv records: Python, extra, setup.py's content
    echo "python=$1 extra=$EXTRA setup=$(cksum < setup.py | cut -d' ' -f1)"
}

have=""
[ -x "$VENV/bin/python" ] && have=$(version_of "$VENV/bin/python" || true)

if [ -n "$PYTHON" ]; then
    want=$(version_of "$PYTHON") || fail "PYTHON=$PYTHON does not run here (a pyenv shim of a version that is not active?); give the path of a Python 3.9-3.13, e.g. PYTHON=$(pyenv root 2>/dev/null || echo ~/.pyenv)/versions/3.12.1/bin/python"
    supported "$want" || fail "PYTHON=$PYTHON is Python $want; d2lseg runs on Python 3.9-3.13 (MXNet 1.9.1); e.g. PYTHON=python3.12"
elif [ -n "$have" ] && supported "$have" && [ -f "$VENV/.installed" ]; then
    want=$have; PYTHON="$VENV/bin/python"
else
    want=""
    if v=$(version_of python3) && supported "$v"; then
        PYTHON=python3; want=$v
    else
        for v in $SUPPORTED; do
            if command -v "python$v" >/dev/null && [ "$(version_of "python$v")" = "$v" ]; then
                PYTHON="python$v"; want=$v; break
            fi
        done
    fi
    [ -n "$want" ] || fail "no Python 3.9-3.13 found (python3 is $(version_of python3 || echo 'missing')); install one (apt install python3.12-venv, pyenv install 3.12, or python.org) and run again with PYTHON=python3.12"
fi

action=create
if [ -e "$VENV" ]; then
    if [ -z "$have" ]; then
        action=rebuild; why="$VENV is half made (its python does not run): rebuilding it with Python $want"
    elif [ "$have" != "$want" ]; then
        action=rebuild; why="$VENV is Python $have, Python $want was asked for: rebuilding it"
    elif [ -f "$VENV/.installing" ]; then
        action=install; why="the last install into $VENV did not finish: installing again"
    elif [ ! -f "$VENV/.installed" ]; then
        action=rebuild; why="$VENV has no finished install of this version of the Makefile: rebuilding it with Python $want"
    elif [ "$(cat "$VENV/.installed")" = "$(stamp_for "$want")" ]; then
        action=keep
    else
        action=install; why="setup.py or the extra changed: updating $VENV"
    fi
fi
if [ -n "$PLAN" ]; then
    echo "python=$PYTHON version=$want action=$action"
    exit 0
fi
case $action in
    keep) exit 0 ;;
    rebuild)  # only ever a virtual environment (or an empty folder): never a folder of the user's
        [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV" 2>/dev/null)" ] || \
            fail "$VENV exists and is no virtual environment (no pyvenv.cfg); move it or choose another VENV="
        say "$why"; rm -rf "$VENV" ;;
    install) say "$why" ;;
esac

stamp=$(stamp_for "$want")
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PYTHON (Python $want)"
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; fail "$PYTHON -m venv failed: install the venv module (Debian/Ubuntu: apt install python$want-venv) and run again"; }
fi
touch "$VENV/.installing"
rm -f "$VENV/.installed"
PIP="$VENV/bin/python -m pip"
say "installing d2lseg[$EXTRA,test] into $VENV (a minute or two from a package cache)"
$PIP install --quiet --upgrade pip setuptools wheel
$PIP install --quiet -e ".[$EXTRA,test]"
if [ "$want" = "3.13" ]; then
    case "$EXTRA" in
        cpu) mx=mxnet==1.9.1 ;;
        *) mx=mxnet-$EXTRA==1.9.1 ;;
    esac
    say "Python 3.13: $mx without its declared numpy<2 (d2lseg.core.compat restores the numpy names it uses)"
    $PIP install --quiet --no-deps "$mx"
fi
"$VENV/bin/python" -c "import d2lseg" || fail "d2lseg does not import in $VENV (above); run: $VENV/bin/d2lseg doctor"
echo "$stamp" > "$VENV/.installed"
rm -f "$VENV/.installing"
