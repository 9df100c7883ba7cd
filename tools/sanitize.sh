#!/usr/bin/env bash
# The C core and the decoder under AddressSanitizer + UndefinedBehaviorSanitizer
# (leaks on), and the ring under ThreadSanitizer (issue 15, "How to make it stay fixed").
#
# Builds expman._core with EXPMAN_SANITIZE=1 in a temporary copy of the tracked
# tree (the in-place build of the checkout is left alone), then runs there, with
# libasan preloaded into the uninstrumented Python:
#   - the hostile-folder corpus (tests/test_hostile.py),
#   - the decoder fuzz tests (tests/test_fuzz.py) at their default size, the
#     format tests and the hot path's value paths (numpy scalars read in place),
#   - the writer thread's watchdogs (tests/test_watch.py -k writer_watchdogs...),
#   - the TensorBoard event-file fuzz target (tests/test_fuzz.py -k event) and the
#     FIFO-as-lock-file tests (tests/test_runlock.py -k fifo: issue 20),
#   - a reduced reliability subset (tests/test_reliability.py -k ...),
#   - the dashboard (API, hardening, downloads, browser) and sync tests, with
#     leak checks off (LSan's tracer crashed at exit with the servers' threads
#     alive, as with polars' threads in the lake step); the page is built with
#     npm (else the checkout's is copied),
#   - tests/test_portable_c.py: the C producer/consumer natively, under TSan
#     (rows with the writer's watchdogs on, concurrent new-key definitions with
#     wrap-around, a garbage record)
#     and under ASan+UBSan with detect_leaks=1.
# Usage: tools/sanitize.sh [PYTHON]   (default: python3). Linux, GCC or Clang.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac   # we cd below
# the build tools pip used in isolation, here in the environment that builds in place
"$PY" -c "import Cython, setuptools" 2>/dev/null ||
    "$PY" -m pip install -q "Cython>=3.0.10,<3.4" "setuptools>=77"
CC=${CC:-cc}
LIBASAN=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize.sh: $CC has no libasan.so; cannot run the ASan build" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/expman-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work"
# the dashboard's page is a build output (not in git): built from the sources here
# (with the checkout's node_modules when it has them, else npm ci from
# package-lock.json); without npm, the checkout's built page is copied
page=expman/dashboard/static
if command -v npm >/dev/null; then
    if [ -d node_modules ]; then ln -s "$(cd node_modules && pwd -P)" "$work/node_modules"; fi
    (cd "$work" && { [ -d node_modules ] || npm ci --no-audit --no-fund >/dev/null; } &&
        npm run build >/dev/null)
elif [ -e "$page/app.js" ]; then
    echo "sanitize.sh: no npm: the browser tests use the checkout's built page as it is" >&2
    cp -R "$page" "$work/$page"
else
    echo "sanitize.sh: the dashboard page is not built and npm is missing (npm ci && npm run build)" >&2
    exit 1
fi
cd "$work"
echo "+ EXPMAN_SANITIZE=1 build in $work"
EXPMAN_SANITIZE=1 EXPMAN_WERROR=1 "$PY" setup.py -q build_ext --inplace >/dev/null

# Python's own allocations are not ours: LSan ignores stacks through CPython's
# allocator entry points; anything malloc'd by expman's C code is still reported.
cat > lsan.supp <<'SUPP'
leak:_PyMem_RawMalloc
leak:_PyMem_RawCalloc
leak:_PyMem_RawRealloc
leak:_PyObject_Malloc
leak:_PyObject_Calloc
leak:_PyObject_Realloc
leak:_PyObject_New
leak:_PyObject_GC_New
leak:gc_alloc
leak:PyUnicode_New
leak:PyFloat_FromDouble
leak:PyLong_FromLong
leak:PyThread_allocate_lock
leak:orjson
leak:_dl_
SUPP
export EXPMAN_SANITIZE=1 PYTHONMALLOC=malloc
export ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0:abort_on_error=0:exitcode=99
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$work/lsan.supp:print_suppressions=0
NO_LEAKS=${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}
run_asan() { LD_PRELOAD=$LIBASAN "$PY" -m pytest -q -p no:cacheprovider -x "$@"; }
echo "+ hostile corpus, decoder fuzz, format and hot-path value tests under ASan+UBSan"
# (torch's tensor test is left out: a C++ exception thrown in libtorch cannot be
# intercepted by a libasan preloaded into a Python not linked with libstdc++)
run_asan tests/test_hostile.py tests/test_fuzz.py tests/test_format.py tests/test_hotpath_cliffs.py \
    -k "not tensor"
echo "+ the writer's watchdogs (src/exwatch.c) against the Python engine under ASan+UBSan"
run_asan tests/test_watch.py -k "writer_watchdogs or writer_refuses or last_round or action_stop"
echo "+ the file layer's hostile inputs under ASan+UBSan (issue 20)"
run_asan tests/test_runlock.py -k fifo
echo "+ the lake and RunTail's cursor (a linked, FIFO or device stream; crafted cursors) under ASan+UBSan"
# (less the test that caps the address space: ASan cannot map its shadow under it)
# (the lake with leak checks off, as the dashboard below: with the threads of
# polars' Rust runtime alive at exit, LSan reported them or its tracer crashed
# (signal 11); the decoder it drives is leak-checked with RunTail's tests)
run_asan tests/test_tail_cursor.py
ASAN_OPTIONS=$NO_LEAKS run_asan tests/test_lake.py -k "not links_fifos_and_devices"
echo "+ reliability subset under ASan+UBSan"
run_asan tests/test_reliability.py -k "vanishing or every_third_write or write_fault or \
truncation_at_every_offset or resume_cuts or close_while_8_threads or \
close_from_many_threads or unclosed_run or log_metrics_never_blocks"
echo "+ the dashboard and sync under ASan+UBSan (leak checks off: see the header)"
ASAN_OPTIONS=$NO_LEAKS run_asan tests/test_dashboard_api.py \
    tests/test_dashboard_hardening.py tests/test_dashboard_download.py tests/test_dashboard_browser.py \
    tests/test_sync.py
unset PYTHONMALLOC
echo "+ the C core alone under TSan and ASan+UBSan"
"$PY" -m pytest -q -p no:cacheprovider -x tests/test_portable_c.py -k "native"
