# Which LibTorch tve builds against: the build flavour (docs/gpu.md).
#
#   debian  Debian's libtorch-dev 1.13 (CPU only, OpenBLAS). The default: on this project's CPUs it
#           runs the shipped models faster than PyPI's torch (docs/performance.md).
#   cuda    the LibTorch inside the PyPI `torch` wheel of the current-torch venv
#           (scripts/torch_env.py, $TVE_CACHE/torch-venv): CPU and CUDA. Its CMake config enables the
#           CUDA language, so it needs nvcc and the CUDA headers of the same release as the wheel's
#           runtime: scripts/setup_cuda.sh installs them from PyPI into $TVE_CACHE/cuda-toolkit.
#           scripts/build.sh --flavour cuda builds it into build-cuda/.
#
# OpenCV, spdlog, CLI11, nlohmann_json and GoogleTest come from Debian in both flavours; both LibTorches
# use the C++11 string ABI (_GLIBCXX_USE_CXX11_ABI=1), as Debian's libraries do.
set(TVE_FLAVOUR "debian" CACHE STRING "LibTorch to build against: debian (libtorch-dev, CPU) or cuda (the PyPI torch wheel, CPU and CUDA)")
set_property(CACHE TVE_FLAVOUR PROPERTY STRINGS debian cuda)

if(DEFINED ENV{TVE_CACHE} AND NOT "$ENV{TVE_CACHE}" STREQUAL "")
  set(_tve_cache "$ENV{TVE_CACHE}")
else()
  set(_tve_cache "$ENV{HOME}/.cache/tve")
endif()

if(TVE_FLAVOUR STREQUAL "debian")
  find_package(Torch REQUIRED)
elseif(TVE_FLAVOUR STREQUAL "cuda")
  set(TVE_TORCH_VENV "${_tve_cache}/torch-venv" CACHE PATH "The current-torch venv whose PyPI torch the cuda flavour links (scripts/torch_env.py)")
  set(TVE_CUDA_TOOLKIT "${_tve_cache}/cuda-toolkit/nvidia/cu13" CACHE PATH "nvcc and CUDA headers matching the wheel's CUDA runtime (scripts/setup_cuda.sh)")
  set(_tve_fix "run: bash scripts/setup_cuda.sh (docs/gpu.md)")

  file(GLOB _tve_site LIST_DIRECTORIES true "${TVE_TORCH_VENV}/lib/python3*/site-packages")
  if(NOT _tve_site OR NOT EXISTS "${_tve_site}/torch/share/cmake/Torch/TorchConfig.cmake")
    message(FATAL_ERROR "tve: the cuda flavour needs the PyPI torch wheel in ${TVE_TORCH_VENV} (not found); ${_tve_fix}")
  endif()
  if(NOT EXISTS "${TVE_CUDA_TOOLKIT}/bin/nvcc" OR NOT EXISTS "${TVE_CUDA_TOOLKIT}/lib/libcudart.so")
    message(FATAL_ERROR "tve: the cuda flavour needs nvcc in ${TVE_CUDA_TOOLKIT} (not found); ${_tve_fix}")
  endif()
  set(_tve_torch "${_tve_site}/torch")
  # The wheel's own CUDA libraries (nvidia-cuda-runtime, -nvrtc), the ones libtorch_cuda.so loads.
  set(_tve_cuda_libs "${_tve_site}/nvidia/cu13/lib")

  # Torch's config looks for Caffe2, c10 and kineto with find_*(... PATHS <its folder>), which CMake
  # searches after the system folders: without these hints it would mix in Debian's libtorch-dev.
  list(PREPEND CMAKE_PREFIX_PATH "${_tve_torch}/share/cmake")
  list(PREPEND CMAKE_LIBRARY_PATH "${_tve_torch}/lib")
  # FindCUDA and FindCUDAToolkit read the toolkit from here (setup_cuda.sh links its lib/libcudart.so).
  # The wheels ship versioned .so files only, which find_library does not take: NVRTC, which the
  # toolkit folder lacks, is named, the wheel's own copy, the one libtorch_cuda.so loads.
  set(CUDA_TOOLKIT_ROOT_DIR "${TVE_CUDA_TOOLKIT}" CACHE PATH "" FORCE)
  set(CUDAToolkit_ROOT "${TVE_CUDA_TOOLKIT}")
  set(CMAKE_CUDA_COMPILER "${TVE_CUDA_TOOLKIT}/bin/nvcc" CACHE FILEPATH "" FORCE)
  set(CUDA_nvrtc_LIBRARY "${_tve_cuda_libs}/libnvrtc.so.13" CACHE FILEPATH "" FORCE)
  # tve compiles no CUDA code; this only keeps Torch's config from probing for a GPU and from
  # listing every architecture.
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "8.0")
  endif()
  find_package(Torch REQUIRED)
  if(NOT TORCH_LIBRARY MATCHES "^${_tve_torch}/")
    message(FATAL_ERROR "tve: the cuda flavour found ${TORCH_LIBRARY}, not the wheel's LibTorch in ${_tve_torch}")
  endif()
  # The wheel's include folder ships fmt 12's headers; Debian's spdlog is built against Debian's fmt 9,
  # and its headers, inlined into tve, must see fmt 9: a folder holding only Debian's fmt/ comes before
  # the wheel's folders (LibTorch's own headers that tve includes do not use fmt).
  find_path(TVE_DEBIAN_FMT_DIR fmt/core.h PATHS /usr/include NO_DEFAULT_PATH)
  if(NOT TVE_DEBIAN_FMT_DIR)
    message(FATAL_ERROR "tve: the cuda flavour needs Debian's fmt headers (libfmt-dev, with libspdlog-dev); run: bash scripts/setup.sh")
  endif()
  file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/debian-fmt")
  file(CREATE_LINK "${TVE_DEBIAN_FMT_DIR}/fmt" "${CMAKE_BINARY_DIR}/debian-fmt/fmt" SYMBOLIC)
  include_directories(BEFORE SYSTEM "${CMAKE_BINARY_DIR}/debian-fmt")
  # The binary finds libtorch*.so in the venv through its RUNPATH, in the build tree and once
  # installed: the venv is where the libraries live, not next to the binary.
  set(CMAKE_INSTALL_RPATH_USE_LINK_PATH ON)
  message(STATUS "tve: cuda flavour, LibTorch ${Torch_VERSION} from ${_tve_torch}")
