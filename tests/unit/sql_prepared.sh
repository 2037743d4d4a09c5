#!/bin/sh
# Every statement that carries data goes through a prepared statement. The
# only plain queries allowed are the transaction control in store.c and the
# schema migrations (chat_store_migrate), which run files from sql/ and
# their own bookkeeping. This fails when any other plain query appears, or
# when SQL text is built with printf-like functions outside migrations.
set -eu
src="${srcdir:-.}/lib"
bad=0
# Plain query calls, with the function each one is in.
awk '
    /^[a-z].*\(/ { fn = $0 }
    /mysql_(real_)?query\(/ { print FILENAME ":" FNR ": " fn " :: " $0 }
' "$src"/*.c "$src"/api/*.c > plain.lst
while IFS= read -r line; do
    case "$line" in
    *"START TRANSACTION"*) ;;
    *"run_script("*|*"chat_store_migrate("*) ;;
    *) echo "plain SQL outside migrations: $line"; bad=1 ;;
    esac
done < plain.lst
rm -f plain.lst
# SQL assembled with printf-family calls.
if grep -nE '(printf|asprintf)\([^;]*"[^"]*(SELECT|INSERT|UPDATE|DELETE)[[:space:]]' \
    "$src"/*.c "$src"/api/*.c | grep -v 'INSERT INTO schema_version'; then
    echo "SQL built from strings (above): use a prepared statement"
    bad=1
fi
exit "$bad"
