# ray_component(NAME SOURCES a.cpp b.cpp DEPS ray_core ...)
# One static library per component: ray_<NAME>, public include root src/.
function(ray_component name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(ray_${name} STATIC ${ARG_SOURCES})
  target_include_directories(ray_${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(ray_${name} PUBLIC ${ARG_DEPS})
endfunction()

# ray_test(NAME SOURCES ... DEPS ... [LABELS ...])
function(ray_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)  # support/require.hpp
  target_compile_definitions(${name} PRIVATE
    RAY_TEST_FIXTURES="${PROJECT_SOURCE_DIR}/tests/fixtures"
    RAY_BINARY="$<TARGET_FILE:ray>"
    RAY_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${ARG_LABELS}")
endfunction()
