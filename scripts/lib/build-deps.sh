# Sourced by scripts/run.sh, scripts/test.sh and .ci/run: the Debian packages the build needs on a fresh
# machine. rdkafka builds its bundled librdkafka with cmake (Debian's librdkafka 2.0 fails the handshake of
# the tansu broker); librdkafka's headers want curl's even when OIDC is off, and TLS/SASL need OpenSSL/SASL.
build_deps=(cmake pkg-config libssl-dev zlib1g-dev libcurl4-openssl-dev libsasl2-dev)
missing=()
for pkg in "${build_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing build dependencies (Debian): ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
unset build_deps missing pkg sudo_cmd
