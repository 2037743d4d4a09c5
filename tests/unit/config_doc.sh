#!/bin/sh
# docs/config.md must list every key exactly as `chatd --help-config` prints it.
set -eu
doc="${srcdir:-.}/docs/config.md"
out=$(./httpd/chatd --help-config | sed 1d)
missing=0
printf '%s\n' "$out" | while IFS= read -r line; do
    [ -z "$line" ] && continue
    if ! grep -qxF -- "$line" "$doc"; then
        echo "docs/config.md lacks: $line"
        exit 1
    fi
done || missing=1
exit "$missing"
