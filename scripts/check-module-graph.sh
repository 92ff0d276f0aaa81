#!/usr/bin/env bash
# Checks the dependency rule written in src/lib.rs: every `crate::<module>` path in a file
# under src/<module>(.rs|/) (a `use`, a qualified path or a doc link, tests included) must name
# the module itself or one it may import. Prints the edges found and exits 1 on a violation.
set -euo pipefail
cd "$(dirname "$0")/.."

# module -> the modules it may import (keep in step with the table in src/lib.rs).
declare -A allowed=(
  [sys]=""
  [data]=""
  [dns]=""
  [crypto]=""
  [smtp]="data"
  [buffers]="sys"
  [spool]="buffers sys"
  [stats]="smtp spool sys"
  [relay]="crypto dns stats smtp spool sys"
  [config]="relay smtp spool sys"
  [server]="sys crypto data dns smtp buffers spool stats config relay"
  [cmd]="sys crypto data dns smtp buffers spool stats config server relay"
)
# Edges allowed for a while during a change (space-separated "from->to"); empty when none.
temporary=""

status=0
declare -A edges=()
for file in $(find src -name '*.rs' ! -path src/lib.rs ! -path src/main.rs | sort); do
  rel=${file#src/}
  from=${rel%%/*}
  from=${from%.rs}
  if [[ -z ${allowed[$from]+set} ]]; then
    echo "unknown module $from ($file): add it to src/lib.rs and to this script"
    status=1
    continue
  fi
  if grep -n 'crate::{' "$file"; then
    echo "$file: grouped \`crate::{…}\` import: write one path per module so this check can read it"
    status=1
  fi
  while IFS=: read -r line to; do
    [[ $to == "$from" ]] && continue
    edges["$from->$to"]=1
    if [[ " ${allowed[$from]} " != *" $to "* && " $temporary " != *" $from->$to "* ]]; then
      echo "$file:$line: $from may not import $to (see the dependency rule in src/lib.rs)"
      status=1
    fi
  done < <(grep -no 'crate::[a-z_][a-z0-9_]*' "$file" | sed 's/crate:://' | sort -u -t: -k2,2)
done

echo "edges: $(printf '%s\n' "${!edges[@]}" | sort | tr '\n' ' ')"
for t in $temporary; do
  [[ -n ${edges[$t]+set} ]] && echo "temporarily allowed: $t" || echo "note: $t no longer occurs; drop it from the temporary list"
done
if [[ $status -eq 0 ]]; then echo "module graph ok"; fi
exit $status
