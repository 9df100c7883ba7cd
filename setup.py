"""Build rules for expman's one compiled module, ``expman._core``.

- The extension is ``expman/_core.pyx`` plus the portable C writer in
  ``expman/src/exlog.c`` (and its watchdogs, ``exwatch.c``); headers live beside
  them in ``expman/src/``.
- Generated C is never committed: cythonize writes it at build time.
- ``EXPMAN_DEBUG=1`` builds with ``-O0 -g``, Cython bounds checks and
  assertions on (the test suite runs against this build in ``.ci/run``).
- ``EXPMAN_WERROR=1`` turns compiler warnings into errors (CI does).
- ``EXPMAN_SANITIZE=1`` (GCC/Clang) builds with AddressSanitizer and
  UndefinedBehaviorSanitizer, ``-O1 -g``, bounds checks on, any UB fatal.
  Python itself is not instrumented, so run it with libasan preloaded:
  ``tools/sanitize.sh`` does all of it in a copy of the tree.
- ``EXPMAN_ANNOTATE=1`` writes the ``cython -a`` HTML next to the .pyx.
- Switching between debug and release rebuilds everything: up-to-date checks
  look at file times, not flags, so the last mode is kept in ``build/``.
- The dashboard's page (``expman/dashboard/static/``, not in git) is built by
  ``npm ci && npm run build`` when missing (a git clone); an sdist ships it, so
  a build from the sdist needs no Node. ``EXPMAN_SKIP_WEB=1`` skips it.
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

DEBUG = os.environ.get("EXPMAN_DEBUG") == "1"
WERROR = os.environ.get("EXPMAN_WERROR") == "1"
SANITIZE = os.environ.get("EXPMAN_SANITIZE") == "1"
MODE = "sanitize" if SANITIZE else "debug" if DEBUG else "release"
MODE_FILE = os.path.join("build", "expman-build-mode")


def last_mode():
    try:
        with open(MODE_FILE) as f:
            return f.read()
    except OSError:
        return None


class build_ext_mode(build_ext):
    """Force a full rebuild when the mode changed; record the mode after a build."""

    def run(self):
        self.force = self.force or last_mode() != MODE
        super().run()
        os.makedirs("build", exist_ok=True)
        with open(MODE_FILE, "w") as f:
            f.write(MODE)


def build_dashboard_page():
    """npm ci && npm run build, unless the page is already built (an sdist) or skipped."""
    if os.path.exists(os.path.join("expman", "dashboard", "static", "app.js")):
        return
    if os.environ.get("EXPMAN_SKIP_WEB") == "1":
        return
    import shutil
    import subprocess
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("expman: building the dashboard page needs Node.js and npm "
                         "(or set EXPMAN_SKIP_WEB=1 to build without it)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], check=True)
    subprocess.run([npm, "run", "build"], check=True)


class build_py_web(build_py):
    def run(self):
        build_dashboard_page()
        self.__dict__.pop("data_files", None)     # collect the page's files after building it
        super().run()


class sdist_web(sdist):
    def run(self):
        build_dashboard_page()
        super().run()


if sys.platform == "win32":
    cflags = ["/W4", "/Od", "/Zi"] if DEBUG else ["/W4", "/O2"]
    cflags += ["/WX"] if WERROR else []
    # Cython's generated code trips MSVC's "unreferenced" level-4 warnings
    cflags += ["/wd4100", "/wd4127", "/wd4189", "/wd4505", "/wd4702"]
else:
    cflags = ["-Wall", "-Wextra"]
    if SANITIZE:
        cflags += ["-O1", "-g", "-UNDEBUG", "-fno-omit-frame-pointer",
                   "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    else:
        cflags += ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"]
    cflags += ["-Werror"] if WERROR else []
    # Cython's generated code has unused parameters and functions by design
    cflags += ["-Wno-unused-parameter", "-Wno-unused-function"]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG or SANITIZE,
    "wraparound": DEBUG or SANITIZE,
    "initializedcheck": DEBUG or SANITIZE,
    "cdivision": not (DEBUG or SANITIZE),
    "embedsignature": True,
}

core = Extension(
    "expman._core",
    sources=["expman/_core.pyx", "expman/src/exlog.c", "expman/src/exwatch.c"],
    include_dirs=["expman"],
    depends=["expman/src/exlog.h", "expman/src/exwatch.h", "expman/src/exlog_port.h",
             "expman/src/excore.h",
             "expman/_exlog.pxd", "expman/_excore.pxd",
             "expman/_decode.pxi", "expman/_decimate.pxi"],
    extra_compile_args=cflags,
    extra_link_args=["-fsanitize=address,undefined"] if SANITIZE else [],
    define_macros=[("CYTHON_TRACE", "0")],
)

setup(
    ext_modules=cythonize(
        [core],
        compiler_directives=directives,
        annotate=os.environ.get("EXPMAN_ANNOTATE") == "1",
        force=last_mode() != MODE,
    ),
    cmdclass={"build_ext": build_ext_mode, "build_py": build_py_web, "sdist": sdist_web},
)
