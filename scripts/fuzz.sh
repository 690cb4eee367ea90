#!/usr/bin/env bash
# Runs every Fuzz target in the module for a bounded time each.
set -euo pipefail
t=${1:-10s}
cd "$(dirname "$0")/.."
fail=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    if ! go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/fuzz-$f.log 2>&1; then
      cat /tmp/fuzz-$f.log; fail=1
    fi
  done
done
exit $fail
