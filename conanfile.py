# The Conan 2 recipe. With the profile in conan/profiles/, the requirements
# are Debian's packages (platform_requires) and nothing comes from a remote:
#
#   conan create . -pr:a conan/profiles/debian12 --build=missing -nr
import os

from conan import ConanFile
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy


class CacheflightConan(ConanFile):
    name = "cacheflight"
    version = "0.1.0"
    license = "BSL-1.0"
    description = "Stops duplicate expensive work under concurrent load: request coalescing and a read-through cache on Boost.Asio"
    topics = ("asio", "cache", "singleflight", "coalescing", "redis", "lmdb")
    settings = "os", "arch", "compiler", "build_type"
    # One option per compiled component.
    options = {"redis": [True, False], "disk": [True, False]}
    default_options = {"redis": True, "disk": True}
    exports_sources = "CMakeLists.txt", "LICENSE*", "cmake/*", "include/*", "src/*"

    def requirements(self):
        self.requires("boost/1.81.0", transitive_headers=True)
        if self.options.redis:
            self.requires("hiredis/0.14.1")
            self.requires("openssl/[>=1.1.1 <4]")
        if self.options.disk:
            self.requires("lmdb/0.9.24")

    def layout(self):
        cmake_layout(self)

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["CACHEFLIGHT_WITH_REDIS"] = bool(self.options.redis)
        tc.cache_variables["CACHEFLIGHT_WITH_DISK"] = bool(self.options.disk)
        tc.cache_variables["CACHEFLIGHT_BUILD_TESTS"] = False
        tc.cache_variables["CACHEFLIGHT_BUILD_EXAMPLES"] = False
        tc.cache_variables["CACHEFLIGHT_INSTALL"] = True
        tc.generate()
        CMakeDeps(self).generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        cmake = CMake(self)
        cmake.install()
        for pattern in ("LICENSE*",):
            copy(self, pattern, self.source_folder, os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        # Consumers use the package's own CMake config (find_package(cacheflight
        # CONFIG COMPONENTS redis disk)): it finds Boost, hiredis, OpenSSL and LMDB the way the
        # library was built against them.
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.builddirs.append(os.path.join("lib", "cmake", "cacheflight"))
        self.cpp_info.includedirs = ["include"]
        self.cpp_info.libs = (["cacheflight_redis"] if self.options.redis else []) + (
            ["cacheflight_disk"] if self.options.disk else [])
