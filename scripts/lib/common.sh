# Shared by the scripts in scripts/: dependency installation and build helpers.
# Sourced, not run.

CF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CF_JOBS=${CF_JOBS:-$(nproc)}

# The Debian 12 packages the build and tests need. Boost is pinned to 1.81:
# never libboost-dev or libboost-all-dev, which pull 1.74 beside it.
CF_PACKAGES=(g++ cmake ninja-build pkg-config
  libboost1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev
  libgtest-dev libbenchmark-dev
  libhiredis-dev libssl-dev liblmdb-dev curl)

# What only the tests need: a browser for the dashboard test, Redis, the
# openssl tool (throwaway certificates for the TLS tests), and Python's venv
# for installing Conan with pip.
CF_TEST_PACKAGES=(chromium redis-server openssl python3-venv)

cf_log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Installs the packages that are missing; does nothing when all are present.
cf_install_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  cf_log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# cf_build DIR [cmake args...]: configures and builds a tree.
cf_build() {
  local dir=$1
  shift
  cmake -S "$CF_ROOT" -B "$dir" -G Ninja -Wno-dev "$@" >/dev/null
  cmake --build "$dir" -j "$CF_JOBS"
}
