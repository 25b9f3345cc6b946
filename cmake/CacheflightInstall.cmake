# Install rules: headers, the compiled components, and a package config with
# one file per component, so that consumers write
#
#   find_package(cacheflight CONFIG REQUIRED COMPONENTS redis)
#   target_link_libraries(app PRIVATE cacheflight::cacheflight cacheflight::redis)
#
# A new compiled component adds its target to an export set named
# cacheflight-<component>-targets, a cmake/cacheflight-<component>.cmake.in that
# finds its dependencies, and its name to CACHEFLIGHT_COMPONENTS below.
include(CMakePackageConfigHelpers)

set(CACHEFLIGHT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/cacheflight)
set(CACHEFLIGHT_COMPONENTS redis disk)

install(DIRECTORY include/cacheflight DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        PATTERN "redis" EXCLUDE PATTERN "disk" EXCLUDE)
install(TARGETS cacheflight EXPORT cacheflight-targets)
install(EXPORT cacheflight-targets NAMESPACE cacheflight:: FILE cacheflight-targets.cmake
        DESTINATION ${CACHEFLIGHT_CMAKE_DIR})

foreach(component IN LISTS CACHEFLIGHT_COMPONENTS)
  if(NOT TARGET cacheflight_${component})
    continue()
  endif()
  if(EXISTS ${PROJECT_SOURCE_DIR}/include/cacheflight/${component})
    install(DIRECTORY include/cacheflight/${component} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/cacheflight)
  endif()
  install(TARGETS cacheflight_${component} EXPORT cacheflight-${component}-targets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(EXPORT cacheflight-${component}-targets NAMESPACE cacheflight::
          FILE cacheflight-${component}-targets.cmake DESTINATION ${CACHEFLIGHT_CMAKE_DIR})
  configure_file(${PROJECT_SOURCE_DIR}/cmake/cacheflight-${component}.cmake.in
                 ${PROJECT_BINARY_DIR}/cacheflight-${component}.cmake @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/cacheflight-${component}.cmake DESTINATION ${CACHEFLIGHT_CMAKE_DIR})
endforeach()

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/cacheflightConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cacheflightConfig.cmake INSTALL_DESTINATION ${CACHEFLIGHT_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cacheflightConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cacheflightConfig.cmake ${PROJECT_BINARY_DIR}/cacheflightConfigVersion.cmake
        DESTINATION ${CACHEFLIGHT_CMAKE_DIR})
