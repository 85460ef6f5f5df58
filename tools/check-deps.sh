#!/bin/sh
# check-deps.sh [BUILD_DIR] — the layering rule of DEVELOPERS.md, checked:
#   cmd/ → formats/ → libar/ → kernels/, and no cycles.
#
# 1. Includes. Every #include "…" in cmd/, formats/, libar/ and kernels/ is
#    resolved as the compiler does (the including file's folder, then the -I
#    roots: libar's concept folders, formats/, kernels/) and must not point to
#    a higher layer.
# 2. Include cycles. Modules are files without their extension (x.c and x.h
#    are one module, and a private x_impl.h belongs to x); the graph "module A
#    includes a header of module B" must have no cycle, and neither may the
#    graph of libar's concept folders (libar/README.md) that it induces.
# 3. Link cycles. With BUILD_DIR (default build/obj) holding the objects, the
#    graph "A's object uses a symbol that B's object defines" (nm) must have
#    no cycle either, and no object may use a symbol of a higher layer: two
#    files that call each other through a shared private header are one
#    concept split in two, or a helper that wants a file of its own.
# 4. Knobs. libar/ and kernels/ read no environment variable (a knob is a
#    field of a documented options struct), and cmd/ includes neither
#    cblas.h nor omp.h (a command parses flags and calls the library).
# Prints one line per violation and exits 1 if there is any.
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build/obj}
ROOTS="cmd formats libar kernels"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0

rank() { # rank FILE: the layer of a path (cmd 3, formats 2, libar 1, kernels 0)
    case $1 in cmd/*) echo 3;; formats/*) echo 2;; libar/*) echo 1;; kernels/*) echo 0;; *) echo -1;; esac
}
module() { # module PATH: the path without extension and without an _impl suffix
    m=${1%.*}
    echo "${m%_impl}"
}

# ---- 1 and 2: includes -------------------------------------------------------
INC_ROOTS="$(find libar -mindepth 1 -maxdepth 1 -type d | sort | tr '\n' ' ') formats kernels"
find $ROOTS -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort > "$tmp/files"
: > "$tmp/inc-edges"
while read -r f; do
    dir=$(dirname "$f")
    sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | while read -r inc; do
        target=""
        for base in "$dir" $INC_ROOTS; do
            if [ -f "$base/$inc" ]; then target=$(realpath -m --relative-to=. "$base/$inc"); break; fi
        done
        [ -n "$target" ] || continue # a system header
        rf=$(rank "$f"); rt=$(rank "$target")
        if [ "$rt" -gt "$rf" ]; then
            echo "$f: includes $target, against cmd → formats → libar → kernels"
            echo x >> "$tmp/bad"
        fi
        a=$(module "$f"); b=$(module "$target")
        [ "$a" = "$b" ] || echo "$a $b" >> "$tmp/inc-edges"
        case $f/$target in
            libar/*/*/libar/*/*)
                fa=$(echo "$f" | cut -d/ -f1-2); fb=$(echo "$target" | cut -d/ -f1-2)
                [ "$fa" = "$fb" ] || echo "$fa $fb" >> "$tmp/dir-edges";;
        esac
    done
done < "$tmp/files"
[ -f "$tmp/bad" ] && status=1

# tsort names the members of each loop on stderr.
cycles() { # cycles EDGES WHAT
    if ! sort -u "$1" | tsort > /dev/null 2> "$tmp/tsort.err"; then
        loop=$(sed -n 's/^tsort: //p' "$tmp/tsort.err" | grep -v 'input contains a loop' | awk '!seen[$0]++' | tr '\n' ' ')
        echo "$2 cycle: $loop"
        return 1
    fi
}
cycles "$tmp/inc-edges" include || status=1
touch "$tmp/dir-edges"
cycles "$tmp/dir-edges" "libar folder" || status=1

# ---- 3: symbols --------------------------------------------------------------
objs=$(find "$BUILD/libar" "$BUILD/formats" "$BUILD/kernels" -name '*.o' 2>/dev/null | sort)
if [ -z "$objs" ]; then
    echo "check-deps: no objects under $BUILD: link check skipped (build first)" >&2
else
    for o in $objs; do
        m=${o#"$BUILD"/}
        m=${m%.o}
        nm -P "$o" 2>/dev/null | awk -v m="$m" '
            $2 ~ /^[TDBRVW]$/ { print "D", $1, m }
            $2 == "U"         { print "U", $1, m }'
    done > "$tmp/syms"
    awk '
        $1 == "D" && !($2 in def) { def[$2] = $3 }
        $1 == "U" { use[NR] = $2; user[NR] = $3 }
        END { for (i in use) if ((use[i] in def) && def[use[i]] != user[i]) print user[i], def[use[i]] }
    ' "$tmp/syms" | sort -u > "$tmp/sym-edges"
    while read -r a b; do
        if [ "$(rank "$b")" -gt "$(rank "$a")" ]; then
            echo "$a.o: uses a symbol of $b.o, against cmd → formats → libar → kernels"
            status=1
        fi
    done < "$tmp/sym-edges"
    cycles "$tmp/sym-edges" link || status=1
fi
# ---- 4: knobs ----------------------------------------------------------------
if grep -rnE '(^|[^_[:alnum:]])(secure_)?getenv[[:space:]]*\(' libar kernels | grep -vE '^[^:]*:[0-9]+:[[:space:]]*(/?\*|//)'; then
    echo "libar/ or kernels/ reads the environment (above): make it an option field"
    status=1
fi
if grep -nE '#[[:space:]]*include[[:space:]]*<(cblas|omp)\.h>' cmd/*.c cmd/*.h; then
    echo "cmd/ includes cblas.h or omp.h (above): threads and BLAS belong to libar (runtime.h)"
    status=1
fi
[ $status = 0 ] && echo "check-deps: layering, cycles and knobs ok"
exit $status
