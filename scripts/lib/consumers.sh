# Builds and runs the projects that use cacheflight as its users do. Sourced.
#
#   cf_test_consumers OUT RELEASE_BUILD_DIR
#
# 1. `cmake --install` of the release build into OUT/prefix, then test/install
#    configured with find_package against that prefix;
# 2. test/install again, with the source tree added as a subdirectory: it must
#    build, and install nothing of cacheflight's;
# 3. Conan 2 (installed with pip into a virtual environment under OUT):
#    `conan create` with the Debian profile, which builds the package against
#    Debian's Boost and hiredis and runs test_package.
cf_test_consumers() {
  local out=$1 release=$2
  rm -rf "$out"
  mkdir -p "$out"

  cf_log "consumer: find_package on an installed cacheflight"
  cmake --install "$release" --prefix "$out/prefix" >/dev/null
  cmake -S "$CF_ROOT/test/install" -B "$out/package" -G Ninja -DCMAKE_PREFIX_PATH="$out/prefix" >/dev/null
  cmake --build "$out/package" -j "$CF_JOBS" >/dev/null
  "$out/package/consumer"

  cf_log "consumer: add_subdirectory"
  cmake -S "$CF_ROOT/test/install" -B "$out/subdirectory" -G Ninja -DCACHEFLIGHT_SOURCE_DIR="$CF_ROOT" \
    -DCMAKE_INSTALL_PREFIX="$out/subdirectory-prefix" >/dev/null
  cmake --build "$out/subdirectory" -j "$CF_JOBS" >/dev/null
  "$out/subdirectory/consumer"
  cmake --install "$out/subdirectory" >/dev/null
  if [ -e "$out/subdirectory-prefix/include" ] || [ -e "$out/subdirectory-prefix/lib" ]; then
    echo "add_subdirectory installed cacheflight's files:"
    find "$out/subdirectory-prefix"
    return 1
  fi
  if [ -e "$out/subdirectory/cacheflight/test" ] || [ -e "$out/subdirectory/cacheflight/examples" ]; then
    echo "add_subdirectory built cacheflight's tests or examples"
    return 1
  fi

  cf_log "consumer: conan create with the Debian profile"
  python3 -m venv "$out/conan-venv"
  "$out/conan-venv/bin/pip" install --quiet --disable-pip-version-check "conan>=2,<3"
  export CONAN_HOME=$out/conan-home
  (cd "$CF_ROOT" && "$out/conan-venv/bin/conan" create . -pr:a conan/profiles/debian12 --build=missing -nr \
     >"$out/conan.log" 2>&1) || { tail -n 60 "$out/conan.log"; return 1; }
  sed -n '/Testing the package: Executing test/,$p' "$out/conan.log"
  rm -rf "$CF_ROOT/test_package/build"
  unset CONAN_HOME
}
