#!/bin/sh
# Man pages: every page renders without groff warnings, every --flag a tool's
# --help mentions is documented in its page, and every ar page referenced
# from another exists.
set -eu
: "${AR_BIN:?}"
man=$(cd "$(dirname "$0")/../../man" && pwd)
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

for p in "$man"/*.[157]; do
  w=$(groff -ww -man -Tutf8 "$p" 2>&1 >/dev/null)
  [ -z "$w" ] && ok "$(basename "$p") renders cleanly" || bad "$(basename "$p"): $w"
done

for t in ar-calib ar-scheme ar-tune ar-pack ar-eval ar-dump auto-round; do
  page="$man/$t.1"
  [ -f "$page" ] || { bad "$t has no man page"; continue; }
  # The page's text as typed: roff escapes for '-' and font changes removed.
  text=$(sed 's/\\-/-/g; s/\\f[BIRP]//g; s/\\\[[a-z]*\]//g' "$page")
  missing=""
  for f in $("$AR_BIN/$t" --help | grep -o -- '--[a-z][a-z0-9_-]*' | sort -u); do
    printf '%s\n' "$text" | grep -q -- "$f\([^a-z0-9_-]\|$\)" || missing="$missing $f"
  done
  [ -z "$missing" ] && ok "$t(1) documents every flag of --help" || bad "$t(1) lacks:$missing"
done

refs=$(grep -ho '^\.BR [a-z][a-z0-9-]* ([157])' "$man"/*.[157] | sed 's/^\.BR \([^ ]*\) (\([157]\))/\1.\2/' | sort -u)
for r in $refs; do
  case "$r" in ar*|auto-round*) [ -f "$man/$r" ] || bad "reference to missing page $r";; esac
done
ok "references checked"
exit $fail
