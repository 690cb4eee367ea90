#!/usr/bin/env bash
# Runs every Fuzz target in the module for a bounded number of executions
# each. A count, not a duration: with -fuzztime=10s Go's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when the machine is
# loaded (golang/go#75804, fixed only in Go 1.27). The wall-clock limit per
# target still catches an input that hangs.
set -euo pipefail
t=${1:-50000x}
limit=${FUZZ_LIMIT:-180}
cd "$(dirname "$0")/.."
passed=0 failed=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    log=$(mktemp)
    if timeout "$limit" go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >"$log" 2>&1; then
      passed=$((passed + 1))
    else
      cat "$log"; failed=$((failed + 1))
    fi
    rm -f "$log"
  done
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
