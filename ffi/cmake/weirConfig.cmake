# CMake package config for weir's C ABI, used in place from a checkout:
#   cargo build --release -p weir-ffi
# then, in the C or C++ project's CMakeLists.txt:
#   find_package(weir CONFIG REQUIRED PATHS /path/to/weir/ffi/cmake)
#   target_link_libraries(my_app PRIVATE weir::weir)
# weir::weir is the static library with its include directory and the system
# libraries it needs. Set WEIR_PROFILE to "debug" to link target/debug instead.
get_filename_component(_weir_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
if(NOT DEFINED WEIR_PROFILE)
  set(WEIR_PROFILE release)
endif()
set(_weir_lib "${_weir_root}/target/${WEIR_PROFILE}/libweir_ffi.a")
if(NOT EXISTS "${_weir_lib}")
  set(weir_FOUND FALSE)
  set(weir_NOT_FOUND_MESSAGE
      "${_weir_lib} does not exist: run `cargo build -p weir-ffi` (with --release unless WEIR_PROFILE is debug) in ${_weir_root}")
  return()
endif()
if(NOT TARGET weir::weir)
  find_package(Threads REQUIRED)
  add_library(weir::weir STATIC IMPORTED)
  set_target_properties(weir::weir PROPERTIES
    IMPORTED_LOCATION "${_weir_lib}"
    INTERFACE_INCLUDE_DIRECTORIES "${_weir_root}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS};m")
endif()
set(weir_FOUND TRUE)
unset(_weir_lib)
unset(_weir_root)
