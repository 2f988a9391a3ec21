# Warnings and sanitizer flags shared by every moesim target.
add_library(moesim_options INTERFACE)
target_compile_options(moesim_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    -Wold-style-cast -Wcast-align -Woverloaded-virtual -Wconversion-null -Wimplicit-fallthrough>)
target_include_directories(moesim_options INTERFACE ${PROJECT_SOURCE_DIR})
if(MOESIM_SANITIZE)
  target_compile_options(moesim_options INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(moesim_options INTERFACE -fsanitize=address,undefined)
endif()

# moesim_add_library(NAME folder SOURCES ... DEPS ...)
function(moesim_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_link_libraries(${name} PUBLIC moesim_options ${ARG_DEPS})
endfunction()
