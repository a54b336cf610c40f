#!/usr/bin/env bash
# Mutation testing, opt-in (issue 33; not part of CI): mutmut mutates the named modules and runs
# their quick tests against every mutant; a surviving mutant is a change no test notices.
#   pip install -e '.[mutation]'
#   bench/mutation.sh                                   # the configured set: pyproject [tool.mutmut]
#   bench/mutation.sh snp_service/compare.py tests/test_compare.py   # one module, its test files
#   MUTANTS='snp_service.store.xǁJobStoreǁverify__mutmut_*' bench/mutation.sh snp_service/store.py tests/test_store.py
#                                                       # only those mutants (mutmut's names, * as a wildcard)
# It works in a scratch copy of the repository (mutmut writes its mutants/ folder there), prints
# the results and leaves the copy's path for `mutmut show <name>`. Runs under nice: it is long.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/snp-mutation-XXXXXX")"
cp -r "$repo/snp_service" "$repo/tests" "$repo/pyproject.toml" "$work/"
cd "$work"
if [ $# -gt 0 ]; then
  module="$1"; shift
  [ $# -gt 0 ] || { echo "name the test files for $module" >&2; exit 2; }
  python - "$module" "$@" <<'PY'
import json, re, sys, pathlib
module, tests = sys.argv[1], sys.argv[2:]
block = ("[tool.mutmut]\nsource_paths = [\"snp_service/\"]\n"
         f"only_mutate = {json.dumps([module])}\n"
         f"pytest_add_cli_args_test_selection = {json.dumps(tests + ['-m', 'not slow', '-p', 'no:cacheprovider'])}\n"
         # each mutant's tests in a process forked from a server that ran none: forked from the process
         # that ran the clean tests, a child inherits polars' thread pool without its threads and hangs
         # in its first parquet write (a timeout, not a verdict)
         "process_isolation = \"forkserver\"\n")
text = pathlib.Path("pyproject.toml").read_text()
text = re.sub(r"\[tool\.mutmut\].*?(?=\n\[|\Z)", "", text, flags=re.S)
pathlib.Path("pyproject.toml").write_text(text.rstrip() + "\n\n" + block)
PY
fi
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # only tests start Ray
# mutmut runs one test process per core: one torch thread each, or the processes oversubscribe the
# cores and slow tests of a failing mutant run past mutmut's timeout (a timeout is not a verdict)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC2086  # MUTANTS: names and patterns, split on spaces
nice -n 10 mutmut run ${MUTANTS:-} || true
mutmut results --all true 2>/dev/null || mutmut results
echo "scratch copy (mutmut show <name> there): $work"
