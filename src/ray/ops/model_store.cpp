// The models directory of `ray model` (ops.hpp): names, the default location, sources, the sha256 sidecars,
// `ray model list` and `ray model rm`.
#include "ray/gguf/gguf.hpp"
#include "ray/ops/model_detail.hpp"
#include "ray/ops/ops.hpp"

#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>
#include <boost/url/parse.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <sstream>

namespace ray::ops {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t max_name_bytes = 128;
constexpr std::size_t read_chunk = 1 << 20;

ray::error usage(std::string message) {
  return ray::error{errc::invalid_request, std::move(message)};
}

std::string os_error(std::string const& what, std::string const& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  auto const [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

bool is_hex_digest(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// The sidecar's digest when it names this file and is not older than it (a file replaced by hand afterwards
// is hashed again).
std::optional<std::string> fresh_sidecar(fs::path const& model, std::string const& file_name) {
  fs::path const side = model.string() + ".sha256";
  struct stat ms {
  }, ss{};
  if (::stat(model.c_str(), &ms) != 0 || ::stat(side.c_str(), &ss) != 0) return std::nullopt;
  if (ss.st_mtim.tv_sec < ms.st_mtim.tv_sec ||
      (ss.st_mtim.tv_sec == ms.st_mtim.tv_sec && ss.st_mtim.tv_nsec < ms.st_mtim.tv_nsec))
    return std::nullopt;
  std::ifstream in(side);
  std::string line;
  if (!std::getline(in, line) || line.size() > 64 + 2 + 4096) return std::nullopt;
  if (line.size() < 66 || !is_hex_digest(std::string_view(line).substr(0, 64)) ||
      line.substr(64, 2) != "  " || line.substr(66) != file_name)
    return std::nullopt;
  return line.substr(0, 64);
}

}  // namespace

result<std::string> expand_source(std::string_view source) {
  constexpr std::string_view hf = "hf://";
  if (!source.starts_with(hf)) return std::string(source);
  auto const rest = source.substr(hf.size());
  auto const a = rest.find('/');
  auto const b = a == std::string_view::npos ? a : rest.find('/', a + 1);
  if (a == 0 || a == std::string_view::npos || b == a + 1 || b == std::string_view::npos ||
      b + 1 >= rest.size())
    return usage("an hf:// source is hf://OWNER/REPO/FILE.gguf, got " + std::string(source));
  return "https://huggingface.co/" + std::string(rest.substr(0, b)) + "/resolve/main/" +
         std::string(rest.substr(b + 1));
}

result<void> check_model_name(std::string_view name) {
  if (name.empty()) return usage("the model name is empty");
  if (name.size() > max_name_bytes)
    return usage("the model name is longer than " + std::to_string(max_name_bytes) + " bytes");
  if (name.front() == '.') return usage("the model name \"" + std::string(name) + "\" starts with '.'");
  for (char c : name) {
    if (c == '/' || c == '\\')
      return usage("the model name \"" + std::string(name) + "\" contains a path separator");
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      return usage("the model name contains a control character");
  }
  return {};
}

std::string default_model_name(std::string_view source) {
  std::string last;
  if (source.find("://") != std::string_view::npos) {
    if (auto const u = boost::urls::parse_uri(source)) {
      for (auto const seg : u->segments())
        last = seg;  // percent-decoded
    }
  } else {
    last = fs::path(std::string(source)).filename().string();
  }
  if (last.size() > 5 && last.ends_with(".gguf")) last.resize(last.size() - 5);
  return last;
}

result<std::string> default_models_dir(unsigned euid, char const* xdg_data_home, char const* home) {
  if (euid == 0) return std::string("/var/lib/ray/models");
  if (xdg_data_home != nullptr && xdg_data_home[0] == '/')  // relative values are ignored (XDG spec)
    return std::string(xdg_data_home) + "/ray/models";
  if (home != nullptr && home[0] == '/') return std::string(home) + "/.local/share/ray/models";
  return usage("no models dir: HOME and XDG_DATA_HOME are unset; pass --models-dir");
}

std::optional<content_range> parse_content_range(std::string_view v) {
  if (!v.starts_with("bytes ")) return std::nullopt;
  v.remove_prefix(6);
  auto const slash = v.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  content_range out;
  auto const range = v.substr(0, slash), total = v.substr(slash + 1);
  if (total != "*") {
    out.total = parse_u64(total);
    if (!out.total) return std::nullopt;
  }
  if (range == "*") return out.total ? std::optional(out) : std::nullopt;
  auto const dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  out.first = parse_u64(range.substr(0, dash));
  out.last = parse_u64(range.substr(dash + 1));
  if (!out.first || !out.last || *out.last < *out.first || (out.total && *out.last >= *out.total))
    return std::nullopt;
  return out;
}

namespace detail {

result<std::string> hash_file(std::string const& path, std::optional<std::uint64_t> length,
                              sha256_hasher& hasher) {
  int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ray::error{errc::provider_request_failed, os_error("cannot open", path)};
  std::vector<char> buf(read_chunk);
  std::uint64_t left = length.value_or(UINT64_MAX);
  while (left > 0) {
    auto const want = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
    auto const n = ::read(fd, buf.data(), want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      auto e = ray::error{errc::provider_request_failed, os_error("cannot read", path)};
      ::close(fd);
      return e;
    }
    if (n == 0) break;
    hasher.update(std::string_view(buf.data(), static_cast<std::size_t>(n)));
    left -= static_cast<std::uint64_t>(n);
  }
  ::close(fd);
  if (length && left > 0)
    return ray::error{errc::provider_request_failed, path + " is shorter than expected"};
  return std::string{};
}

result<void> write_sidecar(std::string const& dir, std::string const& name, std::string const& hex) {
  auto const final_path = dir + "/" + name + ".gguf.sha256";
  auto const tmp = dir + "/.partial/." + name + ".sha256.tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << hex << "  " << name << ".gguf\n";
    f.flush();
    if (!f) return ray::error{errc::provider_request_failed, "cannot write " + tmp};
  }
  if (std::rename(tmp.c_str(), final_path.c_str()) != 0) {
    auto e = ray::error{errc::provider_request_failed, os_error("cannot rename into", final_path)};
    std::remove(tmp.c_str());
    return e;
  }
  return {};
}

result<std::uint64_t> free_bytes(std::string const& dir) {
  struct statvfs s {};
  if (::statvfs(dir.c_str(), &s) != 0)
    return ray::error{errc::provider_request_failed, os_error("cannot statvfs", dir)};
  return static_cast<std::uint64_t>(s.f_bavail) * static_cast<std::uint64_t>(s.f_frsize);
}

std::string human_bytes(double b) {
  static constexpr char const* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) {
    b /= 1024;
    ++u;
  }
  char text[32];
  if (u == 0)
    std::snprintf(text, sizeof text, "%.0f B", b);
  else
    std::snprintf(text, sizeof text, "%.1f %s", b, units[u]);
  return text;
}

void sync_directory(std::string const& dir) {
  int const fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace detail

result<std::vector<model_entry>> list_models(std::string const& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec)
    return ray::error{errc::provider_request_failed,
                      "cannot read the models dir " + dir + ": " + ec.message()};
  std::vector<model_entry> out;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    auto const& p = it->path();
    auto const file = p.filename().string();
    if (file.front() == '.' || !file.ends_with(".gguf") || file.size() == 5) continue;
    if (!it->is_regular_file(ec)) continue;
    model_entry m;
    m.name = file.substr(0, file.size() - 5);
    m.path = p.string();
    m.size = it->file_size(ec);
    if (auto info = gguf::read_header_file(m.path)) {
      m.architecture = info->model.architecture;
      m.quantization = info->model.file_type_name;
      m.context_length = info->model.context_length;
    } else {
      m.error = info.error().message;
    }
    if (auto side = fresh_sidecar(p, file)) {
      m.sha256 = std::move(*side);
    } else {
      sha256_hasher h;
      if (auto r = detail::hash_file(m.path, std::nullopt, h); r) {
        m.sha256 = to_hex(h.finish());
        // Cached for the next list; a read-only models dir is fine (computed again next time).
        std::ofstream f(m.path + ".sha256", std::ios::trunc);
        if (f) f << m.sha256 << "  " << file << "\n";
      } else if (m.error.empty()) {
        m.error = r.error().message;
      }
    }
    out.push_back(std::move(m));
  }
  if (ec)
    return ray::error{errc::provider_request_failed,
                      "cannot read the models dir " + dir + ": " + ec.message()};
  std::sort(out.begin(), out.end(), [](auto const& a, auto const& b) { return a.name < b.name; });
  return out;
}

int list_command(std::string const& models_dir, bool json, std::ostream& out, std::ostream& err) {
  std::error_code ec;
  if (!fs::exists(models_dir, ec)) {
    // Nothing pulled yet is not an error.
    if (json)
      out << "[]\n";
    else
      out << "no models in " << models_dir << "\n";
    return 0;
  }
  auto list = list_models(models_dir);
  if (!list) {
    err << "ray model list: " << list.error().message << "\n";
    return 1;
  }
  if (json) {
    boost::json::array a;
    for (auto const& m : *list) {
      boost::json::object o{{"name", m.name},
                            {"path", m.path},
                            {"size_bytes", m.size},
                            {"architecture", m.architecture},
                            {"quantization", m.quantization}};
      if (m.context_length)
        o["context_length"] = *m.context_length;
      else
        o["context_length"] = nullptr;
      o["sha256"] = m.sha256;
      if (!m.error.empty()) o["error"] = m.error;
      a.push_back(std::move(o));
    }
    out << boost::json::serialize(a) << "\n";
    return 0;
  }
  if (list->empty()) {
    out << "no models in " << models_dir << "\n";
    return 0;
  }
  std::size_t w = 4;
  for (auto const& m : *list)
    w = std::max(w, m.name.size());
  out << std::left << std::setw(static_cast<int>(w)) << "NAME"
      << "  " << std::setw(10) << "SIZE"
      << "  " << std::setw(12) << "ARCH"
      << "  " << std::setw(8) << "QUANT"
      << "  " << std::setw(8) << "CONTEXT"
      << "  SHA256\n";
  for (auto const& m : *list) {
    out << std::setw(static_cast<int>(w)) << m.name << "  " << std::setw(10)
        << detail::human_bytes(double(m.size)) << "  " << std::setw(12)
        << (m.architecture.empty() ? "?" : m.architecture) << "  " << std::setw(8)
        << (m.quantization.empty() ? "?" : m.quantization) << "  " << std::setw(8)
        << (m.context_length ? std::to_string(*m.context_length) : "?") << "  " << m.sha256 << "\n";
    if (!m.error.empty()) out << "  (unreadable: " << m.error << ")\n";
  }
  return 0;
}

int rm_command(std::string const& models_dir, std::string const& name, std::ostream& out, std::ostream& err) {
  if (auto ok = check_model_name(name); !ok) {
    err << "ray model rm: NAME: " << ok.error().message << "\n";
    return 2;
  }
  std::string const base = models_dir + "/" + name + ".gguf";
  bool removed = false;
  for (auto const& p : {base, base + ".sha256", models_dir + "/.partial/" + name,
                        models_dir + "/.partial/." + name + ".source"}) {
    if (::unlink(p.c_str()) == 0) {
      removed = removed || p == base || p == models_dir + "/.partial/" + name;
    } else if (errno != ENOENT) {
      err << "ray model rm: " << os_error("cannot remove", p) << "\n";
      return 1;
    }
  }
  if (!removed) {
    err << "ray model rm: no model named " << name << " in " << models_dir << "\n";
    return 1;
  }
  detail::sync_directory(models_dir);
  out << "removed " << base << "\n";
  return 0;
}

}  // namespace ray::ops
