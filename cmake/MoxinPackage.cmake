# The installable C++ package: `cmake --install build --prefix P` puts the `moxin` binary, the
# public headers (include/moxin), one static library holding every internal library the public
# API needs (libmoxin.a), a CMake package (find_package(moxin CONFIG) -> moxin::moxin) and
# moxin.pc for pkg-config.
#
# One archive instead of the nine internal ones: users link one name, and the internal split
# (with the moxin_backend <-> moxin_backend_cuda cycle) stays an implementation detail.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
find_package(PkgConfig QUIET)

set(moxin_package_parts moxin_core moxin_io moxin_hub moxin_text moxin_image moxin_quant moxin_backend
    moxin_model moxin_runtime)
set(MOXIN_PACKAGE_CUDA OFF)
if(TARGET moxin_backend_cuda)
  get_target_property(moxin_cuda_type moxin_backend_cuda TYPE)
  if(moxin_cuda_type STREQUAL "STATIC_LIBRARY")
    list(APPEND moxin_package_parts moxin_backend_cuda)
    set(MOXIN_PACKAGE_CUDA ON)
  endif()
endif()
set(moxin_package_objects)
foreach(part IN LISTS moxin_package_parts)
  list(APPEND moxin_package_objects $<TARGET_OBJECTS:${part}>)
endforeach()

add_library(moxin_package STATIC ${moxin_package_objects})
set_target_properties(moxin_package PROPERTIES OUTPUT_NAME moxin EXPORT_NAME moxin LINKER_LANGUAGE CXX)
target_include_directories(moxin_package INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_features(moxin_package INTERFACE cxx_std_20)

# What the archive needs at link time, as imported targets the package config recreates with
# find_dependency (the same names, so the exported link interface resolves), and as
# pkg-config modules / flags for moxin.pc.
get_property(moxin_codecs GLOBAL PROPERTY MOXIN_IMAGE_CODECS)
set(moxin_link_targets Threads::Threads)
set(MOXIN_PC_REQUIRES)
set(MOXIN_PC_LIBS "-pthread")
set(MOXIN_CONFIG_CODECS "${moxin_codecs}")
foreach(codec IN LISTS moxin_codecs)
  # src/image found them in its own scope: find them (cached) again here, as moxinConfig does.
  if(codec STREQUAL "WEBP")
    pkg_check_modules(WEBP REQUIRED QUIET IMPORTED_TARGET libwebp libwebpdemux)
    list(APPEND moxin_link_targets PkgConfig::WEBP)
    list(APPEND MOXIN_PC_REQUIRES libwebp libwebpdemux)
  else()
    find_package(${codec} REQUIRED)
    list(APPEND moxin_link_targets ${codec}::${codec})
    string(TOLOWER "lib${codec}" pc_module)
    list(APPEND MOXIN_PC_REQUIRES ${pc_module})
  endif()
endforeach()
get_property(MOXIN_PACKAGE_HUB_DOWNLOADS GLOBAL PROPERTY MOXIN_HUB_DOWNLOADS)
if(MOXIN_PACKAGE_HUB_DOWNLOADS)
  find_package(CURL REQUIRED)
  find_package(OpenSSL REQUIRED COMPONENTS Crypto)
  list(APPEND moxin_link_targets CURL::libcurl OpenSSL::Crypto)
  list(APPEND MOXIN_PC_REQUIRES libcurl libcrypto)
else()
  set(MOXIN_PACKAGE_HUB_DOWNLOADS OFF)
endif()
if(MOXIN_PACKAGE_CUDA)
  list(APPEND moxin_link_targets CUDA::cudart CUDA::cublasLt)
  string(APPEND MOXIN_PC_LIBS " -L${CUDAToolkit_LIBRARY_DIR} -lcudart -lcublasLt")
endif()
target_link_libraries(moxin_package PRIVATE ${moxin_link_targets})
list(JOIN MOXIN_PC_REQUIRES " " MOXIN_PC_REQUIRES)

install(TARGETS moxin RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS moxin_package EXPORT moxinTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/moxin DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(moxin_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/moxin)
install(EXPORT moxinTargets NAMESPACE moxin:: DESTINATION ${moxin_cmake_dir})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/moxinConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/moxinConfig.cmake INSTALL_DESTINATION ${moxin_cmake_dir})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/moxinConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/moxinConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/moxinConfigVersion.cmake DESTINATION ${moxin_cmake_dir})

file(RELATIVE_PATH MOXIN_PC_PREFIX /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REGEX REPLACE "/$" "" MOXIN_PC_PREFIX "${MOXIN_PC_PREFIX}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/moxin.pc.in ${CMAKE_CURRENT_BINARY_DIR}/moxin.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/moxin.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
