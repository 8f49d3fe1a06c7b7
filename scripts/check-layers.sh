#!/usr/bin/env bash
# The layers of the actors crate (actors/src): domain/ → ports/ → system/, each importing only from the layers
# before it. Fails (exit 1), naming the lines, when
#   - a module of domain/ imports from ports/ or system/,
#   - a module of ports/ imports from system/,
#   - code inside the crate goes through a root re-export (`crate::store`) instead of its layer
#     (`crate::ports::store`), which would hide an import from the two checks above,
#   - two modules import each other, directly or through others,
#   - a source file sits outside the three layers (only lib.rs may).
# Comments (doc links included) are not imports and are not checked. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../actors/src"
status=0
check() { # where, regex (PCRE), what is wrong
  local hits
  hits=$(grep -rnP --include='*.rs' "$2" "$1" | grep -vP '^[^:]+:[0-9]+:\s*//' || true)
  if [ -n "$hits" ]; then
    printf '%s:\n%s\n' "$3" "$hits"
    status=1
  fi
}
check domain 'crate::(ports|system)\b' "domain/ must not import from ports/ or system/"
check ports 'crate::system\b' "ports/ must not import from system/"
check . 'crate::(?!(domain|ports|system)\b)[a-z_]+\b(?!!)' "inside the crate, import through the layer (crate::ports::store, not crate::store)"
check . 'super::super\b' "no super::super: name the layer"
# No import cycle between modules either (each file is a module; test modules count with their file).
cycles=$(python3 - <<'PY'
import pathlib, re
graph = {}
for f in pathlib.Path('.').glob('*/*.rs'):
    if f.name == 'mod.rs':
        continue
    me = f"{f.parent.name}::{f.stem}"
    code = [l for l in f.read_text().splitlines() if not l.lstrip().startswith('//')]
    uses = set(re.findall(r'crate::((?:domain|ports|system)::[a-z_]+)', '\n'.join(code)))
    graph[me] = sorted(uses - {me})
state, found = {}, []
def visit(n, path):
    state[n] = 1
    for m in graph.get(n, []):
        if state.get(m) == 1:
            found.append(' → '.join(path[path.index(m):] + [m]))
        elif m not in state:
            visit(m, path + [m])
    state[n] = 2
for n in sorted(graph):
    if n not in state:
        visit(n, [n])
print('\n'.join(found))
PY
)
if [ -n "$cycles" ]; then
  printf 'import cycles between modules:\n%s\n' "$cycles"
  status=1
fi
stray=$(find . -name '*.rs' -not -path './domain/*' -not -path './ports/*' -not -path './system/*' -not -name lib.rs)
if [ -n "$stray" ]; then
  printf 'source files outside domain/, ports/ and system/:\n%s\n' "$stray"
  status=1
fi
[ $status -eq 0 ] && echo "layers: ok (domain → ports → system)"
exit $status
