#!/usr/bin/env bash
# launch-layout.sh: the prepared layout `./virtlab` runs (artifacts/launch/), called by src/ReadyToRunComposite.targets
# after the shell's Release build. See docs/ARCHITECTURE.md "Preparation".
#
#   1. A composite ReadyToRun image of the framework (the runtime pack) and the shell's NuGet dependencies (Roslyn,
#      Spectre.Console, System.CommandLine, …) in ONE version bubble: Roslyn's generic instantiations over framework
#      types (ImmutableArray<Symbol>, Dictionary<…>) are precompiled there and nowhere else. Built once per (runtime
#      pack, crossgen2, package set) into artifacts/r2r/composite/<key>/ (minutes of CPU), reused by every later build.
#   2. The layout: that cache hard-linked (never rewritten: a new package set is a new key), plus the build output's own
#      files (the shell and the SDK keep their per-assembly images, so an edit never recompiles the composite), a
#      self-contained runtimeconfig that names the build output (plugins are built into its plugins/ folders).
#
# usage: launch-layout.sh CROSSGEN2 RUNTIME_PACK_DIR RUNTIME_VERSION TARGET_ARCH PACKAGES_FILE CACHE_ROOT BUILD_OUTPUT LAYOUT
set -euo pipefail
crossgen2=$1 pack=$2 runtime=$3 arch=$4 packages_file=$5 cache_root=$6 out=${7%/} layout=${8%/}

mapfile -t packages < <(grep -v '^$' "$packages_file" | sort -u)
# Compiled for this machine's CPU, as -march=native would be (the layout is built where it runs): x86-64-v3 (AVX2,
# BMI1/2, FMA, LZCNT, MOVBE) when the CPU has it all, so the framework's vectorised code (span search, hashing, string
# compares) is precompiled instead of JIT-compiled on every start (crossgen2's default target leaves those methods
# out). A CPU without them would make the runtime reject the image and JIT-compile everything: correct, just slower.
isa=
has_v3() {
  local flags f
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null) "
  for f in avx avx2 bmi1 bmi2 fma f16c movbe abm; do [[ $flags == *" $f "* ]] || return 1; done
}
[ "$arch" = x64 ] && [ "${VIRTLAB_COMPOSITE_ISA:-}" != default ] && has_v3 && isa=x86-64-v3
# The key: everything the composite is made of (package paths carry id and version) and how it is compiled.
key=$(printf '%s\n' "layout 2" "$runtime" "$crossgen2" "$pack" "isa $isa" "${packages[@]}" | sha256sum | cut -c1-16)
cache="$cache_root/$key"

if [ ! -f "$cache/.complete" ]; then
  mkdir -p "$cache_root"
  exec 9>"$cache.lock"; flock 9   # two builds (worktrees sharing an artifacts path) compile it once
  if [ ! -f "$cache/.complete" ]; then
    tmp="$cache.tmp"; rm -rf "$tmp" "$cache"; mkdir -p "$tmp/in" "$tmp/out"
    # One folder of inputs: crossgen2 names each component by its path relative to the first input's folder.
    ln -f "$pack"/lib/net*/*.dll "${packages[@]}" "$tmp/in/" 2>/dev/null || cp -f "$pack"/lib/net*/*.dll "${packages[@]}" "$tmp/in/"
    echo "virtlab: compiling the framework + packages composite ReadyToRun image (once per package set; a few minutes)..." >&2
    started=$SECONDS
    if ! "$crossgen2" "$tmp"/in/*.dll --composite --inputbubble -O --targetos:linux --targetarch:"$arch" \
         ${isa:+--instruction-set:$isa} -o:"$tmp/out/framework.r2r.dll" >"$tmp/crossgen2.log" 2>&1; then
      cat "$tmp/crossgen2.log" >&2; echo "virtlab: composite ReadyToRun compile failed (log above)" >&2; exit 1
    fi
    # The runtime itself (libcoreclr.so, libclrjit.so, hostfxr, hostpolicy, System.Native, …).
    cp -f "$pack"/native/* "$tmp/out/"
    printf '%s\n' "${packages[@]}" >"$tmp/out/.packages"
    echo "$((SECONDS - started)) s, runtime $runtime, ${#packages[@]} packages, instruction set ${isa:-default}" >"$tmp/out/.built"
    mv "$tmp/out" "$cache"; rm -rf "$tmp"; touch "$cache/.complete"
    # Composites of earlier package sets (185 MB each) go: a running shell keeps its hard-linked files alive.
    for d in "$cache_root"/*/; do [ "${d%/}" = "$cache" ] || rm -rf "$d"; done
  fi
  exec 9>&-
fi

# Up to date (same composite, no file of the build output newer than its copy): leave it, running shells and all.
own() { for f in "$out"/* "$out"/runtimes/linux-"$arch"/native/*; do [ -f "$f" ] && echo "$f"; done; }
if [ "$(cat "$layout/.composite" 2>/dev/null)" = "$key" ] && [ ! "$out/virtlab.runtimeconfig.json" -nt "$layout/virtlab.runtimeconfig.json" ]; then
  fresh=1
  while read -r f; do
    name=$(basename "$f")
    case "$name" in *.deps.json|*.runtimeconfig.json) continue ;; esac
    [ -e "$cache/$name" ] && continue   # a package: its component is in the layout
    { [ -e "$layout/$name" ] && [ ! "$f" -nt "$layout/$name" ]; } || { fresh=0; break; }
  done < <(own)
  [ $fresh = 1 ] && exit 0
fi

# The layout, made beside and swapped in (a running shell keeps the files it has open).
next="$layout.next"; rm -rf "$next"; mkdir -p "$next"
cp -al "$cache"/. "$next"/
rm -f "$next/.complete"
declare -A component=()
for f in "$cache"/*.dll; do component[$(basename "$f")]=1; done
for f in "$out"/*; do
  name=$(basename "$f")
  case "$name" in
    *.deps.json) ;;                          # none: every assembly of the folder is trusted, as self-contained apps are
    *.runtimeconfig.json) ;;                 # written below
    *) [ -f "$f" ] && [ -z "${component[$name]:-}" ] && cp -p "$f" "$next/" ;;
  esac
done
# Native libraries of packages (SkiaSharp, HarfBuzzSharp): without a deps.json they are probed in the app folder.
for f in "$out"/runtimes/linux-"$arch"/native/*; do [ -f "$f" ] && cp -p "$f" "$next/"; done
# Self-contained: no "framework" block (hostfxr then takes the runtime from the app folder); the build output's path.
rel=$(realpath --relative-to="$layout" "$out")
sed -e '/"framework": {/,/},/d' -e "s|\"configProperties\": {|\"configProperties\": {\n      \"VirtLab.BuildOutput\": \"$rel\",\n      \"VirtLab.Composite\": \"$key\",|" \
  "$out/virtlab.runtimeconfig.json" >"$next/virtlab.runtimeconfig.json"
echo "$key" >"$next/.composite"
rm -rf "$layout.old"; [ -e "$layout" ] && mv "$layout" "$layout.old"
mv "$next" "$layout"; rm -rf "$layout.old"
