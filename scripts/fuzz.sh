#!/usr/bin/env bash
# Runs every Fuzz target in the module for a bounded time each.
set -euo pipefail
t=${1:-10s}
cd "$(dirname "$0")/.."
passed=0 failed=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    log=$(mktemp)
    if go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >"$log" 2>&1; then
      passed=$((passed + 1))
    else
      cat "$log"; failed=$((failed + 1))
    fi
    rm -f "$log"
  done
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
