#!/bin/sh
# make install PREFIX=tmp: tools and recipe links that find their siblings in
# the installed bin/, libar.a and libar.so with headers a program compiles and
# links against through pkg-config (ar.pc), man pages man(1) can find.
set -eu
: "${AR_BIN:?}" "${AR_SHARED:?}"
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
P="$tmp/prefix"
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

make -s -C "$root" install PREFIX="$P" > "$tmp/make.log" 2>&1 || { cat "$tmp/make.log"; echo "FAIL make install"; exit 1; }
ok "make install PREFIX=$P"

for t in ar-calib ar-tune ar-pack ar-eval ar-dump auto-round auto-round-best auto-round-light auto-round-rtn \
         auto-round-opt-rtn; do
  [ -x "$P/bin/$t" ] || bad "bin/$t missing"
done
# The installed driver runs the installed tools, not the build tree's.
cmd=$("$P/bin/auto-round-rtn" --model "$AR_SHARED/models/stories260K" --dry_run)
case "$cmd" in "$P/bin/ar-tune "*"$P/bin/ar-pack "*) ok "auto-round-rtn runs $P/bin tools";;
  *) bad "installed driver runs: $cmd";; esac

for f in lib/libar.a lib/libar.so include/ar/stream.h include/ar/error.h lib/pkgconfig/ar.pc \
         share/man/man1/ar-dump.1 share/man/man5/ar-stream.5; do
  [ -s "$P/$f" ] || bad "$f missing"
done
[ ! -e "$P/include/ar/tokenizer_impl.h" ] && ok "internal headers not installed" || bad "tokenizer_impl.h installed"
nm -D --defined-only "$P/lib/libar.so" | grep -q ' T ar_stream_writer_open$' && ok "libar.so exports ar_stream_writer_open" ||
  bad "libar.so lacks ar_stream_writer_open"

# A client program: writes a stream through the shared library, ar-dump reads it back.
cat > "$tmp/client.c" <<'EOF'
#include <ar/stream.h>
#include <ar/error.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "wb");
    ar_stream_writer *w = f ? ar_stream_writer_open(f, argv[1], 3) : NULL;
    int64_t shape[1] = {2};
    unsigned char x[2] = {7, 8};
    if (!w || ar_stream_write_meta(w, "{\"client\":1}") || ar_stream_write_tensor(w, "x", AR_U8, 1, shape, "{}", x) ||
        ar_stream_writer_close(w)) { fprintf(stderr, "%s\n", ar_last_error()); return 1; }
    fclose(f);
    return argc - 2;
}
EOF
export PKG_CONFIG_PATH="$P/lib/pkgconfig"
if pkg-config --exists ar && cc -o "$tmp/client" "$tmp/client.c" $(pkg-config --cflags --libs ar) -Wl,-rpath,"$P/lib" 2> "$tmp/cc.log"
then ok "client compiles with pkg-config ar"
else cat "$tmp/cc.log"; bad "client build"; fi
if [ -x "$tmp/client" ] && "$tmp/client" "$tmp/x.ars" && "$P/bin/ar-dump" "$tmp/x.ars" | grep -q "^tensor	x	u8	\[2\]	2"; then
  ok "client writes a stream ar-dump reads"
else bad "client stream"; fi
ldd "$tmp/client" 2>/dev/null | grep -q "$P/lib/libar.so" && ok "client uses the installed libar.so" || bad "client not linked to libar.so"

MANPATH="$P/share/man" man -w ar-dump > /dev/null 2>&1 && ok "man -w ar-dump finds the page" || bad "man -w ar-dump"
exit $fail
