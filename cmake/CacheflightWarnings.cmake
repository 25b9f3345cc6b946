# Flags for the project's own targets (tests, examples, benchmarks). Consumers of
# the installed library get none of these.
add_library(cacheflight_checks INTERFACE)
target_compile_options(cacheflight_checks INTERFACE -Wall -Wextra -Wpedantic)
if(CACHEFLIGHT_WARNINGS_AS_ERRORS)
  target_compile_options(cacheflight_checks INTERFACE -Werror)
endif()
# Asio's coroutine support and GCC's -fcoroutines are both needed for awaitables.
target_compile_options(cacheflight_checks INTERFACE $<$<CXX_COMPILER_ID:GNU>:-fcoroutines>)

if(CACHEFLIGHT_SANITIZE)
  set(_cf_san "-fsanitize=${CACHEFLIGHT_SANITIZE}")
  if(CACHEFLIGHT_SANITIZE MATCHES "undefined")
    string(APPEND _cf_san ";-fno-sanitize-recover=undefined")
  endif()
  target_compile_options(cacheflight_checks INTERFACE ${_cf_san} -fno-omit-frame-pointer -g)
  target_link_options(cacheflight_checks INTERFACE ${_cf_san})
  if(CACHEFLIGHT_SANITIZE MATCHES "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # Asio's reference counts use a standalone acquire fence, which GCC warns
    # ThreadSanitizer cannot model.
    target_compile_options(cacheflight_checks INTERFACE -Wno-tsan)
  endif()
endif()
