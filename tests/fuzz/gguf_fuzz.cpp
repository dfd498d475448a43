// libFuzzer target for the GGUF header reader: any bytes must give a header or an error, never a crash, a
// hang or an allocation sized by the input. Seeds: tests/fuzz/corpus/gguf/.
#include "ray/gguf/gguf.hpp"

#include <boost/json/serialize.hpp>

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  ray::gguf::memory_source source(std::span(reinterpret_cast<std::byte const*>(data), size));
  // Smaller than the defaults so that one input cannot spend the fuzzer's time budget walking a 64 MiB
  // header.
  ray::gguf::limits lim;
  lim.max_header_bytes = 1 << 20;
  lim.max_array_length = 1 << 16;
  auto info = ray::gguf::read_header(source, lim);
  if (!info) return 0;
  // Everything computed from a parsed header must cope with whatever the header said.
  (void)boost::json::serialize(ray::gguf::to_json(*info));
  (void)ray::gguf::describe(*info);
  ray::gguf::memory_request req;
  req.ctx_size = 4096;
  req.cache_ram_mib = 256;
  (void)ray::gguf::estimate_memory(*info, req);
  return 0;
}