else()
  message(FATAL_ERROR "tve: TVE_FLAVOUR is '${TVE_FLAVOUR}': debian or cuda")
endif()

# LibTorch's headers are most of each translation unit's compile time: GCC parses torch/torch.h in
# ~17 s of CPU, loads it precompiled (a 570 MB file; 730 MB for LibTorch 2.15) in ~12 s. So the
# precompiled header (tve_lib's and tve_tests') pays only in the sources that include LibTorch
# anyway; the others skip it (TVE_SOURCES_WITHOUT_TORCH: a source in the wrong
# list builds slower, never differently). Measured in docs/performance.md, "Build time". Empty: the
# flavour's default; ON or OFF to choose.
set(TVE_PRECOMPILE_HEADERS "" CACHE STRING "Precompile LibTorch's headers: ON, OFF, or empty for the flavour's default")
if(TVE_PRECOMPILE_HEADERS STREQUAL "")
  if(TVE_FLAVOUR STREQUAL "cuda")
    set(_tve_pch ON)
  else()
    set(_tve_pch OFF)
  endif()
else()
  set(_tve_pch ${TVE_PRECOMPILE_HEADERS})
endif()
set(TVE_SOURCES_WITHOUT_TORCH
  src/atomic_file.cpp src/error.cpp src/golden.cpp src/log.cpp src/metrics.cpp src/npy.cpp
  src/serial_worker.cpp src/sha256.cpp
  tests/test_atomic_file.cpp tests/test_golden.cpp tests/test_metrics.cpp tests/test_npy.cpp
  tests/test_serial_worker.cpp)
function(tve_precompile_torch)
  # tve_tests makes its own: GCC refuses a precompiled header made under other macro definitions
  # (tve_lib's TVE_INSTALL_MODELS_SUBDIR), so REUSE_FROM fails under -Werror=invalid-pch. The CLI's
  # sources (apps/tve) include little of LibTorch and compiled slower with it (cli.cpp: 47 s against 27 s).
  target_precompile_headers(tve_lib PRIVATE <torch/torch.h>)
  if(TARGET tve_tests)
    target_precompile_headers(tve_tests PRIVATE <torch/torch.h>)
  endif()
  foreach(source IN LISTS TVE_SOURCES_WITHOUT_TORCH)
    # A source file's properties belong to the folder whose CMakeLists.txt adds it.
    if(source MATCHES "^tests/")
      set(scope "${CMAKE_SOURCE_DIR}/tests")
    else()
      set(scope "${CMAKE_SOURCE_DIR}")
    endif()
    set_source_files_properties("${CMAKE_SOURCE_DIR}/${source}" DIRECTORY "${scope}"
      PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
  endforeach()
endfunction()
if(_tve_pch)
  # Once the top folder's targets (tests/ included) exist.
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL tve_precompile_torch)
endif()
