#!/usr/bin/env bash
# Build the extension with -fsanitize=address,undefined in a throw-away copy of the tree and run
# the kernel test suite (parity included) against it; the in-place build is left untouched.
# It builds the baseline code (no AVX2 clones), so the suite covers both variants: the normal
# run takes the clone the CPU picks.
# Fails on any sanitizer report. Usage: csrc/tests/asan_python.sh [python] [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
shift || true
CC_BIN="${CC:-gcc}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgeseg-asan.XXXXXX")"
[ -n "${KEEP_ASAN_WORK:-}" ] || trap 'rm -rf "$WORK"' EXIT

cd "$ROOT"
# Tracked and untracked-but-not-ignored files only: no in-place .so, no caches.
git ls-files -z --cached --others --exclude-standard | grep -zv '\.so$' | xargs -0 cp --parents -t "$WORK"
cd "$WORK"
EDGESEG_NO_MULTIVERSION=1 EDGESEG_SANITIZE=address,undefined "$PY" setup.py -q build_ext --inplace >build.log 2>&1 || { cat build.log; exit 1; }

LIBASAN="$("$CC_BIN" -print-file-name=libasan.so)"
LOG="$WORK/pytest.log"
set +e
# Python leaks by design (interned objects, arenas): leak checking is off, everything else on.
# EDGESEG_NO_MULTIVERSION tells the tests this build has no AVX2 clones (build_info()["simd"])
EDGESEG_NO_MULTIVERSION=1 LD_PRELOAD="$LIBASAN" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
PYTHONPATH="$WORK" "$PY" -m pytest -q -p no:cacheprovider tests/kernels "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if grep -q -E "runtime error:|ERROR: AddressSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$LOG"; then
    echo "asan_python: sanitizer report(s) above" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "asan_python: pytest exited with $rc" >&2
    exit "$rc"
fi
echo "asan_python: tests passed, no sanitizer reports"
