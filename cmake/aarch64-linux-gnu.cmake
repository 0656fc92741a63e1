# Cross build for ARM64 Linux with Debian's toolchain (g++-aarch64-linux-gnu); the tests run
# under qemu-user (scripts/arm64.sh). Header-only dependencies (nlohmann-json, CLI11) come from
# the host's /usr/include, which the cross compiler searches last; libraries only from the
# aarch64 sysroot and the prefixes in CMAKE_PREFIX_PATH (GoogleTest, cross-built by the
# script), so no x86 library (libjpeg, libpng, cpp-httplib...) is picked up: those optional
# features stay off in this build.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# BOTH: the header-only packages' CMake configs live on the host (/usr/share/cmake).
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# gtest_discover_tests and ctest run the test binaries through qemu.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
# pkg-config looks in the aarch64 sysroot only (else it reports the host's x86 libwebp).
set(ENV{PKG_CONFIG_LIBDIR} /usr/aarch64-linux-gnu/lib/pkgconfig)
